"""Fetch one image over HTTP(S) without letting a URL reach what it should not.

This is the only place image-match downloads anything: the loader calls :func:`fetch` for an
``http(s)://`` input and the ingestion workers call it for every URL of a job. It returns a
:class:`FetchedImage` or raises :class:`~image_match.errors.FetchError`, whose message is one line,
``"<url>: <reason>"``. Nothing else escapes it.

What a fetch guarantees:

- Only ``http`` and ``https``, with no proxy from the environment, cookies, credentials or
  compression; the request is a plain ``GET`` with ``User-Agent: image-match/<version>``.
- No server-side request forgery. The host name is resolved once and every address it resolves to
  is checked (:func:`refused_reason`): loopback, private, link-local, multicast, reserved,
  unspecified, shared (CGNAT) and cloud metadata addresses are refused, also when hidden in an
  IPv4-mapped, NAT64 or 6to4 IPv6 address, unless ``IMAGE_MATCH_FETCH_ALLOWLIST`` names the host or
  a range holding the address. A metadata address needs the host or the exact address listed; no
  range unlocks it. The connection then goes to a checked address itself, never through a second
  lookup (DNS rebinding), with the URL's host in the ``Host`` header and, for https, as SNI and as
  the name the certificate must be valid for. Redirects (301, 302, 303, 307, 308) are followed up
  to ``IMAGE_MATCH_FETCH_MAX_REDIRECTS`` times, each target checked like the first URL before
  anything connects to it.
- Bounded time and memory. Each connection attempt waits at most the connect timeout, each read at
  most the read timeout, and the whole call, redirects and the wait for a per-host slot included,
  at most ``deadline`` seconds: by default ``DEADLINE_FACTOR * (connect_timeout + read_timeout)``,
  80 s with the default settings, time enough for the 50 MiB cap at about 0.7 MB/s while a server
  that drips a byte just before each read timeout cannot hold a worker for ever. Tying it to the
  timeouts means whoever lengthens them for slow hosts lengthens it too, without another setting.
  The body is read in pieces and the fetch stops as soon as it crosses ``max_bytes``; a larger
  ``Content-Length`` is refused before any of the body is read. Only the host name lookup is not
  bounded: ``getaddrinfo`` has no timeout, the system resolver's own applies.
- Only images: the type is sniffed from the first bytes (:func:`sniff_image_type`), never taken
  from ``Content-Type``, and a body that is not an image is refused once its first bytes are in.
- ``FetchError.transient`` says whether retrying later may help (timeouts, lost connections,
  HTTP 408, 429 and 5xx); ``status`` is the HTTP status when a response arrived, and
  ``retry_after`` the server's ``Retry-After`` in seconds, or None.
- At most ``IMAGE_MATCH_FETCH_PER_HOST_CONCURRENCY`` fetches from one host name at a time in a
  process (0: no limit), so a worker with many threads does not hammer one site.
"""

import email.utils
import http.client
import importlib.metadata
import io
import ipaddress
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from http import HTTPStatus
from os import environ
from urllib.parse import quote, urljoin, urlsplit

from . import settings as _settings
from .errors import FetchError, InvalidParameterError

__all__ = ["FetchedImage", "deadline_seconds", "fetch", "refused_reason", "sniff_image_type"]

DEADLINE_FACTOR = 4
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_PIECE = 64 * 1024
_SNIFF_BYTES = 32
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})

_net = ipaddress.ip_network
_addr = ipaddress.ip_address
# Cloud instance metadata and platform endpoints. All but Azure's are inside ranges refused anyway;
# naming them makes the message say what was at stake, and they never fall to an allowlisted range.
METADATA_ADDRESSES = frozenset(map(_addr, [
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean, ...
    "169.254.170.2",    # AWS ECS task metadata and credentials
    "fd00:ec2::254",    # AWS IMDS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "169.254.0.23",     # Tencent Cloud
    "168.63.129.16",    # Azure WireServer: a public address, so listed explicitly
]))
_THIS_NETWORK = _net("0.0.0.0/8")
_SHARED = _net("100.64.0.0/10")
_IETF_PROTOCOL = _net("192.0.0.0/24")
_NAT64 = _net("64:ff9b::/96")  # the well-known prefix; the local-use 64:ff9b:1::/48 is refused


def _version():
    try:
        return importlib.metadata.version("image-match")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


USER_AGENT = f"image-match/{_version()}"


@dataclass(frozen=True)
class FetchedImage:
    """A downloaded image: ``url`` after redirects, the body as ``content``, and the sniffed MIME type."""

    url: str
    content: bytes = field(repr=False)
    content_type: str


def refused_reason(address):
    """Why a fetch may not connect to ``address`` (a string or ``ipaddress`` object), or None.

    The reason is a short label: ``"cloud metadata"``, ``"loopback"``, ``"private"``, ... An IPv6
    address that carries an IPv4 address (mapped, NAT64, 6to4) is judged by the IPv4 address too.
    """
    ip = _addr(address) if isinstance(address, str) else address
    if getattr(ip, "scope_id", None):  # fe80::1%eth0: judge the address, not the zone
        ip = _addr(str(ip).split("%")[0])
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return refused_reason(ip.ipv4_mapped)
        if ip in _NAT64:
            return refused_reason(_addr(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and refused_reason(ip.sixtofour):
            return refused_reason(ip.sixtofour)
    checks = [
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.version == 4 and ip in _THIS_NETWORK, "this network"),
        (ip.version == 4 and ip in _SHARED, "shared address space"),
        (ip.is_reserved, "reserved"),
        (ip.is_private or (ip.version == 4 and ip in _IETF_PROTOCOL), "private"),
        (ip.version == 6 and ip.is_site_local, "site-local"),
        (not ip.is_global, "not globally routable"),
    ]
    return next((reason for refused, reason in checks if refused), None)


def sniff_image_type(head):
    """The MIME type of the image whose file starts with ``head`` (32 bytes suffice), or None."""
    if head.startswith(b"\xff\xd8\xff"):  # JPEG, and MPO, which is JPEG with more frames
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
        return "image/tiff"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "image/bmp"
    if head[:4] == b"\x00\x00\x01\x00" and head[4:6] != b"\x00\x00":  # ICO, at least one image
        return "image/vnd.microsoft.icon"
    if head[4:8] == b"ftyp":
        if head[8:12] in (b"avif", b"avis"):
            return "image/avif"
        if head[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "image/heif"
    return None


def fetch(url, *, settings=None, max_bytes=None, connect_timeout=None, read_timeout=None,
          deadline=None):
    """Download the image at an http(s) ``url``, safely (see the module documentation).

    ``settings`` defaults to :func:`image_match.settings.current`; ``max_bytes``,
    ``connect_timeout`` and ``read_timeout`` (seconds) override its ``fetch_*`` values, and
    ``deadline`` (seconds for the whole call) defaults to
    ``DEADLINE_FACTOR * (connect_timeout + read_timeout)``. Returns a :class:`FetchedImage`; raises
    :class:`~image_match.errors.FetchError` naming ``url``, with the redirect target in the reason
    when a later hop failed.
    """
    if not isinstance(url, str):
        raise InvalidParameterError(f"{url!r}: a URL must be a string")
    s = settings if settings is not None else _settings.current()
    connect_timeout = s.fetch_connect_timeout if connect_timeout is None else connect_timeout
    read_timeout = s.fetch_read_timeout if read_timeout is None else read_timeout
    if deadline is None:
        deadline = deadline_seconds(connect_timeout, read_timeout)
    limits = _Limits(connect_timeout, read_timeout, deadline, time.monotonic() + deadline,
                     s.fetch_max_bytes if max_bytes is None else max_bytes,
                     _Allowlist(s.fetch_allowlist), s.fetch_per_host_concurrency)
    hop_url = url
    for hop in range(s.fetch_max_redirects + 1):
        try:
            result = _fetch_once(hop_url, limits)
        except FetchError as error:
            if hop == 0:
                raise
            raise FetchError(url, f"redirected to {hop_url}: {error.reason}", error.transient,
                         error.status, error.retry_after) from None
        if isinstance(result, FetchedImage):
            return result
        hop_url = result
    raise FetchError(url, f"too many redirects (more than {s.fetch_max_redirects})")


def deadline_seconds(connect_timeout=None, read_timeout=None):
    """The longest a fetch may take: ``DEADLINE_FACTOR * (connect_timeout + read_timeout)``, from
    the settings for a timeout not given. Reading a local file is held to it too (``loading``)."""
    if connect_timeout is None:
        connect_timeout = _settings.get("FETCH_CONNECT_TIMEOUT")
    if read_timeout is None:
        read_timeout = _settings.get("FETCH_READ_TIMEOUT")
    return DEADLINE_FACTOR * (connect_timeout + read_timeout)


@dataclass(frozen=True)
class _Limits:
    connect_timeout: float
    read_timeout: float
    deadline: float
    end: float  # time.monotonic() at which the fetch gives up
    max_bytes: int
    allowlist: "_Allowlist"
    per_host: int

    def remaining(self):
        return self.end - time.monotonic()


class _Allowlist:
    """IMAGE_MATCH_FETCH_ALLOWLIST: host names, and CIDR ranges (a bare address is a range of one)."""

    def __init__(self, entries):
        self.names, self.networks = set(), []
        for entry in entries:
            try:
                self.networks.append(_net(entry.strip("[]"), strict=False))
            except ValueError:
                self.names.add(entry.lower().rstrip("."))

    def allows(self, host, ip, reason):
        if host in self.names:
            return True
        networks = [net for net in self.networks if net.version == ip.version]
        if reason == "cloud metadata":
            networks = [net for net in networks if net.num_addresses == 1]
        return any(ip in net for net in networks)


def _fetch_once(url, limits):
    """One request: the image, or the absolute URL a redirect points to."""
    scheme, host, port, target = _parse(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchError(url, f"cannot resolve host {host} ({e.strerror})",
                     transient=e.errno == socket.EAI_AGAIN) from None
    addresses = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
    for _, sockaddr in addresses:
        ip = _addr(sockaddr[0])
        reason = refused_reason(ip)
        if reason and not limits.allowlist.allows(host, ip, reason):
            raise FetchError(url, f"refused address {ip} ({reason}); to allow it, add {ip} to "
                                  "IMAGE_MATCH_FETCH_ALLOWLIST in the environment of the process "
                                  "that fetches (for ingestion: the workers')")
    with _host_slots.hold(host, limits.per_host, limits.remaining()) as got_slot:
        if not got_slot:
            raise FetchError(url, f"took longer than {limits.deadline:g} s waiting for a free slot "
                              f"for {host} ({limits.per_host} at a time)", transient=True)
        return _exchange(url, scheme, host, port, target, addresses, limits)


def _parse(url):
    """scheme, host (ASCII, for DNS, Host and SNI), port and request target of an http(s) URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        url.encode("utf-8")
    except UnicodeEncodeError:  # a line of a file that is not UTF-8, decoded with escapes
        raise FetchError(url, "invalid URL (not valid UTF-8 text)") from None
    except ValueError as e:
        raise FetchError(url, f"invalid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(url, f"unsupported scheme {scheme!r} (only http and https)" if scheme
                     else "not an absolute http(s) URL")
    host = (parts.hostname or "").rstrip(".")
    try:
        host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise FetchError(url, f"invalid host name {parts.hostname!r}") from None
    if not host:
        raise FetchError(url, "no host name in URL")
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=")
    if parts.query:
        target += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=?")
    return scheme, host, port or (443 if scheme == "https" else 80), target


def _exchange(url, scheme, host, port, target, addresses, limits):
    """Connect to a checked address, send the request and read the response; the image or a
    redirect target, every failure turned into a FetchError that says at which stage it happened."""
    stage, sock, status = "connecting", None, None
    try:
        sock = _open_connection(addresses, limits)
        if scheme == "https":
            stage = "in the TLS handshake"
            context = _tls_context(environ.get("SSL_CERT_FILE"), environ.get("SSL_CERT_DIR"))
            sock = context.wrap_socket(sock, server_hostname=host)
            connection = http.client.HTTPSConnection(host, port, context=context)
        else:
            connection = http.client.HTTPConnection(host, port)
        connection.sock = _DeadlineSocket(sock, limits)
        stage = "waiting for the response"
        connection.request("GET", target, headers={
            "User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity",
            "Connection": "close"})
        response = connection.getresponse()
        status = response.status
        if status in REDIRECT_STATUSES:
            location = response.getheader("Location")
            if not location:
                raise FetchError(url, f"{_status_line(response)} without a Location", status=status)
            return urljoin(url, location.strip())
        if not 200 <= status < 300:
            raise FetchError(url, _status_line(response), status=status,
                         transient=status >= 500 or status in (408, 429),
                         retry_after=_retry_after_seconds(response.getheader("Retry-After")))
        if response.length is not None and response.length > limits.max_bytes:
            raise FetchError(url, f"too large (Content-Length {response.length} > {limits.max_bytes} bytes)",
                         status=status)
        stage = "reading the body"
        content, content_type = _read_image(url, response, limits.max_bytes)
        return FetchedImage(url, content, content_type)
    except FetchError:
        raise
    except _DeadlineExceeded:
        reason, transient = f"took longer than {limits.deadline:g} s", True
    except ssl.SSLCertVerificationError as e:
        reason, transient = f"TLS certificate not accepted ({e.verify_message})", False
    except ssl.SSLError as e:
        reason, transient = f"TLS failed ({e.reason or e})", isinstance(e, ssl.SSLEOFError)
    except TimeoutError:
        timeout = limits.connect_timeout if stage == "connecting" else limits.read_timeout
        reason, transient = f"timed out {stage} (after {timeout:g} s)", True
    except ConnectionRefusedError:
        reason, transient = "connection refused", True
    except http.client.IncompleteRead as e:
        reason, transient = f"connection closed after {len(e.partial)} bytes of the body", True
        if e.expected:
            reason += f" ({e.expected} more were announced)"
    except ConnectionError:
        reason, transient = f"connection lost {stage}", True
    except http.client.HTTPException as e:
        reason, transient = f"bad HTTP response ({type(e).__name__}: {e})", False
    except OSError as e:
        reason, transient = f"network error {stage} ({e.strerror or e})", True
    finally:
        if sock is not None:
            sock.close()
    raise FetchError(url, reason, transient=transient, status=status) from None


def _open_connection(addresses, limits):
    """A TCP connection to the first of the checked ``(family, sockaddr)`` pairs that answers."""
    error = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            remaining = limits.remaining()
            if remaining <= 0:
                raise _DeadlineExceeded()
            sock.settimeout(min(limits.connect_timeout, remaining))
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            error = e
            if isinstance(e, _DeadlineExceeded):
                break
    raise error


@lru_cache(maxsize=4)
def _tls_context(cert_file, cert_dir):
    # Loading the CA store costs tens of milliseconds: build a context once per trust configuration.
    return ssl.create_default_context()


def _read_image(url, response, max_bytes):
    pieces, total, content_type, declared = [], 0, None, response.length
    while True:
        piece = response.read(min(_PIECE, max_bytes + 1 - total))
        if not piece:
            break
        pieces.append(piece)
        total += len(piece)
        if total > max_bytes:
            raise FetchError(url, f"too large (more than {max_bytes} bytes)", status=response.status)
        if content_type is None and total >= _SNIFF_BYTES:
            content_type = _sniff_or_refuse(url, b"".join(pieces), response.status)
    if declared is not None and total < declared:  # http.client's read(amt) does not check this
        raise http.client.IncompleteRead(b"".join(pieces), declared - total)
    content = b"".join(pieces)
    if not content:
        raise FetchError(url, "empty body", status=response.status)
    return content, content_type or _sniff_or_refuse(url, content, response.status)


def _sniff_or_refuse(url, content, status):
    content_type = sniff_image_type(content[:_SNIFF_BYTES])
    if content_type is None:
        raise FetchError(url, f"not an image (starts with {content[:16]!r})", status=status)
    return content_type


def _status_line(response):
    try:
        phrase = response.reason.strip() or HTTPStatus(response.status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP {response.status} {phrase}".rstrip()


def _retry_after_seconds(value):
    """Retry-After as seconds from now (it may be a number of seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class _DeadlineExceeded(TimeoutError):
    pass


class _DeadlineSocket:
    """The socket as http.client sees it: each send or receive waits at most the read timeout, and
    never past the deadline. A buffered read or readline is many receives, so bounding each receive
    is what keeps a server that drips bytes from holding the fetch longer than the deadline."""

    def __init__(self, sock, limits):
        self._sock, self._limits = sock, limits

    def _arm(self):
        remaining = self._limits.remaining()
        if remaining <= 0:
            raise _DeadlineExceeded()
        self._sock.settimeout(min(self._limits.read_timeout, remaining))

    def sendall(self, data):
        self._arm()
        self._sock.sendall(data)

    def recv_into(self, buffer):
        self._arm()
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            if self._limits.remaining() <= 0:
                raise _DeadlineExceeded() from None
            raise

    def makefile(self, mode="rb"):
        return io.BufferedReader(_SocketReader(self))

    def close(self):
        pass  # http.client closes its side early; _exchange closes the real socket when done


class _SocketReader(io.RawIOBase):
    def __init__(self, sock):
        self._sock = sock

    def readable(self):
        return True

    def readinto(self, buffer):
        return self._sock.recv_into(buffer)


class _HostSlots:
    """At most N fetches at a time per host name in this process. An idle host's semaphore is
    dropped, so a worker that meets millions of hosts keeps only the busy ones; a changed limit
    applies from the next time a host is idle."""

    def __init__(self):
        self._lock = threading.Lock()
        self._hosts = {}  # host -> [semaphore, number of fetches holding or waiting for it]

    @contextmanager
    def hold(self, host, limit, timeout):
        """Yield True once a slot is held, or False if none came free within ``timeout`` seconds."""
        if limit <= 0:
            yield True
            return
        with self._lock:
            entry = self._hosts.setdefault(host, [threading.BoundedSemaphore(limit), 0])
            entry[1] += 1
        try:
            if not entry[0].acquire(timeout=max(0.0, timeout)):
                yield False
                return
            try:
                yield True
            finally:
                entry[0].release()
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._hosts[host]


_host_slots = _HostSlots()
