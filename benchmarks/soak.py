"""A soak of bulk ingestion: 100,000 images through 3 Celery worker processes into OpenSearch, with
the workers' memory watched from start to end.

    python benchmarks/soak.py [--images 100000] [--concurrency 3] [--batch-size 128]
                              [--opensearch URL] [--heap 2g] [--search-pause 1]
                              [--out benchmarks/results/soak.txt]

The images are the dev corpus's photos under seeded transforms (crop, mirror, turn, brightness,
size 256-640 px, JPEG quality 60-95; image n is photo n mod the corpus size with
``random.Random(n)``), written once into a cache folder and served by ``python -m http.server``
on 127.0.0.1. Redis is a redis-server started here, OpenSearch a node started here from engines/
(its own data folder under the work folder) unless ``--opensearch`` names one. One job of all
the images runs on one ``celery worker`` of ``--concurrency`` processes, while this process
searches the growing index for a corpus photo every ``--search-pause`` seconds.

For each tenth of the job it reports the images stored per second, the resident memory (RSS) of
the worker's processes at its end and the latency of the searches during it; and it checks that
nothing is lost or stored twice: the job's counts, the index's count, and every image's id read
back. image-match 1.x users reported workers growing until the OOM killer came: here the RSS
must stay flat.
"""

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

from common import CACHE, child_pids, corpus_paths, machine_line, print_table, rss_bytes  # noqa: E402
from ingest_throughput import Process, http_server  # noqa: E402
from redis_server import RedisServer  # noqa: E402  (tests/redis_server.py)

TENTHS = 10


def transform(image, n):
    """Photo ``image`` under the transforms ``random.Random(n)`` picks, as JPEG bytes."""
    rng = random.Random(n)
    w, h = image.size
    left, top = rng.uniform(0, 0.12) * w, rng.uniform(0, 0.12) * h
    right, bottom = w - rng.uniform(0, 0.12) * w, h - rng.uniform(0, 0.12) * h
    image = image.crop((int(left), int(top), int(right), int(bottom)))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    if rng.random() < 0.2:
        image = image.rotate(rng.choice([90, 180, 270]), expand=True)
    brightness = rng.uniform(0.8, 1.2)
    side = rng.randint(256, 640)
    scale = side / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.BICUBIC)
    image = ImageEnhance.Brightness(image).enhance(brightness)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=rng.randint(60, 95))
    return buffer.getvalue()


def write_variants(args):
    """Write a photo's images (``[(n, target), ...]``) that are not there yet; the photo is
    decoded once for all of them."""
    photo, targets = args
    with Image.open(photo) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    for n, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(transform(image, n))
        os.replace(partial, target)


def make_images(count, processes=2):
    """The ``count`` images in the cache (image ``n`` is photo ``n mod len(photos)``); returns the
    folder and their names, in order."""
    folder, paths = corpus_paths()
    target = CACHE / f"soak-{folder.name}"
    names = [f"{n // 1000:03d}/{n}.jpg" for n in range(count)]
    # A task per photo and block of 10,000 images, in order: the first images are there first,
    # and a photo is decoded once for the forty or so of its images in a block.
    missing = {}
    for n, name in enumerate(names):
        if not (target / name).exists():
            missing.setdefault((n // 10_000, paths[n % len(paths)]), []).append((n, target / name))
    if missing:
        print(f"writing {sum(map(len, missing.values()))} images into {target}...",
              file=sys.stderr)
        with ProcessPoolExecutor(processes) as pool:
            for _ in pool.map(write_variants, [(photo, targets) for (_, photo), targets
                                               in missing.items()]):
                pass
    return target, names


class Searches(threading.Thread):
    """Searches of the store, one after another with ``pause`` seconds between, each image of
    ``images`` in turn; keeps (start time, seconds, error or None)."""

    def __init__(self, database, images, pause=0.0):
        from image_match.drivers import open_database

        super().__init__(daemon=True)
        self.store = open_database(database)
        self.images, self.pause = images, pause
        self.results = []
        self.stopping = threading.Event()

    def run(self):
        from image_match.errors import ImageMatchError

        n = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.store.search_image(str(self.images[n % len(self.images)]))
                error = None
            except ImageMatchError as failure:
                error = str(failure)
            self.results.append((started, time.monotonic() - started, error))
            n += 1
            self.stopping.wait(self.pause)

    def between(self, begin, end):
        return [(seconds, error) for at, seconds, error in self.results if begin <= at < end]


def ms(values, q):
    """The q-th percentile of ``values`` (seconds) in milliseconds, as table text."""
    if len(values) < 2:
        return "-"
    return f"{1000 * statistics.quantiles(values, n=100, method='inclusive')[q - 1]:.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--opensearch", default=None, help="a running node's URL")
    parser.add_argument("--heap", default="2g")
    parser.add_argument("--search-pause", type=float, default=1.0,
                        help="seconds between two searches during the job")
    parser.add_argument("--work", default=None, help="folder for logs, Redis and the node")
    parser.add_argument("--out", default=None, help="also append the report to this file")
    args = parser.parse_args()

    from image_match import local_engine
    from image_match.drivers import open_database
    from image_match.records import default_id
    from image_match.tasks.jobs import Jobs, redis_client
    from image_match.tasks.submit import submit, wait
    from image_match.tasks.worker import make_app

    work = Path(args.work or tempfile.mkdtemp(prefix="image-match-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    folder, names = make_images(args.images)
    (work / "redis").mkdir(exist_ok=True)
    redis = RedisServer(work / "redis").start()
    engine = server = worker = searches = None
    try:
        if args.opensearch:
            base = args.opensearch.rstrip("/")
        else:
            engine = local_engine.start("opensearch", data_dir=work / "opensearch", heap=args.heap,
                                        stop_with_caller=True)
            base = engine.url
        database = f"{base}/soak-{int(time.time())}"
        server, url = http_server(folder, work)
        urls = [f"{url}/{name}" for name in names]
        env = dict(os.environ, IMAGE_MATCH_BROKER_URL=redis.url(0), IMAGE_MATCH_DATABASE=database,
                   IMAGE_MATCH_FETCH_ALLOWLIST="127.0.0.1")
        os.environ.update(env)
        open_database(database)  # the index, made before the workers race to make it
        worker = start_worker(env, work / "worker.log", args.concurrency)
        jobs = Jobs(redis_client())
        # The queries: the corpus's own photos, whose transformed copies the job stores.
        searches = Searches(database, corpus_paths()[1], pause=args.search_pause)
        started = time.monotonic()
        job, count = submit(urls, database=database, batch_size=args.batch_size, app=make_app(),
                            jobs=jobs)
        searches.start()
        marks, samples = [], []  # (seconds); (seconds, settled, {pid: rss})

        def sample(settled):
            pids = [worker.popen.pid, *child_pids(worker.popen.pid)]
            samples.append((time.monotonic() - started, settled,
                            {pid: rss_bytes(pid) for pid in pids}))

        def on_status(status):
            settled = status.done + status.failed
            if not samples or time.monotonic() - started - samples[-1][0] >= 5:
                sample(settled)
            while len(marks) < TENTHS and settled >= count * (len(marks) + 1) / TENTHS:
                marks.append(time.monotonic() - started)
                sample(settled)

        status = wait(job, jobs, interval=1.0, on_status=on_status)
        elapsed = time.monotonic() - started
        searches.stopping.set()
        searches.join(30)
        failures = jobs.failures(job)
        store = open_database(database)
        store.refresh()
        stored = store.count()
        ids = [default_id(u) for u in urls]
        present = 0
        for first in range(0, len(ids), 1000):
            present += len(store.get_many(ids[first:first + 1000]))
    finally:
        if searches is not None:
            searches.stopping.set()
        for process in (worker, server):
            if process is not None:
                process.stop()
        if engine is not None:
            engine.stop()
        redis.stop()

    report = render(args, status, elapsed, marks, samples, searches, started, failures, stored,
                    present, count)
    print(report)
    if args.out:
        with open(args.out, "a") as out:
            out.write(report + "\n\n")
    lost = count - present
    return 0 if lost == 0 and stored == count and not failures else 1


def start_worker(env, log, concurrency):
    """``celery worker`` of ``concurrency`` processes, once it says it is ready."""
    return Process([sys.executable, "-m", "celery", "-A", "image_match.tasks", "worker",
                    f"--concurrency={concurrency}", "--loglevel=INFO", "--without-mingle",
                    "--without-gossip", "--hostname=soak@%h"],
                   env=env, log=log, ready=lambda: b" ready." in log.read_bytes(), timeout=120)


def render(args, status, elapsed, marks, samples, searches, started, failures, stored, present,
           count):
    mib = 1024 * 1024
    pids = list(samples[-1][2])  # the worker's main process, then its pool

    def rss_at(seconds):
        """The workers' RSS in the sample nearest to ``seconds``: (main, [pool...], total)."""
        rss = min(samples, key=lambda sample: abs(sample[0] - seconds))[2]
        return rss.get(pids[0], 0), [rss.get(pid, 0) for pid in pids[1:]], sum(rss.values())

    rows = []
    for tenth, (begin, end) in enumerate(zip([0.0] + marks[:-1], marks), 1):
        main_rss, pool, total = rss_at(end)
        found = searches.between(started + begin, started + end)
        times = [seconds for seconds, _ in found]
        rows.append([f"{10 * tenth}%", f"{end:.0f}", f"{count / TENTHS / (end - begin):.0f}",
                     f"{main_rss / mib:.0f}", " / ".join(f"{value / mib:.0f}" for value in pool),
                     f"{total / mib:.0f}", len(found), ms(times, 50), ms(times, 95),
                     sum(1 for _, error in found if error)])
    peak = max(sum(rss.values()) for _, _, rss in samples)
    first_total, last_total = rss_at(marks[0])[2], rss_at(marks[-1])[2]
    lines = [f"benchmarks/soak.py --images {count} --concurrency {args.concurrency}, "
             f"{time.strftime('%Y-%m-%d %H:%M')}, {machine_line()}, load "
             f"{os.getloadavg()[0]:.1f} at the end",
             f"{count:,} images (the dev corpus under seeded transforms, 256-640 px) through one "
             f"celery worker of {args.concurrency} processes, batches of {args.batch_size}, into "
             + (f"OpenSearch at {args.opensearch}" if args.opensearch else
                f"an OpenSearch 2.19 node started here ({args.heap} heap)")
             + f"; a search of a corpus photo every {args.search_pause:g} s meanwhile",
             "",
             f"images/s over the whole job: {count / elapsed:.1f} ({elapsed:.0f} s)",
             f"job: done {status.done:,}, failed {status.failed:,}; index: {stored:,} records; "
             f"ids read back: {present:,} of {count:,}; lost {count - present:,}, stored twice "
             f"{max(0, stored - present):,}",
             f"worker RSS (all processes) at 10% {first_total / mib:.0f} MiB, at 100% "
             f"{last_total / mib:.0f} MiB ({(last_total - first_total) / mib:+.0f} MiB); peak "
             f"{peak / mib:.0f} MiB over {len(samples)} samples",
             "",
             "per tenth of the job (RSS at its end; searches during it):"]
    table = print_table(["job", "at s", "images/s", "main MiB", "pool MiB", "total MiB",
                         "searches", "p50 ms", "p95 ms", "errors"], rows, file=io.StringIO())
    text = "\n".join(lines) + "\n" + table
    if failures:
        text += "\nfailures (first 5): " + "; ".join(
            f"{f['source']}: {f['reason']}" for f in failures[:5])
    return text


if __name__ == "__main__":
    sys.exit(main())
