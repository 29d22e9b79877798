"""Words: identical to image-match 1.x's simple_word_i, vectorized."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from image_match.errors import InvalidParameterError
from image_match.words import make_words, word_field_names, word_positions

from conftest import DATA


def one_x_words(signature, k=16, N=63):
    """image-match 1.x's get_words + max_contrast + words_to_int, restated as plainly as it was."""
    positions = np.linspace(0, signature.shape[0], N, endpoint=False).astype("int")
    words = np.zeros((N, k), dtype=np.int64)
    for i, position in enumerate(positions):
        chunk = list(signature[position:position + k])
        words[i] = chunk + [0] * (k - len(chunk))
    words = np.sign(words)
    return (words + 1) @ (3 ** np.arange(k))


def test_reference_words_of_shipped_photos():
    reference = np.load(DATA / "reference_1x.npz")
    np.testing.assert_array_equal(make_words(reference["signatures"]), reference["words"])
    np.testing.assert_array_equal(make_words(reference["signatures"][0]), reference["words"][0])


@settings(max_examples=200, deadline=None)
@given(signature=hnp.arrays(np.int8, st.integers(16, 700), elements=st.integers(-2, 2)),
       k=st.integers(1, 16), N=st.integers(1, 80))
def test_words_equal_1x_for_any_k_and_N(signature, k, N):
    if N > signature.shape[0]:
        return
    np.testing.assert_array_equal(make_words(signature, k, N), one_x_words(signature, k, N))


def test_last_words_are_padded_with_zero_values():
    signature = np.full(648, 2, dtype=np.int8)
    words = make_words(signature)
    full = sum(2 * 3**j for j in range(16))
    assert words[0] == full
    # The last word starts at 637: 11 values of 1 (digit 2), then 5 of padding 0 (digit 1).
    assert word_positions()[-1] == 637
    assert words[-1] == sum(2 * 3**j for j in range(11)) + sum(3**j for j in range(11, 16))


def test_words_fit_below_3_to_the_k():
    rng = np.random.default_rng(0)
    words = make_words(rng.integers(-2, 3, (100, 648)))
    assert words.shape == (100, 63) and words.dtype == np.int64
    assert words.min() >= 0 and words.max() < 3**16


@pytest.mark.parametrize("k,N", [(0, 63), (40, 63), (16, 0), (16, 649), (16.0, 63)])
def test_bad_word_parameters(k, N):
    with pytest.raises(InvalidParameterError):
        make_words(np.zeros(648, np.int8), k, N)


def test_field_names():
    names = word_field_names()
    assert names[0] == "simple_word_0" and names[-1] == "simple_word_62" and len(names) == 63
