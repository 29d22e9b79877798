"""What the fuzzers check: for any input, a result or an ``image_match.errors`` exception, never
another exception, a hang or a wrong kind of result.

Each check takes one input and raises ``AssertionError`` (or lets an unexpected exception out)
when the code under test misbehaves; ``fuzz/run.py`` feeds them atheris' coverage-guided inputs,
``tests/test_fuzz.py`` runs a short round of it and hypothesis' properties in the suite.

- ``image``: bytes (mutated real photos in every format Pillow reads) through the loader and the
  signature: a (648,) int8 signature of values in -2..2, or an ``ImageLoadError``.
- ``store_url``: text through the store URL parsers (``drivers.parse_database_url``, the search
  engines' URL parser, ingestion's ``absolute_sqlite``): a result, or ``InvalidParameterError``.
- ``key_value``: lists of ``KEY=VALUE`` texts through the CLI's ``--metadata`` and ``--filter``
  parsing: a result that the store accepts as metadata or as a filter, or
  ``InvalidParameterError``.
"""

import numpy as np

from image_match.cli_common import parse_filter, parse_metadata
from image_match.drivers import parse_database_url
from image_match.errors import ImageLoadError, InvalidParameterError
from image_match.goldberg import ImageSignature
from image_match.records import check_metadata, normalize_filter

_SIGNER = ImageSignature()


def check_image(data):
    try:
        signature = _SIGNER.generate_signature(data)
    except ImageLoadError:
        return
    assert isinstance(signature, np.ndarray) and signature.dtype == np.int8, signature
    assert signature.shape == (_SIGNER.sig_length,), signature.shape
    assert np.abs(signature).max(initial=0) <= 2, signature


def check_store_url(text):
    from image_match.drivers.elasticsearch import _parse_url
    from image_match.tasks.submit import absolute_sqlite

    try:
        kind, target = parse_database_url(text)
    except InvalidParameterError:
        return
    assert kind in ("sqlite", "search") and isinstance(target, str) and target
    if kind == "sqlite":
        assert "\x00" not in target
        assert isinstance(absolute_sqlite(text), str)
        return
    try:
        address, index, username, password = _parse_url(target)
    except InvalidParameterError:
        return
    assert address.startswith(("http://", "https://")) and index, (address, index)
    assert (username is None) == (password is None) or username is not None


def check_key_values(texts):
    try:
        metadata = parse_metadata(texts)
    except InvalidParameterError:
        pass
    else:
        if metadata is not None:
            assert check_metadata(metadata, "fuzz") == metadata  # the store keeps it as it is
    try:
        pre_filter = parse_filter(texts)
    except InvalidParameterError:
        return
    if pre_filter is not None:
        normalize_filter(pre_filter)  # and searches with it


def split_texts(data):
    """A list of texts from fuzzer bytes: NUL-separated, decoded as a command line's are."""
    import os

    return [os.fsdecode(part) for part in data.split(b"\0")] if data else []


TARGETS = {
    "image": (check_image, lambda data: data),
    "store_url": (check_store_url, lambda data: data.decode("utf-8", "surrogateescape")),
    "key_value": (check_key_values, split_texts),
}
