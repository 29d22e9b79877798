"""Bulk ingestion end to end: real Celery workers (``celery -A image_match.tasks worker``
subprocesses), a real redis-server, the HTTP test server on 127.0.0.1 serving 320 distinct photos
and a set of bad answers, and a real store (SQLite, and OpenSearch when its node can run). Workers
are killed with SIGKILL mid-job, Redis is restarted mid-job, a job's messages are dropped from the
queue: every URL still ends stored exactly once or failed with its reason, and the job's counts
are exact."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from click.testing import CliRunner

from image_match.drivers import open_database
from image_match.records import default_id
from image_match.tasks.cli import ingest, job as job_command

from ingest_world import DATABASES, Run, log_times, photo_variants, serve

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def images():
    """320 distinct JPEGs: each test photo at 20 sizes, crops and orientations, about 300 px."""
    return photo_variants()


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


@pytest.fixture
def run(redis_server, tmp_path):
    run = Run(redis_server.url(next(DATABASES)), tmp_path)
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
    # No worker: the command stops by itself (a hang would end in TimeoutExpired). Not timed more
    # tightly: starting Python and Celery takes over 10 s on a loaded 2-core machine.
    failed = subprocess.run(command + ["--fail-without-workers"], env=run.env, capture_output=True,
                            text=True, timeout=60)
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
            assert time.monotonic() - started < 60 and waiting.poll() is None, errors.read_text()
            time.sleep(0.2)
        assert "still waiting" in errors.read_text()
        run.worker(concurrency=1)
        assert waiting.wait(timeout=60) == 0, errors.read_text()
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert "a worker is consuming the queue now" in errors.read_text()
    assert open_database(database).count() == 40
