"""``serve``: check what can be checked before serving, bind, say where, run uvicorn.

Before anything listens: the keys parse, a host that is not loopback has keys (or ``no_auth``),
and the store opens (a bad URL or an engine that does not answer stops here, not at the first
request). The socket is bound here, so that ``--port 0`` serves on a free port and the printed
URL is the real one; the workers (``--workers N``, separate processes) share it and read the
rest of their configuration from the environment, as every ``IMAGE_MATCH_*`` setting.

SIGTERM or Ctrl-C stop the service gracefully: no new connection is taken, requests in flight
finish (up to the request timeout), then the signing processes and the store are closed.
"""

import ipaddress
import os
import shutil
import signal
import socket
import tempfile

from .. import __version__, settings
from ..drivers import open_database
from ..errors import ImageMatchError, InvalidParameterError
from ..extras import install_command
from .auth import Keys

APP = "image_match.server.app:create_app"
#: Connections one worker takes at a time; uvicorn answers 503 beyond (never an unbounded pile).
MAX_CONNECTIONS = 1024


def serve(database=None, host="127.0.0.1", port=8000, workers=1, no_auth=False, echo=print):
    """Run the service until SIGTERM or Ctrl-C.

    Parameters
    ----------
    database : str, optional
        The store's URL; default ``IMAGE_MATCH_DATABASE``, else the embedded SQLite file.
    host, port : str, int
        Where to listen; port 0 takes a free one.
    workers : int
        Worker processes (each with its signing processes: cores / workers by default).
    no_auth : bool
        Serve without API keys on an address that is not loopback.
    echo : callable
        Told the line saying where the service listens.

    Raises
    ------
    InvalidParameterError
        A non-loopback host without keys, malformed keys or settings.
    ImageMatchError
        The server's extra is not installed; the store cannot be opened.
    """
    _need_server_extra()
    import uvicorn

    config = settings.current()
    keys = Keys.parse(config.api_keys)
    no_auth = no_auth or config.no_auth
    if not keys and not no_auth and not is_loopback(host):
        raise InvalidParameterError(
            f"--host {host}: without API keys (IMAGE_MATCH_API_KEYS) the service listens on "
            "loopback only; set keys, or give --no-auth to serve anyone who can reach it")
    if type(workers) is not int or workers < 1:
        raise InvalidParameterError(f"--workers {workers!r}: must be a positive integer")
    database = database or config.database
    _check_store(database)

    os.environ["IMAGE_MATCH_DATABASE"] = database
    if no_auth:
        os.environ["IMAGE_MATCH_NO_AUTH"] = "true"
    if not config.signing_processes:
        os.environ["IMAGE_MATCH_SIGNING_PROCESSES"] = str(max(1, (os.cpu_count() or 1) // workers))
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="image-match-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    sock = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    echo(f"image-match {__version__} serving {_redacted(database)} on "
         f"http://{shown}:{sock.getsockname()[1]} (pid {os.getpid()}, {workers} worker"
         f"{'s' if workers > 1 else ''}, {'API keys' if keys else 'no API keys'})")
    uvicorn_config = uvicorn.Config(
        APP, factory=True, workers=workers, lifespan="on", access_log=False,
        log_config=_LOG_CONFIG, limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=int(config.request_timeout) + 5)
    server = uvicorn.Server(uvicorn_config)
    # uvicorn shuts down gracefully on SIGTERM and SIGINT, then raises the signal again with the
    # handlers it found: with these, the process then ends here, cleaned up, with status 0.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if workers == 1:
            server.run(sockets=[sock])
        else:
            from uvicorn.supervisors import Multiprocess

            try:
                supervisor = Multiprocess(uvicorn_config, sockets=[sock])
            except TypeError:  # uvicorn before the supervisor built its own target
                supervisor = Multiprocess(uvicorn_config, target=server.run, sockets=[sock])
            supervisor.run()
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if workers == 1 and not server.started:
        raise ImageMatchError("the service did not start (see the lines above)")


def _need_server_extra():
    import importlib.util

    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"),
                            ("prometheus_client", "prometheus-client"),
                            ("python_multipart", "python-multipart")):
        if importlib.util.find_spec(module) is None and not (
                module == "python_multipart" and importlib.util.find_spec("multipart")):
            raise ImageMatchError(f"the service needs {package}: "
                                  f"{install_command('server')}")


class _Stopped(Exception):
    """SIGTERM, once uvicorn has finished with it."""


def _stop(number, frame):
    raise _Stopped


def is_loopback(host):
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_store(database):
    store = open_database(database, create=True)
    close = getattr(store, "close", None)
    if close is not None:
        close()


def _bind(host, port):
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # IPPROTO_TCP said, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # the connections of a socket that says so; with it on, an answer's body waits for the
    # client's delayed ACK of its headers (40 ms a request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as error:
        sock.close()
        raise ImageMatchError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _redacted(url):
    from ..tasks.jobs import mask_password

    return mask_password(url)


# uvicorn's own lines (startup failures, errors) and the service's JSON access lines, to stderr.
_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(message)s"},
                   "uvicorn": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"access": {"class": "logging.StreamHandler", "formatter": "plain",
                            "stream": "ext://sys.stderr"},
                 "other": {"class": "logging.StreamHandler", "formatter": "uvicorn",
                           "stream": "ext://sys.stderr"}},
    "loggers": {"uvicorn": {"handlers": ["other"], "level": "WARNING", "propagate": False},
                "image_match.access": {"handlers": ["access"], "level": "INFO",
                                       "propagate": False},
                "image_match.server": {"handlers": ["other"], "level": "INFO",
                                       "propagate": False}},
}
