"""Bulk ingestion end to end: real Celery workers (``celery -A image_match.tasks worker``
subprocesses), a real redis-server, the HTTP test server on 127.0.0.1 serving 320 distinct photos
and a set of bad answers, and a real store (SQLite, and OpenSearch when its node can run). Workers
are killed with SIGKILL mid-job, Redis is restarted mid-job, a job's messages are dropped from the
queue: every URL still ends stored exactly once or failed with its reason, and the job's counts
are exact."""

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from image_match.drivers import open_database
from image_match.records import default_id
from image_match.tasks.cli import ingest, job as job_command
from image_match.tasks.jobs import Jobs

from conftest import photos
from redis_server import die_with_parent

pytestmark = pytest.mark.redis

ENV = {
    "IMAGE_MATCH_FETCH_ALLOWLIST": "127.0.0.1",
    "IMAGE_MATCH_FETCH_CONNECT_TIMEOUT": "5",  # a busy test server may drop a SYN: resent after 1 s
    "IMAGE_MATCH_FETCH_READ_TIMEOUT": "1",
    "IMAGE_MATCH_FETCH_MAX_BYTES": "2000000",
    "IMAGE_MATCH_VISIBILITY_TIMEOUT": "6",  # a dead worker's batches come back after 6 s
    "IMAGE_MATCH_INGEST_MAX_RETRIES": "2",
    "IMAGE_MATCH_INGEST_RETRY_DELAY": "0.3",
}
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def images():
    """320 distinct JPEGs: each test photo at 20 sizes, crops and orientations, about 300 px."""
    result = []
    for photo in photos():
        with Image.open(photo) as opened:
            image = opened.convert("RGB")
        for n in range(20):
            variant = image
            if n % 4:
                w, h = variant.size
                margin = (n % 4) * 0.04
                variant = variant.crop((int(w * margin), int(h * margin / 2), w, h))
            if n % 5 == 1:
                variant = ImageOps.mirror(variant)
            if n % 7 == 3:
                variant = variant.rotate(90, expand=True)
            variant.thumbnail((240 + 8 * n, 240 + 8 * n))
            buffer = io.BytesIO()
            variant.save(buffer, "JPEG", quality=70 + n)
            result.append(buffer.getvalue())
    assert len(set(result)) == len(result) >= 300
    return result


def serve(http_server, images, delay=0.0):
    """Register the good images and the bad answers; return (good URLs, {bad URL: reason})."""
    def slowly(body):
        def handler(request):
            from http_server import respond

            if http_server.sleep(delay):
                respond(request, 200, body, "image/jpeg")
        return handler

    good = [http_server.route(f"/photo/{n}.jpg", slowly(body)) if delay else
            http_server.serve_bytes(f"/photo/{n}.jpg", body) for n, body in enumerate(images)]
    body = images[0]
    # Transient failures that recover: served on the second try.
    good.append(http_server.fail_then_serve("/flaky.jpg", 1, images[1]))
    good.append(http_server.fail_then_serve("/busy.jpg", 1, images[2], status=429,
                                            headers={"Retry-After": "1"}))
    bad = {
        http_server.serve_status("/missing.jpg", 404): "HTTP 404 Not Found",
        http_server.serve_status("/gone.jpg", 410): "HTTP 410 Gone",
        http_server.serve_status("/broken.jpg", 500):
            "HTTP 500 Internal Server Error (gave up after 3 attempts)",
        http_server.slow("/slow.jpg", body, delay_before=30): "timed out waiting for the response",
        http_server.endless("/endless.jpg"): "too large (more than 2000000 bytes)",
        http_server.serve_bytes("/huge.jpg", body[:4] + bytes(3_000_000)):
            "too large (Content-Length 3000004 > 2000000 bytes)",
        http_server.serve_bytes("/page.jpg", b"<!doctype html><html>nothing</html>" * 3,
                                "text/html"): "not an image",
        http_server.redirect("/private.jpg", "http://10.1.2.3/x.jpg"):
            "redirected to http://10.1.2.3/x.jpg: refused address 10.1.2.3 (private",
        http_server.serve_bytes("/cut.jpg", body[:600]): "",  # a decode error, Pillow's words
    }
    return good, bad


def write_input(path, good, bad):
    """One URL per line, every tenth good one as a JSON line with an id and metadata, and one line
    that is not valid JSON."""
    lines = []
    for n, url in enumerate(good):
        lines.append(json.dumps({"url": url, "id": f"photo-{n}", "metadata": {"n": n}})
                     if n % 10 == 0 else url)
    lines += list(bad) + ['{"url": "http://127.0.0.1/oops.jpg"']
    path.write_text("\n".join(lines) + "\n")
    return path


def record_id(n, url):
    return f"photo-{n}" if n % 10 == 0 else default_id(url)


class Worker:
    """``celery -A image_match.tasks worker`` in its own process group, logging to a file."""

    def __init__(self, env, log_path, concurrency=2):
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "image_match.tasks", "worker",
                 f"--concurrency={concurrency}", "--loglevel=INFO", "--without-mingle",
                 "--without-gossip", f"--hostname=test-{uuid.uuid4().hex[:8]}@%h"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent)
        deadline = time.monotonic() + 60
        while b" ready." not in log_path.read_bytes():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def log(self):
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self):
        """SIGKILL the worker and its pool processes at once, as a lost machine."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


class Run:
    """One job's world: the environment (its own Redis database) and the workers started in it."""

    def __init__(self, broker, folder):
        self.env = dict(os.environ, **ENV, IMAGE_MATCH_BROKER_URL=broker)
        self.folder = folder
        self.workers = []

    def worker(self, **kwargs):
        worker = Worker(self.env, self.folder / f"worker-{len(self.workers)}.log", **kwargs)
        self.workers.append(worker)
        return worker

    def jobs(self):
        import redis

        return Jobs(redis.Redis.from_url(self.env["IMAGE_MATCH_BROKER_URL"]))


@pytest.fixture
def run(redis_server, tmp_path):
    run = Run(redis_server.url(next(_databases)), tmp_path)
    run.jobs().client.flushdb()
    yield run
    for worker in run.workers:
        worker.stop()


@pytest.fixture(params=["sqlite", pytest.param("opensearch", marks=pytest.mark.engine)])
def database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'images.db'}"
        return
    url = f"{request.getfixturevalue('opensearch_url')}/ingest-{uuid.uuid4().hex[:12]}"
    yield url
    open_database(url).drop()


def check_outcome(store, status, failures, good, bad):
    """Every good URL stored exactly once, every bad one failed with its reason, counts exact."""
    assert (status.state, status.done, status.failed, status.remaining) == (
        "finished", len(good), len(bad) + 1, 0)
    store.refresh()
    records = list(store.iter_records())
    assert len(records) == store.count() == len(good)
    assert sorted(record["path"] for record in records) == sorted(good)
    reasons = {f["source"]: f["reason"] for f in failures}
    assert set(reasons) == set(bad) | {'{"url": "http://127.0.0.1/oops.jpg"'}
    for url, reason in bad.items():
        assert reasons[url].startswith(reason), (url, reasons[url])
    assert reasons['{"url": "http://127.0.0.1/oops.jpg"'].startswith("not valid JSON")


def test_ingest_end_to_end(run, database, images, http_server, tmp_path):
    """320 photos and 11 bad lines through `image-match ingest --wait`: every photo searchable
    under its URL and id, every bad line failed with its reason."""
    run.env["IMAGE_MATCH_DATABASE"] = database
    run.worker(concurrency=2)
    good, bad = serve(http_server, images)
    path = write_input(tmp_path / "urls.txt", good, bad)

    result = CliRunner().invoke(ingest, [str(path), "--wait", "--json", "--batch-size", "32"],
                                env=run.env)
    assert result.exit_code == 1, result.output  # some failed
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == len(bad) + 1 and report["images_per_second"] > 0

    jobs = run.jobs()
    status = jobs.status(report["job"])
    store = open_database(database)
    check_outcome(store, status, jobs.failures(status.job), good, bad)
    for n, url in enumerate(good[:len(images)]):
        if n % 10 == 0:
            record = store.get(record_id(n, url))
            assert record["path"] == url and record["metadata"] == {"n": n}
    # Every photo is found under its own URL, at distance 0.
    found = store.search_images(images, size=10)
    for url, matches in zip(good, found):
        assert matches and matches[0]["dist"] < 1e-9, url
        assert url in {m["path"] for m in matches if m["dist"] < 1e-9}, url

    # `image-match job` reports the same, exits 1 unless failures are allowed.
    shown = CliRunner().invoke(job_command, [status.job, "--allow-failures"], env=run.env)
    assert shown.exit_code == 0 and f"done       {len(good)}" in shown.output
    assert "/missing.jpg: HTTP 404 Not Found" in shown.output
    assert CliRunner().invoke(job_command, [status.job], env=run.env).exit_code == 1


def submit_slowly_and_interrupt(run, database, images, http_server, tmp_path, monkeypatch,
                                interruptions):
    """A job whose images each take 40 ms to serve; each of ``interruptions``, ``(fraction,
    function)``, is called once that fraction of the photos is stored. Then wait for the job to
    finish (60 s at most) and check every URL's fate."""
    from image_match.tasks.submit import submit, wait

    run.env["IMAGE_MATCH_DATABASE"] = database
    good, bad = serve(http_server, images, delay=0.04)
    path = write_input(tmp_path / "urls.txt", good, bad)
    for name, value in run.env.items():  # submit() reads the environment, as the CLI does
        if name.startswith("IMAGE_MATCH_"):
            monkeypatch.setenv(name, value)
    with open(path) as lines:
        job, count = submit(lines, database=database, batch_size=16, source=str(path))
    jobs = run.jobs()
    for fraction, interrupt in interruptions:
        deadline = time.monotonic() + 60
        while (done := jobs.status(job).done) < len(good) * fraction:
            assert time.monotonic() < deadline, run.workers[-1].log()
            time.sleep(0.05)
        assert done < len(good)  # mid-job
        interrupt()
    status = wait(job, jobs, interval=0.2)
    assert status.elapsed < 120
    check_outcome(open_database(database), status, jobs.failures(job), good, bad)


def pool_processes(worker):
    """The pids of the worker's pool processes (its children)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == worker.process.pid:
                children.append(int(entry))
    return children


def test_killed_workers_lose_nothing_and_duplicate_nothing(
        run, images, http_server, tmp_path, monkeypatch):
    """The pool processes killed (their batches are handed back at once), then the whole worker
    killed (its batches come back after the visibility timeout) and another started."""
    first = run.worker(concurrency=2)
    in_flight = []

    def kill_the_pool_processes():
        for _ in range(20):  # until one was busy: its batch is handed back (WorkerLostError)
            for pid in pool_processes(first):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            if "WorkerLostError" in first.log():
                return

    def kill_and_replace():
        first.kill()
        in_flight.append(run.jobs().client.hlen("unacked"))  # kombu's unacknowledged messages
        run.worker(concurrency=2)

    submit_slowly_and_interrupt(run, f"sqlite:///{tmp_path / 'images.db'}", images, http_server,
                                tmp_path, monkeypatch,
                                [(0.15, kill_the_pool_processes), (0.35, kill_and_replace)])
    assert "WorkerLostError" in first.log()
    assert in_flight[0] > 0  # the killed worker held batches, which the new one finished


def test_a_redis_restart_mid_job_loses_nothing(
        run, redis_server, images, http_server, tmp_path, monkeypatch):
    worker = run.worker(concurrency=2)
    submit_slowly_and_interrupt(run, f"sqlite:///{tmp_path / 'images.db'}", images, http_server,
                                tmp_path, monkeypatch,
                                [(0.25, lambda: redis_server.restart(down_for=1.0))])
    assert worker.process.poll() is None  # the worker reconnected by itself


def test_batches_whose_messages_were_lost_are_sent_again(run, images, http_server, tmp_path,
                                                          monkeypatch):
    """The Redis transport can lose a message a killed worker had just taken; here every message
    of a job is dropped from the queue before any worker runs: the workers' reapers send the
    batches again from the job's ledger."""
    from image_match.tasks import config
    from image_match.tasks.submit import submit, wait

    database = f"sqlite:///{tmp_path / 'images.db'}"
    run.env["IMAGE_MATCH_DATABASE"] = database
    good, bad = serve(http_server, images[:60])
    for name, value in run.env.items():
        if name.startswith("IMAGE_MATCH_"):
            monkeypatch.setenv(name, value)
    with open(write_input(tmp_path / "urls.txt", good, bad)) as lines:
        job, count = submit(lines, database=database, batch_size=8)
    assert run.jobs().client.delete(config.QUEUE) == 1  # every message gone
    run.worker(concurrency=2)
    jobs = run.jobs()
    status = wait(job, jobs, interval=0.2)
    assert status.elapsed < 60
    check_outcome(open_database(database), status, jobs.failures(job), good, bad)
    assert "sending batch" in run.workers[0].log()


def log_times(worker, text):
    """The wall-clock times of the worker's log lines holding ``text``."""
    import datetime

    times = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if text in line and line.startswith("["):
            stamp = line[1:24]  # [2026-12-06 21:50:00,123: INFO/MainProcess] ...
            times.append(datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return times


def test_a_killed_workers_batches_come_back_within_a_minute_at_default_settings(
        run, images, http_server, tmp_path, monkeypatch):
    """The whole worker SIGKILLed mid-job, the lease (30 s) and the visibility timeout (600 s) at
    their defaults: its batches come back within a minute (its heartbeats stop, their leases run
    out, the new worker's reaper sends them again) and the job ends with every URL stored once."""
    for name in ("IMAGE_MATCH_VISIBILITY_TIMEOUT", "IMAGE_MATCH_INGEST_LEASE"):
        run.env.pop(name, None)
        monkeypatch.delenv(name, raising=False)
    first = run.worker(concurrency=2)
    killed = []

    def kill_and_replace():
        job = run.jobs().active()[0]
        deadline = time.monotonic() + 10
        while not (held := run.jobs().client.zcard(f"image-match:job:{job}:leased")):
            assert time.monotonic() < deadline  # a moment when the worker runs a batch
            time.sleep(0.02)
        first.kill()
        killed.append((time.time(), held))
        run.worker(concurrency=2)

    submit_slowly_and_interrupt(run, f"sqlite:///{tmp_path / 'images.db'}", images, http_server,
                                tmp_path, monkeypatch, [(0.3, kill_and_replace)])
    (killed_at, held), = killed
    assert held > 0  # the killed worker held batches
    resent = log_times(run.workers[-1], "sending batch")
    assert resent and min(resent) - killed_at < 60, (resent, killed_at)
    print(f"\nbatches of the killed worker sent again {min(resent) - killed_at:.1f} s after the "
          f"kill; job done {time.time() - killed_at:.1f} s after it")


def test_a_live_workers_long_batch_is_never_taken_from_it(run, images, http_server, tmp_path,
                                                          monkeypatch):
    """Leases of 3 s, batches of 8 s (16 images served 0.5 s each, one download at a time):
    the heartbeat renews them, so no reaper ever sends one again."""
    run.env.update(IMAGE_MATCH_INGEST_LEASE="3", IMAGE_MATCH_INGEST_THREADS="1")
    run.env.pop("IMAGE_MATCH_VISIBILITY_TIMEOUT")  # the broker's own redelivery out of the way
    from image_match.tasks.submit import submit, wait

    database = f"sqlite:///{tmp_path / 'images.db'}"
    run.env["IMAGE_MATCH_DATABASE"] = database
    for name, value in run.env.items():
        if name.startswith("IMAGE_MATCH_"):
            monkeypatch.setenv(name, value)
    workers = [run.worker(concurrency=1), run.worker(concurrency=1)]
    good, _ = serve(http_server, images[:32], delay=0.5)
    started = time.monotonic()
    job, count = submit(good[:32], database=database, batch_size=16)
    status = wait(job, run.jobs(), interval=0.2)
    assert time.monotonic() - started > 7  # the batches did outlive their leases
    assert (status.done, status.failed) == (32, 0)
    for worker in workers:
        assert "sending batch" not in worker.log(), worker.log()
    received = sum(len(log_times(worker, "Task image_match.ingest_batch")) for worker in workers)
    assert received == 2 * 2  # two batches, each received and finished once, nothing resent


def test_ingest_wait_says_when_no_worker_consumes_the_queue(run, http_server, images, tmp_path):
    database = f"sqlite:///{tmp_path / 'images.db'}"
    run.env["IMAGE_MATCH_INGEST_THREADS"] = "2"
    good, _ = serve(http_server, images[:40], delay=0.3)  # about 6 s for one worker
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join(good[:40]) + "\n")
    command = [sys.executable, "-m", "image_match", "ingest", str(listing), "--db", database,
               "--wait"]
    started = time.monotonic()
    failed = subprocess.run(command + ["--fail-without-workers"], env=run.env, capture_output=True,
                            text=True, timeout=60)
    assert time.monotonic() - started < 10
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].startswith(
        "error: no worker is consuming the queue 'image-match' at redis://127.0.0.1:")

    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        waiting = subprocess.Popen(command, env=run.env, stdout=subprocess.PIPE, stderr=stderr,
                                   text=True)
    try:
        started = time.monotonic()
        while "no worker is consuming the queue" not in errors.read_text():
            assert time.monotonic() - started < 10 and waiting.poll() is None, errors.read_text()
            time.sleep(0.2)
        assert "still waiting" in errors.read_text()
        run.worker(concurrency=1)
        assert waiting.wait(timeout=60) == 0, errors.read_text()
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert "a worker is consuming the queue now" in errors.read_text()
    assert open_database(database).count() == 40
