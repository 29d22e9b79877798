"""The compiled signature kernel: built, equal to the numpy reference bit for bit, and switchable
off (the numpy path then signs everything, as it does where no compiler built the kernel)."""

import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from image_match import kernel
from image_match.errors import InvalidParameterError
from image_match.goldberg import ImageSignature, signature_from_grey, signature_from_source
from image_match.loading import GreySource, decode_grey_source

from conftest import DATA, PHOTO, SHARED_CORPUS, photos

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="the compiled kernel is not built")


def signed_with(kernel_on, function, *args, **kwargs):
    """``function(*args, **kwargs)`` with the compiled kernel on, or the numpy reference."""
    previous = kernel.use(kernel_on)
    try:
        return function(*args, **kwargs)
    finally:
        kernel.use(previous)


def compiled(function, *args, **kwargs):
    return signed_with(True, function, *args, **kwargs)


def reference(function, *args, **kwargs):
    return signed_with(False, function, *args, **kwargs)


def a_c_compiler():
    command = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(command)


def test_the_kernel_is_built_where_there_is_a_c_compiler():
    # pip install (-e) . builds it as an optional extension: a failed build would go unnoticed
    # but for this (the numpy reference would sign everything, slower).
    if not a_c_compiler():
        pytest.skip("no C compiler: the package signs with the numpy reference")
    assert kernel.available(), (
        f"{kernel.describe()}; a checkout installed before the kernel existed needs "
        "`pip install -e .` again (scripts/run-tests does it)")
    assert kernel.in_use() == (os.environ.get("IMAGE_MATCH_SIGNATURE_KERNEL", "auto") != "numpy")


# --- the switch --------------------------------------------------------------------------------

@needs_kernel
def test_environment_variable_and_use_force_the_numpy_reference(monkeypatch):
    monkeypatch.delenv("IMAGE_MATCH_SIGNATURE_KERNEL", raising=False)
    assert kernel.in_use() and kernel.describe().startswith("compiled kernel")
    monkeypatch.setenv("IMAGE_MATCH_SIGNATURE_KERNEL", "numpy")
    assert not kernel.in_use()
    assert kernel.describe() == "numpy reference (IMAGE_MATCH_SIGNATURE_KERNEL=numpy)"
    assert compiled(kernel.in_use)  # use(True) wins over the environment
    monkeypatch.setenv("IMAGE_MATCH_SIGNATURE_KERNEL", "auto")
    assert reference(kernel.describe) == "numpy reference (image_match.kernel.use(False))"
    monkeypatch.setenv("IMAGE_MATCH_SIGNATURE_KERNEL", "fast")
    with pytest.raises(InvalidParameterError, match="IMAGE_MATCH_SIGNATURE_KERNEL='fast'"):
        kernel.in_use()


def test_the_numpy_path_is_what_signs_when_forced(monkeypatch):
    # The fallback exercised: with the kernel switched off nothing reaches it.
    calls = []
    monkeypatch.setattr(kernel, "signature", lambda *args: calls.append(args))
    monkeypatch.setenv("IMAGE_MATCH_SIGNATURE_KERNEL", "numpy")
    signature = ImageSignature().generate_signature(PHOTO)
    assert calls == [] and signature.shape == (648,) and signature.any()
    if kernel.available():
        monkeypatch.setenv("IMAGE_MATCH_SIGNATURE_KERNEL", "auto")
        ImageSignature().generate_signature(PHOTO)
        assert len(calls) == 1


def test_version_says_which_code_signs():
    env = dict(os.environ, IMAGE_MATCH_SIGNATURE_KERNEL="numpy")
    out = subprocess.run([sys.executable, "-m", "image_match", "--version"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "signatures: numpy reference" in out
    if kernel.available():
        env["IMAGE_MATCH_SIGNATURE_KERNEL"] = "auto"
        out = subprocess.run([sys.executable, "-m", "image_match", "--version"], env=env,
                             capture_output=True, text=True, check=True).stdout
        assert "signatures: compiled kernel" in out


# --- bit for bit ---------------------------------------------------------------------------------

GENERATORS = {
    "draft": ImageSignature(draft=True),
    "exact": ImageSignature(draft=False),
    "4 neighbours, n=7, P=5, fix_ratio": ImageSignature(n=7, P=5, diagonal_neighbors=False,
                                                       fix_ratio=True, draft=True),
    "no crop, 3 levels": ImageSignature(crop_percentiles=None, n_levels=3,
                                        identical_tolerance=0.0),
}


def corpus():
    if (SHARED_CORPUS / "reference" / "signatures.npz").exists():
        return sorted(SHARED_CORPUS.glob("*.jpg"))
    return photos()


@needs_kernel
@pytest.mark.parametrize("name", list(GENERATORS))
def test_the_kernel_signs_the_dev_corpus_as_the_reference(name):
    generator = GENERATORS[name]
    paths = corpus() if name in ("draft", "exact") else corpus()[::8]
    mismatched = []
    for path in paths:
        expected = reference(generator.generate_signature, path)
        if not np.array_equal(compiled(generator.generate_signature, path), expected):
            mismatched.append(path.name)
    assert mismatched == [], f"{len(mismatched)} of {len(paths)} differ from the numpy reference"


@needs_kernel
def test_the_kernel_signs_decoded_grey_arrays_as_the_reference():
    # signature_of_grey on decode()'s arrays (windows, orientations, rotations sign those):
    # float32 after a draft decode, float64 exact, uint8 for grey files; views, flips.
    generator = ImageSignature(draft=True)
    for path in photos()[:4] + [DATA / "grey.jpg", DATA / "grey.png", DATA / "rgba.png"]:
        for draft in (True, False):
            grey, shape = ImageSignature(draft=draft).decode(path)
            for array in (grey, grey[::-1], grey.T, grey[5:-7, 3:]):
                turned = shape if array.shape == grey.shape else (
                    shape[::-1] if array.shape == grey.shape[::-1] else array.shape)
                assert np.array_equal(
                    compiled(generator.signature_of_grey, array, turned),
                    reference(generator.signature_of_grey, array, turned)), (path, draft)
        options = dict(orientations=True, frames=True, small_rotations=True, insets=True,
                       corner_crops=True)
        assert np.array_equal(compiled(generator.query_signatures, path, **options),
                              reference(generator.query_signatures, path, **options))


def test_decode_grey_source_makes_the_grey_levels_of_decode_grey():
    for draft in (True, False):
        source, shape = decode_grey_source(PHOTO, draft=draft)
        grey, same_shape = ImageSignature(draft=draft).decode(PHOTO)
        assert source.rule == ("ycc8" if draft else "rgb8") and shape == same_shape
        np.testing.assert_array_equal(source.grey(), grey)


# Grey arrays as the loader makes them and as users pass them, with uniform patches (ties
# between squares' means, exact differences at the tolerance) as often as noise.
def grey_arrays(dtype):
    levels = st.integers(0, 255)
    shape = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=48)

    def scale(array):
        if dtype == np.uint8:
            return array.astype(np.uint8)
        return (array / 255.0).astype(dtype)

    patchy = st.tuples(shape, levels, levels, st.integers(1, 12), st.integers(0, 2 ** 32 - 1)).map(
        lambda t: np.where(np.random.default_rng(t[4]).integers(0, t[3] + 1, t[0]) == 0, t[1],
                           t[2]))
    noisy = hnp.arrays(np.int64, shape, elements=levels)
    return st.one_of(patchy, noisy).map(scale)


parameters = st.fixed_dictionaries({
    "n": st.integers(2, 11),
    "crop_percentiles": st.one_of(st.none(), st.tuples(st.integers(0, 30), st.integers(60, 100))),
    "P": st.one_of(st.none(), st.integers(1, 9)),
    "diagonal_neighbors": st.booleans(),
    "identical_tolerance": st.sampled_from([0.0, 2 / 255.0, 0.05]),
    "n_levels": st.integers(1, 4),
    "fix_ratio": st.booleans(),
})


def original_shapes(grey):
    """The array's own shape, or a larger original it would be a reduced decode of."""
    return st.one_of(st.just(grey.shape), st.tuples(st.integers(1, 9), st.integers(1, 9)).map(
        lambda f: (grey.shape[0] * f[0] + f[0] // 2, grey.shape[1] * f[1] + f[1] // 3)))


@needs_kernel
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), dtype=st.sampled_from([np.uint8, np.float32, np.float64]),
       view=st.sampled_from(["as is", "flipped", "transposed", "strided"]))
def test_the_kernel_signs_generated_grey_arrays_as_the_reference(data, dtype, view):
    grey = data.draw(grey_arrays(dtype))
    grey = {"as is": grey, "flipped": grey[::-1, ::-1], "transposed": grey.T,
            "strided": grey[::2, ::3]}[view]
    shape = data.draw(original_shapes(grey))
    kwargs = data.draw(parameters)
    assert np.array_equal(compiled(signature_from_grey, grey, original_shape=shape, **kwargs),
                          reference(signature_from_grey, grey, original_shape=shape, **kwargs))


@needs_kernel
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rule=st.sampled_from(["rgb8", "ycc8", "draft8"]))
def test_the_kernel_signs_generated_8_bit_pixels_as_the_reference(data, rule):
    # The kernel reads 8-bit pixels (arrays, or PIL images without a copy) and makes the grey
    # levels itself; GreySource.grey() makes them with numpy.
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40))
    channels = (3,) if rule in ("rgb8", "ycc8") else ()
    pixels = data.draw(hnp.arrays(np.uint8, shape + channels,
                                  elements=st.sampled_from([0, 1, 2, 3, 127, 128, 200, 255])
                                  | st.integers(0, 255)))
    if data.draw(st.booleans()):
        pixels = Image.fromarray(pixels, mode="YCbCr" if rule == "ycc8" else None)
    source = GreySource(pixels, rule)
    original = data.draw(original_shapes(np.empty(shape)))
    kwargs = data.draw(parameters)
    assert np.array_equal(compiled(signature_from_source, source, original, **kwargs),
                          reference(signature_from_source, source, original, **kwargs))


@needs_kernel
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_values_the_kernel_does_not_take_are_signed_by_the_reference():
    # Not finite values, integer dtypes it does not read, levels past int8: the reference signs.
    rng = np.random.default_rng(3)
    grey = rng.random((40, 50))
    grey[7, 9] = np.nan
    int16 = (rng.random((30, 30)) * 1000).astype(np.int16)
    for array, kwargs in ((grey, {}), (int16, {}), (rng.random((40, 40)), {"n_levels": 300}),
                          (grey, {"crop_percentiles": None})):
        expected = reference(signature_from_grey, array, **kwargs)
        assert np.array_equal(compiled(signature_from_grey, array, **kwargs), expected)


@needs_kernel
def test_a_large_image_is_read_in_blocks():
    # Pillow keeps an image of more than 16 MB in several blocks of memory, which its Arrow
    # export refuses: the kernel then reads a copy (GreySource.array).
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (2100, 2100, 3),
                                                              dtype=np.uint8))
    source = GreySource(image, "rgb8")
    assert kernel._arrow_export(image) is None
    np.testing.assert_array_equal(source.array(), np.asarray(image))  # made a band at a time
    assert np.array_equal(compiled(signature_from_source, source, (2100, 2100)),
                          reference(signature_from_source, source, (2100, 2100)))
