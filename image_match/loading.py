"""Turn anything a user holds into one 2-D grey array.

``load_grey`` accepts a path (str or PathLike), an http(s) URL (fetched by
``image_match.fetching``, with its timeouts, byte cap and address checks), bytes / bytearray /
memoryview, a binary file object, a numpy array or a PIL image, and returns the grey levels the
signature is computed from. Every failure is an ``ImageLoadError`` whose message names the input;
bytes that are not a decodable image (empty, unknown format, broken) raise its ``CorruptImageError``.

What it does to the picture:

- EXIF orientation is applied, so a photo is signed upright whatever its camera wrote.
- Transparency is flattened onto white; palette, CMYK, YCbCr, 1-bit and 16-bit modes are converted.
- Multi-frame files (animated GIF/WebP/PNG, multi-page TIFF, MPO) are signed by their first frame.
- Images with more than ``IMAGE_MATCH_MAX_IMAGE_PIXELS`` pixels are refused before decoding.
- Reading a local file or a file object never hangs: it is done in a helper thread that the caller
  waits for at most the fetch deadline (``fetching.deadline_seconds()``, 80 s by default), so a FIFO,
  a device or a stalled network file system gives an ``ImageLoadError`` instead of a hang. A FIFO
  or a device is read as a download is (at most ``IMAGE_MATCH_FETCH_MAX_BYTES``), a regular file
  whole (at most what an image within the pixel limit could take, ``max_file_bytes``).
- With ``draft=True``, an image whose short side is at least twice ``DRAFT_MIN_SIDE`` is reduced
  by the largest factor that keeps its short side at least ``DRAFT_MIN_SIDE``: a JPEG is decoded at
  a reduced DCT scale (1/2, 1/4 or 1/8), which is most of the speed; other formats are decoded,
  then box-averaged. The signature is then placed as on the full image (``decode_grey`` returns
  its original size), and stays close to a full decode's; see README.rst for the measured
  distances. A colour JPEG's reduced decode reads its YCbCr planes and applies 1.x's weights to
  them (``YCBCR_GREY_TABLES``); other reduced images are converted by Pillow to 8-bit grey.
  ``draft=False`` decodes every pixel, as image-match 1.x did.

Grey levels follow image-match 1.x, which signed through ``skimage.io.imread(as_gray=True)``:
colour is converted with ``0.2125 R + 0.7154 G + 0.0721 B`` on the 0-1 scale (float64, as
scikit-image's ``img_as_float`` and ``rgb2gray`` compute it, with the additions in the order
``(R + G) + B``: signatures equal to 1.x's bit for bit on the dev corpus), while single-channel
images keep their 0-255 values (uint8). ``scale="0-1"`` puts every input on the 0-1 scale instead.

``decode_grey_source`` stops before the grey levels: a ``GreySource`` holds the decoded pixels and
the rule that makes grey levels of them, which the compiled signature kernel
(``image_match.kernel``) applies as it reads them, without a float array of the image.
"""

import concurrent.futures
import io
import math
import os
import queue
import select
import stat
import struct
import threading
import time
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import settings as _settings
from .errors import NO_SUCH_FILE, CorruptImageError, ImageLoadError, InvalidParameterError

# The smallest short side a draft decode may produce. Chosen by measuring the signature distance
# between draft and full decodes over the dev corpus (benchmarks/draft_distance.py, README.rst).
DRAFT_MIN_SIDE = 128

# scikit-image's rgb2gray weights (ITU-R BT.709 luma), as image-match 1.x used them.
GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])
_GREY_MATRIX = (*GREY_WEIGHTS, 0.0)
# What each 8-bit red, green and blue value adds to a pixel's grey level: (value * (1/255)) *
# weight, the two roundings of scikit-image's img_as_float then rgb2gray. A pixel's grey level
# is (red + green) + blue of these, added in that order (see _weighted_grey).
GREY_TABLES = np.multiply(np.arange(256), 1.0 / 255, dtype=np.float64) * GREY_WEIGHTS[:, None]
# The grey levels of a draft decode's 8-bit grey: value * (1/255) in float32.
DRAFT_GREY_TABLE = np.arange(256, dtype=np.float32) * np.float32(1 / 255)
# What each 8-bit Y, Cb and Cr value of a JPEG adds to a pixel's grey level: 1.x's weights
# applied to JFIF's conversion (R = Y + 1.402 Cr', G = Y - 0.344136 Cb' - 0.714136 Cr',
# B = Y + 1.772 Cb', with Cb' = Cb - 128, Cr' = Cr - 128; the weights add up to 1), on the 0-1
# scale. A draft decode of a YCbCr JPEG reads its planes so, without Pillow's conversion to RGB
# and its rounding to 8 bits (see _source_from_pil). (Y + Cb) + Cr, added in that order.
_CB_WEIGHT = -GREY_WEIGHTS[1] * 0.344136 + GREY_WEIGHTS[2] * 1.772
_CR_WEIGHT = GREY_WEIGHTS[0] * 1.402 - GREY_WEIGHTS[1] * 0.714136
YCBCR_GREY_TABLES = np.stack([np.arange(256) * (1.0 / 255),
                              (np.arange(256) - 128) * (_CB_WEIGHT / 255),
                              (np.arange(256) - 128) * (_CR_WEIGHT / 255)])

SCALES = ("1.x", "0-1")

_EXIF_ORIENTATION = 0x0112

_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")

# Pixels converted to float at a time (see _grey_from_array, _grey_from_channels8).
_BAND_PIXELS = 1 << 18

_URL_PREFIXES = ("http://", "https://")

# Pixel values of a float array beyond this are refused: grey levels are 0-1 or 0-255, and values
# near the float64 limit overflow the signature's sums into infinities and NaN.
MAX_FLOAT_VALUE = 1e15
# The most bytes a file may take per pixel of the pixel limit: 16-bit RGBA, uncompressed.
_BYTES_PER_PIXEL = 8
_PIECE = 1 << 16
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def load_grey(image, *, bytestream=False, draft=True, scale="1.x", max_pixels=None):
    """The grey levels of ``image`` as a 2-D array.

    This is ``decode_grey(...)[0]``; with ``draft=True`` a large JPEG comes back at a reduced scale.

    Parameters
    ----------
    image : str, os.PathLike, bytes, bytearray, memoryview, binary file, ndarray or PIL.Image.Image
        A path or an http(s) URL (str), encoded image bytes, an open binary file, a numpy array
        (HxW grey; HxWx3 RGB; HxWx4 RGBA; HxWx1 and HxWx2 grey with alpha; uint8, uint16, bool or
        float in 0-1) or a PIL image.
    bytestream : bool
        image-match 1.x's flag: ``image`` holds encoded bytes (also detected without it).
    draft : bool
        Decode large JPEGs at a reduced scale; see the module docstring.
    scale : {"1.x", "0-1"}
        "1.x" keeps single-channel images on their 0-255 scale as image-match 1.x did; "0-1" puts
        every image on the 0-1 scale.
    max_pixels : int or None
        Refuse larger images; None takes ``IMAGE_MATCH_MAX_IMAGE_PIXELS``.

    Returns
    -------
    (H, W) ndarray
        float64 grey levels, or uint8 for single-channel input with ``scale="1.x"``.

    Raises
    ------
    ImageLoadError
        For anything that is not a readable image; the message names the input and the reason.
    """
    return decode_grey(image, bytestream=bytestream, draft=draft, scale=scale,
                       max_pixels=max_pixels)[0]


def decode_grey(image, *, bytestream=False, draft=True, scale="1.x", max_pixels=None):
    """``(grey, original_shape)``: the grey array of ``load_grey`` and the (height, width) of the
    image it was decoded from, which differs from ``grey.shape`` after a draft decode.

    Parameters, exceptions: as ``load_grey``.
    """
    source, original_shape = decode_grey_source(image, bytestream=bytestream, draft=draft,
                                                scale=scale, max_pixels=max_pixels)
    return source.grey(), original_shape


class GreySource(NamedTuple):
    """Decoded pixels and the rule that makes grey levels of them.

    The signature kernel (``image_match.kernel``) reads 8-bit pixels and makes each grey level
    as it needs it; ``grey()`` makes the same floats as an array (numpy, the reference).

    Attributes
    ----------
    pixels : ndarray or PIL.Image.Image
        What ``rule`` reads. A PIL image is read without a copy where the kernel can.
    rule : {"grey", "rgb8", "ycc8", "draft8"}
        "grey": ``pixels`` is the grey array. "rgb8": 8-bit red, green and blue (a PIL image in
        mode RGB or an (H, W, 3) uint8 array), 1.x's float64 grey levels (``GREY_TABLES``).
        "ycc8": a JPEG's 8-bit Y, Cb and Cr planes (a PIL image in mode YCbCr, from a draft
        decode), float64 grey levels with 1.x's weights (``YCBCR_GREY_TABLES``). "draft8": 8-bit
        grey (a PIL image in mode L or an (H, W) uint8 array) on the 0-1 scale in float32
        (``DRAFT_GREY_TABLE``), as a draft decode of other images makes it.
    """

    pixels: object
    rule: str

    def grey(self):
        """The grey levels as a 2-D array: float64 for "rgb8" and "ycc8", float32 for "draft8"."""
        if self.rule in ("rgb8", "ycc8"):
            tables = GREY_TABLES if self.rule == "rgb8" else YCBCR_GREY_TABLES
            return _grey_from_channels8(self.array(), tables)
        if self.rule == "draft8":
            return DRAFT_GREY_TABLE[self.array()]
        return self.pixels

    def array(self):
        """``pixels`` as an array: ``np.asarray``, a band of rows at a time for a large PIL image
        (``np.asarray`` would join a copy of all its bytes first, twice the array's memory)."""
        image = self.pixels
        if isinstance(image, np.ndarray) or image.width * image.height <= _BAND_PIXELS:
            return np.asarray(image)
        first = np.asarray(image.crop((0, 0, image.width, 1)))
        array = np.empty((image.height,) + first.shape[1:], dtype=first.dtype)
        band = max(1, _BAND_PIXELS // image.width)
        for top in range(0, image.height, band):
            bottom = min(top + band, image.height)
            array[top:bottom] = np.asarray(image.crop((0, top, image.width, bottom)))
        return array


def decode_grey_source(image, *, bytestream=False, draft=True, scale="1.x", max_pixels=None):
    """``(GreySource, original_shape)``: ``decode_grey`` before the grey levels are made.

    Parameters, exceptions: as ``load_grey``.
    """
    if scale not in SCALES:
        raise InvalidParameterError(f"scale={scale!r}: must be one of {', '.join(SCALES)}")
    if max_pixels is None:
        max_pixels = _settings.get("MAX_IMAGE_PIXELS")

    if isinstance(image, np.ndarray):
        source = _source_from_array(image, describe_array(image), scale)
        return source, source.pixels.shape[:2]
    if isinstance(image, Image.Image):
        # A PIL image may be opened lazily (its pixels read now, from a file that may be
        # truncated) or closed already: Pillow's errors are the image's, named like a file's.
        source = describe(image)
        with _pillow_errors(source):
            return _source_from_pil(image, source, scale, draft=False, max_pixels=max_pixels)

    source, data = _open_source(image, bytestream, max_pixels)
    with _pillow_errors(source), data:
        try:
            opened = Image.open(data)
        except UnidentifiedImageError:
            raise CorruptImageError(source, "not an image (unrecognized format)") from None
        except Image.DecompressionBombError as error:
            raise ImageLoadError(source, f"refused: too many pixels ({error})") from None
        with opened:
            return _source_from_pil(opened, source, scale, draft=draft, max_pixels=max_pixels)


@contextmanager
def _pillow_errors(source):
    """Turns the variety of exceptions Pillow raises for broken data into an ImageLoadError
    naming ``source``."""
    try:
        yield
    except ImageLoadError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError,
            MemoryError, NotImplementedError, ZeroDivisionError, OverflowError, struct.error,
            Image.DecompressionBombError) as error:
        # Fuzzing found the rarer ones: NotImplementedError for a DDS pixel format Pillow does
        # not know, for one.
        raise CorruptImageError(source, _pil_reason(error)) from None


def describe(image, bytestream=False):
    """How error messages name an input: its path or URL, ``bytes (N bytes)``, an array's shape."""
    if isinstance(image, np.ndarray):
        return describe_array(image)
    if isinstance(image, Image.Image):
        return f"PIL image (mode {image.mode}, size {image.width}x{image.height})"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"bytes ({memoryview(image).nbytes} bytes)"
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    name = getattr(image, "name", None)
    if isinstance(name, (str, bytes)) and hasattr(image, "read"):
        return os.fsdecode(name)
    return f"{type(image).__name__} object"


def describe_array(array):
    return f"array (shape {array.shape}, dtype {array.dtype})"


def _open_source(image, bytestream, max_pixels=None):
    """(description, binary file) for an input that holds encoded bytes."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        source = f"bytes ({len(data)} bytes)"
        if not data:
            raise CorruptImageError(source, "empty input")
        return source, io.BytesIO(data)
    if bytestream:
        raise ImageLoadError(describe(image), "bytestream=True needs bytes, bytearray or memoryview")
    if isinstance(image, str) and image.lower().startswith(_URL_PREFIXES):
        from .fetching import fetch

        return image, io.BytesIO(fetch(image).content)
    if isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        if isinstance(source, bytes):
            source = os.fsdecode(source)
        if not source:
            raise ImageLoadError("''", "empty path")
        return source, io.BytesIO(read_file(source, max_pixels))
    if hasattr(image, "read"):
        source = describe(image)
        return source, io.BytesIO(_bounded(source, _read_file_object, image, source))
    raise ImageLoadError(
        describe(image),
        "not an image input (expected a path, URL, bytes, binary file, numpy array or PIL image)",
    )


def read_file(path, max_pixels=None):
    """The bytes of the local file at ``path``, read within the fetch deadline.

    A regular file is read whole, and refused when larger than ``max_file_bytes(max_pixels)``; a
    FIFO or a device is read as a stream until its end, at most ``IMAGE_MATCH_FETCH_MAX_BYTES``.
    Raises ImageLoadError naming ``path`` when it cannot be read, is empty, too large, or gives
    nothing for the deadline (a FIFO nobody writes to, a stalled network file system).
    """
    source = os.fsdecode(path)
    return _bounded(source, _read_path, source, max_file_bytes(max_pixels))


def max_file_bytes(max_pixels=None):
    """The largest file an image within the pixel limit (``max_pixels``, default
    ``IMAGE_MATCH_MAX_IMAGE_PIXELS``) can take: 8 bytes a pixel (16-bit RGBA, uncompressed) and a
    MiB of headers; None when there is no limit."""
    if max_pixels is None:
        max_pixels = _settings.get("MAX_IMAGE_PIXELS")
    return max_pixels * _BYTES_PER_PIXEL + (1 << 20) if max_pixels else None


def _deadline():
    from .fetching import deadline_seconds

    return deadline_seconds()


def _bounded(source, function, *args):
    """``function(*args, end)`` in a helper thread, waited for until ``end``: the fetch deadline
    from now. ``end`` lets the function give up by itself where it can (a stream waits with a
    timeout); where it cannot (open or read on a stalled network file system blocks in the
    kernel, which no timeout or signal interrupts) the helper thread is left behind."""
    deadline = _deadline()
    end = time.monotonic() + deadline
    try:
        return _readers.run(function, (*args, end), deadline + 0.5)
    except concurrent.futures.TimeoutError:
        raise ImageLoadError(source, f"nothing could be read for {deadline:g} s (a FIFO or device "
                                     "that gives nothing, or a stalled network file system)") from None


def _read_path(source, limit, end):
    try:
        fd = os.open(source, _OPEN_FLAGS)
    except FileNotFoundError:
        raise ImageLoadError(source, NO_SUCH_FILE) from None
    except IsADirectoryError:
        raise ImageLoadError(source, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageLoadError(source, "permission denied") from None
    except (OSError, ValueError) as error:
        raise ImageLoadError(source, f"cannot open: {getattr(error, 'strerror', None) or error}") from None
    try:
        status = os.fstat(fd)
        mode = status.st_mode
        if stat.S_ISDIR(mode):
            raise ImageLoadError(source, "is a directory, not an image file")
        if not stat.S_ISREG(mode):
            # A FIFO or a device: a stream, whose size nobody knows, read as a download is.
            return _read_stream(fd, source, _file_kind(mode), end)
        size = status.st_size
        if size == 0:
            raise CorruptImageError(source, "empty file")
        if limit and size > limit:
            raise ImageLoadError(source, f"too large ({size} bytes, more than an image within "
                                         "IMAGE_MATCH_MAX_IMAGE_PIXELS can take)")
        with open(fd, "rb", closefd=False) as handle:
            return handle.read()
    except OSError as error:
        raise ImageLoadError(source, f"cannot read: {error.strerror or error}") from None
    finally:
        os.close(fd)


def _read_stream(fd, source, kind, end):
    """Everything a FIFO or device gives until its end, waiting at most until ``end``."""
    limit = _settings.get("FETCH_MAX_BYTES")
    pieces, total = [], 0
    while True:
        try:
            piece = os.read(fd, _PIECE)
        except BlockingIOError:  # nothing yet, and a writer is there: wait for more
            remaining = end - time.monotonic()
            if remaining <= 0 or not _wait_readable(fd, remaining):
                raise ImageLoadError(source, f"{kind}: nothing more came for "
                                             f"{_deadline():g} s") from None
            continue
        if not piece:
            break
        pieces.append(piece)
        total += len(piece)
        if total > limit:
            raise ImageLoadError(source, f"{kind}: more than {limit} bytes "
                                         "(IMAGE_MATCH_FETCH_MAX_BYTES)")
    if not total:
        raise CorruptImageError(source, f"empty ({kind} with nothing written to it)")
    return b"".join(pieces)


def _wait_readable(fd, timeout):
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _file_kind(mode):
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _read_file_object(handle, source, end):
    """Everything a binary file object gives, at most ``IMAGE_MATCH_FETCH_MAX_BYTES``."""
    limit = _settings.get("FETCH_MAX_BYTES")
    pieces, total = [], 0
    while True:
        try:
            piece = handle.read(_PIECE)
        except (OSError, ValueError) as error:
            raise ImageLoadError(source, f"cannot read: {error}") from None
        if isinstance(piece, str) or not isinstance(piece, (bytes, bytearray, memoryview, type(None))):
            raise ImageLoadError(source, "file is not opened in binary mode")
        if not piece:
            break
        pieces.append(bytes(piece))
        total += len(pieces[-1])
        if total > limit:
            raise ImageLoadError(source, f"more than {limit} bytes (IMAGE_MATCH_FETCH_MAX_BYTES)")
        if time.monotonic() > end:
            raise ImageLoadError(source, f"still reading after {_deadline():g} s")
    if not total:
        raise CorruptImageError(source, "empty file")
    return b"".join(pieces)


class _Readers:
    """Daemon threads that run the reads of inputs, so that a caller can stop waiting for one.

    A thread per read would cost more than reading a small image: threads are kept and reused.
    One stuck in a read is simply not idle any more, and another is started for the next read; it
    returns to the pool if its read ever ends. A forked child starts with no threads (the
    parent's do not exist there).
    """

    def __init__(self):
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self):
        self._lock = threading.Lock()
        self._idle = []

    def run(self, function, args, timeout):
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name="image-match-read",
                             daemon=True).start()
        future = concurrent.futures.Future()
        inbox.put((function, args, future))
        return future.result(timeout)

    def _serve(self, inbox):
        while True:
            function, args, future = inbox.get()
            try:
                future.set_result(function(*args))
            except BaseException as error:  # handed to the caller, who raises it
                future.set_exception(error)
            del function, args, future
            with self._lock:
                self._idle.append(inbox)


_readers = _Readers()


def _pil_reason(error):
    message = str(error)
    if "truncated" in message or isinstance(error, EOFError):
        return f"truncated image data ({message})" if message else "truncated image data"
    if isinstance(error, MemoryError):
        return "not enough memory to decode"
    if "closed image" in message:
        return "the image is closed (its pixels were never read, or released)"
    return f"corrupt or unsupported image data ({type(error).__name__}: {message})"


def _source_from_pil(image, source, scale, draft, max_pixels):
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageLoadError(source, f"zero-size image ({width}x{height})")
    if max_pixels and width * height > max_pixels:
        raise ImageLoadError(
            source, f"refused: {width}x{height} = {width * height} pixels is more than the "
            f"limit of {max_pixels} (IMAGE_MATCH_MAX_IMAGE_PIXELS)"
        )
    # A reduced decode is an approximation already: a YCbCr JPEG's planes are read as they are
    # (libjpeg's conversion to RGB costs more than the signature's arithmetic), other images
    # go through Pillow's conversion to 8-bit grey; only exactness needs 1.x's float64 grey.
    # Either stays as close to the full decode's signature as the other (draft_distance.py).
    reduced = draft and reduce_for_signature(image, "YCbCr" if _holds_ycbcr(image) else None)
    image.load()
    planes = reduced and image.mode == "YCbCr"
    if draft and not reduced:
        image, reduced = _reduce_decoded(image)
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        upright = ImageOps.exif_transpose(image)
        if upright.size != image.size:  # turned by 90 or 270 degrees
            width, height = height, width
        image = upright
    if planes:
        return GreySource(image, "ycc8"), (height, width)
    if reduced and image.mode in ("RGB", "CMYK", "YCbCr"):
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return GreySource(rgb.convert("L", matrix=_GREY_MATRIX), "draft8"), (height, width)
    if image.mode == "RGB":
        return GreySource(image, "rgb8"), (height, width)
    return _source_from_array(_array_from_pil(image), source, scale), (height, width)


def reduce_for_signature(image, mode=None):
    """Ask a JPEG not yet loaded to decode at the smallest DCT scale keeping its short side at
    least ``DRAFT_MIN_SIDE``; other images are left alone. True when the scale was reduced.

    ``mode``: the mode to decode to, None for the image's own (Pillow's ``draft``: "YCbCr" reads
    a colour JPEG's planes without converting them to RGB)."""
    width, height = image.size
    if image.format != "JPEG" or min(width, height) < 2 * DRAFT_MIN_SIDE:
        return False
    factor = DRAFT_MIN_SIDE / min(width, height)
    # draft() picks the largest reduction (1/2, 1/4, 1/8) that keeps at least the requested size.
    requested = (math.ceil(width * factor), math.ceil(height * factor))
    return image.draft(mode or image.mode, requested) is not None


def _holds_ycbcr(image):
    """Whether a colour JPEG stores YCbCr, by libjpeg's rule (which decodes it to YCbCr only
    then): a JFIF marker says so; else an Adobe marker's transform (0: RGB); else component ids
    'R', 'G', 'B' mean RGB."""
    if image.format != "JPEG" or image.mode != "RGB":
        return False
    if "jfif" in image.info:
        return True
    if "adobe_transform" in image.info:
        return image.info["adobe_transform"] != 0
    return [layer[0] for layer in getattr(image, "layer", ())] != [82, 71, 66]


def _reduce_decoded(image):
    """``(image, reduced)``: a decoded non-JPEG image box-averaged by the integer factor that keeps
    its short side at least ``DRAFT_MIN_SIDE``, as a JPEG's draft decode would be; the float
    conversion and the signature then work on a fraction of the pixels."""
    factor = min(image.size) // DRAFT_MIN_SIDE
    if factor < 2 or image.mode not in _REDUCIBLE_MODES:
        return image, False
    return image.reduce(factor), True


def _array_from_pil(image):
    """Pixels as an array whose layout ``_source_from_array`` understands."""
    mode = image.mode
    if mode in ("L", "RGB", "RGBA", "LA"):
        return np.asarray(image)
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    if mode == "PA":
        return np.asarray(image.convert("RGBA"))
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16)
    if mode == "I":
        return _integer_grey(image)
    if mode == "F":
        return np.asarray(image, dtype=np.float64)
    if mode in ("RGBa", "La"):
        return np.asarray(image.convert("RGBA" if mode == "RGBa" else "LA"))
    return np.asarray(image.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, RGBX


def _integer_grey(image):
    """A mode I (int32) image as uint8, uint16 or 0-1 float grey levels.

    Mode I says nothing of the bit depth: older Pillows give it to 16-bit PNGs, a TIFF may
    declare 16 or 32 bits, and an image made from an int32 array holds whatever it held (often
    8-bit values). A depth the file declares (a PNG's 16 bits, a TIFF's BitsPerSample of 16) is
    used; otherwise the values decide: 8-bit, 16-bit, or the whole 31-bit range (brought to 16
    bits). Negative values are black.
    """
    values = np.clip(np.asarray(image, dtype=np.int64), 0, None)
    bits = getattr(image, "tag_v2", {}).get(258, (None,))[0] if image.format == "TIFF" else None
    if image.format == "PNG" or bits == 16:
        return np.minimum(values, 65535).astype(np.uint16)
    high = values.max(initial=0)
    if high <= 255:
        return values.astype(np.uint8)
    if high <= 65535:
        return values.astype(np.uint16)
    return (values >> 15).astype(np.uint16)


def _source_from_array(array, source, scale):
    """The grey source of an array of pixels (see ``load_grey`` for the layouts accepted)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise ImageLoadError(
            source, "wrong shape (expected HxW grey, HxWx3 RGB or HxWx4 RGBA; HxWx1, HxWx2 grey)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageLoadError(source, "zero-size image")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise ImageLoadError(source, "contains NaN or infinite values")
        if np.abs(array).max() > MAX_FLOAT_VALUE:
            raise ImageLoadError(source, f"values beyond +-{MAX_FLOAT_VALUE:g} (grey levels are "
                                         "0-1 or 0-255)")
    elif array.dtype not in (bool, np.uint8, np.uint16):
        raise ImageLoadError(
            source, f"unsupported dtype {array.dtype} (expected uint8, uint16, bool or float)"
        )
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        return GreySource(array, "rgb8")
    return GreySource(_grey_from_array(array, scale), "grey")


def _grey_from_array(array, scale):
    """Grey levels from a checked array of pixels."""
    if array.dtype == bool or array.dtype.kind == "f":
        array = array.astype(np.float64, copy=False)

    if array.ndim == 2:
        if array.dtype == np.uint8:
            return array if scale == "1.x" else array * (1.0 / 255)
        if array.dtype == np.uint16:
            # 16-bit grey on the scale 8-bit grey would have.
            return array * ((255.0 if scale == "1.x" else 1.0) / 65535)
        return array

    # Colour, or grey with alpha: converted a band of rows at a time, so the float64 copy of
    # the channels (24 bytes a pixel) never exists for the whole image at once.
    grey = np.empty(array.shape[:2])
    band = max(1, _BAND_PIXELS // array.shape[1])
    for start in range(0, array.shape[0], band):
        grey[start:start + band] = _grey_from_channels(array[start:start + band])
    if array.shape[2] == 2 and scale == "1.x" and array.dtype.kind == "u":
        grey *= 255.0  # integer grey with alpha stays on the scale integer grey has without it
    return grey


def _grey_from_channels8(array, tables):
    """float64 grey levels of (H, W, 3) uint8 channels, (first + second) + third of ``tables``
    (``GREY_TABLES``, ``YCBCR_GREY_TABLES``), a band of rows at a time (no float64 copy of the
    channels)."""
    grey = np.empty(array.shape[:2])
    band = max(1, _BAND_PIXELS // array.shape[1])
    first, second, third = tables
    for start in range(0, array.shape[0], band):
        rows = array[start:start + band]
        out = grey[start:start + band]
        np.take(first, rows[:, :, 0], out=out)
        out += np.take(second, rows[:, :, 1])
        out += np.take(third, rows[:, :, 2])
    return grey


def _grey_from_channels(array):
    """0-1 grey levels of RGB, RGBA or grey+alpha pixels (3-D array, uint8/16 or float in 0-1)."""
    colour = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, :1]
    alpha = array[:, :, -1] if array.shape[2] in (2, 4) else None
    if array.dtype.kind == "u":
        # As scikit-image's img_as_float64: multiply by 1/255, not divide by 255.
        unit = 1.0 / np.iinfo(array.dtype).max
        colour = np.multiply(colour, unit, dtype=np.float64)
        alpha = None if alpha is None else np.multiply(alpha, unit, dtype=np.float64)
    if alpha is not None:
        # Onto a white background, as scikit-image's rgba2rgb: (1 - a) * 1 + a * c, clipped.
        alpha = alpha[:, :, None]
        colour = np.clip((1 - alpha) + alpha * colour, 0, 1)
    if colour.shape[2] == 1:
        return colour[:, :, 0]
    return _weighted_grey(colour)


def _weighted_grey(colour):
    """``(red * w_red + green * w_green) + blue * w_blue`` of 0-1 channels: scikit-image's
    rgb2gray, in an order of additions written down (a matrix product's is the BLAS's own), which
    ``GREY_TABLES`` and the kernel follow too."""
    red, green, blue = GREY_WEIGHTS
    grey = colour[:, :, 0] * red
    grey += colour[:, :, 1] * green
    grey += colour[:, :, 2] * blue
    return grey
