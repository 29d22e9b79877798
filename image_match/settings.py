"""Configuration from ``IMAGE_MATCH_*`` environment variables, read in one place.

``current()`` reads the environment each time it is called, so a process (a test, a worker started
with a different environment) always sees what its environment says now. Every setting has a
default that works on one machine with nothing configured.

========================================  ===============================================  =====================
variable                                  meaning                                          default
========================================  ===============================================  =====================
IMAGE_MATCH_DATABASE                      the store, as an ``open_database`` URL           an SQLite file in the
                                                                                           user's data directory
IMAGE_MATCH_BROKER_URL                    Celery broker                                    redis://localhost:6379/0
IMAGE_MATCH_RESULT_TTL                    seconds a job's counts and failures are kept     604800 (7 days)
IMAGE_MATCH_MAX_IMAGE_PIXELS              larger images are refused (decompression bombs)  178956970
IMAGE_MATCH_FETCH_CONNECT_TIMEOUT         seconds to connect to a URL's host               5
IMAGE_MATCH_FETCH_READ_TIMEOUT            seconds to wait for each read from the host      15
IMAGE_MATCH_FETCH_MAX_BYTES               larger downloads are refused                     52428800 (50 MiB)
IMAGE_MATCH_FETCH_MAX_REDIRECTS           redirects followed before giving up              5
IMAGE_MATCH_FETCH_ALLOWLIST               host names and CIDR ranges allowed although      (empty)
                                          private, loopback or reserved (comma-separated)
IMAGE_MATCH_FETCH_PER_HOST_CONCURRENCY    simultaneous fetches per host in one process     4
IMAGE_MATCH_VISIBILITY_TIMEOUT            the longest a batch may run; the broker          600
                                          delivers again a message unsettled this long
IMAGE_MATCH_INGEST_LEASE                  seconds a worker holds a batch without renewing  30
                                          its lease: a dead worker's batches come back
                                          after it (a live one renews every third of it)
IMAGE_MATCH_INGEST_THREADS                downloads at a time per ingestion worker         8
                                          process
IMAGE_MATCH_INGEST_MAX_RETRIES            retries of a transient ingestion failure         8
IMAGE_MATCH_INGEST_RETRY_DELAY            seconds before the first retry (then doubled)    2
IMAGE_MATCH_SIGNATURE_KERNEL              ``numpy``: sign with the numpy reference even    auto
                                          where the compiled kernel is built
                                          (``image_match.kernel``)
IMAGE_MATCH_API_KEYS                      the service's keys, comma-separated: ``KEY``     (none: the service
                                          may read and write, ``KEY:read`` only read       answers loopback only)
IMAGE_MATCH_NO_AUTH                       serve without keys on any address (--no-auth)     false
IMAGE_MATCH_MAX_UPLOAD_BYTES              larger request bodies are refused (HTTP 413)      20971520 (20 MiB)
IMAGE_MATCH_ALL_ORIENTATIONS              dsys/match's /search default for                  true
                                          all_orientations
IMAGE_MATCH_REQUEST_TIMEOUT               seconds a request may take (then HTTP 503)        30
IMAGE_MATCH_SIGNING_PROCESSES             signing processes per service worker             cores / workers
IMAGE_MATCH_SIGNING_QUEUE                 images a service worker may have waiting to be    64
                                          signed; more are refused (HTTP 503)
IMAGE_MATCH_STORE_CONNECTIONS             store calls at a time per service worker          8
IMAGE_MATCH_MEDIA_ROOTS                   folders whose image files the moderation page     (none: no local
                                          may show (``os.pathsep``-separated, as PATH)      file is shown)
========================================  ===============================================  =====================

``image_match.tasks.config`` explains the ingestion settings' interplay, ``image_match.server``
the service's.
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidParameterError

PREFIX = "IMAGE_MATCH_"
MAX_SECONDS = 1e9  # below every platform's threading.TIMEOUT_MAX


def default_database_url():
    """The embedded store used when nothing says otherwise: ``images.db`` in the user's data directory."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return "sqlite:///" + os.path.join(base, "image-match", "images.db")


@dataclass(frozen=True)
class Settings:
    database: str
    broker_url: str
    result_ttl: int
    max_image_pixels: int
    fetch_connect_timeout: float
    fetch_read_timeout: float
    fetch_max_bytes: int
    fetch_max_redirects: int
    fetch_allowlist: tuple
    fetch_per_host_concurrency: int
    visibility_timeout: float
    ingest_lease: float
    ingest_threads: int
    ingest_max_retries: int
    ingest_retry_delay: float
    signature_kernel: str
    api_keys: tuple
    no_auth: bool
    max_upload_bytes: int
    all_orientations: bool
    request_timeout: float
    signing_processes: int
    signing_queue: int
    store_connections: int
    media_roots: tuple


def auto_or_numpy(raw):
    if raw not in ("auto", "numpy"):
        raise ValueError(raw)
    return raw


def _split_list(raw):
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _split_paths(raw):
    # Folders as PATH lists them: a folder's name may hold a comma.
    return tuple(part for part in raw.split(os.pathsep) if part.strip())


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def boolean(raw):
    if raw.lower() not in _TRUE + _FALSE:
        raise ValueError(raw)
    return raw.lower() in _TRUE


# name (after the prefix) -> (default, converter, field of Settings, smallest value allowed)
_VARIABLES = {
    "DATABASE": (None, str, "database", None),
    "BROKER_URL": ("redis://localhost:6379/0", str, "broker_url", None),
    "RESULT_TTL": (7 * 24 * 3600, int, "result_ttl", 1),
    "MAX_IMAGE_PIXELS": (178_956_970, int, "max_image_pixels", 0),
    "FETCH_CONNECT_TIMEOUT": (5.0, float, "fetch_connect_timeout", 0),
    "FETCH_READ_TIMEOUT": (15.0, float, "fetch_read_timeout", 0),
    "FETCH_MAX_BYTES": (50 * 1024 * 1024, int, "fetch_max_bytes", 0),
    "FETCH_MAX_REDIRECTS": (5, int, "fetch_max_redirects", 0),
    "FETCH_ALLOWLIST": ((), _split_list, "fetch_allowlist", None),
    "FETCH_PER_HOST_CONCURRENCY": (4, int, "fetch_per_host_concurrency", 0),
    "VISIBILITY_TIMEOUT": (600.0, float, "visibility_timeout", 1),
    "INGEST_LEASE": (30.0, float, "ingest_lease", 3),
    "INGEST_THREADS": (8, int, "ingest_threads", 1),
    "INGEST_MAX_RETRIES": (8, int, "ingest_max_retries", 0),
    "INGEST_RETRY_DELAY": (2.0, float, "ingest_retry_delay", 0),
    "SIGNATURE_KERNEL": ("auto", auto_or_numpy, "signature_kernel", None),
    "API_KEYS": ((), _split_list, "api_keys", None),
    "NO_AUTH": (False, boolean, "no_auth", None),
    "MAX_UPLOAD_BYTES": (20 * 1024 * 1024, int, "max_upload_bytes", 1),
    "ALL_ORIENTATIONS": (True, boolean, "all_orientations", None),
    "REQUEST_TIMEOUT": (30.0, float, "request_timeout", 0.1),
    "SIGNING_PROCESSES": (0, int, "signing_processes", 0),
    "SIGNING_QUEUE": (64, int, "signing_queue", 1),
    "STORE_CONNECTIONS": (8, int, "store_connections", 1),
    "MEDIA_ROOTS": ((), _split_paths, "media_roots", None),
}


def get(name):
    """One setting, by its variable name without the prefix (``get("MAX_IMAGE_PIXELS")``).

    Cheaper than ``current()`` on hot paths, which read a single setting per image.
    """
    default, convert, _, minimum = _VARIABLES[name]
    raw = os.environ.get(PREFIX + name)
    if raw is None or raw.strip() == "":
        value = default
    else:
        try:
            value = convert(raw.strip())
        except ValueError:
            raise InvalidParameterError(
                f"{PREFIX}{name}={raw!r}: not a valid {convert.__name__}") from None
        if isinstance(value, float) and not (math.isfinite(value) and value <= MAX_SECONDS):
            # Timeouts and delays: infinity or NaN would reach sockets and locks as an error.
            raise InvalidParameterError(
                f"{PREFIX}{name}={raw!r}: must be a finite number of at most {MAX_SECONDS:g}")
        if minimum is not None and value < minimum:
            raise InvalidParameterError(f"{PREFIX}{name}={raw!r}: must be at least {minimum:g}")
    if name == "DATABASE" and value is None:
        value = default_database_url()
    return value


def current():
    """All settings as the environment gives them now."""
    return Settings(**{field: get(name) for name, (_, _, field, _) in _VARIABLES.items()})
