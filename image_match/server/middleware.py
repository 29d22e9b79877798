"""The ASGI middleware around every request: ``Observe`` (metrics, structured access log, request
id) outside, ``Guard`` (loopback only without keys, body cap, time limit) inside it.

Both are plain ASGI: they see every request, the ones no route matches included, at the cost of
a few function calls.
"""

import asyncio
import ipaddress
import json
import logging
import re
import time
import uuid
from datetime import datetime, timezone

from . import metrics

access_log = logging.getLogger("image_match.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class BodyTooLarge(Exception):
    """A request body longer than the cap (raised while it is read)."""

    def __init__(self, limit):
        self.limit = limit
        super().__init__(f"the request body is larger than {limit} bytes "
                         "(IMAGE_MATCH_MAX_UPLOAD_BYTES)")


class Guard:
    """Refuses what a request may not do before the application sees it.

    Parameters
    ----------
    render : callable
        ``render(path, status, message, headers)``: the error response for a path (dsys/match's
        envelope or a problem document).
    max_body : int
        Bytes a request body may have: a larger ``Content-Length`` is refused before reading,
        and a body that grows past it while read (chunked) raises ``BodyTooLarge``.
    timeout : float
        Seconds a request may take, its body's upload included; then 503.
    loopback_only : bool
        Answer only clients on a loopback address (a service without API keys).
    """

    def __init__(self, app, render, max_body, timeout, loopback_only):
        self.app = app
        self.render = render
        self.max_body = max_body
        self.timeout = timeout
        self.loopback_only = loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.loopback_only and not _is_loopback((scope.get("client") or ("",))[0]):
            return await self._refuse(scope, receive, send, 403,
                                      "this service has no API keys (IMAGE_MATCH_API_KEYS) and "
                                      "answers only loopback clients")
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            status = 413 if length.isdigit() else 400
            return await self._refuse(scope, receive, send, status,
                                      str(BodyTooLarge(self.max_body)) if status == 413
                                      else "Content-Length is not a number")
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge(self.max_body)
            return message

        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, counted, tracked), self.timeout)
        except asyncio.TimeoutError:
            if started:
                raise
            await self.render(path, 503, f"the request took longer than {self.timeout:g} s "
                              "(IMAGE_MATCH_REQUEST_TIMEOUT)",
                              {"Retry-After": "1"})(scope, receive, send)
        except BodyTooLarge as error:
            if started:
                raise
            await self.render(path, 413, str(error), {"Connection": "close"})(scope, receive, send)

    async def _refuse(self, scope, receive, send, status, message):
        await self.render(scope["path"], status, message, {"Connection": "close"})(
            scope, receive, send)


class Observe:
    """Counts and times every request (``metrics``), writes one JSON line per request to the
    ``image_match.access`` logger, and gives each an ``X-Request-ID`` (the client's, when it
    sent a sane one)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status, sent = 500, 0

        async def observed(message):
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            metrics.REQUESTS.labels(template, method, str(status)).inc()
            metrics.LATENCY.labels(template, method).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                query = scope.get("query_string", b"").decode("latin-1")
                access_log.info(json.dumps({
                    "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "request_id": request_id, "client": client[0], "method": method,
                    "path": scope["path"] + (f"?{query}" if query else ""), "route": template,
                    "status": status, "bytes": sent, "ms": round(seconds * 1000, 2),
                    "user_agent": _header(scope, b"user-agent"),
                }, separators=(",", ":")))


def _header(scope, name):
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
