"""Cut signatures into integer words for candidate recall, exactly as image-match 1.x does.

A signature of length L (648) gives N words (63) of k values (16). Word i reads the signature from
position ``int(linspace(0, L, N, endpoint=False)[i])``; the last words run past the end and are
padded with zeros. Each value is squeezed to its sign (-1, 0, 1) and the word packed base 3, the
first value least significant: ``sum((v_j + 1) * 3**j)``, an integer below ``3**k``.

Two signatures that share words are candidates; the exact distance then decides. Stores keep the
words under 1.x's names ``simple_word_0`` .. ``simple_word_62`` or their own layout.
"""

from functools import lru_cache

import numpy as np

from .errors import InvalidParameterError


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
    if type(k) is not int or not 1 <= k <= min(length, 39):
        raise InvalidParameterError(f"k={k!r}: must be an integer from 1 to {min(length, 39)}")
    if type(N) is not int or not 1 <= N <= length:
        raise InvalidParameterError(f"N={N!r}: must be an integer from 1 to {length}")
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


def word_field_names(N=63):
    """1.x's document fields for the words: ``simple_word_0`` .. ``simple_word_{N-1}``."""
    return [f"simple_word_{i}" for i in range(N)]
