"""A node lost during bulk ingestion: a 3-node cluster on loopback, a Celery job storing images
into an index of 3 shards (1 replica each), searches running all along, and one node SIGKILLed
at a third of the job, then started again at two thirds.

    python benchmarks/cluster_failover.py [--kind opensearch|elasticsearch] [--images 3000]
                                          [--shards 3] [--concurrency 3] [--out FILE]

The cluster is started here from engines/ (``local_engine.start_cluster``, 512 MB heap a node),
in a work folder; clients (the worker, the searches) talk to node-0, and the node killed is the
one of the two others holding the most primaries, so the cluster has to promote replicas. The
images are benchmarks/soak.py's (the dev corpus under seeded transforms), served by
``python -m http.server``.

Per phase (3 nodes; one killed; back, recovering) it prints the images stored per second and the
search latency (one search after another from one thread, each a real photo of the corpus), the
errors seen, how long the cluster took to notice the loss and to turn green again, and checks
that every image was stored exactly once.
"""

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from common import machine_line, print_table  # noqa: E402
from ingest_throughput import http_server  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from soak import Searches, make_images, ms, start_worker  # noqa: E402

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url):
    with _DIRECT.open(url, timeout=10) as response:
        return json.load(response)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["opensearch", "elasticsearch"], default="opensearch")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from image_match import local_engine
    from image_match.drivers import open_database
    from image_match.records import default_id
    from image_match.tasks.jobs import Jobs, redis_client
    from image_match.tasks.submit import submit, wait
    from image_match.tasks.worker import make_app

    work = Path(args.work or tempfile.mkdtemp(prefix="image-match-failover-"))
    folder, names = make_images(args.images)
    (work / "redis").mkdir(parents=True, exist_ok=True)
    redis = RedisServer(work / "redis").start()
    cluster = server = worker = searches = None
    try:
        started = time.monotonic()
        cluster = local_engine.start_cluster(args.kind, nodes=3, data_dir=work / "cluster",
                                             stop_with_caller=True)
        formed = time.monotonic() - started
        database = f"{cluster.url}/failover"
        store = open_database(database, shards=args.shards)
        store.add_images([str(p) for p in sorted(folder.glob("000/*.jpg"))[:3]], workers=1,
                         refresh_after=True)  # a few records, so that searches have something
        cluster.wait_for("green", timeout=120)
        server, url = http_server(folder, work)
        urls = [f"{url}/{name}" for name in names[3:]]
        env = dict(os.environ, IMAGE_MATCH_BROKER_URL=redis.url(0), IMAGE_MATCH_DATABASE=database,
                   IMAGE_MATCH_FETCH_ALLOWLIST="127.0.0.1")
        os.environ.update(env)
        worker = start_worker(env, work / "worker.log", args.concurrency)
        searches = Searches(database, sorted(folder.glob("001/*.jpg"))[:50])
        searches.start()
        jobs = Jobs(redis_client())
        events = {"start": time.monotonic()}
        job, count = submit(urls, database=database, batch_size=128, app=make_app(), jobs=jobs)
        victim = None

        def on_status(status):
            nonlocal victim
            settled = status.done + status.failed
            if victim is None and settled >= count / 3:
                shards = get(f"{cluster.url}/_cat/shards/failover?format=json")
                held = {name: 0 for name in cluster.spec["names"][1:]}
                for shard in shards:
                    if shard["prirep"] == "p" and shard["node"] in held:
                        held[shard["node"]] += 1
                victim = cluster.spec["names"].index(max(held, key=held.get))
                events["killed"], events["settled at kill"] = time.monotonic(), settled
                cluster.kill(victim)
                health = threading.Thread(target=lambda: events.setdefault(
                    "noticed", events["killed"] + cluster.wait_for("yellow", nodes=2, timeout=120)),
                    daemon=True)
                health.start()
            elif "killed" in events and "restarted" not in events and settled >= 2 * count / 3:
                events["settled at restart"] = settled
                events["restart begun"] = time.monotonic()
                cluster.restart(victim)
                events["restarted"] = time.monotonic()

        status = wait(job, jobs, interval=0.5, on_status=on_status)
        events["finished"] = time.monotonic()
        if "restarted" not in events:  # the job ended before two thirds were noticed
            events["settled at restart"] = count
            events["restart begun"] = time.monotonic()
            cluster.restart(victim)
            events["restarted"] = time.monotonic()
        events["green"] = events["restarted"] + cluster.wait_for("green", timeout=600)
        searches.stopping.set()
        searches.join(30)
        store.refresh()
        stored = store.count()
        ids = [default_id(u) for u in urls]
        present = sum(len(store.get_many(ids[i:i + 1000])) for i in range(0, len(ids), 1000))
        failures = jobs.failures(job)
    finally:
        if searches is not None:
            searches.stopping.set()
        for process in (worker, server):
            if process is not None:
                process.stop()
        if cluster is not None:
            cluster.stop()
        redis.stop()

    phases = [("3 nodes", events["start"], events["killed"], 0, events["settled at kill"]),
              (f"node-{victim} killed", events["killed"], events["restart begun"],
               events["settled at kill"], events["settled at restart"]),
              ("node back, recovering", events["restarted"], events["finished"],
               events["settled at restart"], count)]
    rows = []
    for label, begin, end, settled_from, settled_to in phases:
        found = searches.between(begin, end)
        times = [seconds for seconds, _ in found]
        rate = (settled_to - settled_from) / (end - begin) if end > begin else 0
        rows.append([label, f"{end - begin:.0f}", f"{rate:.0f}", len(found), ms(times, 50),
                     ms(times, 95), f"{1000 * max(times):.0f}" if times else "-",
                     sum(1 for _, error in found if error)])
    head = [f"benchmarks/cluster_failover.py --kind {args.kind} --images {args.images} --shards "
            f"{args.shards}, {time.strftime('%Y-%m-%d %H:%M')}, {machine_line()}, load "
            f"{os.getloadavg()[0]:.1f}",
            f"3-node {args.kind} cluster on loopback (formed in {formed:.0f} s), index of "
            f"{args.shards} shards with 1 replica each; one celery worker of {args.concurrency} "
            f"processes; searches from one thread, one after another; node-{victim} (most "
            "primaries, not the one clients use) SIGKILLed at a third of the job, started again "
            "at two thirds",
            ""]
    table = print_table(["phase", "seconds", "images/s stored", "searches", "p50 ms", "p95 ms",
                         "max ms", "search errors"], rows, file=io.StringIO())
    tail = [f"loss noticed (health yellow with 2 nodes) {events['noticed'] - events['killed']:.1f} s "
            f"after the kill; the node rejoined {events['restarted'] - events['restart begun']:.0f}"
            f" s after its start; green {events['green'] - events['restarted']:.0f} s after that",
            f"job: done {status.done:,}, failed {status.failed:,}; index: {stored:,} records "
            f"({len(urls):,} images and 3 seeds); ids read back {present:,} of {len(urls):,}: "
            f"lost {len(urls) - present:,}, stored twice {max(0, stored - 3 - present):,}"]
    if failures:
        tail.append("failures (first 3): " + "; ".join(
            f"{f['source']}: {f['reason']}" for f in failures[:3]))
    report = "\n".join(head) + "\n" + table + "\n" + "\n".join(tail)
    print(report)
    if args.out:
        with open(args.out, "a") as out:
            out.write(report + "\n\n")
    return 0 if present == len(urls) and stored == len(urls) + 3 and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
