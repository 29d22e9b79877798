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
- With ``draft=True``, an image whose short side is at least twice ``DRAFT_MIN_SIDE`` is reduced
  by the largest factor that keeps its short side at least ``DRAFT_MIN_SIDE``: a JPEG is decoded at
  a reduced DCT scale (1/2, 1/4 or 1/8), which is most of the speed; other formats are decoded,
  then box-averaged. The signature is then placed as on the full image (``decode_grey`` returns
  its original size), and stays close to a full decode's; see README.rst for the measured
  distances. ``draft=False`` decodes every pixel, as image-match 1.x did.

Grey levels follow image-match 1.x, which signed through ``skimage.io.imread(as_gray=True)``:
colour is converted with ``0.2125 R + 0.7154 G + 0.0721 B`` on the 0-1 scale (float64, computed as
scikit-image computes it, so the floats are identical), while single-channel images keep their
0-255 values (uint8). ``scale="0-1"`` puts every input on the 0-1 scale instead.
"""

import io
import os
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import settings as _settings
from .errors import CorruptImageError, ImageLoadError, InvalidParameterError

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
            return _grey_from_channels8(np.asarray(self.pixels), tables)
        if self.rule == "draft8":
            return DRAFT_GREY_TABLE[np.asarray(self.pixels)]
        return self.pixels


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
        source = f"PIL image (mode {image.mode}, size {image.width}x{image.height})"
        return _source_from_pil(image, source, scale, draft=False, max_pixels=max_pixels)

    source, data = _open_source(image, bytestream)
    try:
        with data:
            try:
                opened = Image.open(data)
            except UnidentifiedImageError:
                raise CorruptImageError(source, "not an image (unrecognized format)") from None
            except Image.DecompressionBombError as error:
                raise ImageLoadError(source, f"refused: too many pixels ({error})") from None
            with opened:
                return _source_from_pil(opened, source, scale, draft=draft,
                                        max_pixels=max_pixels)
    except ImageLoadError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError,
            TypeError, MemoryError, Image.DecompressionBombError) as error:
        # Pillow reports broken files with a variety of exception types.
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


def _open_source(image, bytestream):
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
        try:
            handle = open(source, "rb")
        except FileNotFoundError:
            raise ImageLoadError(source, "no such file") from None
        except IsADirectoryError:
            raise ImageLoadError(source, "is a directory, not an image file") from None
        except PermissionError:
            raise ImageLoadError(source, "permission denied") from None
        except (OSError, ValueError) as error:
            raise ImageLoadError(source, f"cannot open: {error}") from None
        if os.fstat(handle.fileno()).st_size == 0:
            handle.close()
            raise CorruptImageError(source, "empty file")
        return source, handle
    if hasattr(image, "read"):
        source = describe(image)
        try:
            data = image.read()
        except (OSError, ValueError) as error:
            raise ImageLoadError(source, f"cannot read: {error}") from None
        if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageLoadError(source, "file is not opened in binary mode")
        if not data:
            raise CorruptImageError(source, "empty file")
        return source, io.BytesIO(bytes(data))
    raise ImageLoadError(
        describe(image),
        "not an image input (expected a path, URL, bytes, binary file, numpy array or PIL image)",
    )


def _pil_reason(error):
    message = str(error)
    if "truncated" in message or isinstance(error, EOFError):
        return f"truncated image data ({message})" if message else "truncated image data"
    if isinstance(error, MemoryError):
        return "not enough memory to decode"
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
    requested = (int(np.ceil(width * factor)), int(np.ceil(height * factor)))
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
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey (PNG, TIFF). Pillow reads some as mode I (int32) holding 0-65535.
        return np.clip(np.asarray(image, dtype=np.int64), 0, 65535).astype(np.uint16)
    if mode == "F":
        return np.asarray(image, dtype=np.float64)
    if mode in ("RGBa", "La"):
        return np.asarray(image.convert("RGBA" if mode == "RGBa" else "LA"))
    return np.asarray(image.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, RGBX


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
