"""The stores: one module per engine, and ``open_database`` to open one from a URL.

================================================  ===============================================
URL                                               store
================================================  ===============================================
``sqlite:///images.db``, ``sqlite:////abs/x.db``   ``SignatureSQLite``: one file, no server
``http(s)://[user:pass@]host:port/index``          ``SignatureES`` on Elasticsearch 7/8/9 or
                                                   OpenSearch 1/2/3, detected from ``GET /``
================================================  ===============================================
"""

from urllib.parse import unquote, urlsplit

from ..errors import InvalidParameterError


def open_database(url, **kwargs):
    """Open (creating it if needed) the store at ``url``; ``kwargs`` go to the driver.

    Raises
    ------
    InvalidParameterError
        The URL is not one of the forms above.
    DatabaseError
        The store cannot be reached or opened; the message names the URL.
    """
    if not isinstance(url, str) or not url:
        raise InvalidParameterError(f"database URL {url!r}: expected sqlite:///file.db or "
                                    "http(s)://host:port/index")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc not in ("", "localhost"):
            raise InvalidParameterError(f"{url}: an sqlite URL has no host: sqlite:///relative.db "
                                        "or sqlite:////absolute/path.db")
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path:
            raise InvalidParameterError(f"{url}: no file name (sqlite:///images.db)")
        from .sqlite import SignatureSQLite

        return SignatureSQLite(path, **kwargs)
    if scheme in ("http", "https"):
        from .elasticsearch import open_search_engine

        return open_search_engine(url, **kwargs)
    raise InvalidParameterError(
        f"{url}: unsupported store (expected sqlite:///file.db or http(s)://host:port/index)")
