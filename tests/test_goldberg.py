"""The signature: bit-exact with image-match 1.1.2, properties, orientations, batches."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from image_match.errors import ImageLoadError, InvalidParameterError
from image_match.goldberg import (CORNER_CROP_SIDE, CROP_WINDOW_AREAS, DIHEDRAL_NAMES,
                                  ORIENTATION_MARGIN, QUERY_FRAMES, QUERY_MARGIN, SMALL_ROTATIONS,
                                  ImageSignature, central_window, corner_crop_windows, crop_window,
                                  crop_windows, distance_matrix, expanded_rotation_box,
                                  grid_points, is_featureless, map_signing, normalized_distance,
                                  percentiles_of_sorted, quantize_differences, query_margins,
                                  query_part_names, rotate_grey, signature_from_grey,
                                  signature_variants, window_of)
from image_match.loading import load_grey

from conftest import DATA, PHOTO, SHARED_CORPUS, central_crop, jpeg_bytes, photos, png_bytes, rgb

EXACT = ImageSignature(draft=False)

# The 8 flips and rotations as operations on a grey array, in DIHEDRAL_NAMES order.
ARRAY_TRANSFORMS = {
    "identity": lambda a: a,
    "rotate 90": lambda a: np.rot90(a, 1),
    "rotate 180": lambda a: np.rot90(a, 2),
    "rotate 270": lambda a: np.rot90(a, 3),
    "flip left-right": lambda a: a[:, ::-1],
    "flip up-down": lambda a: a[::-1],
    "transpose": lambda a: a.T,
    "anti-transpose": lambda a: np.rot90(a.T, 2),
}


# --- image-match 1.1.2, bit for bit ---------------------------------------------------------

def test_reference_signatures_of_shipped_photos():
    reference = np.load(DATA / "reference_1x.npz")
    assert len(reference["ids"]) == len(photos())
    for image_id, expected in zip(reference["ids"], reference["signatures"]):
        np.testing.assert_array_equal(EXACT.generate_signature(DATA / f"{image_id}.jpg"), expected,
                                      err_msg=str(image_id))


def test_reference_signatures_of_grey_and_transparent_files():
    # Single-channel files on 0-255 (with 8-bit wrap-around in the crop), RGBA onto white.
    reference = np.load(DATA / "reference_extra.npz")
    for name, expected in zip(reference["names"], reference["signatures"]):
        np.testing.assert_array_equal(EXACT.generate_signature(DATA / str(name)), expected,
                                      err_msg=str(name))


@pytest.mark.skipif(not (SHARED_CORPUS / "reference" / "signatures.npz").exists(),
                    reason="the dev corpus (../shared/corpus/dev) is not beside this checkout")
def test_reference_signatures_of_whole_dev_corpus():
    reference = np.load(SHARED_CORPUS / "reference" / "signatures.npz")
    paths = [SHARED_CORPUS / f"{image_id}.jpg" for image_id in reference["ids"]]
    mismatched = [path.name for path, expected, result in
                  zip(paths, reference["signatures"], EXACT.generate_signatures(paths))
                  if not np.array_equal(result, expected)]
    assert mismatched == [], f"{len(mismatched)} of {len(paths)} differ from 1.1.2"


def test_one_x_quirk_plus_minus_one_becomes_two():
    # When some difference is exactly +-1.0 (black block next to white), 1.x's in-place binning
    # codes the small ones 1, then finds those 1.0s inside the upper group and codes them 2 too.
    differences = np.array([1.0, -1.0, 0.2, -0.2, 0.5, -0.5, 0.7, -0.7])
    np.testing.assert_array_equal(quantize_differences(differences), [2, -2, 2, -2, 2, -2, 2, -2])
    np.testing.assert_array_equal(quantize_differences(differences, variant="paper"),
                                  [2, -2, 1, -1, 1, -1, 2, -2])
    below_one = differences * 0.99
    np.testing.assert_array_equal(quantize_differences(below_one),
                                  quantize_differences(below_one, variant="paper"))


# --- properties ------------------------------------------------------------------------------

grey_arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.float64]),
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
    elements=st.integers(0, 255),
).map(lambda a: a / 255.0 if a.dtype == np.float64 else a)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grey=grey_arrays, variant=st.sampled_from(["1.x", "paper"]))
def test_any_array_signs_without_nan_and_deterministically(grey, variant):
    signature = signature_from_grey(grey, variant=variant)
    assert signature.shape == (648,) and signature.dtype == np.int8
    assert set(np.unique(signature)) <= {-2, -1, 0, 1, 2}
    np.testing.assert_array_equal(signature, signature_from_grey(grey.copy(), variant=variant))
    if np.ptp(grey) == 0:
        assert is_featureless(signature)


signatures = hnp.arrays(np.int8, 648, elements=st.integers(-2, 2))


@settings(max_examples=300, deadline=None)
@given(a=signatures, b=signatures)
def test_distance_is_symmetric_bounded_and_zero_on_itself(a, b):
    d = normalized_distance(a, b)
    assert d == normalized_distance(b, a)
    assert 0.0 <= d <= 1.0 and not np.isnan(d)
    if a.any():
        assert normalized_distance(a, a) == 0.0
    if not a.any() or not b.any():
        assert d == 1.0


@settings(max_examples=100, deadline=None)
@given(rows=hnp.arrays(np.int8, st.tuples(st.integers(1, 20), st.just(648)),
                       elements=st.integers(-2, 2)), b=signatures)
def test_distance_is_vectorized(rows, b):
    many = normalized_distance(rows, b)
    assert many.shape == (rows.shape[0],)
    np.testing.assert_array_equal(many, [normalized_distance(row, b) for row in rows])


many_signatures = hnp.arrays(np.int8, st.tuples(st.integers(1, 12), st.just(648)),
                             elements=st.integers(-2, 2))


@settings(max_examples=100, deadline=None)
@given(a=many_signatures, b=many_signatures)
def test_distance_matrix_equals_the_distance_pair_by_pair(a, b):
    a[0] = 0  # a featureless row is at 1.0 from everything
    matrix = distance_matrix(a, b)
    assert matrix.shape == (len(a), len(b))
    np.testing.assert_array_equal(matrix, [normalized_distance(b, row) for row in a])
    with pytest.raises(InvalidParameterError, match="648 and 324"):
        distance_matrix(a, b[:, :324])


def test_distance_matches_its_definition():
    rng = np.random.default_rng(1)
    a, b = rng.integers(-2, 3, (2, 648))
    expected = np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b))
    assert normalized_distance(a, b) == pytest.approx(expected, rel=1e-12)


def test_distance_refuses_different_lengths():
    with pytest.raises(InvalidParameterError, match="648 and 324"):
        normalized_distance(np.zeros(648), np.zeros(324))


@settings(max_examples=300, deadline=None)
@given(values=hnp.arrays(st.sampled_from([np.float64, np.uint64]), st.integers(1, 200),
                         elements=st.integers(0, 10**9)),
       percentiles=st.lists(st.floats(0, 100), min_size=1, max_size=4))
def test_percentiles_of_sorted_equal_numpys(values, percentiles):
    values = np.sort(values)
    np.testing.assert_array_equal(percentiles_of_sorted(values, percentiles),
                                  np.percentile(values, percentiles))


@settings(max_examples=300, deadline=None)
@given(low=st.integers(0, 5000), extent=st.integers(0, 5000), n=st.integers(2, 20))
def test_grid_points_equal_1x_linspace(low, extent, n):
    rows, columns = grid_points(((low, low + extent), (extent, extent + low)), n)
    np.testing.assert_array_equal(rows, np.linspace(low, low + extent, n + 2, dtype=int)[1:-1])
    np.testing.assert_array_equal(columns, np.linspace(extent, extent + low, n + 2, dtype=int)[1:-1])


# --- featureless images ----------------------------------------------------------------------

@pytest.mark.parametrize("image", [
    Image.new("RGB", (300, 200), "white"), Image.new("L", (50, 50), 0),
    Image.new("RGB", (1, 1), "red"), Image.new("RGB", (5000, 1), "blue"),
])
def test_blank_images_have_zero_signatures_and_match_nothing(image):
    signature = ImageSignature().generate_signature(jpeg_bytes(image, quality=100))
    assert not signature.any()
    assert is_featureless(signature)
    assert normalized_distance(signature, signature) == 1.0
    assert normalized_distance(signature, EXACT.generate_signature(PHOTO)) == 1.0


def test_featureless_flag_is_per_row():
    rows = np.zeros((3, 648), np.int8)
    rows[1, 5] = 1
    np.testing.assert_array_equal(is_featureless(rows), [True, False, True])


# --- the 8 flips and rotations ---------------------------------------------------------------

def test_variants_are_8_distinct_permutations_led_by_identity():
    signature = EXACT.generate_signature(PHOTO)
    variants = signature_variants(signature)
    assert variants.shape == (8, 648)
    np.testing.assert_array_equal(variants[0], signature)
    assert len({v.tobytes() for v in variants}) == 8
    for variant in variants:
        np.testing.assert_array_equal(np.sort(variant), np.sort(signature))
    assert signature_variants(np.stack([signature, signature])).shape == (2, 8, 648)


@pytest.mark.parametrize("variant,bound", [("1.x", 0.35), ("paper", 1e-9)])
def test_variants_match_signatures_of_transformed_images(variant, bound):
    # 1.x's crop and integer grid are not symmetric under flips, so its permuted signatures are
    # close to, not equal to, the recomputed ones; the paper variant's continuous geometry is.
    worst = {}
    for path in photos():
        grey = load_grey(path, draft=False, scale="0-1" if variant == "paper" else "1.x")
        variants = signature_variants(signature_from_grey(grey, variant=variant))
        for index, name in enumerate(DIHEDRAL_NAMES):
            recomputed = signature_from_grey(ARRAY_TRANSFORMS[name](grey), variant=variant)
            worst[name] = max(worst.get(name, 0), normalized_distance(variants[index], recomputed))
    assert worst["identity"] == 0.0 and worst["transpose"] == 0.0
    assert max(worst.values()) <= bound, worst


# --- parameters ------------------------------------------------------------------------------

def test_defaults_are_1x():
    generator = ImageSignature()
    assert (generator.n, generator.crop_percentiles, generator.P, generator.diagonal_neighbors,
            generator.identical_tolerance, generator.n_levels, generator.fix_ratio) == \
        (9, (5, 95), None, True, 2 / 255.0, 2, False)
    assert generator.sig_length == 648
    assert ImageSignature(diagonal_neighbors=False).generate_signature(PHOTO).shape == (324,)
    assert ImageSignature(n=5).generate_signature(PHOTO).shape == (200,)


@pytest.mark.parametrize("kwargs", [
    {"n": 1}, {"n": 9.0}, {"crop_percentiles": (95, 5)}, {"crop_percentiles": (5,)},
    {"crop_percentiles": (-1, 50)}, {"P": 0}, {"diagonal_neighbors": 1},
    {"identical_tolerance": 2.0}, {"n_levels": 0}, {"fix_ratio": "yes"}, {"variant": "2.x"},
])
def test_bad_parameters_raise_invalid_parameter(kwargs):
    with pytest.raises(InvalidParameterError) as error:
        ImageSignature(**kwargs)
    assert str(error.value).startswith(next(iter(kwargs)))


def test_crop_percentiles_none_and_fix_ratio_and_P():
    for kwargs in ({"crop_percentiles": None}, {"fix_ratio": True}, {"P": 7}, {"n_levels": 3}):
        signature = ImageSignature(**kwargs).generate_signature(PHOTO)
        assert signature.shape == (648,) and signature.any()
    assert set(np.unique(ImageSignature(n_levels=3, variant="paper")
                         .generate_signature(PHOTO))) == set(range(-3, 4))


def test_fix_ratio_on_an_image_that_is_not_square():
    # The wider range is cut to the shorter axis; the squares read past it before (an
    # IndexError for a tall image, empty squares for a wide one).
    photo = np.asarray(rgb().convert("L"))  # 427 x 640
    for image, short_axis in ((photo[:, :200], 1), (photo[:200], 0)):
        window = crop_window(image, fix_ratio=True)
        assert window[short_axis][1] == 200 and window[0][0] == window[1][0]
        signature = ImageSignature(fix_ratio=True).generate_signature(image)
        assert signature.shape == (648,) and signature.any()


def test_crop_of_flat_borders():
    grey = np.zeros((200, 300))
    grey[50:150, 100:200] = np.random.default_rng(0).random((100, 100))
    (top, bottom), (left, right) = crop_window(grey)
    assert 49 <= top <= 60 and 140 <= bottom <= 151
    assert 99 <= left <= 110 and 190 <= right <= 201


# --- draft decode ----------------------------------------------------------------------------

def test_draft_signatures_stay_close_to_full_decode():
    distances = [normalized_distance(ImageSignature().generate_signature(path),
                                     EXACT.generate_signature(path)) for path in photos()]
    assert max(distances) < 0.2, distances


# --- batches ---------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_batch_yields_signature_or_error_per_input_in_order(workers, tmp_path):
    good = [str(p) for p in photos()[:5]]
    inputs = [good[0], str(tmp_path / "missing.jpg"), good[1], b"junk", good[2], *good[3:]] * 3
    results = list(EXACT.generate_signatures(iter(inputs), workers=workers, chunksize=2))
    assert len(results) == len(inputs)
    for given_input, result in zip(inputs, results):
        if given_input in good:
            np.testing.assert_array_equal(result, EXACT.generate_signature(given_input))
        else:
            assert isinstance(result, ImageLoadError)
    assert "missing.jpg: no such file" in str(results[1])
    assert str(results[3]) == "bytes (4 bytes): not an image (unrecognized format)"


def test_generate_signature_accepts_1x_bytestream():
    data = PHOTO.read_bytes()
    np.testing.assert_array_equal(EXACT.generate_signature(data, bytestream=True),
                                  EXACT.generate_signature(PHOTO))


def test_one_x_static_methods_still_work():
    grey = EXACT.preprocess_image(str(PHOTO))
    window = EXACT.crop_image(grey)
    rows, columns = EXACT.compute_grid_points(grey, window=window)
    means = EXACT.compute_mean_level(grey, rows, columns)
    differences = EXACT.compute_differentials(means)
    assert EXACT.normalize_and_threshold(differences) is None  # in place, as in 1.x
    np.testing.assert_array_equal(differences.ravel().astype(np.int8), EXACT.generate_signature(PHOTO))


def test_signature_of_pil_image_equals_file():
    with Image.open(PHOTO) as image:
        np.testing.assert_array_equal(EXACT.generate_signature(image), EXACT.generate_signature(PHOTO))
    buffer = io.BytesIO(PHOTO.read_bytes())
    np.testing.assert_array_equal(EXACT.generate_signature(buffer), EXACT.generate_signature(PHOTO))


# --- windows, frames and small rotations -------------------------------------------------------

def test_central_windows_are_fractions():
    assert central_window(0.5) == (0.25, 0.75, 0.25, 0.75)
    assert central_window(0.8, 1.0) == pytest.approx((0.1, 0.9, 0.0, 1.0))
    top, bottom, left, right = crop_windows((0.25,))[0]
    assert (bottom - top) * (right - left) == pytest.approx(0.25)
    assert len(crop_windows()) == len(CROP_WINDOW_AREAS)
    for share in (0, 1.5, -0.2):
        with pytest.raises(InvalidParameterError):
            central_window(share)


def test_window_of_cuts_the_array_and_scales_the_original_size():
    grey = np.arange(100 * 200, dtype=np.float64).reshape(100, 200)
    window, shape = window_of(grey, (0.25, 0.75, 0.1, 0.6))
    np.testing.assert_array_equal(window, grey[25:75, 20:120])
    assert shape == (50, 100)
    # A reduced decode of a 400x800 image: the window keeps its size in the original's pixels.
    _, shape = window_of(grey, (0.25, 0.75, 0.1, 0.6), original_shape=(400, 800))
    assert shape == (200, 400)
    # Never empty.
    window, shape = window_of(np.ones((3, 3)), (0.5, 0.5001, 0.0, 1.0))
    assert window.shape == (1, 3) and shape == (1, 3)
    for bad in ((0.5, 0.4, 0, 1), (0, 1, -0.1, 1), (0, 1.2, 0, 1)):
        with pytest.raises(InvalidParameterError):
            window_of(grey, bad)


def test_window_signature_is_the_signature_of_the_cropped_array():
    grey, shape = EXACT.decode(PHOTO)
    window = central_window(0.6, 0.8)
    expected = EXACT.signature_of_grey(window_of(grey, window)[0])
    np.testing.assert_array_equal(EXACT.windows_of_grey(grey, shape, [window])[0], expected)
    assert EXACT.windows_of_grey(grey, shape, []).shape == (0, 648)


@pytest.mark.parametrize("draft", [False, True])
def test_a_central_crop_is_near_its_window_and_far_from_the_whole(draft):
    generator = ImageSignature(draft=draft)
    stored = generator.record_signatures(PHOTO)
    assert stored.shape == (1 + len(CROP_WINDOW_AREAS), 648) and stored.dtype == np.int8
    np.testing.assert_array_equal(stored[0], generator.generate_signature(PHOTO))
    for row, area in enumerate(CROP_WINDOW_AREAS, 1):
        crop = generator.generate_signature(png_bytes(central_crop(rgb(), area)))
        assert normalized_distance(crop, stored[row]) < 0.15, area
    half = generator.generate_signature(png_bytes(central_crop(rgb(), 0.5)))
    assert normalized_distance(half, stored[0]) > 0.45


def test_rotate_grey_keeps_size_and_scale():
    grey, shape = EXACT.decode(PHOTO)
    turned = rotate_grey(grey, 0)
    assert turned.dtype == np.float32 and turned.shape == grey.shape
    np.testing.assert_allclose(turned, grey, atol=1e-6)
    turned = rotate_grey(grey, 10)
    assert turned.shape == grey.shape and turned[0, 0] == 0  # corners from outside are black
    uint8 = (grey * 255).astype(np.uint8)  # 1.x's 0-255 scale of single-channel images
    assert 100 < rotate_grey(uint8, 5).max() <= 255


@pytest.mark.parametrize("angle", [10, -10, 15])
def test_a_turned_copy_is_found_by_turning_the_query_back(angle):
    generator = ImageSignature()
    stored = generator.generate_signature(PHOTO)
    copy = jpeg_bytes(rgb().rotate(angle, resample=Image.Resampling.BICUBIC), quality=95)
    assert normalized_distance(generator.generate_signature(copy), stored) > 0.4
    turned = generator.rotations_of_grey(*generator.decode(copy))
    assert turned.shape == (2 * len(SMALL_ROTATIONS), 648)  # turned back, then also cut
    assert normalized_distance(turned[:len(SMALL_ROTATIONS)], stored).min() < 0.25


@pytest.mark.parametrize("angle,fill", [(10, "black"), (-10, "white"), (15, "black")])
def test_a_copy_turned_on_a_grown_canvas_is_found_by_turning_back_and_cutting(angle, fill):
    # Image editors' "rotate": the canvas grows to hold the whole picture, the corners filled.
    generator = ImageSignature()
    stored = generator.generate_signature(PHOTO)
    copy = jpeg_bytes(rgb().rotate(angle, resample=Image.Resampling.BICUBIC, expand=True,
                                   fillcolor=fill), quality=95)
    turned = generator.rotations_of_grey(*generator.decode(copy))
    rotations = len(SMALL_ROTATIONS)
    # Turned back keeping the grown size, the picture sits in a frame: not found that way.
    assert normalized_distance(turned[:rotations], stored).min() > 0.3
    cut = normalized_distance(turned[rotations:], stored)
    undone = SMALL_ROTATIONS.index(-angle)
    assert cut[undone] < 0.2 and cut.min() == cut[undone]


def test_expanded_rotation_box_undoes_the_canvas_growth():
    import math

    for height, width, degrees in ((300, 400, 10), (400, 300, -15), (500, 500, 5)):
        turn = math.radians(abs(degrees))
        canvas = (width * math.sin(turn) + height * math.cos(turn),
                  width * math.cos(turn) + height * math.sin(turn))
        top, bottom, left, right = expanded_rotation_box(canvas, degrees)
        assert (bottom - top) * canvas[0] == pytest.approx(height)
        assert (right - left) * canvas[1] == pytest.approx(width)
    assert expanded_rotation_box((300, 400), 0) == (0.0, 1.0, 0.0, 1.0)
    assert expanded_rotation_box((1000, 100), 15) is None  # no picture turned by 15 gives it
    assert expanded_rotation_box((300, 300), 45) is None


def test_a_captioned_copy_is_found_by_a_frame():
    generator = ImageSignature()
    image = rgb()
    bar = round(0.18 * image.height)
    captioned = Image.new("RGB", (image.width, image.height + 2 * bar), "white")
    captioned.paste(image, (0, bar))
    query = generator.query_signatures(jpeg_bytes(captioned), frames=True)
    stored = generator.generate_signature(PHOTO)
    assert normalized_distance(query[0], stored) > 0.3
    assert normalized_distance(query[1:], stored).min() < 0.2


def test_query_signatures_from_one_decode_and_their_margins():
    generator = ImageSignature()
    grey, shape = generator.decode(PHOTO)
    plain = generator.query_signatures(PHOTO)
    np.testing.assert_array_equal(plain, generator.generate_signature(PHOTO)[None])
    everything = generator.query_signatures(PHOTO, orientations=True, frames=True,
                                            small_rotations=True)
    frames = len(QUERY_FRAMES)
    assert everything.shape == (8 + frames + 2 * len(SMALL_ROTATIONS), 648)
    np.testing.assert_array_equal(everything[:8], generator.orientation_signatures(PHOTO))
    np.testing.assert_array_equal(
        everything[8:8 + frames],
        generator.windows_of_grey(grey, shape, [central_window(*f) for f in QUERY_FRAMES]))
    np.testing.assert_array_equal(everything[8 + frames:], generator.rotations_of_grey(grey, shape))
    for options in ({}, {"frames": True}, {"small_rotations": True}, {"orientations": True},
                    {"corner_crops": True}, {"mirror": True}, {"central_crops": True},
                    {"mirror": True, "central_crops": True, "insets": True},
                    {"orientations": True, "frames": True, "small_rotations": True}):
        margins = query_margins(**options)
        signed = generator.query_signatures(PHOTO, **options)
        assert margins.shape == (len(signed),) == (len(query_part_names(**options)),)
        turned = 7 if options.get("orientations") else 1 if options.get("mirror") else 0
        assert margins[0] == 0 and np.all(margins[1:1 + turned] == ORIENTATION_MARGIN)
        assert np.all(margins[1 + turned:] == QUERY_MARGIN)
    # The mirror image alone is the orientations' left-right flip.
    mirrored = generator.query_signatures(PHOTO, mirror=True)
    np.testing.assert_array_equal(mirrored,
                                  everything[[0, DIHEDRAL_NAMES.index("flip left-right")]])


def test_corner_crop_windows_show_the_originals_central_window():
    original = np.arange(1000 * 1000, dtype=np.float64).reshape(1000, 1000)
    kept = round(1000 * CORNER_CROP_SIDE)
    central, _ = window_of(original, central_window(np.sqrt(min(CROP_WINDOW_AREAS))))
    copies = [original[:kept, :kept], original[:kept, -kept:],
              original[-kept:, :kept], original[-kept:, -kept:]]
    for copy, window in zip(copies, corner_crop_windows()):
        shown, _ = window_of(copy, window)
        # The same pixels, to a pixel's rounding at each side.
        assert abs(shown.shape[0] - central.shape[0]) <= 1
        assert abs(shown.shape[1] - central.shape[1]) <= 1
        assert abs(shown[0, 0] - central[0, 0]) <= 1001 and abs(shown[-1, -1] - central[-1, -1]) <= 1001
    # A copy signs its 4 windows after everything else it is asked for.
    generator = ImageSignature()
    grey, shape = generator.decode(PHOTO)
    signed = generator.query_signatures(PHOTO, frames=True, corner_crops=True)
    np.testing.assert_array_equal(signed[-4:],
                                  generator.windows_of_grey(grey, shape, corner_crop_windows()))
    with pytest.raises(InvalidParameterError, match="do not hold the central window"):
        corner_crop_windows(area=0.75)


def test_map_signing_takes_any_signing_function(tmp_path):
    import functools

    inputs = [str(PHOTO), str(tmp_path / "missing.jpg"), str(photos()[0])]
    function = functools.partial(EXACT.query_signatures, frames=True)
    for workers in (1, 2):
        results = list(map_signing(function, inputs, workers=workers, chunksize=1))
        assert results[0].shape == (1 + len(QUERY_FRAMES), 648)
        assert isinstance(results[1], ImageLoadError)
        np.testing.assert_array_equal(results[2], function(str(photos()[0])))


def _inset(picture, background, scale=0.6, at=(0.25, 0.1)):
    """``picture`` at ``scale`` of each side, pasted on ``background`` made its size."""
    canvas = background.resize(picture.size, Image.Resampling.LANCZOS)
    small = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                           Image.Resampling.LANCZOS)
    x, y = round(at[0] * picture.width), round(at[1] * picture.height)
    canvas.paste(small, (x, y))
    return canvas, (y / picture.height, (y + small.height) / picture.height,
                    x / picture.width, (x + small.width) / picture.width)


def test_inset_windows_finds_a_pasted_picture():
    from image_match.goldberg import INSET_WINDOWS, inset_windows

    collage, truth = _inset(rgb(PHOTO), rgb(photos()[5]))
    generator = ImageSignature()
    grey, shape = generator.decode(jpeg_bytes(collage, quality=95))
    found = inset_windows(grey)
    assert 1 <= len(found) <= INSET_WINDOWS
    # The pasted picture is among them (a strong straight line in it may make another one).
    assert any(max(abs(a - b) for a, b in zip(window, truth)) < 0.03 for window in found), found
    windows = generator.windows_of_grey(grey, shape, found)
    assert normalized_distance(windows, generator.generate_signature(PHOTO)).min() < 0.3
    assert inset_windows(np.zeros((10, 10))) == [] and inset_windows(np.ones((50, 80))) == []


def test_query_insets_are_padded_to_a_fixed_count():
    from image_match.goldberg import INSET_WINDOWS

    generator = ImageSignature()
    blank = generator.query_signatures(np.full((120, 160), 0.5), insets=True)
    assert blank.shape == (1 + INSET_WINDOWS, 648) and not blank[1:].any()
    collage, _ = _inset(rgb(PHOTO), rgb(photos()[5]))
    signed = generator.query_signatures(jpeg_bytes(collage), insets=True, frames=True)
    assert signed.shape == (1 + len(QUERY_FRAMES) + INSET_WINDOWS, 648)
    assert len(query_margins(insets=True, frames=True)) == len(signed)


def test_opposite_signatures_are_at_distance_one_exactly():
    # For b = -2a, ||a - b|| = ||a|| + ||b|| = 3 ||a||, but the square roots round apart: the
    # quotient came out 1.0000000000000002 for about one pair in six (hypothesis found it).
    rng = np.random.default_rng(3)
    a = rng.integers(-1, 2, (200, 648)).astype(np.int8)
    assert normalized_distance(a, -2 * a).max() == 1.0
    assert distance_matrix(a, -2 * a).max() == 1.0
