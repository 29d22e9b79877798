"""A real 3-node cluster on loopback (OpenSearch 2.19, then Elasticsearch 7.17), started here from
engines/ as ``image-match engine start --nodes 3`` starts one: a store's index gets a replica of
each shard, and a node SIGKILLed during a bulk ingestion through Celery loses nothing and stores
nothing twice, while searches keep answering; the node then rejoins and the cluster turns green.

These start their own nodes (three JVMs of 512 MB heap each, under a minute on 2 cores), never the
shared single nodes; the cluster is started and stopped through the command line.
"""

import json
import os
import statistics
import threading
import time
import urllib.request
import uuid

import pytest
from click.testing import CliRunner

from image_match import local_engine
from image_match.cli import main
from image_match.drivers import open_database
from image_match.errors import ImageMatchError
from image_match.records import default_id

from ingest_world import DATABASES, Run, photo_variants, serve

pytestmark = [pytest.mark.engine, pytest.mark.redis]

NODES = 3


@pytest.fixture(scope="module", params=["opensearch", "elasticsearch"])
def cluster(request, tmp_path_factory):
    """A cluster started as a user starts one: ``image-match engine start --nodes 3``."""
    kind = request.param
    data = tmp_path_factory.mktemp(f"{kind}-cluster")
    started = CliRunner().invoke(main, ["engine", "start", "--kind", kind, "--nodes", str(NODES),
                                        "--data-dir", str(data), "--json"])
    if started.exit_code != 0:
        if os.environ.get("IMAGE_MATCH_TEST_REQUIRE_ENGINES"):
            raise AssertionError(started.output)
        pytest.skip(f"cannot start a local {kind} cluster: {started.stderr.strip()}")
    running = local_engine.status(data)
    try:
        assert json.loads(started.stdout)["nodes"] == running.urls
        yield running
    finally:
        stopped = CliRunner().invoke(main, ["engine", "stop", "--data-dir", str(data)])
        assert stopped.exit_code == 0 and local_engine.status(data) is None, stopped.output


def get(url):
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10) as r:
        return json.load(r)


def test_the_cluster_forms_and_a_store_gets_a_replica_of_each_shard(cluster):
    shown = CliRunner().invoke(main, ["engine", "status", "--data-dir", str(cluster.data_dir)])
    assert f"a cluster of 3 nodes, 3 running: {' '.join(cluster.urls)}" in shown.stdout
    nodes = get(cluster.url + "/_cat/nodes?format=json")
    assert sorted(node["name"] for node in nodes) == ["node-0", "node-1", "node-2"]
    assert all(get(url + "/")["cluster_name"] == cluster.spec["cluster"] for url in cluster.urls)
    index = f"replicas-{uuid.uuid4().hex[:8]}"
    made = CliRunner().invoke(main, ["init", "--db", f"{cluster.url}/{index}", "--shards", "3"])
    assert made.exit_code == 0, made.output
    store = open_database(f"{cluster.url}/{index}")
    try:
        settings = get(f"{cluster.url}/{index}/_settings")[index]["settings"]["index"]
        assert settings["number_of_shards"] == "3"
        cluster.wait_for("green", timeout=60)
        shards = get(f"{cluster.url}/_cat/shards/{index}?format=json")
        assert len(shards) == 6 and {s["prirep"] for s in shards} == {"p", "r"}
        for number in "012":  # a shard's copies on two different nodes
            assert len({s["node"] for s in shards if s["shard"] == number}) == 2
        assert local_engine.status(cluster.data_dir).urls == cluster.urls
    finally:
        store.drop()


def node_holding_primaries(cluster, index):
    """The index of the node, other than the one clients talk to (node-0), holding the most
    primaries of ``index``: killing it makes the cluster promote replicas."""
    shards = get(f"{cluster.url}/_cat/shards/{index}?format=json")
    counts = {name: 0 for name in cluster.spec["names"][1:]}
    for shard in shards:
        if shard["prirep"] == "p" and shard["node"] in counts:
            counts[shard["node"]] += 1
    return cluster.spec["names"].index(max(counts, key=counts.get))


class Searches(threading.Thread):
    """Searches the store again and again, keeping (time, seconds, error or None)."""

    def __init__(self, url, image):
        super().__init__(daemon=True)
        self.store = open_database(url)
        self.image = image
        self.results = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                found = self.store.search_image(self.image, bytestream=True)
                # A shard missing from the answer would drop the seed silently.
                error = None if "seed" in [match["path"] for match in found] else \
                    f"the seed was not found: {found}"
            except ImageMatchError as failure:
                error = str(failure)
            self.results.append((started, time.monotonic() - started, error))
            time.sleep(0.1)

    def between(self, start, end):
        return [(seconds, error) for at, seconds, error in self.results if start <= at < end]


def milliseconds(values, q):
    return round(1000 * statistics.quantiles(values, n=100)[q - 1], 1) if len(values) > 1 else None


def test_a_node_killed_during_a_bulk_ingestion_loses_nothing(cluster, redis_server, http_server,
                                                             tmp_path, monkeypatch):
    """320 photos through a Celery worker into an index of 3 shards (1 replica each); at a third
    of the job the node holding most primaries is SIGKILLed: the job finishes with every photo
    stored exactly once (checked against the input), searches answer throughout, and once the
    node is back the cluster is green."""
    from image_match.tasks.submit import submit, wait

    images = photo_variants()
    index = f"failover-{uuid.uuid4().hex[:8]}"
    database = f"{cluster.url}/{index}"
    store = open_database(database, shards=3)
    store.add_images([{"path": "seed", "image": images[0]}], workers=1, refresh_after=True)
    cluster.wait_for("green", timeout=60)

    run = Run(redis_server.url(next(DATABASES)), tmp_path)
    run.env["IMAGE_MATCH_DATABASE"] = database
    for name, value in run.env.items():  # submit() reads the environment, as the CLI does
        if name.startswith("IMAGE_MATCH_"):
            monkeypatch.setenv(name, value)
    searches = Searches(database, images[0])
    try:
        run.worker(concurrency=2)
        good, _ = serve(http_server, images, delay=0.05)
        good = good[:len(images)]
        job, count = submit(good, database=database, batch_size=16)
        searches.start()
        jobs = run.jobs()
        while jobs.status(job).done < len(good) / 3:
            time.sleep(0.1)
        victim = node_holding_primaries(cluster, index)
        killed = time.monotonic()
        cluster.kill(victim)
        status = wait(job, jobs, interval=0.2)
        finished = restarted = time.monotonic()
        cluster.restart(victim)
        green_after = cluster.wait_for("green", timeout=180)
        searches.stopping.set()
        searches.join(10)
    finally:
        searches.stopping.set()
        for worker in run.workers:
            worker.stop()

    failures = jobs.failures(job)
    assert (status.done, status.failed) == (len(good), 0), failures[:3]
    store.refresh()
    expected = {default_id(url) for url in good} | {default_id("seed")}
    assert store.count() == len(expected)  # nothing twice
    found = store.get_many(expected)
    assert set(found) == expected  # nothing lost
    assert {found[default_id(url)]["path"] for url in good} == set(good)

    before = searches.between(0, killed)
    during = searches.between(killed, restarted)
    assert during, "no search ran while the node was down"
    assert [error for _, error in during if error] == []
    print(f"\n{cluster.kind}: node-{victim} killed at a third of the job, which finished "
          f"{finished - killed:.1f} s later; {len(during)} searches while it was down, p50 "
          f"{milliseconds([s for s, _ in during], 50)} ms, p95 "
          f"{milliseconds([s for s, _ in during], 95)} ms (before: p50 "
          f"{milliseconds([s for s, _ in before], 50)} ms); green {green_after:.1f} s after it "
          "rejoined")
    store.drop()
