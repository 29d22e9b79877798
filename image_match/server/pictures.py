"""The pictures the moderation page shows: small JPEG thumbnails made by the service, so that the
browser never loads a stored path or a third-party URL itself.

A store keeps paths and URLs, not pixels. A record's picture is read where its path says, then
shrunk in the service's signing processes (decoding is CPU work, and bounded by the same queue):

- an http(s) URL through ``image_match.fetching`` only (its address rules, allowlist, byte cap
  and deadline: the page cannot be used to reach what a search could not);
- a local file only when its real path (links followed; a relative path is looked for under
  each root) lies under one of ``IMAGE_MATCH_MEDIA_ROOTS``' folders: without them no local
  file is shown, so a record's path can never make the service read ``/etc``. A picture
  uploaded to the service has no file (its path is a hash of its bytes): it cannot be shown.

Thumbnails are kept in a small cache in memory (``CACHE_BYTES``, least recently used out first),
keyed by the URL, or by the file's real path, size and modification time. Why not a thumbnail
kept in each record: it would add a few kilobytes to every record of a store (gigabytes in an
index of millions, in every search's memory and every export) for the few dozen pictures a
moderator looks at a page, and go stale when the file changes; a URL that is gone can no longer
be shown either way, and then its place on the page says why.
"""

import asyncio
import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image as PILImage
from PIL import ImageOps

from .. import settings
from ..errors import ImageLoadError, ImageMatchError
from ..loading import _pillow_errors, read_file
from .service import Image

#: The longest side of a thumbnail, in pixels (shown at up to half of it on the page, sharp on
#: screens of two device pixels a CSS pixel).
SIDE = 320
#: Bytes of thumbnails a service worker keeps (about 15 KB each: some 2,000 pictures).
CACHE_BYTES = 32 * 1024 * 1024
_URL_PREFIXES = ("http://", "https://")


class NotShown(ImageMatchError):
    """A stored picture the service may not show (a path outside the media roots)."""

    def __init__(self, path, reason):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class Thumbnail:
    """A JPEG of at most ``SIDE`` pixels a side, and what the picture it shows is: its size in
    pixels (as shown: EXIF orientation applied) and in bytes."""

    jpeg: bytes
    width: int
    height: int
    bytes: int


def make_thumbnail(data):
    """The ``Thumbnail`` of an encoded image (runs in a signing process). Raises ImageLoadError
    (CorruptImageError for data Pillow cannot decode), as the loader does."""
    source = f"bytes ({len(data)} bytes)"
    limit = settings.get("MAX_IMAGE_PIXELS")
    with _pillow_errors(source):
        with PILImage.open(io.BytesIO(data)) as image:
            if limit and image.width * image.height > limit:
                raise ImageLoadError(source, f"{image.width}x{image.height} pixels is more than "
                                     f"IMAGE_MATCH_MAX_IMAGE_PIXELS ({limit})")
            orientation = image.getexif().get(0x0112)
            width, height = image.size
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            image.draft("RGB", (SIDE, SIDE))  # JPEG: decode at a fraction of the size
            shown = ImageOps.exif_transpose(image)
            shown.thumbnail((SIDE, SIDE), PILImage.Resampling.LANCZOS)
            if shown.mode in ("RGBA", "LA", "PA") or "transparency" in shown.info:
                backdrop = PILImage.new("RGB", shown.size, (255, 255, 255))
                rgba = shown.convert("RGBA")
                backdrop.paste(rgba, mask=rgba.getchannel("A"))
                shown = backdrop
            buffer = io.BytesIO()
            shown.convert("RGB").save(buffer, "JPEG", quality=82)
    return Thumbnail(buffer.getvalue(), width, height, len(data))


def is_url(path):
    return path.lower().startswith(_URL_PREFIXES)


def under_roots(path, roots):
    """The real path of a stored local file when it lies under one of ``roots`` (real paths
    compared, links followed), else raise ``NotShown``. A relative path is looked for under each
    root in turn (a store made with ``image-match add photos/``, served with the folder above as
    a root)."""
    if not roots:
        raise NotShown(path, "local files are shown only under IMAGE_MATCH_MEDIA_ROOTS (none set)")
    bases = [os.path.realpath(root) for root in roots]
    relative = not os.path.isabs(path)
    for candidate in ([os.path.join(base, path) for base in bases] if relative else [path]):
        real = os.path.realpath(candidate)
        inside = any(os.path.commonpath([real, base]) == base for base in bases)
        if inside and (not relative or os.path.exists(real)):
            return real
    if relative:
        raise NotShown(path, "no such file under IMAGE_MATCH_MEDIA_ROOTS (the service keeps no "
                             "copy of an uploaded picture)")
    raise NotShown(path, "not under IMAGE_MATCH_MEDIA_ROOTS")


class Pictures:
    """Thumbnails of stored paths and URLs for one service worker, over its ``Service``."""

    def __init__(self, service, roots, cache_bytes=CACHE_BYTES):
        self.service = service
        self.roots = tuple(roots)
        self.cache_bytes = cache_bytes
        self._cache = OrderedDict()  # key -> Thumbnail, least recently used first
        self._held = 0
        self._lock = threading.Lock()

    async def of_record(self, record_id):
        """The thumbnail of a stored record's picture."""
        record = await self.service.get(record_id)
        return await self.of_path(record["path"])

    async def of_path(self, path):
        """The thumbnail of a stored path: an http(s) URL, or a local file under the roots."""
        if is_url(path):
            key = ("url", path)
            image = Image.from_url(path)
        else:
            real = under_roots(path, self.roots)
            try:
                status = await asyncio.to_thread(os.stat, real)
            except OSError as error:
                raise ImageLoadError(path, error.strerror or "cannot be read") from None
            key = ("file", real, status.st_size, status.st_mtime_ns)
            image = None
        cached = self._get(key)
        if cached is not None:
            return cached
        if image is None:
            image = Image(path, data=await asyncio.to_thread(read_file, real))
        thumbnail = await self.service.sign(make_thumbnail, image)
        self._put(key, thumbnail)
        return thumbnail

    def _get(self, key):
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
            return found

    def _put(self, key, thumbnail):
        size = len(thumbnail.jpeg)
        if size > self.cache_bytes:
            return
        with self._lock:
            old = self._cache.pop(key, None)
            if old is not None:
                self._held -= len(old.jpeg)
            self._cache[key] = thumbnail
            self._held += size
            while self._held > self.cache_bytes:
                _, dropped = self._cache.popitem(last=False)
                self._held -= len(dropped.jpeg)
