"""What a store keeps per image, and the small codecs every driver shares.

A :class:`Record` is one stored image: its id, its path (or URL, or any name the user gave), its
signature, its index terms (``words.CandidateScheme``), its metadata and when it was added.
Drivers store the signature packed (``pack_signatures``: three values a byte, 216 bytes for 648
values) and the terms in whatever layout their engine indexes best; they hand records back to
the base class as ``Record`` objects.
"""

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from .errors import InvalidParameterError
from .goldberg import is_featureless

# Signature values are -2..2: five states, so three of them fit in a byte (5**3 = 125).
_BASE = 5
_PER_BYTE = 3
_PLACES = _BASE ** np.arange(_PER_BYTE)
# byte -> its three values, for unpacking by table lookup
_UNPACK = (np.arange(256)[:, None] // _PLACES % _BASE - 2).astype(np.int8)


@dataclass
class Record:
    """One stored image.

    ``signature`` is an int8 array, ``terms`` its index terms (the store's candidate scheme's)
    when writing and None when read back, ``metadata`` a JSON-serializable dict or None,
    ``timestamp`` a timezone-aware datetime, ``score`` how the engine ranked it as a candidate
    (shared terms, or the engine's score).
    ``windows``: in a store with crop windows, the (W, L) int8 signatures of the image's central
    windows (None when the record has none), and ``window_terms`` their (W, T) terms when writing.
    """

    id: str
    path: str
    signature: np.ndarray
    terms: np.ndarray = None
    metadata: dict = None
    timestamp: datetime = None
    score: float = None
    extra: dict = field(default_factory=dict)
    windows: np.ndarray = None
    window_terms: np.ndarray = None

    def as_dict(self):
        """The record as JSON-ready data (for export and ``get``); ``windows`` (a list of
        signatures) only for a record that has them."""
        data = {
            "id": self.id,
            "path": self.path,
            "signature": np.asarray(self.signature).tolist(),
            "metadata": self.metadata,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
        }
        if self.windows is not None and len(self.windows):
            data["windows"] = np.asarray(self.windows).tolist()
        return data


def default_id(path):
    """The id a record gets when none is given: a hash of its path, so that adding the same path
    again replaces the record instead of adding a second one.

    The path is hashed as the bytes it names: a file name that is not valid UTF-8 (which Python
    decodes with surrogate escapes) gets an id from its own bytes, like any other."""
    return hashlib.blake2b(_path_bytes(path), digest_size=16).hexdigest()


def record_path(path):
    """The path a record keeps for ``path``: the path itself, or, for a file name that is not
    valid UTF-8 (Python decodes such names with surrogate escapes, which no store can hold), the
    name with each undecodable byte written ``\\xNN``."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return _path_bytes(path).decode("utf-8", "backslashreplace")


def _path_bytes(path):
    text = str(path)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return text.encode("utf-8", "surrogatepass")


def content_id(data):
    """An id from an image's bytes: the same file under two names gets one record."""
    return hashlib.blake2b(bytes(data), digest_size=16).hexdigest()


def now():
    return datetime.now(timezone.utc)


def pack_signatures(signatures):
    """Signatures of values -2..2 as bytes, three values a byte.

    Parameters
    ----------
    signatures : (L,) or (M, L) array_like of ints in -2..2

    Returns
    -------
    bytes for one signature, or (M, ceil(L / 3)) uint8 ndarray
    """
    signatures = np.asarray(signatures)
    if signatures.size and (signatures.min() < -2 or signatures.max() > 2):
        raise InvalidParameterError("signature values must be in -2..2")
    length = signatures.shape[-1]
    padded_length = -(-length // _PER_BYTE) * _PER_BYTE
    digits = np.full(signatures.shape[:-1] + (padded_length,), 2, dtype=np.int64)
    digits[..., :length] = signatures.astype(np.int64) + 2
    packed = (digits.reshape(signatures.shape[:-1] + (-1, _PER_BYTE)) @ _PLACES).astype(np.uint8)
    return packed.tobytes() if signatures.ndim == 1 else packed


def packed_size(length=648):
    """The bytes ``pack_signatures`` makes of one signature of ``length`` values."""
    return -(-length // _PER_BYTE)


def unpack_signatures(packed, length=648):
    """The inverse of ``pack_signatures``: bytes (one) or a list of bytes / (M, B) uint8 array (many).

    Returns
    -------
    (length,) or (M, length) int8 ndarray
    """
    if isinstance(packed, (bytes, bytearray, memoryview)):
        return _UNPACK[np.frombuffer(packed, dtype=np.uint8)].reshape(-1)[:length]
    if not isinstance(packed, np.ndarray):
        packed = np.frombuffer(b"".join(packed), dtype=np.uint8).reshape(len(packed), -1)
    return _UNPACK[packed].reshape(packed.shape[0], -1)[:, :length]


def indexed_window_terms(window_terms, windows):
    """The terms of a record's crop windows that a store indexes: all but those of featureless
    windows, whose terms every blank patch shares. (K, T), K <= W."""
    return np.asarray(window_terms)[~is_featureless(windows)]


def pack_windows(windows):
    """A record's crop windows' signatures ((W, L) array, or None) as one run of bytes: their
    ``pack_signatures`` rows one after the other (None stays None)."""
    return None if windows is None else pack_signatures(np.atleast_2d(windows)).tobytes()


def unpack_windows(packed, length=648):
    """The inverse of ``pack_windows``: (W, length) int8, or None."""
    if packed is None:
        return None
    rows = np.frombuffer(packed, dtype=np.uint8).reshape(-1, packed_size(length))
    return unpack_signatures(rows, length)


def check_metadata(metadata, source):
    """Metadata must be a JSON object (dict) or None; returns it as plain JSON data.

    NaN and infinities are refused: JSON has no such numbers, so stored they would make an export
    invalid JSON and every filtered search fail; so is text that is not valid UTF-8."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidParameterError(f"{source}: metadata must be a dict, not {type(metadata).__name__}")
    try:
        text = json.dumps(metadata, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
        return json.loads(text)
    except UnicodeEncodeError:
        raise InvalidParameterError(f"{source}: metadata holds text that is not valid UTF-8 (a "
                                    "lone surrogate)") from None
    except ValueError as error:
        if "Out of range float" in str(error):
            raise InvalidParameterError(f"{source}: metadata holds NaN or an infinity, which JSON "
                                        "cannot hold") from None
        raise InvalidParameterError(f"{source}: metadata is not JSON-serializable ({error})") from None
    except (TypeError, RecursionError) as error:
        raise InvalidParameterError(f"{source}: metadata is not JSON-serializable ({error})") from None


def normalize_filter(pre_filter):
    """A portable metadata filter as ``{key: [allowed values]}``, or None.

    ``{"key": value}`` keeps records whose ``metadata[key] == value``; ``{"key": [v1, v2]}`` those
    whose value is any of them; several keys must all hold. Keys may name nested fields with dots
    (``"camera.make"``). Values are JSON scalars (str, int, float, bool).
    """
    if pre_filter is None:
        return None
    if not isinstance(pre_filter, dict) or not pre_filter:
        raise InvalidParameterError(f"pre_filter={pre_filter!r}: must be a non-empty dict")
    normalized = {}
    for key, value in pre_filter.items():
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        if not isinstance(key, str) or not key or not values or not all(
                isinstance(v, (str, int, float, bool)) for v in values):
            raise InvalidParameterError(
                f"pre_filter={pre_filter!r}: keys must be names and values strings, numbers or "
                f"booleans (or lists of them)")
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise InvalidParameterError(f"pre_filter={pre_filter!r}: NaN and infinities match "
                                        "nothing stored (metadata cannot hold them)")
        if any(record_path(v) != v for v in [key, *values] if isinstance(v, str)):
            raise InvalidParameterError(f"pre_filter={pre_filter!r}: text that is not valid "
                                        "UTF-8 matches nothing stored (metadata cannot hold it)")
        normalized[key] = values
    return normalized


def metadata_value(metadata, key):
    """``metadata[key]``, following dots into nested dicts; a sentinel when absent."""
    value = metadata
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def filter_matches(metadata, normalized_filter):
    """Whether metadata passes a filter from ``normalize_filter`` (the reference semantics that every
    driver's own translation follows; ``True`` never equals ``1`` here, unlike in Python)."""
    if normalized_filter is None:
        return True
    for key, allowed in normalized_filter.items():
        value = metadata_value(metadata or {}, key)
        if not any(type(value) is type(v) and value == v or _same_number(value, v) for v in allowed):
            return False
    return True


def _same_number(a, b):
    numbers = (int, float)
    return (type(a) in numbers and type(b) in numbers and a == b)


class _Missing:
    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()
