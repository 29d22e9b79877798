"""Bulk ingestion throughput, end to end: URLs on a local HTTP server -> Celery workers (fetch,
sign, one bulk insert per batch) -> the store, against image-match 1.x's way (``add_image`` on
each URL in a loop), all in the same run.

    python benchmarks/ingest_throughput.py [--images 2400] [--naive 300] [--opensearch URL]
                                           [--concurrency 1 2] [--batch-size 128]

Images are the dev corpus photos (or tests/data) resized to 1024 px on the long side, in four
variants each (as is, mirrored, cropped, recompressed; shifted copies when more are asked for), served by
``python -m http.server`` on 127.0.0.1 in its own process. Redis is a redis-server started here;
OpenSearch is a node started here from engines/ unless ``--opensearch`` names one (without a
driver or a node, the OpenSearch rows are skipped), warmed up with 6,400 documents first. Each Celery row starts fresh workers
(``celery -A image_match.tasks worker``) and a fresh store, then times one job from its
submission to its last image stored: images/s = images / that time.

The HTTP server, Redis, OpenSearch and the workers share this machine's cores, and so does
whatever else runs on it. So each row also gives the CPU time all of them spent per image (read
from /proc for every process involved, this one included) and the rate that CPU time allows on
the machine's cores when nothing else runs: cores / CPU seconds per image, or less when the
processes that use one core at most (the add_image loop; each worker process, whose threads
share one GIL) are the limit.
"""

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from PIL import Image, ImageOps  # noqa: E402

from common import CACHE, corpus_paths, machine_line, print_table  # noqa: E402
from redis_server import RedisServer, die_with_parent, free_port  # noqa: E402  (tests/redis_server.py)

SIDE = 1024


def make_images(count):
    """``count`` distinct 1024-px JPEGs (long side) in a cache folder; returns the folder and the file names."""
    folder, paths = corpus_paths()
    target = CACHE / f"ingest-{SIDE}px-{folder.name}"
    target.mkdir(parents=True, exist_ok=True)
    names = []
    for n in range(count):
        path = paths[n % len(paths)]
        variant, shift = n // len(paths) % 4, n // len(paths) // 4
        name = f"{path.stem}-{variant}-{shift}.jpg"
        names.append(name)
        if (target / name).exists():
            continue
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        if variant == 1:
            image = ImageOps.mirror(image)
        elif variant == 2:
            w, h = image.size
            image = image.crop((w // 20, h // 20, w - w // 20, h - h // 20))
        if shift:  # more images than four per photo: shift the picture a little
            image = image.crop((8 * shift, 0, image.width, image.height))
        scale = SIDE / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80 if variant == 3 else 90)
        (target / name).write_bytes(buffer.getvalue())
    return target, names


def cpu_seconds(pids=(), groups=()):
    """CPU seconds (user + system, with reaped children) of the processes ``pids`` and of every
    process in the process groups ``groups``, from /proc."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) in pids or int(fields[2]) in groups:
            total += sum(int(value) for value in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU seconds spent by this process and by the named process groups, with the wall-clock
    seconds, between ``start()`` and ``stop()``; ``parts`` has the CPU seconds of each."""

    def __init__(self, **groups):
        self.groups = {name: group for name, group in groups.items() if group is not None}

    def read(self, extra):
        parts = {"submitter": cpu_seconds(pids={os.getpid()})}
        parts.update((name, cpu_seconds(groups={group}))
                     for name, group in {**self.groups, **extra}.items())
        return parts

    def start(self, **extra):
        self.begin, self.wall = self.read(extra), time.perf_counter()

    def stop(self, **extra):
        end = self.read(extra)
        self.parts = {name: end[name] - self.begin.get(name, 0) for name in end}
        return time.perf_counter() - self.wall, sum(self.parts.values())


class Process:
    """A subprocess in its own process group, stopped with its children."""

    def __init__(self, argv, env=None, log=None, ready=None, timeout=60):
        self.log = log
        with open(log or os.devnull, "ab") as out:
            self.popen = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while ready is not None and not ready():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{argv[:4]} did not start: {Path(log).read_text()[-2000:] if log else ''}")
            time.sleep(0.1)

    def stop(self):
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def http_server(folder, work):
    import urllib.request

    port = free_port()

    def ready():
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            return True
        except OSError:
            return False

    server = Process([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                      "--directory", str(folder), str(port)], log=work / "http.log", ready=ready)
    return server, f"http://127.0.0.1:{port}"


def celery_run(urls, database, env, concurrency, batch_size, work, meter):
    """(seconds, CPU seconds) from submitting ``urls`` to the job's end, with fresh workers of
    ``concurrency`` processes started beforehand."""
    from image_match.tasks.jobs import Jobs, redis_client
    from image_match.tasks.submit import submit, wait
    from image_match.tasks.worker import make_app

    log = work / f"worker-{uuid.uuid4().hex[:6]}.log"
    worker = Process([sys.executable, "-m", "celery", "-A", "image_match.tasks", "worker",
                      f"--concurrency={concurrency}", "--loglevel=INFO", "--without-mingle",
                      "--without-gossip", "--without-heartbeat", f"--hostname=bench-{concurrency}@%h"],
                     env=env, log=log, ready=lambda: b"ready." in log.read_bytes())
    try:
        os.environ.update(env)
        jobs = Jobs(redis_client())
        app = make_app()
        meter.start(workers=worker.popen.pid)
        job, count = submit(urls, database=database, batch_size=batch_size, app=app, jobs=jobs)
        status = wait(job, jobs, interval=0.1)
        _, cpu = meter.stop(workers=worker.popen.pid)
        assert status.done == count, (status, jobs.failures(job)[:3])
        return status.elapsed, cpu
    finally:
        worker.stop()


def naive_run(urls, database, meter):
    """image-match 1.x's way: ``add_image(url)`` one URL after another in one process;
    (seconds, CPU seconds)."""
    from image_match.drivers import open_database

    store = open_database(database)
    meter.start()
    for url in urls:
        store.add_image(url)
    return meter.stop()


def warm_up(base, count=6400):
    """Index ``count`` random signatures into a scratch index, then drop it: a node just started
    spends several times more CPU per document until its JIT has compiled the indexing path, and
    a node that ingests for a living is warm."""
    import numpy as np

    from image_match.drivers import open_database

    store = open_database(f"{base.rstrip('/')}/warm-up-{uuid.uuid4().hex[:8]}")
    signatures = np.random.default_rng(0).integers(-2, 3, size=(count, 648)).astype(np.int8)
    for start in range(0, count, 64):
        store.add_signatures([{"path": f"warm-up/{n}", "signature": signatures[n]}
                              for n in range(start, min(start + 64, count))])
    store.drop()


def stores(args, work):
    """(name, factory of a fresh database URL, the engine's pid or None) for SQLite and, when
    possible, OpenSearch."""
    if args.sqlite:
        yield "SQLite", lambda: f"sqlite:///{work / (uuid.uuid4().hex + '.db')}", None
    base, engine = args.opensearch, None
    if base is None:
        try:
            import image_match.drivers.elasticsearch  # noqa: F401
            from image_match import local_engine

            engine = local_engine.start("opensearch", data_dir=work / "opensearch", heap="1g",
                                        stop_with_caller=True)
            base = engine.url
        except Exception as error:  # no driver yet, no JDK, no Maven: say so and go on
            print(f"OpenSearch rows skipped: {str(error).splitlines()[0]}", file=sys.stderr)
            return
    warm_up(base)
    try:
        yield ("OpenSearch", lambda: f"{base.rstrip('/')}/bench-{uuid.uuid4().hex[:10]}",
               engine.pid if engine is not None else None)
    finally:
        if engine is not None:
            engine.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2400, help="URLs per Celery job")
    parser.add_argument("--naive", type=int, default=300,
                        help="URLs for the add_image loop (0: no such row)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per task (default: image-match ingest's)")
    parser.add_argument("--opensearch", help="a running node's URL (default: start one)")
    parser.add_argument("--sqlite", action=argparse.BooleanOptionalAction, default=True,
                        help="measure SQLite too")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "ingest_throughput.txt"))
    args = parser.parse_args()
    if args.batch_size is None:
        from image_match.tasks.submit import DEFAULT_BATCH_SIZE

        args.batch_size = DEFAULT_BATCH_SIZE

    load = os.getloadavg()[0]
    folder, names = make_images(max(args.images, args.naive))
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        work = Path(tmp)
        (work / "redis").mkdir()
        redis = RedisServer(work / "redis").start()
        server, base = http_server(folder, work)
        urls = [f"{base}/{name}" for name in names]
        env = dict(os.environ, IMAGE_MATCH_BROKER_URL=redis.url(0),
                   IMAGE_MATCH_FETCH_ALLOWLIST="127.0.0.1")
        os.environ.update(env)
        rows = []
        cores = os.cpu_count()

        def row(store_name, method, processes, images, seconds, cpu, meter, serial, count):
            """``serial``: the part of ``meter`` that runs in ``count`` processes of one core at
            most (the add_image loop, the workers)."""
            limit = min(cores / cpu, count / meter.parts[serial]) * images
            rows.append((store_name, method, processes, images, f"{seconds:.1f}",
                         f"{images / seconds:.0f}", f"{1000 * cpu / images:.1f}", f"{limit:.0f}"))
            print(rows[-1], {name: f"{1000 * value / images:.1f} ms/image"
                             for name, value in meter.parts.items()}, file=sys.stderr)

        try:
            for store_name, fresh, engine_pid in stores(args, work):
                # Every service runs in a session of its own: its pid is its process group.
                meter = Meter(http=server.popen.pid, redis=redis.process.pid, engine=engine_pid)
                if args.naive:
                    seconds, cpu = naive_run(urls[:args.naive], fresh(), meter)
                    row(store_name, "add_image loop (1.x style)", "1 (no Celery)", args.naive,
                        seconds, cpu, meter, "submitter", 1)
                for concurrency in args.concurrency:
                    seconds, cpu = celery_run(urls[:args.images], fresh(), env, concurrency,
                                              args.batch_size, work, meter)
                    row(store_name, f"Celery, batches of {args.batch_size}", str(concurrency),
                        args.images, seconds, cpu, meter, "workers", concurrency)
        finally:
            server.stop()
            redis.stop()
    headers = ["store", "method", "worker processes", "images", "seconds", "images/s",
               "CPU ms/image", f"images/s CPU allows on {os.cpu_count()} idle cores"]
    title = (f"{machine_line()}; {SIDE} px JPEGs from a local HTTP server; load average at the "
             f"start: {load:.1f}")
    print(title)
    table = print_table(headers, rows)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(f"{title}\n\n{table}\n")


if __name__ == "__main__":
    main()
