"""Which word layout should new Elasticsearch/OpenSearch indices use? Measured on a real node.

Layouts (see ``image_match/drivers/elasticsearch.py``):

- ``simple_words``: image-match 1.x's 63 long fields ``simple_word_0..62``, a bool ``should`` of
  one term query per field;
- ``words``: one multi-valued keyword field holding ``position * 3**k + word``, a bool ``should``
  of one term query per word (the rarer a shared word, the more it scores);
- ``words/long``: the same field as a long (every shared word scores 1, as in 1.x);

each with ``minimum_should_match`` (msm) 1, 2 or 3 words. The records are real photographs: the dev
corpus and distinct records made from it by random crops, rescales and flips (so that the words
have the statistics of photos, not of noise). The queries are mild copies (rescaled, recompressed,
slightly cropped) of corpus images; the truth is every stored record closer than the cutoff by
brute force. Measured per layout:

- latency of one search (one query) and of one msearch of 8 queries (``all_orientations``), from
  the client: p50 / p95 / p99 in milliseconds;
- recall: the fraction of the true matches the engine returned among the ``size`` candidates
  ("close": of those closer than 0.3, the clear copies);
- bytes per record on disk after a forced merge to one segment.

Run: ``python benchmarks/es_word_layout.py [--records 50000] [--url http://127.0.0.1:9200]``; without
a URL (or ``IMAGE_MATCH_TEST_ES_URL``) an OpenSearch node is started with ``image_match.local_engine``.
"""

import argparse
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import CACHE, corpus_paths, machine_line, print_table  # noqa: E402

from image_match.drivers.elasticsearch import SignatureES, open_search_engine  # noqa: E402
from image_match.goldberg import ImageSignature, is_featureless, normalized_distance  # noqa: E402

CUTOFF = 0.45
SIZE = 100
BATCH = 8


# --- the records and the queries ----------------------------------------------------------------

def _variants(job):
    """Signatures of ``count`` random crops / rescales / flips of one image (one process's work)."""
    path, count, seed = job
    rng = np.random.default_rng(seed)
    gis = ImageSignature(draft=True)
    image = Image.open(path).convert("L")
    image.thumbnail((1024, 1024))
    width, height = image.size
    signatures = [gis.generate_signature(np.asarray(image))]
    while len(signatures) < count + 1:
        # A window of 20-80% of each side: a different picture of the same kind of content.
        w, h = int(width * rng.uniform(0.2, 0.8)), int(height * rng.uniform(0.2, 0.8))
        if w < 32 or h < 32:
            continue
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        variant = image.crop((x, y, x + w, y + h))
        scale = rng.uniform(0.4, 1.0)
        variant = variant.resize((max(16, int(w * scale)), max(16, int(h * scale))))
        if rng.random() < 0.5:
            variant = variant.transpose(Image.FLIP_LEFT_RIGHT)
        signature = gis.generate_signature(np.asarray(variant))
        if not is_featureless(signature):
            signatures.append(signature)
    return signatures


def _query(job):
    """A mild copy of one image: rescaled, JPEG-recompressed, cropped by a few percent."""
    path, seed = job
    rng = np.random.default_rng(seed)
    image = Image.open(path).convert("RGB")
    image.thumbnail((1024, 1024))
    width, height = image.size
    dx, dy = int(width * rng.uniform(0, 0.04)), int(height * rng.uniform(0, 0.04))
    image = image.crop((dx, dy, width - int(width * rng.uniform(0, 0.04)),
                        height - int(height * rng.uniform(0, 0.04))))
    scale = rng.uniform(0.5, 0.9)
    image = image.resize((int(image.width * scale), int(image.height * scale)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(50, 90)))
    return ImageSignature(draft=True).generate_signature(buffer.getvalue())


def dataset(records, queries, workers):
    """``(stored signatures (R, 648), query signatures (Q, 648))``, cached between runs."""
    cache = CACHE / f"es_word_layout_{records}_{queries}.npz"
    if cache.exists():
        data = np.load(cache)
        return data["stored"], data["queries"]
    _, paths = corpus_paths()
    per_image = -(-records // len(paths)) - 1
    with ProcessPoolExecutor(workers) as pool:
        stored = [s for batch in pool.map(_variants, [(p, per_image, i) for i, p in enumerate(paths)])
                  for s in batch]
        chosen = np.random.default_rng(1).choice(len(paths), min(queries, len(paths)), replace=False)
        found = list(pool.map(_query, [(paths[i], 1000 + i) for i in chosen]))
    stored = np.stack(stored)[:records]
    found = np.stack([q for q in found if not is_featureless(q)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, stored=stored, queries=found)
    return stored, found


def truth(stored, queries, cutoff=CUTOFF):
    """Per query, the indices of the stored signatures closer than the cutoff (brute force)."""
    return [set(np.flatnonzero(normalized_distance(stored, q) < cutoff)) for q in queries]


# --- the variants -------------------------------------------------------------------------------

class _LongWords(SignatureES):
    _words_type = "long"


# terms_set is not measured: it needs a per-document count field or a painless script for its
# minimum (the embedded test node has no scripting), and scores like the bool of term clauses.
VARIANTS = [  # (name, class, layout, the index it searches)
    ("simple_words", SignatureES, "simple_words", "simple_words"),
    ("words", SignatureES, "words", "words"),
    ("words/long", _LongWords, "words", "words_long"),
]


def build(url, name, cls, layout, stored):
    previous = open_search_engine(f"{url}/bench-layout-{name}", layout=layout)
    previous.drop()
    store = cls(previous.es, previous.index, layout=layout)
    start = time.perf_counter()
    for first in range(0, len(stored), 2000):
        items = [{"path": f"r{first + i}", "id": str(first + i), "signature": s}
                 for i, s in enumerate(stored[first:first + 2000])]
        failed = [r for r in store.add_signatures(items) if not isinstance(r, str)]
        if failed:
            raise SystemExit(f"indexing failed: {failed[0]}")
    seconds = time.perf_counter() - start
    store._client._call("merging", store.es.indices.forcemerge, index=store.index,
                        max_num_segments=1, request_timeout=600)
    store.refresh()
    return store, seconds, store._client.store_bytes() / store.count()


def recall(found, truths):
    return sum(len(f & t) for f, t in zip(found, truths)) / max(1, sum(len(t) for t in truths))


def measure(store, queries, truths, rounds):
    """``(found per query, single-search percentiles, msearch percentiles)``."""
    words = store.scheme.terms(queries)  # 1.x's words, as the store indexes them
    found = [set(int(r.id) for r in lst) for lst in store._candidates(words, SIZE, None)]
    single, batch = [], []
    for _ in range(rounds):
        for row in words:
            start = time.perf_counter()
            store._candidates(row[None], SIZE, None)
            single.append(time.perf_counter() - start)
        for first in range(0, len(words) - BATCH + 1, BATCH):
            start = time.perf_counter()
            store._candidates(words[first:first + BATCH], SIZE, None)
            batch.append(time.perf_counter() - start)
    return found, _percentiles(single), _percentiles(batch)


def _percentiles(seconds):
    return "/".join(f"{np.percentile(seconds, p) * 1000:.1f}" for p in (50, 95, 99))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=50000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the queries")
    parser.add_argument("--url", default=os.environ.get("IMAGE_MATCH_TEST_ES_URL"))
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's indices")
    args = parser.parse_args()

    stored, queries = dataset(args.records, args.queries, args.workers)
    truths, close = truth(stored, queries), truth(stored, queries, 0.3)
    print(f"{len(stored)} records, {len(queries)} queries, {np.mean([len(t) for t in truths]):.1f} "
          f"true matches per query ({np.mean([len(t) for t in close]):.1f} closer than 0.3); "
          f"{machine_line()}")

    engine = None
    if not args.url:
        from image_match import local_engine

        engine = local_engine.start("opensearch", data_dir=tempfile.mkdtemp(prefix="es-layout-"),
                                    heap="2g", stop_with_caller=True)
        args.url = engine.url
    try:
        rows, built = [], {}
        for name, cls, layout, index in VARIANTS:
            if index not in built:
                built[index] = build(args.url, index, cls, layout, stored)
            store, seconds, per_record = built[index]
            store.__class__ = cls
            for msm in (1, 2, 3):
                store.minimum_should_match = msm
                measure(store, queries[:20], truths[:20], 1)  # warm the caches
                found, single, batch = measure(store, queries, truths, args.rounds)
                rows.append([name, msm, f"{recall(found, truths):.3f}", f"{recall(found, close):.3f}",
                             single, batch, f"{per_record:.0f}", f"{len(stored) / seconds:.0f}"])
                print(*rows[-1], sep="  ", flush=True)
        print(f"\n{store.engine} {store.engine_version}, {len(stored)} records, size={SIZE}, "
              f"cutoff {CUTOFF}; latency in ms, p50/p95/p99 from the client")
        print_table(["layout", "msm", "recall", "close", "1 query ms", f"msearch of {BATCH} ms",
                     "bytes/record", "indexed/s"], rows)
        if not args.keep:
            for store, _, _ in built.values():
                store.drop()
    finally:
        if engine is not None:
            engine.stop()


if __name__ == "__main__":
    main()
