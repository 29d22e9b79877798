"""image_match.fetching against a real local HTTP(S) server: outcomes, limits and the address guard."""

import io
import pickle
import shutil
import socket
import ssl
import subprocess
import threading
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image

from image_match import fetching
from image_match.errors import FetchError, ImageLoadError
from image_match.fetching import fetch, refused_reason, sniff_image_type

from http_server import HTTPTestServer

FAST = dict(connect_timeout=1.0, read_timeout=1.0)


def image_bytes(fmt, size=(48, 32), **options):
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def jpeg():
    return image_bytes("JPEG")


@pytest.fixture
def allow(monkeypatch):
    """Set IMAGE_MATCH_FETCH_ALLOWLIST (loopback is refused by default, and the server is loopback)."""
    def set_allowlist(value="127.0.0.1"):
        monkeypatch.setenv("IMAGE_MATCH_FETCH_ALLOWLIST", value)
    monkeypatch.delenv("IMAGE_MATCH_FETCH_ALLOWLIST", raising=False)
    set_allowlist()
    return set_allowlist


@pytest.fixture
def connections(monkeypatch):
    """Every address list the fetcher opens a connection to."""
    opened = []
    real = fetching._open_connection

    def spy(addresses, limits):
        opened.append([sockaddr[0] for _, sockaddr in addresses])
        return real(addresses, limits)
    monkeypatch.setattr(fetching, "_open_connection", spy)
    return opened


def fetch_error(url, **kwargs):
    with pytest.raises(FetchError) as info:
        fetch(url, **{**FAST, **kwargs})
    return info.value


# -- success ---------------------------------------------------------------------------------

def test_fetch_returns_the_exact_bytes(http_server, allow, jpeg):
    url = http_server.serve_bytes("/a.jpg", jpeg)
    result = fetch(url, **FAST)
    assert result == fetching.FetchedImage(url, jpeg, "image/jpeg")
    request = http_server.requests[0]
    assert request.headers["User-Agent"].startswith("image-match/")
    assert request.headers["Host"] == f"127.0.0.1:{http_server.port}"


def test_chunked_body_and_a_lying_content_type(http_server, allow, jpeg):
    url = http_server.serve_bytes("/a", jpeg, "text/html", chunked=True, chunk_size=100)
    assert fetch(url, **FAST).content == jpeg


def test_path_is_percent_encoded(http_server, allow, jpeg):
    http_server.serve_bytes("/my%20photo.jpg", jpeg)
    assert fetch(http_server.url("/my photo.jpg"), **FAST).content == jpeg


@pytest.mark.parametrize("fmt, mime, options", [
    ("JPEG", "image/jpeg", {}), ("PNG", "image/png", {}), ("GIF", "image/gif", {}),
    ("WEBP", "image/webp", {}), ("TIFF", "image/tiff", {}), ("BMP", "image/bmp", {}),
    ("ICO", "image/vnd.microsoft.icon", {}), ("MPO", "image/jpeg", {}),
])
def test_sniff_pillow_formats(fmt, mime, options):
    try:
        data = image_bytes(fmt, **options)
    except (KeyError, OSError) as e:
        pytest.skip(f"Pillow cannot write {fmt}: {e}")
    assert sniff_image_type(data[:16]) == mime


@pytest.mark.parametrize("head, mime", [
    (b"MM\x00*\x00\x00\x00\x08", "image/tiff"),
    (b"II+\x00\x08\x00\x00\x00", "image/tiff"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "image/avif"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "image/heif"),
    (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00", None),  # an MP4 video
    (b"<html><body>", None), (b"%PDF-1.7", None), (b"", None), (b"\xff\xd8", None),
    (b"BMW and Mercedes are car brands", None), (b"\x00\x00\x01\x00\x00\x00", None),
])
def test_sniff_table(head, mime):
    assert sniff_image_type(head) == mime


# -- the address guard -----------------------------------------------------------------------

@pytest.mark.parametrize("address, reason", [
    ("8.8.8.8", None), ("1.1.1.1", None), ("2606:4700:4700::1111", None),
    ("::ffff:8.8.8.8", None), ("64:ff9b::808:808", None), ("2002:808:808::1", None),
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"), ("192.0.0.8", "private"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"), ("fe80::1%1", "link-local"),
    ("fd00:ec2::254%2", "cloud metadata"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("0.1.2.3", "this network"),
    ("100.64.0.1", "shared address space"), ("100.127.255.254", "shared address space"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"), ("168.63.129.16", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "cloud metadata"), ("64:ff9b::a9fe:a9fe", "cloud metadata"),
    ("64:ff9b::7f00:1", "loopback"), ("2002:a00:1::1", "private"), ("64:ff9b:1::1", "reserved"),
    ("::127.0.0.1", "reserved"), ("fec0::1", "site-local"), ("2001:db8::1", "private"),
])
def test_address_classification(address, reason):
    assert refused_reason(address) == reason


@pytest.mark.parametrize("entries, host, address, allowed", [
    (["127.0.0.1"], "x", "127.0.0.1", True),
    (["127.0.0.0/8"], "x", "127.0.0.5", True),
    (["10.0.0.0/8"], "x", "127.0.0.1", False),
    (["localhost"], "localhost", "127.0.0.1", True),
    (["localhost"], "127.0.0.1", "127.0.0.1", False),
    (["::/0"], "x", "127.0.0.1", False),  # an IPv6 range never admits an IPv4 address
    (["169.254.0.0/16"], "x", "169.254.169.254", False),  # no range unlocks metadata ...
    (["169.254.169.254"], "x", "169.254.169.254", True),  # ... only the exact address
    (["metadata.internal"], "metadata.internal", "169.254.169.254", True),
])
def test_allowlist(entries, host, address, allowed):
    ip = fetching._addr(address)
    assert fetching._Allowlist(entries).allows(host, ip, refused_reason(ip)) is allowed


def test_loopback_refused_without_allowlist(http_server, monkeypatch, jpeg, connections):
    monkeypatch.delenv("IMAGE_MATCH_FETCH_ALLOWLIST", raising=False)
    url = http_server.serve_bytes("/a.jpg", jpeg)
    error = fetch_error(url)
    # The reason says how to allow it, and where: the fetching process's environment.
    assert str(error) == (f"{url}: refused address 127.0.0.1 (loopback); to allow it, add "
                          "127.0.0.1 to IMAGE_MATCH_FETCH_ALLOWLIST in the environment of the "
                          "process that fetches (for ingestion: the workers')")
    assert (error.transient, error.status, error.source) == (False, None, url)
    assert isinstance(error, ImageLoadError)
    assert connections == [] and http_server.hits("/a.jpg") == 0


@pytest.mark.parametrize("host", ["[::1]", "[::ffff:127.0.0.1]", "2130706433", "0x7f.1", "0.0.0.0",
                                  "169.254.169.254", "[fd00:ec2::254]", "10.0.0.1", "100.100.100.200"])
def test_literal_and_disguised_addresses_refused_without_connecting(host, monkeypatch, connections):
    monkeypatch.delenv("IMAGE_MATCH_FETCH_ALLOWLIST", raising=False)
    error = fetch_error(f"http://{host}/a.jpg")
    assert "refused address" in error.reason and not error.transient
    assert connections == []


@pytest.mark.parametrize("allowlist", ["127.0.0.0/8", "localhost,example.org"])
def test_allowlist_by_range_and_by_host_name(http_server, allow, jpeg, allowlist):
    allow(allowlist)
    http_server.serve_bytes("/a.jpg", jpeg)
    assert fetch(http_server.url("/a.jpg", host="localhost"), **FAST).content == jpeg
    if allowlist.startswith("localhost"):  # the name admits that name, not its address
        assert "refused address 127.0.0.1" in fetch_error(http_server.url("/a.jpg")).reason


def test_ipv6_literal_when_allowlisted(allow, jpeg):
    allow("::1")
    try:
        server = HTTPTestServer(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        url = server.serve_bytes("/a.jpg", jpeg)
        assert url.startswith("http://[::1]:")
        assert fetch(url, **FAST).content == jpeg
        assert server.requests[0].headers["Host"] == f"[::1]:{server.port}"


# -- redirects -------------------------------------------------------------------------------

def test_redirect_chain_is_followed(http_server, allow, jpeg):
    http_server.redirect("/one", http_server.url("/two"), 301)
    http_server.redirect("/two", "/three?x=1", 307)
    http_server.redirect("/three", "four.jpg", 308)
    final = http_server.serve_bytes("/four.jpg", jpeg)
    result = fetch(http_server.url("/one"), **FAST)
    assert (result.url, result.content) == (final, jpeg)
    assert [r.path for r in http_server.requests] == ["/one", "/two", "/three?x=1", "/four.jpg"]


@pytest.mark.parametrize("target, reason", [
    ("http://169.254.169.254/latest/meta-data/", "refused address 169.254.169.254 (cloud metadata)"),
    ("http://10.0.0.1/a.jpg", "refused address 10.0.0.1 (private)"),
    ("file:///etc/passwd", "unsupported scheme 'file' (only http and https)"),
])
def test_redirect_to_a_refused_target_never_connects(http_server, allow, connections, target, reason):
    url = http_server.redirect("/r", target)
    error = fetch_error(url)
    assert str(error).startswith(f"{url}: redirected to {target}: {reason}")
    assert not error.transient
    assert connections == [["127.0.0.1"]]  # the first hop only


def test_redirect_to_a_loopback_server_outside_the_allowlist(http_server, allow, jpeg):
    with HTTPTestServer(host="127.0.0.2") as other:
        target = other.serve_bytes("/secret.jpg", jpeg)
        error = fetch_error(http_server.redirect("/r", target))
        assert error.reason.startswith(
            f"redirected to {target}: refused address 127.0.0.2 (loopback); to allow it, add "
            "127.0.0.2 to IMAGE_MATCH_FETCH_ALLOWLIST")
        assert other.hits("/secret.jpg") == 0


def test_too_many_redirects(http_server, allow, monkeypatch):
    monkeypatch.setenv("IMAGE_MATCH_FETCH_MAX_REDIRECTS", "3")
    url = http_server.redirect("/loop", "/loop")
    error = fetch_error(url)
    assert str(error) == f"{url}: too many redirects (more than 3)"
    assert not error.transient and http_server.hits("/loop") == 4


def test_redirect_without_location(http_server, allow):
    url = http_server.serve_status("/r", 302)
    error = fetch_error(url)
    assert (error.reason, error.status) == ("HTTP 302 Found without a Location", 302)


# -- HTTP statuses ---------------------------------------------------------------------------

def test_404_is_permanent(http_server, allow):
    url = http_server.serve_status("/missing.jpg", 404)
    error = fetch_error(url)
    assert str(error) == f"{url}: HTTP 404 Not Found"
    assert (error.transient, error.status, error.retry_after) == (False, 404, None)


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_server_errors_and_throttling_are_transient(http_server, allow, status):
    error = fetch_error(http_server.serve_status("/x", status))
    assert error.transient and error.status == status
    assert error.reason.startswith(f"HTTP {status} ")


def test_retry_after_seconds_and_date(http_server, allow):
    error = fetch_error(http_server.serve_status("/a", 429, headers={"Retry-After": "7"}))
    assert error.retry_after == 7
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    error = fetch_error(http_server.serve_status("/b", 503, headers={"Retry-After": when}))
    assert 110 < error.retry_after <= 120
    url = http_server.serve_status("/c", 503, headers={"Retry-After": "soon"})
    assert fetch_error(url).retry_after is None


def test_error_survives_pickling(http_server, allow):
    error = fetch_error(http_server.serve_status("/x", 503))
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.transient, copy.status) == (str(error), True, 503)


def test_fails_then_succeeds_when_fetched_again(http_server, allow, jpeg):
    url = http_server.fail_then_serve("/flaky.jpg", 2, jpeg)
    for _ in range(2):
        assert fetch_error(url).transient
    assert fetch(url, **FAST).content == jpeg


# -- limits ----------------------------------------------------------------------------------

def test_stalled_server_times_out(http_server, allow, jpeg):
    url = http_server.slow("/stall", jpeg, delay_before=5)
    start = time.monotonic()
    error = fetch_error(url, read_timeout=0.3)
    assert time.monotonic() - start < 1.5
    assert error.transient and error.reason == "timed out waiting for the response (after 0.3 s)"


def test_stall_inside_the_body_times_out(http_server, allow, jpeg):
    url = http_server.slow("/stall", jpeg, delay_between=5, chunk_size=len(jpeg) // 2)
    error = fetch_error(url, read_timeout=0.3)
    assert error.transient and error.reason == "timed out reading the body (after 0.3 s)"


def test_dripping_server_is_stopped_by_the_deadline(http_server, allow, jpeg):
    url = http_server.slow("/drip", jpeg * 10, delay_between=0.05, chunk_size=1)
    start = time.monotonic()
    error = fetch_error(url, read_timeout=1.0, deadline=0.5)
    assert time.monotonic() - start < 1.2
    assert error.transient and error.reason == "took longer than 0.5 s"


@pytest.mark.parametrize("chunked", [False, True])
def test_endless_body_is_cut_at_the_byte_cap(http_server, allow, chunked):
    url = http_server.endless("/forever", chunked=chunked)
    start = time.monotonic()
    error = fetch_error(url, max_bytes=300_000)
    assert time.monotonic() - start < 2
    assert str(error) == f"{url}: too large (more than 300000 bytes)"
    assert not error.transient and error.status == 200


def test_cap_from_settings(http_server, allow, monkeypatch, jpeg):
    monkeypatch.setenv("IMAGE_MATCH_FETCH_MAX_BYTES", str(len(jpeg) - 1))
    assert "too large" in fetch_error(http_server.serve_bytes("/a.jpg", jpeg, chunked=True)).reason
    monkeypatch.setenv("IMAGE_MATCH_FETCH_MAX_BYTES", str(len(jpeg)))
    assert fetch(http_server.url("/a.jpg"), **FAST).content == jpeg


def test_huge_content_length_refused_before_reading(http_server, allow):
    url = http_server.lying_length("/huge", 10**12, hold=5)
    start = time.monotonic()
    error = fetch_error(url, max_bytes=1_000_000)
    assert time.monotonic() - start < 1
    assert error.reason == "too large (Content-Length 1000000000000 > 1000000 bytes)"
    assert not error.transient


def test_body_shorter_than_content_length_is_transient(http_server, allow):
    error = fetch_error(http_server.lying_length("/short", 1000))
    assert error.transient and error.reason.startswith("connection closed after 4 bytes")


def test_non_image_refused_after_its_first_bytes(http_server, allow):
    page = b"<html><head><title>Not found</title></head>" + b" " * 1_000_000
    url = http_server.serve_bytes("/page", page, "image/jpeg", chunked=True, chunk_size=64)
    error = fetch_error(url)
    assert str(error) == f"{url}: not an image (starts with b'<html><head><tit')"
    assert not error.transient and error.status == 200


def test_empty_body(http_server, allow):
    assert fetch_error(http_server.serve_bytes("/empty", b"")).reason == "empty body"


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.org/a.jpg", "unsupported scheme 'ftp' (only http and https)"),
    ("file:///etc/passwd", "unsupported scheme 'file' (only http and https)"),
    ("data:image/png;base64,AAAA", "unsupported scheme 'data' (only http and https)"),
    ("gopher://127.0.0.1:6379/_INFO", "unsupported scheme 'gopher' (only http and https)"),
    ("/etc/passwd", "not an absolute http(s) URL"),
    ("http:///a.jpg", "no host name in URL"),
    ("http://example.org:99999/a.jpg", "invalid URL (Port out of range 0-65535)"),
])
def test_bad_urls(url, reason):
    error = fetch_error(url)
    assert str(error) == f"{url}: {reason}" and not error.transient


def test_unresolvable_host():
    error = fetch_error("http://no-such-host.invalid/a.jpg")
    assert error.reason.startswith("cannot resolve host no-such-host.invalid (")


def test_connection_refused_is_transient(allow):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = fetch_error(f"http://127.0.0.1:{port}/a.jpg")
    assert error.transient and error.reason == "connection refused"


@pytest.mark.parametrize("limit, expected_peak", [(2, 2), (0, 6)])
def test_per_host_concurrency(http_server, allow, monkeypatch, jpeg, limit, expected_peak):
    monkeypatch.setenv("IMAGE_MATCH_FETCH_PER_HOST_CONCURRENCY", str(limit))
    url = http_server.slow("/slow.jpg", jpeg, delay_before=0.2, chunk_size=len(jpeg))
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch(url, **FAST).content))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [jpeg] * 6
    assert http_server.peak_concurrency("/slow.jpg") == expected_peak
    assert fetching._host_slots._hosts == {}  # idle hosts are forgotten


def test_waiting_for_a_host_slot_counts_against_the_deadline(http_server, allow, monkeypatch, jpeg):
    monkeypatch.setenv("IMAGE_MATCH_FETCH_PER_HOST_CONCURRENCY", "1")
    url = http_server.slow("/slow.jpg", jpeg, delay_before=0.6, chunk_size=len(jpeg))
    first = threading.Thread(target=fetch, args=(url,), kwargs=FAST)
    first.start()
    time.sleep(0.1)
    error = fetch_error(url, deadline=0.2)
    first.join()
    assert error.transient and "waiting for a free slot for 127.0.0.1 (1 at a time)" in error.reason


# -- https -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for the name localhost (and no IP address)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
def https_server(certificate):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server_names = []
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    with HTTPTestServer(tls=context) as server:
        server.server_names = server_names
        yield server


def test_https_sends_sni_and_verifies_the_host_name(https_server, certificate, allow, monkeypatch, jpeg):
    allow("localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    url = https_server.serve_bytes("/a.jpg", jpeg, chunked=True)
    assert fetch(https_server.url("/a.jpg", host="localhost"), **FAST).content == jpeg
    assert https_server.server_names == ["localhost"]
    allow("127.0.0.1")  # the certificate is not valid for the address
    error = fetch_error(url)
    assert not error.transient and error.reason.startswith("TLS certificate not accepted (")
    assert "127.0.0.1" in error.reason


def test_https_untrusted_certificate_refused(https_server, allow, jpeg):
    allow("localhost")
    https_server.serve_bytes("/a.jpg", jpeg)
    error = fetch_error(https_server.url("/a.jpg", host="localhost"))
    assert error.reason.startswith("TLS certificate not accepted (") and not error.transient
    assert https_server.hits("/a.jpg") == 0


def test_https_to_a_plain_http_server(http_server, allow):
    error = fetch_error(http_server.url("/a.jpg").replace("http:", "https:"))
    assert error.reason.startswith("TLS failed (")
