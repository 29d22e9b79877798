"""A real HTTP server on 127.0.0.1 for tests, with routes registered per test.

    def test_something(http_server):
        url = http_server.serve_bytes("/a.jpg", jpeg_bytes)
        url = http_server.serve_status("/busy", 503, headers={"Retry-After": "7"})
        url = http_server.redirect("/old", "/a.jpg")
        http_server.route("/custom", lambda request: respond(request, 200, b"..."))
        assert http_server.hits("/a.jpg") == 1

The server listens on a free port in a background thread and answers each request in its own
thread (so tests can count simultaneous requests). Every response closes its connection. A route
is a function of the :class:`http.server.BaseHTTPRequestHandler` handling the request; the helpers
below cover the usual cases (static bytes, a status, redirects, failing N times, slow, endless,
chunked, a lying Content-Length) and :func:`respond` writes a response from a custom route.
Delays use :meth:`HTTPTestServer.sleep`, which returns early when the server closes, so a test never
waits for a sleeping route to finish. Pass ``tls=`` an ``ssl.SSLContext`` (server side) to serve
https. ``host`` may be another loopback address such as ``127.0.0.2`` for a second server, or ``::1``.
"""

import socket
import ssl
import sys
import threading
import traceback
from collections import Counter, namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

Request = namedtuple("Request", "method path headers")


def respond(request, status, body=b"", content_type=None, headers=None, chunked=False,
            chunk_size=None, delay_between=0.0):
    """Write a whole response on ``request``: ``Content-Length`` unless ``chunked``; the body goes out
    in pieces of ``chunk_size`` bytes (default: all at once) with ``delay_between`` seconds between."""
    request.send_response(status)
    if content_type:
        request.send_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        request.send_header(name, str(value))
    if chunked:
        request.send_header("Transfer-Encoding", "chunked")
    elif "Content-Length" not in (headers or {}):
        request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    size = chunk_size or max(len(body), 1)
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    for number, piece in enumerate(pieces):
        if number and delay_between and not request.server.app.sleep(delay_between):
            return
        request.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
    if chunked:
        request.wfile.write(b"0\r\n\r\n")


class HTTPTestServer:
    """A threaded HTTP(S) server on ``host`` (default 127.0.0.1) and a free port; see the module doc."""

    def __init__(self, host="127.0.0.1", tls=None):
        self.tls = tls
        self.requests = []  # every Request received, in order
        self.closing = threading.Event()
        self._routes = {}
        self._lock = threading.Lock()
        self._hits = Counter()
        self._active = Counter()
        self._peak = Counter()
        self._server = (_Server6 if ":" in host else _Server)((host, 0), _Handler)
        self._server.app = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"HTTPTestServer:{self.port}", daemon=True)
        self._thread.start()

    @property
    def host(self):
        return self._server.server_address[0]

    @property
    def port(self):
        return self._server.server_address[1]

    def url(self, path="/", host=None):
        """The absolute URL of ``path`` on this server, optionally through another host name."""
        host = host or self.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def close(self):
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def sleep(self, seconds):
        """Wait ``seconds``; False if the server started closing meanwhile (the route should return)."""
        return not self.closing.wait(seconds)

    # -- what was received ------------------------------------------------------------------
    def hits(self, path):
        """How many requests arrived for ``path`` (query string ignored)."""
        with self._lock:
            return self._hits[path]

    def peak_concurrency(self, path=None):
        """The most requests for ``path`` (or for any path, if None) that were handled at once.

        A request counts from its arrival until its answer starts (``slow`` routes) or its handler
        returns: a client can read a whole answer, and send its next request, before the thread
        that wrote it is scheduled again, so counting to the handler's return would see requests
        overlap that never did for the client."""
        with self._lock:
            return self._peak[path]

    # -- routes -----------------------------------------------------------------------------
    def route(self, path, handler):
        """Answer requests for ``path`` with ``handler(request)``; returns the URL of ``path``."""
        with self._lock:
            self._routes[path] = handler
        return self.url(path)

    def serve_bytes(self, path, body, content_type="image/jpeg", status=200, headers=None,
                    chunked=False, chunk_size=None):
        return self.route(path, lambda request: respond(request, status, body, content_type, headers,
                                                        chunked, chunk_size))

    def serve_status(self, path, status, body=b"", headers=None, content_type="text/plain"):
        return self.serve_bytes(path, body, content_type, status, headers)

    def redirect(self, path, location, status=302):
        """Redirect ``path`` to ``location`` (absolute, or relative to this server)."""
        return self.serve_bytes(path, b"", None, status, {"Location": location})

    def fail_then_serve(self, path, failures, body, content_type="image/jpeg", status=500,
                        headers=None):
        """Answer the first ``failures`` requests with ``status`` (and ``headers``), then ``body``."""
        def handler(request):
            if self.hits(path) <= failures:
                respond(request, status, b"failing", "text/plain", headers)
            else:
                respond(request, 200, body, content_type)
        return self.route(path, handler)

    def slow(self, path, body, delay_before=0.0, delay_between=0.0, chunk_size=1,
             content_type="image/jpeg"):
        """Wait ``delay_before`` seconds before the headers, then send ``body`` in ``chunk_size``
        pieces ``delay_between`` seconds apart."""
        def handler(request):
            if self.sleep(delay_before):
                self._answering(request)
                respond(request, 200, body, content_type, chunk_size=chunk_size,
                        delay_between=delay_between)
        return self.route(path, handler)

    def endless(self, path, piece=b"\xff\xd8\xff" + b"\x00" * 65533, content_type="image/jpeg",
                chunked=False):
        """Send ``piece`` again and again until the client hangs up (no Content-Length)."""
        def handler(request):
            request.send_response(200)
            request.send_header("Content-Type", content_type)
            request.send_header("Transfer-Encoding" if chunked else "Connection",
                                "chunked" if chunked else "close")
            request.end_headers()
            frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            while not self.closing.is_set():
                request.wfile.write(frame)
        return self.route(path, handler)

    def lying_length(self, path, length, body=b"\xff\xd8\xff\xe0", hold=0.0, content_type="image/jpeg"):
        """Announce ``Content-Length: length``, send only ``body``, wait ``hold`` seconds, hang up."""
        def handler(request):
            respond(request, 200, body, content_type, {"Content-Length": length})
            self.sleep(hold)
        return self.route(path, handler)

    # -- called by the request threads ------------------------------------------------------
    def _dispatch(self, request):
        path = request.path.split("?", 1)[0]
        with self._lock:
            self.requests.append(Request(request.command, request.path, dict(request.headers)))
            self._hits[path] += 1
            handler = self._routes.get(path)
            request.active_keys = (path, None)
            for key in request.active_keys:
                self._active[key] += 1
                self._peak[key] = max(self._peak[key], self._active[key])
        try:
            if handler is None:
                respond(request, 404, b"no route", "text/plain")
            else:
                handler(request)
        finally:
            self._answering(request)

    def _answering(self, request):
        """The request stops counting towards ``peak_concurrency`` (once)."""
        with self._lock:
            for key in request.active_keys:
                self._active[key] -= 1
            request.active_keys = ()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        # A client that hangs up mid-response (the fetcher enforcing a limit) is expected.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            traceback.print_exc()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a client that never sends its request does not pin a thread for ever

    def setup(self):
        if self.server.app.tls is not None:
            self.request.settimeout(self.timeout)
            self.request = self.server.app.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            if self.server.app.tls is not None:  # the server closes the raw socket, not the TLS one
                self.request.close()

    def handle_one_request(self):
        super().handle_one_request()
        self.close_connection = True

    def do_GET(self):
        self.server.app._dispatch(self)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format, *args):
        pass


@pytest.fixture
def http_server():
    """A fresh :class:`HTTPTestServer` on 127.0.0.1, closed after the test."""
    with HTTPTestServer() as server:
        yield server
