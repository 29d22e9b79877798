"""The service's own limits and life, on a real ``image-match serve`` process over SQLite (they do
not depend on the store): the bounded signing queue, the request timeout, graceful shutdown, the
loopback-only rule without keys, several worker processes, bulk ingestion jobs on real Celery
workers and Redis, and what ``image-match serve`` refuses before it listens."""

import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from click.testing import CliRunner

from image_match.cli import main
from image_match.drivers import open_database
from image_match.records import default_id

from conftest import PHOTO, photos
from redis_server import free_port
from service_process import ServiceProcess
from test_server import failed, metric, ok, problem, upload

ALLOW_LOCAL = {"IMAGE_MATCH_FETCH_ALLOWLIST": "127.0.0.1"}


@pytest.fixture
def database(tmp_path):
    return f"sqlite:///{tmp_path / 'images.db'}"


def test_a_full_signing_queue_refuses_with_503(database, http_server):
    """One image may wait (IMAGE_MATCH_SIGNING_QUEUE=1): while a slow URL holds it, the others
    are refused at once with Retry-After, never queued without bound."""
    slow = http_server.slow("/slow.jpg", PHOTO.read_bytes(), delay_before=1.5)
    env = dict(ALLOW_LOCAL, IMAGE_MATCH_SIGNING_QUEUE="1", IMAGE_MATCH_SIGNING_PROCESSES="1")
    with ServiceProcess(database, env) as service:
        def search(_):
            return requests.post(service.url + "/v1/search", json={"url": slow})

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(search, range(6)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) >= 1 and statuses.count(503) >= 3, statuses
        refused = next(r for r in responses if r.status_code == 503)
        problem(refused, 503, "IMAGE_MATCH_SIGNING_QUEUE=1")
        assert refused.headers["retry-after"] == "1"
        assert http_server.hits("/slow.jpg") == statuses.count(200)
        metrics = requests.get(service.url + "/metrics").text
        assert metric(metrics, "image_match_signing_refused_total") == statuses.count(503)
        # The queue empties: the next request is served.
        fast = http_server.serve_bytes("/fast.jpg", PHOTO.read_bytes())
        assert requests.post(service.url + "/v1/search", json={"url": fast}).status_code == 200


def test_a_request_that_takes_too_long_gets_503(database, http_server):
    slow = http_server.slow("/slow.jpg", PHOTO.read_bytes(), delay_before=6)
    with ServiceProcess(database, dict(ALLOW_LOCAL, IMAGE_MATCH_REQUEST_TIMEOUT="1")) as service:
        started = time.monotonic()
        response = requests.post(service.url + "/v1/search", json={"url": slow})
        assert time.monotonic() - started < 4
        problem(response, 503, "longer than 1 s (IMAGE_MATCH_REQUEST_TIMEOUT)")
        assert response.headers["retry-after"]
        failed(requests.post(service.url + "/search", data={"url": slow}), 503, "longer than 1 s")
        assert requests.get(service.url + "/ping").status_code == 200


def test_sigterm_lets_requests_in_flight_finish(database, http_server):
    slow = http_server.slow("/slow.jpg", PHOTO.read_bytes(), delay_before=2)
    service = ServiceProcess(database, ALLOW_LOCAL)
    try:
        answers = []
        worker = threading.Thread(target=lambda: answers.append(
            requests.post(service.url + "/v1/search", json={"url": slow})))
        worker.start()
        deadline = time.monotonic() + 10
        while http_server.hits("/slow.jpg") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        service.signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(requests.ConnectionError):  # no new connection is taken
            requests.get(service.url + "/healthz", timeout=5)
        worker.join(30)
        assert answers and answers[0].status_code == 200, answers and answers[0].text
        assert answers[0].json() == {"matches": []}
        assert service.process.wait(30) == 0
    finally:
        service.stop()


def test_without_keys_only_loopback_clients_are_served(database):
    """A proxy on this machine forwarding a remote client (X-Forwarded-For, which uvicorn trusts
    from 127.0.0.1): refused without keys, served with --no-auth."""
    remote = {"X-Forwarded-For": "203.0.113.9"}
    with ServiceProcess(database) as service:
        assert requests.get(service.url + "/count").status_code == 200
        failed(requests.get(service.url + "/count", headers=remote), 403,
               "answers only loopback clients")
        problem(requests.get(service.url + "/v1/stats", headers=remote), 403, "no API keys")
    with ServiceProcess(database, args=["--no-auth"]) as service:
        assert requests.get(service.url + "/count", headers=remote).status_code == 200


def test_what_serve_refuses_before_listening(database, monkeypatch):
    monkeypatch.delenv("IMAGE_MATCH_API_KEYS", raising=False)
    runner = CliRunner()
    refused = runner.invoke(main, ["serve", "--db", database, "--host", "0.0.0.0"])
    assert refused.exit_code == 2
    assert "without API keys (IMAGE_MATCH_API_KEYS) the service listens on loopback" in \
        refused.output
    monkeypatch.setenv("IMAGE_MATCH_API_KEYS", "good, :read")
    malformed = runner.invoke(main, ["serve", "--db", database])
    assert malformed.exit_code == 2 and "is not KEY or KEY:read" in malformed.output
    monkeypatch.delenv("IMAGE_MATCH_API_KEYS")
    closed = free_port()
    unreachable = runner.invoke(main, ["serve", "--db", f"http://127.0.0.1:{closed}/images"])
    assert unreachable.exit_code == 1 and "cannot reach the engine" in unreachable.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = runner.invoke(main, ["serve", "--db", database, "--port",
                                    str(taken.getsockname()[1])])
    assert busy.exit_code == 1 and "cannot listen on 127.0.0.1" in busy.output
    assert "dsys/match" in runner.invoke(main, ["serve", "--help"]).output


def test_two_workers_write_one_sqlite_file(database):
    images = [photo.read_bytes() for photo in photos()[:6]]
    paths = [f"two/{n % 10}" for n in range(40)]
    with ServiceProcess(database, args=["--workers", "2"]) as service:
        def add(n):
            return requests.post(service.url + "/add", files={"image": upload(images[n % 6])},
                                 data={"filepath": paths[n]}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(add, range(len(paths)))) == {200}
        assert ok(requests.get(service.url + "/count"), "count") == [10]
        pids = {requests.get(service.url + "/v1/stats").json()["service"]["pid"]
                for _ in range(20)}
        assert 1 <= len(pids) <= 2
        metrics = requests.get(service.url + "/metrics").text
        assert metric(metrics, "image_match_http_requests_total", route="/add", method="POST",
                      status="200") == 40  # both workers' counts, added up
    store = open_database(database)
    for path in set(paths):
        assert store.ids_with_path(path) == [default_id(path)]


@pytest.mark.redis
def test_jobs_on_real_workers(database, redis_server, http_server, tmp_path):
    from test_ingest_workers import Run

    run = Run(redis_server.url(40), tmp_path)
    run.jobs().client.flushdb()
    good = [http_server.serve_bytes(f"/j/{n}.jpg", photo.read_bytes())
            for n, photo in enumerate(photos()[:5])]
    missing = http_server.serve_status("/j/missing.jpg", 404)
    env = {key: run.env[key] for key in run.env if key.startswith("IMAGE_MATCH_")}
    try:
        run.worker()
        with ServiceProcess(database, env) as service:
            response = requests.post(service.url + "/v1/jobs", json={
                "urls": good[:3] + [missing],
                "items": [{"url": good[3], "id": "four", "metadata": {"n": 4}},
                          {"url": good[4]}]})
            assert response.status_code == 202, response.text
            created = response.json()
            assert created["items"] == 6
            assert response.headers["location"] == f"/v1/jobs/{created['job']}"
            deadline = time.monotonic() + 120
            while True:
                status = requests.get(service.url + response.headers["location"]).json()
                if status["state"] == "finished":
                    break
                assert time.monotonic() < deadline, status
                time.sleep(0.3)
            assert (status["done"], status["failed"], status["remaining"]) == (5, 1, 0)
            assert status["failures"][0]["source"] == missing
            assert "HTTP 404" in status["failures"][0]["reason"]
            store = open_database(database)
            assert store.get("four")["metadata"] == {"n": 4}
            assert store.ids_with_path(good[0]) == [default_id(good[0])]
            text = requests.post(service.url + "/v1/jobs", data=f"{good[0]}\r\n{good[1]}\n",
                                 headers={"content-type": "text/plain"})
            assert text.status_code == 202 and text.json()["items"] == 2
            for body in ("/etc/passwd\n", f"{good[0]}\nfile:///etc/passwd", "\n"):
                problem(requests.post(service.url + "/v1/jobs", data=body,
                                      headers={"content-type": "text/plain"}), 400,
                        "http(s) URLs, one a line")
            problem(requests.post(service.url + "/v1/jobs", json={"urls": ["/etc/passwd"]}),
                    400, "urls.0: String should match pattern")
            problem(requests.post(service.url + "/v1/jobs", json={"items": [{"path": "x"}]}),
                    400, "items")
            problem(requests.post(service.url + "/v1/jobs", json={}), 400, "no image")
            problem(requests.post(service.url + "/v1/jobs", data=b"x",
                                  headers={"content-type": "image/jpeg"}), 415)
            problem(requests.get(service.url + f"/v1/jobs/{uuid.uuid4().hex}"), 404, "no such job")
    finally:
        for worker in run.workers:
            worker.stop()


@pytest.mark.redis
def test_jobs_without_a_broker_get_503(database):
    env = {"IMAGE_MATCH_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with ServiceProcess(database, env) as service:
        response = requests.post(service.url + "/v1/jobs",
                                 json={"urls": ["http://example.org/a.jpg"]})
        problem(response, 503, "broker")
        assert response.headers["retry-after"] == "5"
        problem(requests.get(service.url + "/v1/jobs/abc"), 503, "broker")


def test_answers_leave_without_waiting_for_delayed_acks():
    """The socket serve binds says it is TCP, so that asyncio turns Nagle's algorithm off on its
    connections: with it on, every answer's body waited for the client's delayed ACK of its
    headers, 40 ms a request."""
    import asyncio

    from image_match.server.run import _bind

    sock = _bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    seen = []

    async def check():
        def accepted(reader, writer):
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                  socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
            writer.close()

    asyncio.run(check())
    assert seen and seen[0] != 0


def test_jobs_without_celery_get_501(database, tmp_path):
    """A service whose Python has no Celery (here: an import of it that fails) serves everything
    but jobs, which say what to install."""
    missing = tmp_path / "no-celery" / "celery"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text("raise ImportError('no Celery here', name='celery')\n")
    env = {"PYTHONPATH": f"{missing.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with ServiceProcess(database, env) as service:
        response = requests.post(service.url + "/v1/jobs", json={"urls": ["http://a.org/b.jpg"]})
        problem(response, 501, "pip install 'celery[redis]>=5.3' 'redis>=4.5'")
        problem(requests.get(service.url + "/v1/jobs/abc"), 501, "celery is missing")
        assert requests.post(service.url + "/v1/search",
                             files={"image": upload(PHOTO.read_bytes())}).status_code == 200
