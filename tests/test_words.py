"""Index terms: image-match 1.x's words (identical to its simple_word_i, vectorized) and the
bands of image-match 2's stores."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from image_match.errors import InvalidParameterError
from image_match.goldberg import NEIGHBOUR_OFFSETS, ImageSignature
from image_match.words import (Bands, Words, band_positions, independent_positions, make_words,
                               scheme_from_config, word_field_names, word_positions)

from conftest import DATA, photos


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


# --- candidate schemes --------------------------------------------------------------------------

def test_words_scheme_tags_each_word_with_its_position():
    signatures = np.random.default_rng(1).integers(-2, 3, (20, 648))
    scheme = Words(16, 63)
    terms = scheme.terms(signatures)
    np.testing.assert_array_equal(terms, make_words(signatures) + np.arange(63) * 3 ** 16)
    np.testing.assert_array_equal(scheme.words_of_terms(terms), make_words(signatures))
    # Past 64 bits the terms are Python integers, still exact.
    wide = Words(39, 63).terms(signatures[:1])
    assert wide[0, 62] == int(make_words(signatures[:1], 39, 63)[0, 62]) + 62 * 3 ** 39


def test_independent_positions_determine_the_whole_signature():
    """Every other value of a real signature is 0 (a neighbour off the grid) or the negative of
    an independent one (the same pair of points seen from the other side)."""
    independent = independent_positions(9, True)
    assert len(independent) == 272 and len(independent_positions(9, False)) == 144
    signatures = np.stack([ImageSignature().generate_signature(str(path)) for path in photos()])
    grid = signatures.reshape(len(signatures), 9, 9, 8)
    explained = set(independent.tolist())
    for row in range(9):
        for column in range(9):
            for index, (dr, dc) in enumerate(NEIGHBOUR_OFFSETS):
                position = (row * 9 + column) * 8 + index
                if position in explained:
                    continue
                if not (0 <= row + dr < 9 and 0 <= column + dc < 9):
                    assert not grid[:, row, column, index].any()
                    continue
                twin = NEIGHBOUR_OFFSETS.index((-dr, -dc))
                assert ((row + dr) * 9 + column + dc) * 8 + twin in explained
                np.testing.assert_array_equal(grid[:, row, column, index],
                                              -grid[:, row + dr, column + dc, twin])


def test_band_positions_never_move():
    """A store's terms must be the same on every machine and in every version: the shuffle is
    BLAKE2b's, not a random generator's."""
    positions = band_positions(64, 9, 0)
    assert positions[0].tolist() == [564, 327, 541, 142, 462, 430, 559, 407, 223]
    assert positions[-1].tolist() == [335, 612, 53, 351, 374, 268, 477, 198, 325]
    assert not np.array_equal(band_positions(64, 9, 1), positions)


@pytest.mark.parametrize("bands,width,diagonal", [(64, 9, True), (96, 10, True), (20, 7, False)])
def test_bands_spread_the_independent_positions_evenly(bands, width, diagonal):
    positions = band_positions(bands, width, 0, 9, diagonal)
    independent = independent_positions(9, diagonal)
    assert positions.shape == (bands, width)
    assert set(positions.ravel().tolist()) <= set(independent.tolist())
    assert all(len(set(band)) == width for band in positions.tolist())
    uses = np.bincount(np.searchsorted(independent, positions.ravel()), minlength=len(independent))
    assert uses.max() - uses.min() <= 2


def test_band_terms_pack_the_signs_of_their_positions():
    signatures = np.random.default_rng(2).integers(-2, 3, (50, 648)).astype(np.int8)
    scheme = Bands(64, 9)
    terms = scheme.terms(signatures)
    assert terms.shape == (50, 64) and terms.dtype == np.int64
    band, packed = np.divmod(terms, 3 ** 9)
    np.testing.assert_array_equal(band, np.broadcast_to(np.arange(64), (50, 64)))
    digits = packed[..., None] // 3 ** np.arange(9) % 3 - 1
    np.testing.assert_array_equal(digits, np.sign(signatures[:, scheme.positions]))
    np.testing.assert_array_equal(scheme.terms(signatures[0]), terms[0])


def test_schemes_round_trip_through_their_config():
    for scheme in (Words(), Words(12, 40), Bands(), Bands(96, 10, seed=3)):
        assert scheme_from_config(scheme.config()) == scheme
    assert scheme_from_config("bands") == Bands() and scheme_from_config("words") == Words()


@pytest.mark.parametrize("candidates", [
    "lsh", {"scheme": "bands", "bands": 0}, {"scheme": "bands", "width": 300},
    {"scheme": "bands", "seed": -1}, {"scheme": "bands", "depth": 2}, {"scheme": "words", "k": 0},
    {"bands": 64}, 64, None])
def test_bad_candidate_schemes(candidates):
    with pytest.raises(InvalidParameterError):
        scheme_from_config(candidates)
