"""Bulk ingestion without a worker: input lines, job bookkeeping in a real Redis, and one batch
run in this process against the real HTTP test server and SQLite (tests/test_ingest_workers.py
runs real Celery workers)."""

import json
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from image_match import settings
from image_match.drivers import open_database
from image_match.drivers.sqlite import SignatureSQLite
from image_match.records import default_id
from image_match.tasks import batch, config
from image_match.tasks.jobs import Jobs, mask_password
from image_match.tasks.submit import parse_line

from conftest import PHOTO, photos

pytestmark = pytest.mark.redis

GOOD = PHOTO.read_bytes()


# --- input lines -----------------------------------------------------------------------------

@pytest.mark.parametrize("line, item", [
    ("http://example.org/a.jpg\n", {"source": "http://example.org/a.jpg"}),
    ("  /data/b.png  ", {"source": "/data/b.png"}),
    ('{"url": "http://x/c.jpg", "id": "c", "metadata": {"k": 1}}',
     {"source": "http://x/c.jpg", "id": "c", "metadata": {"k": 1}}),
    ('{"path": "/d.jpg", "id": null}', {"source": "/d.jpg"}),
    ("", None), ("   \n", None), ("# a comment", None),
])
def test_a_line_is_an_item(line, item):
    assert parse_line(line) == item


@pytest.mark.parametrize("line, reason", [
    ('{"url": "http://x/a.jpg"', "not valid JSON"),
    ('{"id": "a"}', 'needs "url"'),
    ('{"url": 7}', 'needs "url"'),
    ('{"url": "http://x/a.jpg", "id": 7}', '"id" must be a non-empty string'),
    ('{"url": "http://x/a.jpg", "metadata": [1]}', '"metadata" must be a JSON object'),
    ('{"url": "http://x/a.jpg", "metadata": {"x": NaN}}', "NaN is not a JSON number"),
    ('{"url": "http://x/a.jpg", "metadata": {"x": -Infinity}}', "-Infinity is not a JSON number"),
])
def test_a_bad_line_says_why(line, reason):
    with pytest.raises(ValueError, match=reason):
        parse_line(line)


# --- job bookkeeping ----------------------------------------------------------------------------

@pytest.fixture
def jobs(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield Jobs(client, ttl=600)
    client.close()


def failure(reason):
    return {"source": "u", "reason": reason, "status": None, "attempts": 1}


def test_outcomes_are_idempotent_and_a_store_beats_a_failure(jobs):
    job = uuid.uuid4().hex
    jobs.create(job, "sqlite:///x.db", "urls.txt")
    jobs.add_submitted(job, 4)
    assert jobs.status(job).state == "submitting"
    jobs.finish(job, done=[1, 2], failed={3: failure("HTTP 404 Not Found")})
    jobs.finish(job, done=[1, 2], failed={3: failure("HTTP 404 Not Found")})  # delivered again
    jobs.finish(job, failed={2: failure("timed out")})  # a late failure of a stored item
    jobs.finish(job, done=[3])  # a later delivery stored the failed one
    status = jobs.status(job)
    assert (status.done, status.failed, status.remaining) == (3, 0, 1)
    jobs.finish(job, failed={4: failure("not an image")})
    assert jobs.status(job).state == "submitting"  # the total is not known yet
    assert jobs.end_submission(job) == 4
    status = jobs.status(job)
    assert (status.state, status.done, status.failed, status.remaining) == ("finished", 3, 1, 0)
    assert status.finished is not None and status.images_per_second > 0
    assert [(f["line"], f["reason"]) for f in jobs.failures(job)] == [(4, "not an image")]
    assert jobs.unsettled(job, [1, 2, 3, 4, 5]) == [5]
    for suffix in ("", ":done", ":failed"):
        assert 0 < jobs.client.ttl(f"image-match:job:{job}{suffix}") <= 600
    assert job not in jobs.active()


def test_the_ledger_hands_back_batches_that_were_lost(jobs):
    job, queue = uuid.uuid4().hex, f"queue-{uuid.uuid4().hex}"
    jobs.create(job, "sqlite:///x.db", "urls.txt")
    items = [{"line": 1, "source": "http://x/1.jpg"}]
    jobs.add_batch(job, "b1", items, "sqlite:///x.db")
    jobs.add_batch(job, "b2", [{"line": 2, "source": "http://x/2.jpg"}], "sqlite:///x.db")
    assert jobs.end_submission(job) == 2
    assert job in jobs.active()
    jobs.client.rpush(queue, "a message")
    assert jobs.reap(job, queue, grace=0) == []  # sent and not started: maybe still queued
    jobs.client.delete(queue)
    assert sorted(jobs.reap(job, queue, grace=0)) == ["b1", "b2"]  # the queue is empty: lost
    assert jobs.reap(job, queue, grace=60) == []  # just sent again

    assert jobs.start(job, "b1", lease=60) == {"items": items, "attempt": 0,
                                               "database": "sqlite:///x.db"}
    assert jobs.reap(job, queue, grace=0) == ["b2"]  # b1 is leased
    jobs.start(job, "b1", lease=-1)  # its worker died: the lease runs out
    assert jobs.reap(job, queue, grace=60) == ["b1"]

    jobs.finish(job, "b1", done=[1], follow_ups=[("b3", 0, items, 1, "sqlite:///x.db")])
    assert jobs.start(job, "b1", lease=60) is None  # settled: a second delivery does nothing
    assert jobs.reap(job, queue, grace=60) == ["b3"]  # a follow-up whose message was never sent
    jobs.finish(job, "b2", failed={2: failure("HTTP 404 Not Found")})
    assert jobs.status(job).state == "finished"
    assert jobs.reap(job, queue, grace=0) == [] and job not in jobs.active()


def test_a_worker_renews_the_leases_of_what_it_holds(jobs):
    job, queue = uuid.uuid4().hex, f"queue-{uuid.uuid4().hex}"
    jobs.create(job, "sqlite:///x.db", "urls.txt")
    for name in ("running", "waiting", "follow-up", "done"):
        jobs.add_batch(job, name, [{"line": 1, "source": "u"}], "sqlite:///x.db")
    jobs.start(job, "running", lease=-1)  # its lease ran out...
    jobs.finish(job, "done", done=[1])
    jobs.finish(job, follow_ups=[("follow-up", time.time() + 100, [], 1, "sqlite:///x.db")])
    jobs.client.zadd(f"image-match:job:{job}:queued", {"waiting": time.time() - 3600})
    jobs.renew({job: ["running", "waiting", "follow-up", "done"]}, lease=30)  # ...but it is alive
    assert jobs.reap(job, queue, grace=60) == []  # nothing taken from a live worker
    leased = dict(jobs.client.zrange(f"image-match:job:{job}:leased", 0, -1, withscores=True))
    assert time.time() + 25 < leased[b"running"] < time.time() + 31
    assert leased[b"follow-up"] > time.time() + 95  # its retry time is not brought forward
    assert b"done" not in leased  # a settled batch stays settled
    jobs.start(job, "running", lease=-1)  # the worker died: no more renewals
    assert jobs.reap(job, queue, grace=60) == ["running"]


def test_workers_announce_themselves_for_a_while(jobs):
    jobs.client.delete("image-match:workers")
    assert jobs.workers() == []
    jobs.announce_worker("a@host", ttl=30)
    jobs.announce_worker("b@host", ttl=0.2)
    assert sorted(jobs.workers()) == ["a@host", "b@host"]
    time.sleep(0.3)
    assert jobs.workers() == ["a@host"]
    jobs.client.delete("image-match:workers")


def test_unknown_job_and_masked_password(jobs):
    assert jobs.status("nope") is None
    assert mask_password("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"
    job = uuid.uuid4().hex
    jobs.create(job, "http://user:pw@es:9200/images", "-")
    assert jobs.status(job).database == "http://user:***@es:9200/images"


# --- one batch, in this process -----------------------------------------------------------------

@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("IMAGE_MATCH_FETCH_ALLOWLIST", "127.0.0.1")
    monkeypatch.setenv("IMAGE_MATCH_FETCH_READ_TIMEOUT", "1")
    monkeypatch.setenv("IMAGE_MATCH_FETCH_CONNECT_TIMEOUT", "5")
    monkeypatch.setenv("IMAGE_MATCH_FETCH_MAX_BYTES", "2000000")
    monkeypatch.setenv("IMAGE_MATCH_VISIBILITY_TIMEOUT", "30")
    monkeypatch.setenv("IMAGE_MATCH_INGEST_MAX_RETRIES", "2")
    monkeypatch.setenv("IMAGE_MATCH_INGEST_RETRY_DELAY", "0.5")


class Sent(list):
    """A ``send`` for ``batch.ingest`` that keeps each follow-up's (items, attempt, delay)."""

    def __init__(self, jobs, job):
        super().__init__()
        self.jobs, self.job = jobs, job

    def __call__(self, batch, delay):
        payload = self.jobs.start(self.job, batch, lease=60)
        self.append((payload["items"], payload["attempt"], delay))


def items_of(urls):
    return [{"line": n, "source": url} for n, url in enumerate(urls, 1)]


def test_a_batch_stores_the_good_records_failures_and_retries_the_transient(
        env, jobs, http_server, tmp_path):
    database = f"sqlite:///{tmp_path / 'images.db'}"
    urls = [
        http_server.serve_bytes("/good.jpg", GOOD),
        http_server.serve_status("/missing.jpg", 404),
        http_server.serve_status("/busy.jpg", 429, headers={"Retry-After": "4"}),
        http_server.serve_status("/broken.jpg", 503),
        http_server.serve_bytes("/text.jpg", b"<html>not an image, sorry</html>" * 4, "text/html"),
        http_server.serve_bytes("/huge.jpg", GOOD[:4] + bytes(3_000_000)),
        http_server.endless("/endless.jpg"),
        http_server.redirect("/private.jpg", "http://10.1.2.3/x.jpg"),
        http_server.serve_bytes("/truncated.jpg", GOOD[:2000]),
        http_server.slow("/slow.jpg", GOOD, delay_before=3),
    ]
    items = items_of(urls)
    items[0]["id"], items[0]["metadata"] = "photo-1", {"owner": "ann"}
    job = uuid.uuid4().hex
    jobs.create(job, database, "test")
    scheduled = Sent(jobs, job)
    summary = batch.ingest(job, database, items, 0, jobs, scheduled)
    assert summary == {"stored": 1, "failed": 6, "retried": 3, "skipped": 0}

    store = open_database(database)
    assert store.count() == 1
    record = store.get("photo-1")
    assert record["path"] == urls[0] and record["metadata"] == {"owner": "ann"}
    assert jobs.unsettled(job, [1]) == []

    reasons = {f["source"].rsplit("/", 1)[1]: f for f in jobs.failures(job)}
    assert reasons["missing.jpg"]["reason"] == "HTTP 404 Not Found"
    assert reasons["missing.jpg"]["status"] == 404
    assert reasons["text.jpg"]["reason"].startswith("not an image")
    assert reasons["huge.jpg"]["reason"].startswith("too large (Content-Length 3000004")
    assert reasons["endless.jpg"]["reason"] == "too large (more than 2000000 bytes)"
    assert reasons["private.jpg"]["reason"].startswith(
        "redirected to http://10.1.2.3/x.jpg: refused address 10.1.2.3 (private")
    assert reasons["truncated.jpg"]["reason"]  # Pillow's reason, whatever its words
    assert all(f["attempts"] == 1 for f in reasons.values())

    # The transient ones come back together in one follow-up, after the server's Retry-After.
    ((retried, attempt, delay),) = scheduled
    assert [item["source"].rsplit("/", 1)[1] for item in retried] == [
        "busy.jpg", "broken.jpg", "slow.jpg"]
    assert attempt == 1 and 4 <= delay <= config.longest_wait()

    # Delivered again: everything settled is skipped, nothing is stored twice.
    again = Sent(jobs, job)
    summary = batch.ingest(job, database, items, 0, jobs, again)
    assert summary["skipped"] == 7 and summary["retried"] == 3
    assert store.count() == 1


def test_transient_failures_end_recorded_after_the_last_retry(env, jobs, http_server, tmp_path):
    database = f"sqlite:///{tmp_path / 'images.db'}"
    items = items_of([http_server.serve_status("/broken.jpg", 500),
                      http_server.fail_then_serve("/flaky.jpg", 1, GOOD)])
    job = uuid.uuid4().hex
    scheduled = Sent(jobs, job)
    assert batch.ingest(job, database, items, 0, jobs, scheduled)["retried"] == 2
    ((retried, attempt, _),) = scheduled
    assert batch.ingest(job, database, retried, attempt, jobs, scheduled)["stored"] == 1
    (retried, attempt, _) = scheduled[-1]
    assert [item["source"] for item in retried] == [items[0]["source"]]
    assert batch.ingest(job, database, retried, 2, jobs, scheduled) == {
        "stored": 0, "failed": 1, "retried": 0, "skipped": 0}
    (failed,) = jobs.failures(job)
    assert failed["reason"] == "HTTP 500 Internal Server Error (gave up after 3 attempts)"
    assert failed["attempts"] == 3
    assert open_database(database).count() == 1


def test_an_unreachable_store_retries_the_whole_batch(env, jobs, http_server):
    from redis_server import free_port

    database = f"http://127.0.0.1:{free_port()}/images"
    items = items_of([http_server.serve_bytes("/a.jpg", GOOD), http_server.serve_bytes("/b.jpg", GOOD)])
    job = uuid.uuid4().hex
    scheduled = Sent(jobs, job)
    assert batch.ingest(job, database, items, 0, jobs, scheduled)["retried"] == 2
    assert scheduled[0][0] == items and scheduled[0][1] == 1
    assert http_server.hits("/a.jpg") == 0  # nothing fetched for a store that is not there


def test_a_store_that_refuses_records_them_failed(env, jobs, http_server, tmp_path):
    database = f"sqlite:///{tmp_path / 'images.db'}"
    items = items_of([http_server.serve_bytes("/a.jpg", GOOD), http_server.serve_bytes("/b.jpg", GOOD)])
    items[1]["metadata"] = {"not json": {1, 2}}  # cannot be stored (a set)
    job = uuid.uuid4().hex
    assert batch.ingest(job, database, items, 0, jobs, Sent(jobs, job))["failed"] == 1
    (failed,) = jobs.failures(job)
    assert "metadata is not JSON-serializable" in failed["reason"]
    assert open_database(database).count() == 1


def test_ids_are_deterministic(env, jobs, http_server, tmp_path):
    database = f"sqlite:///{tmp_path / 'images.db'}"
    url = http_server.serve_bytes("/a.jpg", GOOD)
    for job in (uuid.uuid4().hex, uuid.uuid4().hex):  # two jobs with the same URL: one record
        batch.ingest(job, database, items_of([url]), 0, jobs, Sent(jobs, job))
    store = open_database(database)
    assert store.count() == 1 and store.get(default_id(url))["path"] == url


def test_ids_are_deterministic_in_a_store_that_makes_new_ones(env, jobs, http_server, tmp_path):
    path = tmp_path / "images.db"
    SignatureSQLite(path).close()  # 1.x's constructor: a new record for every add_image
    database = f"sqlite:///{path}"
    url = http_server.serve_bytes("/a.jpg", GOOD)
    for job in (uuid.uuid4().hex, uuid.uuid4().hex):  # delivered twice: still one record
        batch.ingest(job, database, items_of([url]), 0, jobs, Sent(jobs, job))
    store = open_database(database)
    assert store.ids == "new" and store.count() == 1 and store.get(default_id(url))["path"] == url


def test_paths_are_read_by_the_worker(env, jobs, tmp_path):
    database = f"sqlite:///{tmp_path / 'images.db'}"
    job = uuid.uuid4().hex
    items = items_of([str(PHOTO), str(tmp_path / "missing.jpg")])
    assert batch.ingest(job, database, items, 0, jobs, Sent(jobs, job))["stored"] == 1
    (failed,) = jobs.failures(job)
    assert failed["reason"] == "no such file" and failed["line"] == 2
    assert open_database(database).get(default_id(str(PHOTO)))["path"] == str(PHOTO)


def test_a_store_with_crop_windows_gets_them_from_ingestion(env, jobs, tmp_path):
    database = f"sqlite:///{tmp_path / 'images.db'}"
    store = open_database(database, crop_windows=True)
    job = uuid.uuid4().hex
    assert batch.ingest(job, database, items_of([str(PHOTO)]), 0, jobs, Sent(jobs, job))["stored"] == 1
    record = store.get(default_id(str(PHOTO)))
    assert np.array_equal(np.asarray(record["windows"]), store.sign(PHOTO)["windows"])


def test_items_not_started_in_time_are_deferred(tmp_path):
    paths = [str(p) for p in photos()[:3]]
    outcomes = batch.sign(open_database(f"sqlite:///{tmp_path / 'x.db'}"), items_of(paths),
                          deadline=0)
    assert all(o.deferred and o.reason is None for o in outcomes)


def test_backoff_grows_with_jitter_within_bounds(env):
    delays = [batch.backoff(attempt) for attempt in range(8) for _ in range(20)]
    assert all(0 < d <= config.longest_wait() == 10 for d in delays)
    first = [batch.backoff(0) for _ in range(50)]
    assert 0.25 <= min(first) < max(first) <= 0.75  # 0.5 s +-50%
    assert batch.backoff(0, retry_after=7) >= 7
    assert batch.backoff(0, retry_after=3600) == 10


def test_celery_configuration_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("IMAGE_MATCH_BROKER_URL", "redis://127.0.0.1:1/5")
    monkeypatch.setenv("IMAGE_MATCH_VISIBILITY_TIMEOUT", "45")
    conf = config.celery_config()
    assert conf["broker_url"] == "redis://127.0.0.1:1/5"
    assert conf["broker_transport_options"]["visibility_timeout"] == 45
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    monkeypatch.setattr(config.os, "cpu_count", lambda: 2)
    assert config.celery_config()["worker_concurrency"] == 3  # a spare process for the waits
    monkeypatch.setenv("IMAGE_MATCH_INGEST_THREADS", "0")
    with pytest.raises(ValueError, match="IMAGE_MATCH_INGEST_THREADS='0': must be at least 1"):
        settings.get("INGEST_THREADS")


# --- the commands without Celery -------------------------------------------------------------------

def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_commands_import_without_celery():
    result = run_python("import sys, image_match.tasks, image_match.tasks.cli; "
                        "assert 'celery' not in sys.modules and 'redis' not in sys.modules")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("arguments", [["ingest", "-"], ["job", "abc"], ["worker"]])
def test_without_celery_a_command_says_what_to_install(arguments):
    code = ("import sys; sys.modules['celery'] = None; sys.modules['redis'] = None\n"
            "from image_match.cli import main\n"
            f"main({arguments!r}, prog_name='image-match')\n")
    result = run_python(code)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "pip install 'celery[redis]>=5.3' 'redis>=4.5'" in result.stderr


def test_a_relative_sqlite_store_is_made_absolute(tmp_path, monkeypatch):
    from image_match.tasks.submit import absolute_sqlite

    monkeypatch.chdir(tmp_path)
    assert absolute_sqlite("sqlite:///images.db") == f"sqlite:///{tmp_path}/images.db"
    for url in ("sqlite:////data/images.db", "http://es:9200/images", "sqlite:///:memory:"):
        assert absolute_sqlite(url) == url


def test_job_json_and_exit_status(jobs, redis_url, monkeypatch):
    from click.testing import CliRunner

    from image_match.tasks.cli import job as job_command

    monkeypatch.setenv("IMAGE_MATCH_BROKER_URL", redis_url)
    job = uuid.uuid4().hex
    jobs.create(job, "sqlite:///x.db", "urls.txt")
    jobs.finish(job, done=[1], failed={2: failure("HTTP 404 Not Found")})
    jobs.add_submitted(job, 2)
    jobs.end_submission(job)
    result = CliRunner().invoke(job_command, [job, "--json"])
    assert result.exit_code == 1
    status = json.loads(result.output)
    assert (status["state"], status["done"], status["failed"]) == ("finished", 1, 1)
    assert status["failures"][0]["reason"] == "HTTP 404 Not Found"
    result = CliRunner().invoke(job_command, [job, "--allow-failures"])
    assert result.exit_code == 0 and "line 2: u: HTTP 404 Not Found" in result.output


def test_ingested_paths_are_absolute_and_may_be_any_bytes(jobs, redis_url, tmp_path,
                                                          monkeypatch):
    """Relative paths are made absolute from where `ingest` runs, as `add` stores them (the
    workers run elsewhere); a line that is not UTF-8 (a Latin-1 file name) is a path like any."""
    import os
    import shutil

    from click.testing import CliRunner

    from image_match.tasks.cli import ingest

    pics = tmp_path / "pics"
    pics.mkdir()
    shutil.copy(photos()[0], pics / "a.jpg")
    latin1 = os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(photos()[1], os.path.join(pics, latin1))
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"pics/a.jpg\npics/caf\xe9.jpg\n")
    database = f"sqlite:///{tmp_path / 'images.db'}"
    monkeypatch.setenv("IMAGE_MATCH_BROKER_URL", redis_url)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(ingest, [str(listing), "--db", database, "--json"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.output)["job"]
    (payload,) = [json.loads(v) for v in jobs.client.hvals(f"image-match:job:{job}:batches")]
    sources = [item["source"] for item in payload["items"]]
    assert sources == [str(pics / "a.jpg"), os.path.join(pics, latin1)]

    monkeypatch.chdir("/")  # a worker, elsewhere
    summary = batch.ingest(job, database, payload["items"], 0, jobs, lambda *_: None)
    assert summary["stored"] == 2, jobs.failures(job)
    stored = sorted(r["path"] for r in open_database(database).iter_records())
    assert stored == [str(pics / "a.jpg"), f"{pics}/caf\\xe9.jpg"]
