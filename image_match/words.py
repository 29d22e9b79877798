"""Index terms for candidate recall: how a store turns a signature into the integers it indexes.

A store finds candidates for a query by the terms they share with it, then ranks them by the
exact distance. A *candidate scheme* says which terms a signature has; it is recorded in the
store's configuration (key ``candidates``) and both drivers index and query exactly what
``CandidateScheme.terms`` returns, so a scheme is described here and nowhere else.

``words`` (image-match 1.x's, ``Words``)
    A signature of length L (648) gives N words (63) of k values (16). Word i reads the signature
    from position ``int(linspace(0, L, N, endpoint=False)[i])``; the last words run past the end
    and are padded with zeros. Each value is squeezed to its sign (-1, 0, 1) and the word packed
    base 3, the first value least significant: ``sum((v_j + 1) * 3**j)``, an integer below
    ``3**k``. Its term is ``i * 3**k + word``, so that equal words at different positions differ.
    Words read runs of neighbouring values: a flat or textured patch gives the same words in
    many pictures, and more than half of the values repeat others or are always 0 (below).

``bands`` (``Bands``, image-match 2's stores)
    Locality-sensitive hashing by bands of sampled signs. Of the signature's values only the
    *independent* ones are read: a value is a grid point's mean minus a neighbour's, so the pair
    of points appears twice with opposite signs, and a neighbour off the grid always gives 0;
    one value per pair of neighbouring points is left (272 of 648 for the 9x9 grid with
    diagonal neighbours, ``independent_positions``). Band b reads ``width`` of them, spread over
    the whole picture by a fixed pseudo-random shuffle (``band_positions``: each independent
    value is read by about as many bands as any other), packs their signs base 3 as a word does,
    and has the term ``b * 3**width + packed``. Two copies of a picture agree on most signs
    everywhere, so they share several bands; two unrelated pictures rarely agree on ``width``
    signs at once. ``benchmarks/search_scale.py`` measures the default (64 bands of 9 signs)
    against 1.x's words at scale (README.rst, "Search at scale").
"""

import hashlib
import itertools
from functools import lru_cache

import numpy as np

from .errors import InvalidParameterError
from .goldberg import AXIAL_OFFSETS, NEIGHBOUR_OFFSETS

#: The schemes a store may record, by name.
SCHEMES = ("words", "bands")

#: The candidate scheme image-match 2 gives new stores (``drivers.NEW_STORE_DEFAULTS``): 64
#: terms, as many as 1.x's 63 words, of 9 signs (README.rst, "Search at scale").
DEFAULT_BANDS = {"scheme": "bands", "bands": 64, "width": 9}


# --- image-match 1.x's words ------------------------------------------------------------------

def word_positions(signature_length=648, N=63):
    """Where each of the N words starts, as 1.x rounds it (truncation of linspace)."""
    return np.linspace(0, signature_length, N, endpoint=False).astype(int)


@lru_cache(maxsize=16)
def _layout(length, k, N):
    """The (N, k) signature indices each word reads (``length`` stands for padding)."""
    return np.minimum(word_positions(length, N)[:, None] + np.arange(k), length)


def make_words(signatures, k=16, N=63):
    """The N integer words of each signature.

    Parameters
    ----------
    signatures : (L,) or (M, L) array_like
        One signature, or one per row.
    k : int
        Values per word (at most 39, so that a word fits in a signed 64-bit integer).
    N : int
        Words per signature.

    Returns
    -------
    (N,) or (M, N) int64 ndarray
    """
    signatures = np.asarray(signatures)
    length = signatures.shape[-1]
    _check_words(k, N, length)
    # Digits (value + 1) laid out position-major, so that each step below reads whole rows; index
    # ``length`` is an appended value 0 (digit 1): the padding of the last words. int32 holds any
    # word up to k = 19, the common case, and is the faster to compute in.
    dtype = np.int32 if 3 ** k < 2 ** 31 else np.int64
    flat = signatures.reshape(-1, length)
    digits = np.ones((length + 1, flat.shape[0]), dtype=dtype)
    digits[:length] += np.sign(flat.T).astype(dtype)
    # Horner's rule from the most significant (last) value: k vectorized steps over (N, M) rows
    # (numpy's integer matmul is a plain loop, several times slower).
    indices = _layout(length, k, N)
    words = digits[indices[:, -1]]
    for column in indices.T[-2::-1]:
        words = words * 3 + digits[column]
    return words.T.astype(np.int64).reshape(signatures.shape[:-1] + (N,))


def _check_words(k, N, length):
    if type(k) is not int or not 1 <= k <= min(length, 39):
        raise InvalidParameterError(f"k={k!r}: must be an integer from 1 to {min(length, 39)}")
    if type(N) is not int or not 1 <= N <= length:
        raise InvalidParameterError(f"N={N!r}: must be an integer from 1 to {length}")


def word_field_names(N=63):
    """1.x's document fields for the words: ``simple_word_0`` .. ``simple_word_{N-1}``."""
    return [f"simple_word_{i}" for i in range(N)]


# --- the schemes ------------------------------------------------------------------------------

class CandidateScheme:
    """What a store indexes of each signature.

    A scheme supplies ``terms``: per signature, ``count`` integers, each from its own range
    (term i of any signature differs from term j of any other when i != j), so that a store may
    keep them all in one field or table and count the ones a candidate shares with a query; and
    ``config``, the JSON it is recorded as (``scheme_from_config`` reads it back).
    """

    name = None
    #: Terms per signature.
    count = None
    #: Candidates a store fetches per query signature unless told otherwise: what the copies the
    #: exact distance accepts need to be among them in a large store (README.rst, "Search at
    #: scale").
    size = None

    def terms(self, signatures):
        """(M, count) int64 for (M, L) signatures ((count,) for one (L,) signature)."""
        raise NotImplementedError

    def config(self):
        raise NotImplementedError

    def __eq__(self, other):
        return type(other) is type(self) and other.config() == self.config()

    def __hash__(self):
        return hash(repr(self))

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.config().items()
                              if key != "scheme")
        return f"{type(self).__name__}({arguments})"


class Words(CandidateScheme):
    """image-match 1.x's N words of k signs (see the module's docstring); term i is
    ``i * 3**k + word``."""

    name = "words"
    size = 100  # image-match 1.x's

    def __init__(self, k=16, N=63, signature_length=648):
        _check_words(k, N, signature_length)
        self.k, self.N, self.count = k, N, N
        self.signature_length = signature_length

    def terms(self, signatures):
        return self._tags(make_words(signatures, self.k, self.N), 1)

    def words_of_terms(self, terms):
        """The words themselves (``make_words``) of (..., N) terms: 1.x's ``simple_word_i``
        fields hold them untagged."""
        return self._tags(terms, -1)

    def _tags(self, values, sign):
        # Terms past 64 bits (k > 35) stay Python integers: the engines index them as text.
        dtype = np.int64 if self.N * 3 ** self.k < 2 ** 63 else object
        offsets = np.arange(self.N).astype(dtype) * 3 ** self.k
        return np.asarray(values).astype(dtype) + sign * offsets

    def config(self):
        return {"scheme": self.name, "k": self.k, "N": self.N}


class Bands(CandidateScheme):
    """Bands of ``width`` signs of the signature's independent values (see the module's
    docstring); ``bands`` terms per signature, band b's term ``b * 3**width + packed signs``.

    Parameters
    ----------
    bands : int
        Terms per signature (1-1024).
    width : int
        Signs per band (1-19, at most the independent values).
    seed : int
        Which shuffle spreads the values over the bands (0; another seed, other bands).
    n, diagonal_neighbors
        The signatures' grid, as ``ImageSignature`` has them.
    """

    name = "bands"
    size = 25

    def __init__(self, bands=64, width=9, seed=0, n=9, diagonal_neighbors=True):
        if type(bands) is not int or not 1 <= bands <= 1024:
            raise InvalidParameterError(f"bands={bands!r}: must be an integer from 1 to 1024")
        independent = len(independent_positions(n, diagonal_neighbors))
        if type(width) is not int or not 1 <= width <= min(19, independent):
            raise InvalidParameterError(
                f"width={width!r}: must be an integer from 1 to {min(19, independent)}")
        if type(seed) is not int or seed < 0:
            raise InvalidParameterError(f"seed={seed!r}: must be a non-negative integer")
        self.bands, self.width, self.seed, self.count = bands, width, seed, bands
        self.positions = band_positions(bands, width, seed, n, diagonal_neighbors)
        self._places = 3 ** np.arange(width, dtype=np.int64)
        self._offsets = np.arange(bands, dtype=np.int64) * 3 ** width

    def terms(self, signatures):
        signatures = np.asarray(signatures)
        if signatures.shape[-1] <= self.positions.max():
            raise InvalidParameterError(
                f"signatures of {signatures.shape[-1]} values are not of this scheme's grid")
        digits = np.sign(signatures[..., self.positions]).astype(np.int64) + 1
        return digits @ self._places + self._offsets

    def config(self):
        return {"scheme": self.name, "bands": self.bands, "width": self.width, "seed": self.seed}


@lru_cache(maxsize=8)
def independent_positions(n=9, diagonal_neighbors=True):
    """The signature positions holding one value per pair of neighbouring grid points: for each
    point (row-major), its differences with the neighbours right of it, below-left, below and
    below-right of it that are on the grid. Each left-out in-grid value is the negative of one of
    these (the same pair seen from the other point); off-grid values are always 0.

    Returns a sorted int64 array (272 positions for n=9 with diagonal neighbours, 144 without).
    """
    offsets = NEIGHBOUR_OFFSETS if diagonal_neighbors else AXIAL_OFFSETS
    forward = [index for index, (dr, dc) in enumerate(offsets) if dr > 0 or (dr == 0 and dc > 0)]
    positions = [(row * n + column) * len(offsets) + index
                 for row in range(n) for column in range(n) for index in forward
                 if 0 <= row + offsets[index][0] < n and 0 <= column + offsets[index][1] < n]
    return np.array(positions, dtype=np.int64)


@lru_cache(maxsize=8)
def band_positions(bands, width, seed=0, n=9, diagonal_neighbors=True):
    """The (bands, width) signature positions each band reads.

    Bands take ``width`` consecutive positions of a sequence of shuffles of the independent
    positions, one shuffle after another (a position already in the band being filled is
    skipped), so that every position is read by about ``bands * width / len(independent)``
    bands. A shuffle orders the positions by a BLAKE2b hash of (seed, round, position): fixed for
    ever, as a store's terms must not move with a library's random generator.
    """
    independent = independent_positions(n, diagonal_neighbors).tolist()
    shuffles = (sorted(independent, key=lambda position: hashlib.blake2b(
        f"{seed}:{round_}:{position}".encode(), digest_size=8).digest())
        for round_ in itertools.count())
    rows, band = [], []
    for position in itertools.chain.from_iterable(shuffles):
        if position in band:
            continue
        band.append(position)
        if len(band) == width:
            rows.append(band)
            band = []
            if len(rows) == bands:
                return np.array(rows, dtype=np.int64)


def scheme_from_config(candidates, signature_length=648, n=9, diagonal_neighbors=True):
    """The scheme a store's configuration records (``CandidateScheme.config()``), or one named
    (``"words"``, ``"bands"``) with its defaults.

    Raises InvalidParameterError for an unknown scheme or invalid parameters.
    """
    if isinstance(candidates, CandidateScheme):
        return candidates
    if isinstance(candidates, str):
        candidates = {"scheme": candidates}
    if not isinstance(candidates, dict) or candidates.get("scheme") not in SCHEMES:
        raise InvalidParameterError(
            f"candidates={candidates!r}: must be one of {', '.join(SCHEMES)} or a dict with "
            f"\"scheme\" and its parameters")
    parameters = {key: value for key, value in candidates.items() if key != "scheme"}
    try:
        if candidates["scheme"] == "words":
            return Words(signature_length=signature_length, **parameters)
        return Bands(n=n, diagonal_neighbors=diagonal_neighbors, **parameters)
    except TypeError:
        raise InvalidParameterError(
            f"candidates={candidates!r}: unknown parameters for {candidates['scheme']}") from None
