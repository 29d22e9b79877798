"""The stores: one module per engine, and ``open_database`` to open one from a URL.

================================================  ===============================================
URL                                               store
================================================  ===============================================
``sqlite:///images.db``, ``sqlite:////abs/x.db``   ``SignatureSQLite``: one file, no server
                                                   (``images.db`` relative, ``/abs/x.db``
                                                   absolute)
``http(s)://[user:pass@]host:port/index``          ``SignatureES`` on Elasticsearch 7/8/9 or
                                                   OpenSearch 1/2/3, detected from ``GET /``
================================================  ===============================================
"""

from urllib.parse import unquote, urlsplit

from ..errors import InvalidParameterError
from ..goldberg import ORIENTATION_MARGIN
from ..signature_database_base import DEFAULT_CUTOFF, SEARCH_DEFAULTS
from ..words import DEFAULT_BANDS

#: image-match 2's defaults for a store it creates: keyword arguments of the drivers' constructors,
#: which ``open_database`` (and so the CLI, ingestion and the service) gives a NEW store for those
#: the caller did not give. The store records them; an existing store keeps what it recorded,
#: whoever opens it. The 1.x constructors called directly keep 1.x's defaults instead.
NEW_STORE_DEFAULTS = {
    # Decode large JPEGs at a reduced DCT scale (others box-averaged), the short side still at
    # least 128 pixels: several times faster, a signature moves by a median 0.05 from the full
    # decode (far below the cutoff), and copies are found as often (README.rst, "Compatibility with
    # image-match 1.x"; benchmarks/draft_distance.py, benchmarks/accuracy.py). 1.x: False.
    "draft": True,
    # 5 pairs in 10 million unrelated photos are closer than 0.40, 4 in 100,000 closer than 1.x's
    # 0.45, while the copies are still found (README.rst, "What the cutoff means").
    "distance_cutoff": DEFAULT_CUTOFF,
    # A record's id is a hash of its path (records.default_id): adding the same path again
    # replaces it, so bulk ingestion delivered twice writes nothing twice. 1.x: "new", a new
    # record each time. (The CLI's --id-from content gives ids from the bytes, item by item.)
    "ids": "path",
    # A search also tries the query's mirror image and the grids its original would have were it
    # a light central crop (5-10% cut off each side): on the dev corpus they find every mirror
    # image and 99-100% of such crops (58% and 10% without) with as few unrelated pairs below the
    # cutoff, for 3 more query signatures (README.rst, "Crops, bars, rotations and insets").
    # 1.x: the query alone.
    "search_defaults": SEARCH_DEFAULTS,
    # A match through another orientation than the query's own (its mirror image, or a flip or
    # a turn with all_orientations) counts 0.07 more: the orientations then leave as many
    # unrelated pairs below the cutoff as the query alone, and mirrored copies are still found
    # (a median 0.02 from their originals). 1.x: 0, none.
    "orientation_margin": ORIENTATION_MARGIN,
    # Candidates by bands of signs spread over the signature: among many records they return
    # the copies the exact distance accepts, where 1.x's words lose about one in ten (README.rst,
    # "Search at scale"; benchmarks/search_scale.py). 1.x: "words".
    "candidates": DEFAULT_BANDS,
}


_FORMS = "expected sqlite:///file.db or http(s)://host:port/index"


def parse_database_url(url):
    """``("sqlite", path)`` or ``("search", url)`` for a store URL, or InvalidParameterError.

    An SQLite URL names its file after ``sqlite://`` and an empty host (or ``localhost``), as
    SQLAlchemy's do: ``sqlite:///images.db`` is relative, ``sqlite:////srv/images.db`` absolute.
    ``sqlite:images.db`` and ``sqlite:/srv/images.db`` are refused: read loosely, both would name
    a file relative to wherever the command runs.
    """
    if not isinstance(url, str) or not url:
        raise InvalidParameterError(f"database URL {url!r}: {_FORMS}")
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError as error:  # an unclosed IPv6 bracket, a port that is not a number
        raise InvalidParameterError(f"{url}: not a valid URL ({error}); {_FORMS}") from None
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if not url[len("sqlite:"):].startswith("//"):
            raise InvalidParameterError(
                f"{url}: an SQLite URL starts with sqlite:// and an empty host: sqlite:///"
                "relative.db or sqlite:////absolute/path.db")
        if parts.netloc not in ("", "localhost"):
            raise InvalidParameterError(f"{url}: an sqlite URL has no host: sqlite:///relative.db "
                                        "or sqlite:////absolute/path.db")
        # %XX escapes are a file name's bytes, which need not be UTF-8 (as a file name's need not).
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path,
                       errors="surrogateescape")
        if not path:
            raise InvalidParameterError(f"{url}: no file name (sqlite:///images.db)")
        if "\x00" in path:
            raise InvalidParameterError(f"{url!r}: a file name cannot hold a NUL character")
        return "sqlite", path
    if scheme in ("http", "https"):
        return "search", url  # parsed by the driver, which knows credentials and prefixes
    raise InvalidParameterError(f"{url}: unsupported store ({_FORMS})")


def open_database(url, **kwargs):
    """Open (creating it if needed) the store at ``url``; ``kwargs`` go to the driver.

    A new store gets ``NEW_STORE_DEFAULTS`` for the parameters ``kwargs`` does not give; an
    existing one keeps the parameters it recorded (or a 1.x index, 1.x's). The handle has
    ``refresh_adds=True``: what ``add_image``/``add_images`` stored, the next search finds.

    Raises
    ------
    InvalidParameterError
        The URL is not one of the forms above (``parse_database_url``).
    DatabaseError
        The store cannot be reached or opened; the message names the URL.
    """
    kind, target = parse_database_url(url)
    if kind == "sqlite":
        from .sqlite import SignatureSQLite

        return SignatureSQLite(target, **_with_defaults(kwargs))
    from .elasticsearch import open_search_engine

    return open_search_engine(target, **_with_defaults(kwargs))


def _with_defaults(kwargs):
    # refresh_adds: a record add_image stored is found by the next search, also on an engine.
    return {"new_store_defaults": NEW_STORE_DEFAULTS, "refresh_adds": True, **kwargs}
