"""What the tests of bulk ingestion share: real Celery workers in their own process groups, the
photos they ingest and the HTTP test server's routes for them (tests/test_ingest_workers.py,
tests/test_cluster.py)."""

import datetime
import io
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid

from PIL import Image, ImageOps

from image_match.tasks.jobs import Jobs

from conftest import photos
from redis_server import die_with_parent

ENV = {
    "IMAGE_MATCH_FETCH_ALLOWLIST": "127.0.0.1",
    "IMAGE_MATCH_FETCH_CONNECT_TIMEOUT": "5",  # a busy test server may drop a SYN: resent after 1 s
    "IMAGE_MATCH_FETCH_READ_TIMEOUT": "1",
    "IMAGE_MATCH_FETCH_MAX_BYTES": "2000000",
    "IMAGE_MATCH_VISIBILITY_TIMEOUT": "6",  # a dead worker's batches come back after 6 s
    "IMAGE_MATCH_INGEST_MAX_RETRIES": "2",
    "IMAGE_MATCH_INGEST_RETRY_DELAY": "0.3",
}
DATABASES = itertools.count(1)  # a Redis database per job's world


def photo_variants():
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


def log_times(worker, text):
    """The wall-clock times of the worker's log lines holding ``text``."""
    times = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if text in line and line.startswith("["):
            stamp = line[1:24]  # [2026-12-06 21:50:00,123: INFO/MainProcess] ...
            times.append(datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return times
