"""Search at scale: does the index return every copy the exact distance would accept, among a
million distinct pictures, and how fast?

    python benchmarks/search_scale.py            # 100k and 1M records: hours on 2 cores the
                                                 # first time (the distractors are made and
                                                 # cached), then about an hour
    python benchmarks/search_scale.py --stores sqlite --sizes 100000 --sweep-size 0 \
        --windows-size 0 --output benchmarks/results/search_scale_sqlite.txt

Options: ``--sizes``, ``--sqlite-sizes`` (SQLite runs at those of ``--sizes`` only: 100k),
``--stores``, ``--schemes``, ``--es-url`` (an engine of one's own instead of starting one),
``--heap``, ``--sweep-size`` (100k: where the candidate schemes and sizes are compared),
``--windows-size`` (100k: a store with crop windows), ``--rounds``, ``--help`` for the rest.

Records. Record i < 244 is photo i of the dev corpus; the others are distractors: collages of
pieces of the corpus's photos with colour and scale changes (``distractors.py``), distinct
pictures whose distances to the queries and to each other are printed beside the corpus's own
unrelated pairs (the "distractors" table), so that a set easier or harder than real photos shows.

Queries. Each corpus photo is copied the ways of ``QUERIES`` (the three copies of earlier runs,
mirror images, central crops keeping 81% and 64% of the area, turns by 10 degrees keeping the
size or growing the canvas, and the copies the robust options' parts are for: bars and borders,
insets, corner crops), and searched as a user would: a default search (``search_image`` with no
options: the copy, its mirror image and two central crops' grids, 4 query signatures) for the
first five, ``robust=True`` for the others (``SignatureDatabaseBase.query_options``). The rows
and margins of each search are made once and cached (``query_signatures`` is the slow part).

What is measured, per store and size, through the store's public API only (``add_signatures``,
``query_signer`` and ``search_queries``: ``search_image`` in its two halves, the signing done
once beforehand; ``describe``; the engine's own API for a force-merge):

- candidate recall per kind of copy: of the copies whose own record is under the store's cutoff
  by brute force (the distance the search itself computes, ``record_distances``, windows and
  margins included), the share the search returns: on the tuning share of the corpus (what the
  scheme's parameters were chosen on) and on the held-out share (``common.split_held_out``);
- latency of one search at a time from the client, p50/p99 over every search of a kind (after a
  warm-up pass), ``--rounds`` passes: "default" (the store's default search of a plain copy),
  "orientations", "robust";
- insert rate: ``add_signatures`` of precomputed signatures in bulk, including the final refresh;
- bytes per record and per indexed signature (a record's own and its crop windows'): SQLite's
  file after the store is closed (WAL checkpointed), OpenSearch's store after a force-merge to
  one segment.

image-match 1.x's way is measured beside ours on OpenSearch: its documents (``path``,
``signature`` as a list of ints, ``simple_word_0..62``) under a dynamic mapping, one ``index``
call per image for its insert rate (``--legacy-sample`` records; the rest bulk-loaded), its
search (a bool ``should`` of 63 term queries, size 100, one request per query signature) given
the same 4 query signatures as a default search, for the copies a default search is for.

The sweep (``--sweep-size``) compares candidate schemes (1.x's words, bands of several shapes)
and candidate sizes on both stores, on the tuning share: the numbers that chose
``words.DEFAULT_BANDS`` and the store's ``size``.

Run the heavy sizes under ``flock /work/notes/bench.lock`` on a shared machine; the machine's load
is printed at the start, while searching and at the end.
"""

import argparse
import hashlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import transforms  # noqa: E402
from common import CACHE, corpus_paths, is_held_out, machine_line, print_table  # noqa: E402
from distractors import collage_signatures  # noqa: E402
from image_match.drivers import open_database  # noqa: E402
from image_match.goldberg import (CROP_WINDOW_AREAS, ImageSignature, distance_matrix,  # noqa: E402
                                  is_featureless)
from image_match.records import Record  # noqa: E402
from image_match.signature_database_base import record_distances  # noqa: E402
from image_match.words import make_words, word_field_names  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: 1.x's cutoff, for the distractor check beside the store's.
CUTOFF_1X = 0.45


def log(*parts):
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}]", *parts, file=sys.stderr,
          flush=True)


# --- the queries ------------------------------------------------------------------------------

#: (name, copy of a PIL image given a seeded generator and an unrelated photo, search options).
#: Copies that are images are sent as JPEG quality 85.
QUERIES = [
    ("halved", lambda image, rng, other: transforms.resize(image, 0.5), {}),
    ("crop 81% (5% a side)", lambda image, rng, other: transforms.central_crop(image, 0.81), {}),
    ("jpeg q50", lambda image, rng, other: transforms.jpeg(image, 50), {}),
    ("mirror", lambda image, rng, other: transforms.flip_horizontal(image), {}),
    ("crop 64%", lambda image, rng, other: transforms.central_crop(image, 0.64), {}),
    ("rotate 10", lambda image, rng, other: transforms.rotate(image, 10), {"robust": True}),
    ("rotate 10, grown canvas", lambda image, rng, other: transforms.rotate(image, 10, expand=True),
     {"robust": True}),
    ("letterbox", lambda image, rng, other: transforms.letterbox(image), {"robust": True}),
    ("caption bars", lambda image, rng, other: transforms.caption(image, rng), {"robust": True}),
    ("border", lambda image, rng, other: transforms.border(image, rng), {"robust": True}),
    ("inset 60%", lambda image, rng, other: transforms.inset(image, other, rng),
     {"robust": True}),
    ("corner crop 80%", lambda image, rng, other: transforms.corner_crop(
        image, 0.8, transforms.CORNERS[rng.integers(4)]), {"robust": True}),
]


def search_kind(options):
    return ("robust" if options.get("robust") else
            "orientations" if options.get("all_orientations") else "default")


def _encoded(result):
    return result if isinstance(result, bytes) else transforms.jpeg(result, 85)


def _code_fingerprint():
    """What the cached query rows depend on: the signing code."""
    import image_match.goldberg
    import image_match.loading

    digest = hashlib.blake2b(digest_size=8)
    for module in (image_match.goldberg, image_match.loading, transforms):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def query_rows(store, paths):
    """Per QUERIES row, per photo, ``(rows, margins)`` of the search the store makes for the copy
    (its ``query_signer`` with the row's options): cached by the signing code and options."""
    fingerprint = _code_fingerprint()
    queries = {}
    for name, make, options in QUERIES:
        search_options = store.query_options(**options)
        signer = store.query_signer(**options)
        key = hashlib.blake2b(repr((name, sorted(search_options.items()), fingerprint,
                                    store.orientation_margin, [p.name for p in paths])).encode(),
                              digest_size=8).hexdigest()
        cached = CACHE / f"scale-queries-{key}.npz"
        if cached.exists():
            with np.load(cached) as data:
                rows = np.split(data["rows"], data["bounds"])
                margins = np.split(data["margins"], data["bounds"])
        else:
            started = time.perf_counter()
            rows, margins = [], []
            for index, path in enumerate(paths):
                with Image.open(path) as opened:
                    image = opened.convert("RGB")
                with Image.open(paths[(index + 1) % len(paths)]) as opened:
                    other = opened.convert("RGB")
                copy = _encoded(make(image, np.random.default_rng(index), other))
                signatures, row_margins = signer(copy)
                rows.append(signatures)
                margins.append(row_margins)
            bounds = np.cumsum([len(r) for r in rows])[:-1]
            CACHE.mkdir(parents=True, exist_ok=True)
            np.savez(cached, rows=np.concatenate(rows), margins=np.concatenate(margins),
                     bounds=bounds)
            log(f"queries {name}: signed in {time.perf_counter() - started:.0f} s")
        queries[name] = list(zip(rows, margins))
    return queries


# --- the records --------------------------------------------------------------------------------

class Records:
    """The records of a run: the corpus's photos (record i is photo i) and then the collages, each
    with its crop windows' signatures (for stores that keep them)."""

    def __init__(self, paths, count, workers):
        generator = ImageSignature(draft=True)
        self.paths = paths
        self.photos = np.stack([generator.record_signatures(str(p), areas=CROP_WINDOW_AREAS)
                                for p in paths])
        self.collages = collage_signatures(paths, max(0, count - len(paths)), CACHE,
                                           areas=CROP_WINDOW_AREAS, workers=workers, log=log)

    def signed(self, start, stop):
        """(stop - start, 1 + W, L) for records start..stop."""
        parts = []
        if start < len(self.photos):
            parts.append(self.photos[start:min(stop, len(self.photos))])
        if stop > len(self.photos):
            parts.append(np.asarray(self.collages[max(0, start - len(self.photos)):
                                                  stop - len(self.photos)]))
        return np.concatenate(parts)

    def items(self, start, stop, windows):
        signed = self.signed(start, stop)
        if windows:
            return [{"path": f"r{start + i}", "id": f"r{start + i}", "signature": s[0],
                     "windows": s[1:]} for i, s in enumerate(signed)]
        return [{"path": f"r{start + i}", "id": f"r{start + i}", "signature": s[0]}
                for i, s in enumerate(signed)]

    def indexed(self, count, windows):
        """How many signatures a store of ``count`` records indexes (featureless windows are
        not indexed)."""
        if not windows:
            return count
        total = 0
        for start in range(0, count, 100_000):
            signed = self.signed(start, min(count, start + 100_000))
            total += len(signed) + int((~is_featureless(signed[:, 1:])).sum())
        return total


def planted(records, queries, cutoff, windows):
    """Per QUERIES row, the photos whose copy's search has the photo's record under the cutoff
    (brute force over the record's own signature and, with windows, its windows')."""
    found = {}
    for name, searches in queries.items():
        keep = []
        for index, (rows, margins) in enumerate(searches):
            signed = records.photos[index]
            record = Record(id=str(index), path=str(index), signature=signed[0],
                            windows=signed[1:] if windows else None)
            if record_distances(rows, [record], margins)[0] < cutoff:
                keep.append(index)
        found[name] = keep
    return found


# --- the distractor check ---------------------------------------------------------------------

def distance_check(records, queries, cutoff, sample=100_000):
    """Rows of the "distractors" table: the distances of unrelated pairs in the corpus, of the
    queries' own signatures to the distractors, and of distractors to each other."""
    rng = np.random.default_rng(0)
    photos = records.photos[:, 0]
    pairs = distance_matrix(photos, photos)[np.triu_indices(len(photos), 1)]
    collages = np.asarray(records.collages[:sample, 0])
    plain = np.stack([rows[0] for searches in queries.values() for rows, _ in searches])
    to_queries = np.concatenate([distance_matrix(plain[i:i + 200], collages).ravel()
                                 for i in range(0, len(plain), 200)])
    a, b = rng.integers(len(collages), size=(2, 2_000_000))
    different = a != b
    among = np.concatenate([
        distance_matrix(collages[a[i:i + 1000]], collages[b[i:i + 1000]]).diagonal()
        for i in range(0, 200_000, 1000)])[different[:200_000]]

    def row(label, distances, per_query_of):
        under = [(distances < c).mean() for c in (0.5, CUTOFF_1X, cutoff)]
        return (label, f"{len(distances):,}",
                *(f"{np.percentile(distances, q):.3f}" for q in (0.1, 1, 5, 50)),
                *(f"{u:.1e}" for u in under),
                f"{under[2] * per_query_of:.2f}", f"{under[1] * per_query_of:.1f}")

    total = len(records.collages)
    return [row("corpus photo pairs (unrelated)", pairs, total),
            row("query copies to distractors", to_queries, total),
            row("distractor pairs", among, total)]


# --- stores -----------------------------------------------------------------------------------

def insert_all(store, records, count, windows, batch_size, threads):
    """Bulk ``add_signatures`` of records 0..count, ``threads`` batches in flight; seconds, with
    the final refresh."""
    batches = [(s, min(s + batch_size, count)) for s in range(0, count, batch_size)]
    failures = []

    def work(assigned):
        for start, stop in assigned:
            results = store.add_signatures(records.items(start, stop, windows))
            failures.extend(r for r in results if not isinstance(r, str))

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(batches[i::threads],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    store.refresh()
    seconds = time.perf_counter() - started
    if failures:
        raise SystemExit(f"insert failed: {failures[:3]}")
    return seconds


def measure_searches(store, queries, rounds, size=None, names=None):
    """Per QUERIES row, the record numbers each search returned (first timed pass), and the
    latencies (seconds) of every search per kind, over ``rounds`` passes after a warm-up."""
    names = names or list(queries)
    options = {name: opts for name, _, opts in QUERIES}
    for name in names[:3]:
        for query in queries[name][:20]:
            store.search_queries([query], size=size)
    found, latencies = {}, {}
    for round_ in range(rounds):
        for name in names:
            kind = search_kind(options[name])
            per_photo = []
            for query in queries[name]:
                started = time.perf_counter()
                [results] = store.search_queries([query], size=size)
                latencies.setdefault(kind, []).append(time.perf_counter() - started)
                per_photo.append({int(r["path"][1:]) for r in results})
            if round_ == 0:
                found[name] = per_photo
    return found, latencies


def recall_rows(label, found, truth, held_out, names=None):
    """Per QUERIES row: (label, kind, planted, found share on the tuning share, on the held-out
    share)."""
    rows = []
    for name in names or list(truth):
        wanted = truth[name]
        tuning = [i for i in wanted if not held_out[i]]
        kept = [i for i in wanted if held_out[i]]
        rows.append((label, name, len(tuning), share(found[name], tuning),
                     len(kept), share(found[name], kept)))
    return rows


def share(found, wanted):
    return sum(i in found[i] for i in wanted) / len(wanted) if wanted else None


def fmt_share(value):
    return "—" if value is None else f"{value:.1%}"


def overall(found, truth, held_out, which):
    """The share of every planted copy found, on the tuning (``which`` False) or held-out share."""
    wanted = [(name, i) for name in truth for i in truth[name] if held_out[i] == which]
    return sum(i in found[name][i] for name, i in wanted) / len(wanted) if wanted else None


def worst(found, truth, held_out):
    """(kind of copy, share) of the lowest recall over both shares."""
    shares = [(share(found[name], truth[name]), name) for name in truth if truth[name]]
    value, name = min(shares)
    return name, value


def main_row(engine_name, label, size, rate, latencies, found, truth, held_out, per_signature):
    """A row of the main table (see ``report``)."""
    name, value = worst(found, truth, held_out)
    return (engine_name, label, f"{size:,}", f"{rate:,.0f}",
            ms(latencies.get("default"), 50), ms(latencies.get("default"), 99),
            ms(latencies.get("robust"), 50), ms(latencies.get("robust"), 99),
            fmt_share(overall(found, truth, held_out, False)),
            fmt_share(overall(found, truth, held_out, True)),
            f"{fmt_share(value)} ({name})", f"{per_signature:,.0f}")


def ms(values, q):
    return f"{np.percentile(values, q) * 1000:.1f}" if values else "—"


class SQLiteRun:
    def __init__(self, folder):
        self.folder = folder

    def open(self, **options):
        return open_database(f"sqlite:///{os.path.join(self.folder, uuid.uuid4().hex[:8])}.db",
                             **options)

    @staticmethod
    def bytes(store):
        store.close()  # the last connection's close checkpoints the WAL into the file
        return store.describe()["bytes"]

    @staticmethod
    def remove(store):
        store.drop()
        store.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(store.path + suffix):
                os.remove(store.path + suffix)


class OpenSearchRun:
    def __init__(self, url):
        self.url = url

    def open(self, **options):
        store = open_database(f"{self.url}/scale-{uuid.uuid4().hex[:8]}", request_timeout=600,
                              **options)
        return store

    @staticmethod
    def bytes(store):
        return OpenSearchRun.bytes_of(store.es, store.index)

    @staticmethod
    def bytes_of(es, index):
        """The index's primary store after a force-merge to one segment."""
        es.indices.forcemerge(index=index, max_num_segments=1, request_timeout=3600)
        es.indices.refresh(index=index)
        stats = es.indices.stats(index=index, metric="store")
        return stats["_all"]["primaries"]["store"]["size_in_bytes"]

    @staticmethod
    def remove(store):
        store.drop()


# --- image-match 1.x's layout and calls -------------------------------------------------------

def legacy_document(signature, words, path, timestamp):
    """A document as image-match 1.x's make_record + insert_single_record wrote it."""
    document = {"path": path, "signature": signature.tolist()}
    document.update(zip(word_field_names(len(words)), words.tolist()))
    document["timestamp"] = timestamp
    return document


def legacy_load(es, index, records, count, sample, batch_size=2000, threads=2):
    """1.x's index: created empty (dynamic mapping), the first ``sample`` records with one
    ``index`` call each (1.x's insert_single_record), the rest in bulk. Returns the per-call rate
    (records/s)."""
    es.indices.delete(index=index, ignore_unavailable=True)
    es.indices.create(index=index, body={"settings": {"number_of_shards": 1,
                                                      "number_of_replicas": 0}})
    sample = min(sample, count)
    signed = records.signed(0, sample)[:, 0]
    started = time.perf_counter()
    for i, (signature, words) in enumerate(zip(signed, make_words(signed))):
        es.index(index=index, body=legacy_document(signature, words, f"r{i}", datetime.now()))
    single_rate = sample / (time.perf_counter() - started) if sample else None
    failures = []

    def work(starts):
        for start in starts:
            stamp = datetime.now().isoformat()
            stop = min(start + batch_size, count)
            block = records.signed(start, stop)[:, 0]
            operations = []
            for i, signature, row in zip(range(start, stop), block, make_words(block)):
                operations.append({"index": {"_index": index}})
                operations.append(legacy_document(signature, row, f"r{i}", stamp))
            response = es.bulk(body=operations, request_timeout=600)
            if response["errors"]:
                failures.extend(i for i in response["items"] if "error" in i["index"])

    starts = list(range(sample, count, batch_size))
    workers = [threading.Thread(target=work, args=(starts[i::threads],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise SystemExit(f"1.x load failed: {failures[:2]}")
    es.indices.refresh(index=index)
    return single_rate


def legacy_search(es, index, rows, margins, size=100, cutoff=0.40):
    """image-match 1.x's search_single_record for each of ``rows`` (one request each, as its
    all_orientations searched its 8 orientations), exact distances over the returned signatures
    plus each row's margin."""
    names = word_field_names(63)
    found = set()
    for query, margin in zip(rows, margins):
        should = [{"term": {name: word}} for name, word in zip(names, make_words(query).tolist())]
        hits = es.search(index=index, body={"query": {"bool": {"should": should}},
                                            "_source": {"excludes": ["simple_word_*"]},
                                            "size": size, "timeout": "10s"})["hits"]["hits"]
        if hits:
            signatures = np.array([h["_source"]["signature"] for h in hits])
            distances = distance_matrix(query[None], signatures)[0] + margin
            found |= {int(h["_source"]["path"][1:]) for h, d in zip(hits, distances) if d < cutoff}
    return found


def measure_legacy(es, index, queries, rounds, cutoff):
    """1.x's layout and calls for the copies a default search is for, given the same query
    signatures as image-match 2's default search (the copy, its mirror image, two central
    crops' grids: 4 requests one after another)."""
    options = {name: opts for name, _, opts in QUERIES}
    names = [name for name in queries if not options[name].get("robust")]
    found, latencies = {}, {}
    for round_ in range(rounds):
        for name in names:
            kind = search_kind(options[name])
            per_photo = []
            for rows, margins in queries[name]:
                started = time.perf_counter()
                per_photo.append(legacy_search(es, index, rows, margins, cutoff=cutoff))
                latencies.setdefault(kind, []).append(time.perf_counter() - started)
            if round_ == 0:
                found[name] = per_photo
    return found, latencies, names


# --- the run ----------------------------------------------------------------------------------

#: (label, store options) of the stores measured at --sizes.
SCHEMES_MEASURED = [("bands (new stores)", {}), ("words (1.x's)", {"candidates": "words"})]

SWEEP = [  # (label, store options)
    ("words (1.x's 63 of 16)", {"candidates": "words"}),
    ("bands 48x9", {"candidates": {"scheme": "bands", "bands": 48, "width": 9}}),
    ("bands 64x8", {"candidates": {"scheme": "bands", "bands": 64, "width": 8}}),
    ("bands 64x9", {"candidates": {"scheme": "bands", "bands": 64, "width": 9}}),
    ("bands 96x10", {"candidates": {"scheme": "bands", "bands": 96, "width": 10}}),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--sqlite-sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "opensearch"],
                        choices=["sqlite", "opensearch"])
    parser.add_argument("--es-url", help="an OpenSearch node (default: start one)")
    parser.add_argument("--heap", default="4g", help="heap of the node started here")
    parser.add_argument("--rounds", type=int, default=2, help="timed passes over the searches")
    parser.add_argument("--workers", type=int, default=2, help="processes making distractors")
    parser.add_argument("--legacy-sample", type=int, default=2000,
                        help="records 1.x's layout inserts with one index call each")
    parser.add_argument("--sqlite-batch", type=int, default=20_000)
    parser.add_argument("--es-batch", type=int, default=5000)
    parser.add_argument("--es-threads", type=int, default=2)
    parser.add_argument("--sweep-size", type=int, default=100_000,
                        help="records for the scheme and size sweep (0: none)")
    parser.add_argument("--candidate-sizes", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--sweep-rounds", type=int, default=1, help="timed passes in the sweep")
    parser.add_argument("--windows-size", type=int, default=100_000,
                        help="records of a store with crop windows (0: none)")
    parser.add_argument("--schemes", nargs="+", default=["bands", "words"],
                        choices=["bands", "words"],
                        help="candidate schemes of the stores measured at --sizes (bands: new "
                             "stores'; words: 1.x's, in image-match 2's layout)")
    parser.add_argument("--no-legacy", action="store_true", help="skip 1.x's layout")
    parser.add_argument("--photos", type=int, default=None,
                        help="copy only the first N corpus photos (a quick trial)")
    parser.add_argument("--output", default=str(RESULTS / "search_scale.txt"))
    args = parser.parse_args()

    started_run = time.perf_counter()
    notes = [machine_line(), "load at start: " + " ".join(f"{x:.1f}" for x in os.getloadavg())]
    _, paths = corpus_paths()
    paths = paths[:args.photos]
    held_out = np.array([is_held_out(p) for p in paths])
    notes.append(f"queries: copies of the {len(paths)} corpus photos, {int((~held_out).sum())} "
                 f"in the tuning share and {int(held_out.sum())} held out")
    records = Records(paths, max(args.sizes + [args.sweep_size, args.windows_size]), args.workers)
    scratch = tempfile.mkdtemp(prefix="search-scale-")
    tables = {"main": [], "recall": [], "sweep": [], "insert": []}
    loads = []
    engine = None
    runs = {}
    if "sqlite" in args.stores:
        runs["SQLite"] = SQLiteRun(scratch)
    if "opensearch" in args.stores:
        if args.es_url is None:
            from image_match import local_engine

            engine = local_engine.start("opensearch", data_dir=os.path.join(scratch, "node"),
                                        heap=args.heap, stop_with_caller=True)
            args.es_url = engine.url
            log(f"OpenSearch {engine.version} at {engine.url}, heap {args.heap}")
        runs["OpenSearch"] = OpenSearchRun(args.es_url)

    try:
        probe = open_database(f"sqlite:///{scratch}/probe.db")
        cutoff = probe.distance_cutoff
        queries = query_rows(probe, paths)
        truth = planted(records, queries, cutoff, windows=False)
        if args.windows_size:
            crop_queries = query_rows(open_database(f"sqlite:///{scratch}/probe-crop.db",
                                                    crop_windows=True), paths)
            crop_truth = planted(records, crop_queries, cutoff, windows=True)
        distractor_rows = distance_check(records, queries, cutoff)

        def checkpoint():
            """The report so far, written at once: a long run interrupted keeps what it measured."""
            report(args, notes + ["(partial: the run was still going)"], cutoff, truth,
                   distractor_rows, tables, quiet=True)

        def run_store(engine_name, size, options, label, windows=False, sizes=(None,),
                      searches=None, rounds=args.rounds):
            run = runs[engine_name]
            store = run.open(**options, **({"crop_windows": True} if windows else {}))
            batch, threads = ((args.sqlite_batch, 1) if engine_name == "SQLite"
                              else (args.es_batch, args.es_threads))
            seconds = insert_all(store, records, size, windows, batch, threads)
            rate = size / seconds
            tables["insert"].append((f"{engine_name} {label}", f"{size:,}",
                                     f"batch {batch}, {threads} thread(s)", f"{rate:,.0f}"))
            stored = run.bytes(store)
            indexed = records.indexed(size, windows)
            log(f"{engine_name} {label} {size:,}: {rate:,.0f} records/s, "
                f"{stored / indexed:,.0f} bytes per indexed signature")
            outcomes = []
            for candidates in sizes:
                found, latencies = measure_searches(store, searches or queries, rounds,
                                                    candidates)
                loads.append(os.getloadavg()[0])
                outcomes.append((candidates, found, latencies))
            run.remove(store)
            return rate, stored / size, stored / indexed, outcomes

        # The sweep: schemes and candidate sizes on the tuning share.
        if args.sweep_size:
            tuning_only = {name: [i for i in wanted if not held_out[i]]
                           for name, wanted in truth.items()}
            for engine_name in runs:
                for label, options in SWEEP:
                    sizes = args.candidate_sizes if options.get("candidates") != "words" else [100]
                    rate, _, per_signature, outcomes = run_store(
                        engine_name, args.sweep_size, options, label, sizes=sizes,
                        rounds=args.sweep_rounds)
                    for candidates, found, latencies in outcomes:
                        name, value = worst(found, tuning_only, held_out)
                        tables["sweep"].append((
                            engine_name, label, candidates, f"{rate:,.0f}",
                            f"{per_signature:,.0f}", ms(latencies["default"], 50),
                            ms(latencies["default"], 99), ms(latencies["robust"], 50),
                            fmt_share(overall(found, truth, held_out, False)),
                            f"{fmt_share(value)} ({name})"))
                        log(tables["sweep"][-1])

        for size in args.sizes:
            for engine_name in runs:
                if engine_name == "SQLite" and size not in args.sqlite_sizes:
                    continue
                for label, options in SCHEMES_MEASURED:
                    if options.get("candidates", "bands") not in args.schemes:
                        continue
                    rate, _, per_signature, [(_, found, latencies)] = run_store(
                        engine_name, size, options, label)
                    tables["main"].append(main_row(engine_name, label, size, rate, latencies,
                                                   found, truth, held_out, per_signature))
                    log(tables["main"][-1])
                    tables["recall"] += recall_rows(f"{engine_name} {label} {size:,}", found,
                                                    truth, held_out)
                    checkpoint()
                if engine_name == "OpenSearch" and not args.no_legacy:
                    es, index = open_database(f"{args.es_url}/scale-probe").es, "scale-1x"
                    single_rate = legacy_load(es, index, records, size, args.legacy_sample)
                    stored = OpenSearchRun.bytes_of(es, index)
                    found, latencies, names = measure_legacy(es, index, queries, args.rounds,
                                                             cutoff)
                    es.indices.delete(index=index, ignore_unavailable=True)
                    legacy_truth = {name: truth[name] for name in names}
                    tables["main"].append(main_row(
                        engine_name, "1.x's layout and calls", size, single_rate, latencies,
                        found, legacy_truth, held_out, stored / size))
                    log(tables["main"][-1])
                    tables["recall"] += recall_rows(f"{engine_name} 1.x's layout {size:,}",
                                                    found, legacy_truth, held_out)
                    checkpoint()
        if args.windows_size:
            for engine_name in runs:
                rate, _, per_signature, [(_, found, latencies)] = run_store(
                    engine_name, args.windows_size, {}, "bands, crop windows", windows=True,
                    searches=crop_queries)
                tables["main"].append(main_row(
                    engine_name, "bands, crop windows", args.windows_size, rate, latencies,
                    found, crop_truth, held_out, per_signature))
                log(tables["main"][-1])
                tables["recall"] += recall_rows(
                    f"{engine_name} bands, crop windows {args.windows_size:,}", found, crop_truth,
                    held_out)
                checkpoint()
    finally:
        if engine is not None:
            engine.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    notes.append("load at end: " + " ".join(f"{x:.1f}" for x in os.getloadavg())
                 + f"; median 1-minute load while searching "
                 f"{statistics.median(loads) if loads else 0:.1f}")
    notes.append(f"run took {(time.perf_counter() - started_run) / 60:.0f} min")
    report(args, notes, cutoff, truth, distractor_rows, tables)


def report(args, notes, cutoff, truth, distractor_rows, tables, quiet=False):
    out = io.StringIO()

    def both(text=""):
        if not quiet:
            print(text)
        print(text, file=out)

    def table(headers, rows):
        both(print_table(headers, rows, file=open(os.devnull, "w")))

    both("search_scale.py " + " ".join(sys.argv[1:]))
    for note in notes:
        both(note)
    both(f"planted copies under the cutoff {cutoff}, per kind (of one copy a photo): "
         + ", ".join(f"{name} {len(wanted)}" for name, wanted in truth.items()))
    both()
    both(f"Distractors against real photos: distance percentiles, the share of pairs under 0.5, "
         f"{CUTOFF_1X} and {cutoff}, and what that share makes per query among "
         f"{args.sizes[-1]:,} records at {cutoff} and {CUTOFF_1X}:")
    table(["pairs", "count", "0.1%", "1%", "5%", "50%", "<0.5", f"<{CUTOFF_1X}", f"<{cutoff}",
           f"per query <{cutoff}", f"per query <{CUTOFF_1X}"], distractor_rows)
    both()
    both(f"Main table: insert records/s (bulk add_signatures; 1.x: one index call per image); "
         f"latency in ms from the client, one search at a time: p50/p99 of default searches "
         f"(the store's default search of a plain copy) and of robust ones; recall: the share of "
         f"the planted copies under the cutoff {cutoff} (brute force) that the search returns, on "
         f"the tuning and held-out shares, and the lowest kind of copy; bytes per indexed "
         f"signature (a record's own and its crop windows').")
    table(["store", "candidates", "records", "insert/s", "p50", "p99", "robust p50",
           "robust p99", "recall tuning", "held out", "lowest kind", "bytes/signature"],
          tables["main"])
    if tables["recall"]:
        both()
        both("Recall per kind of copy (planted copies under the cutoff, tuning and held-out "
             "shares):")
        table(["store", "copy", "tuning", "found", "held out", "found"],
              [(label, name, n, fmt_share(a), m, fmt_share(b))
               for label, name, n, a, m, b in tables["recall"]])
    if tables["sweep"]:
        both()
        both(f"Sweep at {args.sweep_size:,} records (tuning share only): candidate schemes and "
             f"candidates per query signature (size):")
        table(["store", "candidates", "size", "insert/s", "bytes/signature", "p50", "p99",
               "robust p50", "recall", "lowest kind"], tables["sweep"])
    if tables["insert"]:
        both()
        both("Inserts (records/s, precomputed signatures, including the final refresh):")
        table(["store", "records", "how", "records/s"], tables["insert"])
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(out.getvalue())


if __name__ == "__main__":
    main()
