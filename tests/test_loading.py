"""load_grey: every kind of input, and every kind of bad input."""

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

from image_match.errors import ImageLoadError, ImageMatchError
from image_match.loading import (DRAFT_MIN_SIDE, decode_grey, decode_grey_source, load_grey,
                                 reduce_for_signature)

from conftest import DATA, PHOTO, jpeg_bytes, png_bytes


@pytest.fixture(scope="module")
def photo_rgb():
    with Image.open(PHOTO) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def photo_grey():
    return load_grey(PHOTO, draft=False)


def assert_names(error, source):
    assert isinstance(error.value, ImageLoadError)
    assert str(error.value).startswith(f"{source}: "), str(error.value)
    assert "Traceback" not in str(error.value)


# --- every input kind gives the same grey levels --------------------------------------------

def test_path_str_and_pathlike_agree(photo_grey):
    assert photo_grey.dtype == np.float64 and photo_grey.ndim == 2
    assert 0 <= photo_grey.min() and photo_grey.max() <= 1
    np.testing.assert_array_equal(load_grey(pathlib.Path(PHOTO), draft=False), photo_grey)


def test_bytes_bytearray_memoryview_and_file_agree(photo_grey):
    data = PHOTO.read_bytes()
    for given in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        np.testing.assert_array_equal(load_grey(given, draft=False), photo_grey)
    np.testing.assert_array_equal(load_grey(data, bytestream=True, draft=False), photo_grey)
    with open(PHOTO, "rb") as handle:
        np.testing.assert_array_equal(load_grey(handle, draft=False), photo_grey)


def test_rgb_array_and_pil_image_agree(photo_rgb, photo_grey):
    np.testing.assert_array_equal(load_grey(photo_rgb), photo_grey)
    np.testing.assert_array_equal(load_grey(Image.fromarray(photo_rgb)), photo_grey)


def test_rgb_weights_are_scikit_images(photo_rgb, photo_grey):
    expected = photo_rgb / 255.0 @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(photo_grey, expected, atol=1e-12)


def test_url_goes_through_our_fetcher(http_server, monkeypatch, photo_grey):
    monkeypatch.setenv("IMAGE_MATCH_FETCH_ALLOWLIST", "127.0.0.1")
    url = http_server.serve_bytes("/photo.jpg", PHOTO.read_bytes(), "image/jpeg")
    np.testing.assert_array_equal(load_grey(url, draft=False), photo_grey)


def test_url_refused_without_allowlist_names_the_url(http_server):
    url = http_server.serve_bytes("/photo.jpg", PHOTO.read_bytes(), "image/jpeg")
    with pytest.raises(ImageLoadError) as error:
        load_grey(url)
    assert_names(error, url)
    assert "loopback" in str(error.value)
    assert http_server.hits("/photo.jpg") == 0


def test_grey_array_dtypes(photo_grey):
    grey8 = np.round(photo_grey * 255).astype(np.uint8)
    # 8-bit grey keeps its 0-255 values under 1.x semantics, and is scaled with scale="0-1".
    assert load_grey(grey8).dtype == np.uint8
    np.testing.assert_array_equal(load_grey(grey8), grey8)
    np.testing.assert_allclose(load_grey(grey8, scale="0-1"), grey8 / 255.0)
    grey16 = grey8.astype(np.uint16) * 257
    np.testing.assert_allclose(load_grey(grey16), grey8, atol=1e-9)
    np.testing.assert_allclose(load_grey(grey16, scale="0-1"), grey8 / 255.0, atol=1e-9)
    np.testing.assert_array_equal(load_grey(photo_grey.astype(np.float32)),
                                  photo_grey.astype(np.float32))
    boolean = photo_grey > 0.5
    np.testing.assert_array_equal(load_grey(boolean), boolean.astype(float))


def test_rgba_is_flattened_onto_white():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :, 3] = 0  # fully transparent black -> white
    np.testing.assert_allclose(load_grey(rgba), 1.0)
    rgba[:, :4, 3] = 255  # opaque black on the left
    grey = load_grey(rgba)
    np.testing.assert_allclose(grey[:, :4], 0.0)
    np.testing.assert_allclose(grey[:, 4:], 1.0)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "1", "I;16", "I", "F",
                                  "YCbCr", "RGBX"])
def test_every_pil_mode_gives_a_finite_2d_array(mode):
    with Image.open(PHOTO) as image:
        converted = image.convert("RGB").resize((64, 48)).convert(mode if mode != "PA" else "P")
    if mode == "PA":
        converted = converted.convert("PA")
    grey = load_grey(converted)
    assert grey.shape == (48, 64)
    assert np.all(np.isfinite(grey))


@pytest.mark.parametrize("fmt,mode", [("PNG", "L"), ("PNG", "LA"), ("PNG", "P"), ("PNG", "RGBA"),
                                      ("PNG", "I;16"), ("TIFF", "CMYK"), ("JPEG", "CMYK"),
                                      ("BMP", "RGB"), ("GIF", "P"), ("WEBP", "RGB"),
                                      ("PNG", "1")])
def test_encoded_formats_and_modes(fmt, mode):
    with Image.open(PHOTO) as image:
        converted = image.convert("RGB").resize((80, 60)).convert(mode)
    buffer = io.BytesIO()
    converted.save(buffer, fmt)
    grey = load_grey(buffer.getvalue())
    assert grey.shape == (60, 80)
    assert np.all(np.isfinite(grey))
    assert grey.max() > grey.min()


def test_exif_orientation_is_applied():
    with Image.open(PHOTO) as image:
        rgb = image.convert("RGB")
    turned = rgb.transpose(Image.Transpose.ROTATE_90)  # stored turned left...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...and tagged "turn 90 degrees clockwise to view"
    buffer = io.BytesIO()
    turned.save(buffer, "JPEG", quality=95, exif=exif)
    upright = load_grey(buffer.getvalue(), draft=False)
    assert upright.shape == (rgb.height, rgb.width)
    reference = load_grey(np.asarray(rgb))
    assert np.abs(upright - reference).mean() < 0.02  # only JPEG loss remains


def test_first_frame_of_animated_gif_and_multipage_tiff():
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("black", "white", "red")]
    for fmt, options in (("GIF", {"duration": 100, "loop": 0}), ("TIFF", {}), ("WEBP", {})):
        buffer = io.BytesIO()
        frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], **options)
        grey = load_grey(buffer.getvalue(), scale="0-1")
        assert grey.shape == (32, 32)
        assert grey.max() < 0.05, fmt  # the black first frame


def test_draft_decode_reduces_large_images_only():
    big = Image.new("RGB", (4 * DRAFT_MIN_SIDE + 8, 2 * DRAFT_MIN_SIDE + 4), "gray")
    data = jpeg_bytes(big)
    grey, original = decode_grey(data)
    assert original == (2 * DRAFT_MIN_SIDE + 4, 4 * DRAFT_MIN_SIDE + 8)
    assert DRAFT_MIN_SIDE <= min(grey.shape) < min(original)
    full, same = decode_grey(data, draft=False)
    assert full.shape == same == original
    small = jpeg_bytes(Image.new("RGB", (2 * DRAFT_MIN_SIDE - 1, 300), "gray"))
    grey, original = decode_grey(small)
    assert grey.shape == original
    # Other formats are decoded whole, then box-averaged by an integer factor.
    grey, original = decode_grey(png_bytes(big))
    assert original == (2 * DRAFT_MIN_SIDE + 4, 4 * DRAFT_MIN_SIDE + 8)
    assert grey.shape == (DRAFT_MIN_SIDE + 2, 2 * DRAFT_MIN_SIDE + 4)
    assert decode_grey(png_bytes(big), draft=False)[0].shape == original


def test_draft_decode_reads_a_ycbcr_jpegs_planes_with_1x_weights(photo_rgb):
    # Without libjpeg's conversion to RGB: the grey levels are 1.x's weights applied to the
    # YCbCr planes, within the rounding the RGB route adds (8-bit RGB, then 8-bit grey).
    photo = Image.fromarray(photo_rgb).resize((1024, 683))
    source, shape = decode_grey_source(jpeg_bytes(photo))
    assert source.rule == "ycc8" and source.pixels.mode == "YCbCr" and shape == (683, 1024)
    with Image.open(io.BytesIO(jpeg_bytes(photo))) as image:
        assert reduce_for_signature(image)  # to RGB, at the same scale
        rounded = np.asarray(image.convert("L", matrix=(0.2125, 0.7154, 0.0721, 0))) / 255
    assert np.abs(source.grey() - rounded).max() < 2.5 / 255


def test_draft_decode_of_an_rgb_jpeg_converts_it():
    # An Adobe RGB JPEG (no YCbCr planes): libjpeg refuses to decode it to YCbCr, so the loader
    # must not ask; it is decoded to RGB, then 8-bit grey.
    photo = Image.open(PHOTO).resize((800, 600))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", keep_rgb=True)
    source, shape = decode_grey_source(buffer.getvalue())
    assert source.rule == "draft8" and shape == (600, 800)
    assert source.grey().shape == (150, 200)


# --- bad input: an ImageLoadError naming the input, never a numpy/PIL traceback ------------

@pytest.mark.parametrize("given,source,reason", [
    (b"", "bytes (0 bytes)", "empty"),
    (b"GIF89a\x00", "bytes (7 bytes)", ""),
    (b"this is not an image at all", "bytes (27 bytes)", "not an image"),
    (bytearray(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20), "bytes (28 bytes)", ""),
])
def test_bad_bytes(given, source, reason):
    with pytest.raises(ImageLoadError) as error:
        load_grey(given)
    assert_names(error, source)
    assert reason in str(error.value)


def test_truncated_jpeg():
    data = PHOTO.read_bytes()
    truncated = data[: len(data) // 3]
    with pytest.raises(ImageLoadError) as error:
        load_grey(truncated)
    assert_names(error, f"bytes ({len(truncated)} bytes)")
    assert "truncated" in str(error.value)


def test_missing_empty_directory_and_text_paths(tmp_path):
    cases = {
        tmp_path / "missing.jpg": "no such file",
        tmp_path: "is a directory",
    }
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases[tmp_path / "empty.jpg"] = "empty file"
    (tmp_path / "notes.txt").write_text("hello")
    cases[tmp_path / "notes.txt"] = "not an image"
    for path, reason in cases.items():
        with pytest.raises(ImageLoadError) as error:
            load_grey(str(path))
        assert_names(error, str(path))
        assert reason in str(error.value)


def test_text_file_object_and_unsupported_objects(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with open(path) as handle, pytest.raises(ImageLoadError) as error:
        load_grey(handle)
    assert_names(error, str(path))
    assert "binary" in str(error.value)
    for given in (None, 42, 3.5, ["a.jpg"], {"path": "a.jpg"}):
        with pytest.raises(ImageLoadError) as error:
            load_grey(given)
        assert "not an image input" in str(error.value)


@pytest.mark.parametrize("array,reason", [
    (np.zeros((0, 10), np.uint8), "zero-size"),
    (np.zeros((10, 0, 3), np.uint8), "zero-size"),
    (np.zeros((4, 4, 5), np.uint8), "wrong shape"),
    (np.zeros((2, 3, 4, 5), np.uint8), "wrong shape"),
    (np.zeros(10, np.uint8), "wrong shape"),
    (np.zeros((4, 4), np.int64), "unsupported dtype int64"),
    (np.zeros((4, 4), np.complex64), "unsupported dtype complex64"),
    (np.zeros((4, 4), object), "unsupported dtype object"),
    (np.full((4, 4), np.nan), "NaN"),
    (np.full((4, 4, 3), np.inf), "NaN or infinite"),
])
def test_bad_arrays(array, reason):
    with pytest.raises(ImageLoadError) as error:
        load_grey(array)
    assert str(error.value).startswith(f"array (shape {array.shape}, dtype {array.dtype}): ")
    assert reason in str(error.value)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    data = png_bytes(Image.new("L", (300, 200)))
    monkeypatch.setenv("IMAGE_MATCH_MAX_IMAGE_PIXELS", "50000")
    with pytest.raises(ImageLoadError) as error:
        load_grey(data)
    assert_names(error, f"bytes ({len(data)} bytes)")
    assert "60000 pixels" in str(error.value) and "50000" in str(error.value)
    assert load_grey(data, max_pixels=100_000).shape == (200, 300)


def test_pil_decompression_bomb_error_is_ours():
    # A PNG header declaring 100000 x 100000 pixels: Pillow refuses it on open.
    header = Image.new("L", (1, 1))
    data = bytearray(png_bytes(header))
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data[8:8 + 25] = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    with pytest.raises(ImageLoadError) as error:
        load_grey(bytes(data))
    assert "pixels" in str(error.value)


def test_errors_are_one_hierarchy():
    with pytest.raises(ImageMatchError):
        load_grey(b"nope")
    with pytest.raises(ValueError):  # also a ValueError, for code that caught that
        load_grey(b"nope")


def test_data_folder_images_all_load():
    for path in sorted(DATA.glob("*.jpg")):
        grey = load_grey(path)
        assert grey.ndim == 2 and np.all(np.isfinite(grey))
