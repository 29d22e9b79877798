"""Insert and search at scale: 10k, 100k and 1M records in SQLite and OpenSearch.

    python benchmarks/search_scale.py        # everything: about an hour on 2 cores, once the
                                             # 1M signatures are cached (about 30 min more)
    python benchmarks/search_scale.py --stores sqlite --sizes 10000 100000 \
        --output benchmarks/results/search_scale_sqlite.txt

Options: ``--sizes`` (10k, 100k, 1M), ``--sqlite-sizes`` (10k, 100k), ``--stores``, ``--es-url``
(an engine of one's own instead of starting one), ``--queries`` (200), ``--rounds`` (2),
``--experiment-size`` (100k), ``--help`` for the rest.

Records are the dev corpus's real signatures plus distinct ones made from random windows (10-35%
of the area, random place, aspect and flip, at one or half scale) of its photos, kept only when
they are not near-duplicates of their photo (distance at least 0.5): pictures of their own with
the word statistics of real photos. They are generated in chunks of 10,000 over ``--workers``
processes, each chunk from its own seed (``seed``, chunk), and cached; so a size's records are
always the same and the smaller sizes are prefixes of the larger ones. Queries are transformed
copies (halved, cropped by 5% a side, or recompressed at quality 50) of the first ``--queries``
photos of the corpus, each of which is in the store.

Per store and size, measured in this run:

- insert records/s: bulk ``add_signatures`` of precomputed signatures into an empty store, in the
  batch size that was fastest in a trial (the insert table shows the trial);
- search latency: ``search_signature`` one query at a time, p50/p95/p99 over every query and
  ``--rounds`` passes (after a warm-up pass), and batched: ``search_signatures``'s path with 50
  queries in one call (one ``msearch``), per query;
- candidate recall: (a) the fraction of all brute-force matches under the cutoff (0.45, and 0.40)
  that the search returns, (b) the fraction of the planted copies (each query's own original,
  when it is under the cutoff) that it returns;
- bytes per record on disk: SQLite's file after a WAL checkpoint; OpenSearch's primary store
  after a refresh and a force-merge to one segment (both layouts alike).

For OpenSearch, image-match 1.x's way is measured beside ours in the same run: an index made by
dynamic mapping (1 shard, 0 replicas, as ours on one node) of documents shaped as 1.x wrote them
(``path``, ``signature`` as a list of ints, ``simple_word_0..62``, ``timestamp``), inserted with
one ``index`` call per image for its insert rate (on a sample of ``--legacy-sample`` records; the
rest is bulk-loaded so that the search runs at the same N), and searched as 1.x did: a bool
``should`` of 63 term queries, size 100, exact distances over the returned signatures.

Also measured: the candidate ``size`` (100, 300, 1000; and OpenSearch with
``minimum_should_match`` 2) at ``--experiment-size`` records and at the largest size, the word
length (k=10, 12 beside 16, N=63) at ``--experiment-size``, and prototypes of driver changes
(benchmark-only subclasses, not the drivers): for SQLite a 1 GiB page cache, size-tiered word
segments, a sorted one-transaction load, and searches that skip words held by more than 1% of
the records; for OpenSearch, bulk-load index settings and engine-made ids. Without ``--es-url``
an OpenSearch node is started with ``image_match.local_engine`` (``--heap``, 3 GB by default).
The tables are printed and written to ``--output`` (``benchmarks/results/search_scale.txt``).
"""

import argparse
import io
import json
import multiprocessing
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

from common import CACHE, corpus_paths, machine_line, print_table  # noqa: E402
from image_match.drivers.sqlite import SignatureSQLite  # noqa: E402
from image_match.goldberg import ImageSignature, normalized_distance  # noqa: E402
from image_match.loading import load_grey  # noqa: E402
from image_match.records import pack_signatures  # noqa: E402
from image_match.words import make_words, word_field_names  # noqa: E402

CUTOFF = 0.45
LOW_CUTOFF = 0.40
CHUNK = 10_000
BATCH_QUERIES = 50
RESULTS = Path(__file__).resolve().parent / "results"


def load():
    """The 1-minute load average, for the notes (other work on the machine skews latencies)."""
    return os.getloadavg()[0]


def log(*parts):
    print(f"[{time.strftime('%H:%M:%S')} load {load():.1f}]", *parts, file=sys.stderr, flush=True)


# --- the records and the queries --------------------------------------------------------------

_GREYS = _ORIGINALS = None


def _corpus():
    """The corpus's decoded grey images and their signatures (once per process)."""
    global _GREYS, _ORIGINALS
    if _GREYS is None:
        _, paths = corpus_paths()
        generator = ImageSignature()
        _GREYS = [load_grey(p) for p in paths]
        _ORIGINALS = np.array([generator.signature_of_grey(g) for g in _GREYS], dtype=np.int8)
    return _GREYS, _ORIGINALS


def _chunk_path(seed, chunk):
    return CACHE / f"scale-windows-{seed}-{chunk}-{CHUNK}.npy"


def _window_chunk(job):
    """``CHUNK`` window signatures from the random stream (seed, chunk), saved to the cache."""
    seed, chunk = job
    path = _chunk_path(seed, chunk)
    if path.exists():
        return chunk
    greys, originals = _corpus()
    generator = ImageSignature()
    rng = np.random.default_rng([seed, chunk])
    signatures = []
    while len(signatures) < CHUNK:
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
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(temporary, np.array(signatures, dtype=np.int8))
    os.replace(temporary, path)
    return chunk


def corpus_signatures(count, seed=0, workers=2):
    """``count`` realistic, distinct signatures: the corpus's own (record i is photo i), then
    windows of its photos (see the module's docstring). Deterministic for a seed; a smaller count
    is a prefix of a larger one. Generated over ``workers`` processes and cached on disk."""
    _, originals = _corpus()
    chunks = max(0, -(-(count - len(originals)) // CHUNK))
    missing = [(seed, c) for c in range(chunks) if not _chunk_path(seed, c).exists()]
    if missing:
        CACHE.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        # fork: the workers inherit the decoded corpus instead of decoding it again.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for done, _ in enumerate(pool.imap_unordered(_window_chunk, missing), 1):
                log(f"signatures: chunk {done}/{len(missing)} "
                    f"({time.perf_counter() - started:.0f} s)")
    parts = [originals] + [np.load(_chunk_path(seed, c)) for c in range(chunks)]
    return np.concatenate(parts)[:count]


def query_signatures(limit):
    """Signatures of transformed copies of corpus photos (the first ``limit`` photos): query i is
    a copy of record i."""
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


def brute_force_matches(records, queries, cutoffs=(CUTOFF, LOW_CUTOFF), chunk=100_000):
    """Per cutoff, per query, the set of record indices closer than the cutoff (exact).

    Chunked over the records; the squared distances come from one float32 matrix product per
    chunk (exact for these small integers), and every pair near or under the largest cutoff is
    confirmed with ``normalized_distance`` itself."""
    top = max(cutoffs)
    q = queries.astype(np.float32)
    q_norms = np.sqrt((q * q).sum(axis=1))
    close = [dict() for _ in queries]  # record index -> exact distance
    for start in range(0, len(records), chunk):
        block = records[start:start + chunk].astype(np.float32)
        norms = np.sqrt((block * block).sum(axis=1))
        squared = norms[:, None] ** 2 + q_norms[None, :] ** 2 - 2 * (block @ q.T)
        with np.errstate(invalid="ignore", divide="ignore"):
            approximate = np.sqrt(np.maximum(squared, 0)) / (norms[:, None] + q_norms[None, :])
        rows, columns = np.nonzero(approximate < top + 1e-3)
        for column in np.unique(columns):
            members = rows[columns == column]
            exact = normalized_distance(records[start + members], queries[column])
            for member, distance in zip(members.tolist(), np.atleast_1d(exact).tolist()):
                if distance < top:
                    close[column][start + member] = distance
    return {cutoff: [{i for i, d in c.items() if d < cutoff} for c in close] for cutoff in cutoffs}


class Truth:
    """What a search should find: brute-force matches at both cutoffs, and the planted copies."""

    def __init__(self, records, queries):
        self.matches = brute_force_matches(records, queries)
        planted = normalized_distance(records[:len(queries)], queries) if len(queries) else []
        # Query i is a copy of record i; it counts when the copy is under the cutoff.
        self.planted = [i for i, d in enumerate(np.atleast_1d(planted)) if d < CUTOFF]

    def recall(self, found):
        """``(a at 0.45, a at 0.40, b)`` for the found record indices per query."""
        figures = []
        for cutoff in (CUTOFF, LOW_CUTOFF):
            wanted = self.matches[cutoff]
            total = sum(len(w) for w in wanted)
            figures.append(sum(len(w & f) for w, f in zip(wanted, found)) / total if total else 1.0)
        figures.append(sum(i in found[i] for i in self.planted) / max(1, len(self.planted)))
        return figures

    def describe(self):
        per_query = [len(m) for m in self.matches[CUTOFF]]
        low = [len(m) for m in self.matches[LOW_CUTOFF]]
        return (f"{np.mean(per_query):.1f} brute-force matches per query under {CUTOFF} "
                f"(median {np.median(per_query):.0f}), {np.mean(low):.1f} under {LOW_CUTOFF}; "
                f"{len(self.planted)} planted copies under {CUTOFF}")


# --- measuring searches -----------------------------------------------------------------------

def ms(values, q):
    return float(np.percentile(values, q)) * 1000


def record_number(path):
    return int(path[1:])  # records are stored with the path "r<index>"


def measure_search(search_one, search_batch, queries, rounds):
    """Latency of one query at a time (p50/p95/p99 over ``rounds`` passes after a warm-up) and
    per query in batches; the record indices found per query (from the first timed pass)."""
    for query in queries[:20]:
        search_one(query)
    latencies, found = [], None
    for _ in range(rounds):
        this_pass = []
        for query in queries:
            started = time.perf_counter()
            results = search_one(query)
            latencies.append(time.perf_counter() - started)
            this_pass.append({record_number(r["path"]) for r in results})
        found = found or this_pass
    batched = []
    if search_batch is not None:
        for _ in range(rounds):
            for start in range(0, len(queries), BATCH_QUERIES):
                block = queries[start:start + BATCH_QUERIES]
                started = time.perf_counter()
                search_batch(block)
                batched.append((time.perf_counter() - started) / len(block))
    return {"p50": ms(latencies, 50), "p95": ms(latencies, 95), "p99": ms(latencies, 99),
            "batched": statistics.median(batched) * 1000 if batched else None, "found": found}


def our_searches(store, size):
    def one(query):
        return store.search_signature(query, size=size)

    def batch(block):
        return store._search_signatures([q[None] for q in block], None, size, None)

    return one, batch


def items(records, start, stop):
    return [{"path": f"r{i}", "signature": records[i]} for i in range(start, stop)]


def insert_all(store, records, batch_size, threads=1):
    """Bulk insert every record, ``threads`` batches in flight; seconds taken (with refresh)."""
    batches = [(s, min(s + batch_size, len(records))) for s in range(0, len(records), batch_size)]
    failures = []

    def work(assigned):
        for start, stop in assigned:
            results = store.add_signatures(items(records, start, stop))
            failures.extend(r for r in results if not isinstance(r, str))

    started = time.perf_counter()
    if threads == 1:
        work(batches)
    else:
        workers = [threading.Thread(target=work, args=(batches[i::threads],))
                   for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    store.refresh()
    seconds = time.perf_counter() - started
    assert not failures, failures[:3]
    return seconds


# --- SQLite -----------------------------------------------------------------------------------

def sqlite_bytes(store):
    connection = store._connect()
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return store.describe()["bytes"]


class SQLiteRun:
    def __init__(self, folder):
        self.folder = folder

    def open(self, cls=SignatureSQLite, **kwargs):
        return cls(os.path.join(self.folder, f"scale-{uuid.uuid4().hex[:8]}.db"), **kwargs)

    def load(self, records, batch_sizes, cls=SignatureSQLite, **kwargs):
        """A store per batch size (from empty), keep the fastest: (store, rate, batch, trials)."""
        best, trials = None, []
        for batch_size in batch_sizes:
            store = self.open(cls, **kwargs)
            seconds = insert_all(store, records, batch_size)
            rate = len(records) / seconds
            trials.append((batch_size, rate))
            log(f"  {cls.__name__} {kwargs or ''} batch {batch_size}: {rate:,.0f} records/s")
            if best is None or rate > best[1]:
                if best is not None:
                    self.remove(best[0])
                best = (store, rate, batch_size)
            else:
                self.remove(store)
        return best + (trials,)

    @staticmethod
    def remove(store):
        store.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(store.path + suffix):
                os.remove(store.path + suffix)


# Prototypes of other word layouts, in the benchmark only: how fast could SQLite insert be?

class SQLiteBigCache(SignatureSQLite):
    """The driver as it is, with a 1 GiB page cache instead of 64 MiB."""

    def _connect(self):
        fresh = self._connection is None or self._pid != os.getpid()
        connection = super()._connect()
        if fresh:
            connection.execute("PRAGMA cache_size=-1048576")
        return connection


class SQLiteSegments(SignatureSQLite):
    """Words in segments: each insert batch goes to a small "fresh" words table (cheap appends
    to a small B-tree); when the fresh table holds ``FRESH_RECORDS`` records it is merged into
    tiered segment tables (size-tiered, like an LSM tree: a tier merges into the next when it
    holds ``FANOUT`` segments), each segment built once, in key order, by ``INSERT ... SELECT
    ... ORDER BY`` into an empty table (sequential appends). A query reads every segment (one
    UNION ALL); deletes are not prototyped."""

    FRESH_RECORDS = 20_000
    FANOUT = 4

    def _create(self, config):
        super()._create(config)
        with self._writing() as connection:
            connection.execute("CREATE TABLE segments (name TEXT PRIMARY KEY, tier INTEGER, "
                               "records INTEGER)")
            connection.execute("INSERT INTO segments VALUES ('words', -1, 0)")

    def _connect(self):
        fresh = self._connection is None or self._pid != os.getpid()
        connection = super()._connect()
        if fresh:
            connection.execute("PRAGMA cache_size=-262144")  # 256 MiB
        return connection

    def _insert(self, records, refresh=False):
        outcomes = super()._insert(records, refresh)  # the records, and their words into "words"
        with self._writing() as connection:
            connection.execute("UPDATE segments SET records = records + ? WHERE name = 'words'",
                               (len(records),))
            (fresh,) = connection.execute(
                "SELECT records FROM segments WHERE name = 'words'").fetchone()
            if fresh >= self.FRESH_RECORDS:
                self._flush(connection, fresh)
        return outcomes

    def _flush(self, connection, fresh):
        tables = {name: (tier, count) for name, tier, count in
                  connection.execute("SELECT name, tier, records FROM segments WHERE tier >= 0")}
        sources, tier, count = ["words"], 0, fresh
        while True:
            same = [name for name, (t, _) in tables.items() if t == tier]
            if len(same) + 1 < self.FANOUT:
                break
            sources += same
            count += sum(tables[name][1] for name in same)
            for name in same:
                del tables[name]
            tier += 1
        name = f"segment_{uuid.uuid4().hex[:8]}"
        connection.execute(f"CREATE TABLE {name} (word INTEGER NOT NULL, record INTEGER NOT NULL, "
                           f"PRIMARY KEY (word, record)) WITHOUT ROWID")
        union = " UNION ALL ".join(f"SELECT word, record FROM {s}" for s in sources)
        connection.execute(f"INSERT INTO {name} SELECT word, record FROM ({union}) "
                           f"ORDER BY word, record")
        for source in sources:
            if source == "words":
                connection.execute("DELETE FROM words")
            else:
                connection.execute(f"DROP TABLE {source}")
                connection.execute("DELETE FROM segments WHERE name = ?", (source,))
        connection.execute("UPDATE segments SET records = 0 WHERE name = 'words'")
        connection.execute("INSERT INTO segments VALUES (?, ?, ?)", (name, tier, count))

    def _candidates(self, words, size, pre_filter):
        assert not pre_filter
        keys = self._word_keys(np.asarray(words, dtype=np.int64))
        hits = []
        with self._reading() as connection:
            tables = [row[0] for row in connection.execute("SELECT name FROM segments")]
            for row_keys in keys.tolist():
                marks = ", ".join("?" * len(row_keys))
                union = " UNION ALL ".join(f"SELECT record FROM {t} WHERE word IN ({marks})"
                                           for t in tables)
                hits.append(connection.execute(
                    f"SELECT record, COUNT(*) AS shared FROM ({union}) GROUP BY record "
                    f"ORDER BY shared DESC LIMIT ?", [*row_keys * len(tables), size]).fetchall())
            return self._ranked(connection, hits)


class SQLiteSkipCommon(SignatureSQLite):
    """A search-side prototype: a query ignores its words held by more than ``MAX_FRACTION`` of
    the records (stop words: they rank little and cost most of the GROUP BY), found with one
    streaming count per query on the (word, record) index."""

    MAX_FRACTION = 0.01

    def _candidates(self, words, size, pre_filter):
        assert not pre_filter
        keys = self._word_keys(np.asarray(words, dtype=np.int64))
        hits = []
        with self._reading() as connection:
            (total,) = connection.execute("SELECT count(*) FROM records").fetchone()
            for row_keys in keys.tolist():
                marks = ", ".join("?" * len(row_keys))
                counts = dict(connection.execute(
                    f"SELECT word, COUNT(*) FROM words WHERE word IN ({marks}) GROUP BY word",
                    row_keys).fetchall())
                rare = [k for k in row_keys if counts.get(k, 0) <= self.MAX_FRACTION * total]
                rare = rare or row_keys
                hits.append(connection.execute(
                    f"SELECT record, COUNT(*) AS shared FROM words WHERE word IN "
                    f"({', '.join('?' * len(rare))}) GROUP BY record ORDER BY shared DESC LIMIT ?",
                    [*rare, size]).fetchall())
            return self._ranked(connection, hits)


class SQLiteSortedLoad(SignatureSQLite):
    """An initial bulk load's best case: the words of all records inserted in one transaction,
    sorted (an empty store filled at once, as ``import`` of a whole file could). Only the
    records table is written per batch; the words are written once, at refresh()."""

    def _insert(self, records, refresh=False):
        pending = getattr(self, "_pending", [])
        self._pending = pending
        packed = pack_signatures(np.stack([r.signature for r in records]))
        rows = [(r.id, r.path, s.tobytes(), None, r.timestamp.timestamp())
                for r, s in zip(records, packed)]
        with self._writing() as connection:
            connection.executemany("INSERT INTO records (id, path, signature, metadata, timestamp) "
                                   "VALUES (?, ?, ?, ?, ?)", rows)
            (last,) = connection.execute("SELECT max(rowid) FROM records").fetchone()
        rowids = np.arange(last - len(records) + 1, last + 1, dtype=np.int64)
        pending.append((self._word_keys(np.stack([r.words for r in records])), rowids))
        return [None] * len(records)

    def refresh(self):
        pending = getattr(self, "_pending", [])
        if not pending:
            return
        keys = np.concatenate([k for k, _ in pending])
        rowids = np.concatenate([r for _, r in pending])
        # All the (word, record) rows in key order: the B-tree is built by appends.
        packed = np.sort((keys.ravel() << 31) | np.repeat(rowids, keys.shape[1]))
        with self._writing() as connection:
            for start in range(0, len(packed), 1_000_000):
                connection.execute(
                    "INSERT INTO words (word, record) SELECT value >> 31, value & 2147483647 "
                    "FROM json_each(?)", (json.dumps(packed[start:start + 1_000_000].tolist()),))
        self._pending = []


# --- OpenSearch -------------------------------------------------------------------------------

def _prototype_classes():
    """Benchmark-only variants of the driver, to measure what a change would buy."""
    from image_match.drivers.elasticsearch import SignatureES

    class BulkSettings(SignatureES):
        """During the load: refresh_interval -1 and translog durability async (restored after,
        as a ``bulk_loading()`` context of the driver could do)."""

        def prepare(self):
            self.es.indices.put_settings(index=self.index, body={"index": {
                "refresh_interval": "-1", "translog.durability": "async"}})

        def finish(self):
            self.es.indices.put_settings(index=self.index, body={"index": {
                "refresh_interval": None, "translog.durability": "request"}})

    class AutoIds(SignatureES):
        """No ``_id`` in the bulk actions (the engine makes one and skips the id lookup): not a
        possible change (records are addressed by id), only the cost of explicit ids."""

        def _insert(self, records, refresh=False):
            operations = []
            for document in self._documents(records):
                operations.append({"index": {"_index": self.index}})
                operations.append(document)
            self._client.bulk(operations, refresh=refresh)
            return [None] * len(records)

    return [BulkSettings, AutoIds]


class OpenSearchRun:
    def __init__(self, url):
        from image_match.drivers.elasticsearch import open_search_engine

        self.url = url
        self.open_search_engine = open_search_engine
        self.names = []

    def open(self, name, cls=None, **kwargs):
        store = self.open_search_engine(f"{self.url}/{name}", request_timeout=600, **kwargs)
        store.drop()
        if cls is not None:
            return cls(store.es, name, **kwargs)
        store = self.open_search_engine(f"{self.url}/{name}", request_timeout=600, **kwargs)
        self.names.append(name)
        return store

    def merge_and_measure(self, es, index, count):
        """(bytes per record after refresh, after a force-merge to one segment, merge seconds)."""
        es.indices.refresh(index=index)
        before = self.primary_bytes(es, index)
        started = time.perf_counter()
        es.indices.forcemerge(index=index, max_num_segments=1, request_timeout=3600)
        seconds = time.perf_counter() - started
        es.indices.refresh(index=index)
        return before / count, self.primary_bytes(es, index) / count, seconds

    @staticmethod
    def primary_bytes(es, index):
        stats = es.indices.stats(index=index, metric="store")
        return stats["_all"]["primaries"]["store"]["size_in_bytes"]

    def drop(self, es, index):
        es.indices.delete(index=index, ignore_unavailable=True)


def legacy_document(signature, words, path, timestamp):
    """A document as image-match 1.x's make_record + insert_single_record wrote it."""
    document = {"path": path, "signature": signature.tolist()}
    document.update(zip(word_field_names(len(words)), words.tolist()))
    document["timestamp"] = timestamp
    return document


def legacy_load(es, index, records, sample, batch_size=2000, threads=1):
    """1.x's index: created empty (dynamic mapping), the first ``sample`` records with one
    ``index`` call each (1.x's insert_single_record), the rest in bulk. Returns the per-call
    rate and the bulk rate (records/s)."""
    es.indices.delete(index=index, ignore_unavailable=True)
    es.indices.create(index=index, body={"settings": {"number_of_shards": 1,
                                                      "number_of_replicas": 0}})
    sample = min(sample, len(records))
    words = make_words(records[:sample])
    started = time.perf_counter()
    for i in range(sample):
        es.index(index=index, body=legacy_document(records[i], words[i], f"r{i}", datetime.now()))
    single_rate = sample / (time.perf_counter() - started) if sample else None
    failures = []

    def work(starts):
        for start in starts:
            stamp = datetime.now().isoformat()
            stop = min(start + batch_size, len(records))
            operations = []
            for i, row in zip(range(start, stop), make_words(records[start:stop])):
                operations.append({"index": {"_index": index}})
                operations.append(legacy_document(records[i], row, f"r{i}", stamp))
            response = es.bulk(body=operations, request_timeout=600)
            if response["errors"]:
                failures.extend(i for i in response["items"] if "error" in i["index"])

    starts = list(range(sample, len(records), batch_size))
    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(starts[i::threads],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures, failures[:2]
    es.indices.refresh(index=index)
    seconds = time.perf_counter() - started
    bulk_rate = (len(records) - sample) / seconds if len(records) > sample else None
    return single_rate, bulk_rate


def legacy_searches(es, index, size=100, cutoff=CUTOFF):
    """image-match 1.x's search_single_record, with this benchmark's records."""
    names = word_field_names(63)

    def one(query):
        words = make_words(query).tolist()
        should = [{"term": {name: word}} for name, word in zip(names, words)]
        # 1.x passed size= and timeout= as the search API's parameters; opensearch-py takes a
        # timeout keyword as its own request timeout, so both go in the body here (the same).
        hits = es.search(index=index, body={"query": {"bool": {"should": should}},
                                            "_source": {"excludes": ["simple_word_*"]},
                                            "size": size, "timeout": "10s"})["hits"]["hits"]
        if not hits:
            return []
        signatures = np.array([h["_source"]["signature"] for h in hits])
        distances = np.atleast_1d(normalized_distance(signatures, query))
        return [{"path": h["_source"]["path"], "dist": d} for h, d in zip(hits, distances)
                if d < cutoff]

    return one


# --- the run ----------------------------------------------------------------------------------

def fmt_rate(value):
    return "—" if value is None else f"{value:,.0f}"


def fmt_ms(value):
    return "—" if value is None else f"{value:.1f}"


def search_row(label, size_label, measured, recall, extra=()):
    return (label, size_label, *extra, fmt_ms(measured["p50"]), fmt_ms(measured["p95"]),
            fmt_ms(measured["p99"]), fmt_ms(measured["batched"]),
            f"{recall[0]:.1%}", f"{recall[1]:.1%}", f"{recall[2]:.1%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--sqlite-sizes", type=int, nargs="+", default=[10_000, 100_000],
                        help="the sizes SQLite runs at (of --sizes)")
    parser.add_argument("--stores", nargs="+", default=["sqlite", "opensearch"],
                        choices=["sqlite", "opensearch"])
    parser.add_argument("--es-url", help="an OpenSearch/Elasticsearch node (default: start one)")
    parser.add_argument("--heap", default="3g", help="heap of the node started here")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="timed passes over the queries")
    parser.add_argument("--workers", type=int, default=2, help="processes generating signatures")
    parser.add_argument("--legacy-sample", type=int, default=2000,
                        help="records 1.x's layout inserts with one index call each")
    parser.add_argument("--sqlite-batches", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--es-batches", type=int, nargs="+", default=[500, 1000, 2000, 5000])
    parser.add_argument("--es-threads", type=int, nargs="+", default=[1, 2],
                        help="concurrent bulk requests tried for our OpenSearch insert")
    parser.add_argument("--experiment-size", type=int, default=100_000,
                        help="records for the k, size and SQLite-layout experiments (0: none)")
    parser.add_argument("--candidate-sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--word-lengths", type=int, nargs="+", default=[10, 12])
    parser.add_argument("--output", default=str(RESULTS / "search_scale.txt"))
    args = parser.parse_args()

    started_run = time.perf_counter()
    notes = [machine_line(), f"load at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}"]
    log(notes[-1])
    queries = query_signatures(args.queries)
    main_rows, size_rows, k_rows, insert_rows, sqlite_rows, truth_notes = [], [], [], [], [], []
    os_rows = []
    loads = []

    engine = None
    osrun = None
    scratch = tempfile.mkdtemp(prefix="search-scale-")
    if "opensearch" in args.stores:
        if args.es_url is None:
            from image_match import local_engine

            engine = local_engine.start("opensearch", data_dir=os.path.join(scratch, "node"),
                                        heap=args.heap, stop_with_caller=True)
            args.es_url = engine.url
            log(f"OpenSearch {engine.version} at {engine.url}, heap {args.heap}")
        osrun = OpenSearchRun(args.es_url)
        warm_up(osrun, corpus_signatures(min(args.sizes), workers=args.workers), queries)

    try:
        for size in args.sizes:
            records = corpus_signatures(size, workers=args.workers)
            started = time.perf_counter()
            truth = Truth(records, queries)
            truth_notes.append(f"{size:,} records: {truth.describe()} "
                               f"(brute force {time.perf_counter() - started:.0f} s)")
            log(truth_notes[-1])
            experiment = size == args.experiment_size

            if "sqlite" in args.stores and size in args.sqlite_sizes:
                run = SQLiteRun(scratch)
                store, rate, batch, trials = run.load(records, args.sqlite_batches)
                for batch_size, trial_rate in trials:
                    insert_rows.append(("SQLite", f"{size:,}", f"batch {batch_size}",
                                        fmt_rate(trial_rate)))
                per_record = sqlite_bytes(store) / size
                for candidates in (args.candidate_sizes if experiment else [100]):
                    measured = measure_search(*our_searches(store, candidates), queries,
                                              args.rounds)
                    recall = truth.recall(measured["found"])
                    loads.append(load())
                    if candidates == 100:
                        at_100 = (measured, recall)
                        main_rows.append(("SQLite", f"{size:,}", fmt_rate(rate),
                                          *search_row("", "", measured, recall)[2:],
                                          f"{per_record:,.0f}"))
                        log(main_rows[-1])
                    if experiment:
                        size_rows.append(search_row("SQLite", f"{size:,}", measured, recall,
                                                    (candidates,)))
                        log(size_rows[-1])
                if experiment:
                    k_rows.append(("SQLite", 16, f"{size:,}", fmt_rate(rate),
                                   *search_row("", "", *at_100)[2:], f"{per_record:,.0f}"))
                run.remove(store)
                if experiment:
                    for k in args.word_lengths:
                        store, rate, batch, _ = run.load(records, [batch], k=k)
                        measured = measure_search(*our_searches(store, 100), queries, args.rounds)
                        k_rows.append(("SQLite", k, f"{size:,}", fmt_rate(rate),
                                       *search_row("", "", measured,
                                                   truth.recall(measured["found"]))[2:],
                                       f"{sqlite_bytes(store) / size:,.0f}"))
                        log(k_rows[-1])
                        run.remove(store)
                    for cls in (SQLiteBigCache, SQLiteSegments, SQLiteSortedLoad, SQLiteSkipCommon):
                        store, rate, batch_used, trials = run.load(records, [batch], cls)
                        measured = measure_search(*our_searches(store, 100), queries, args.rounds)
                        recall = truth.recall(measured["found"])
                        sqlite_rows.append((cls.__name__, f"{size:,}",
                                            ", ".join(f"{b}: {fmt_rate(r)}" for b, r in trials),
                                            fmt_ms(measured["p50"]), fmt_ms(measured["p99"]),
                                            f"{recall[0]:.1%}", f"{recall[2]:.1%}",
                                            f"{sqlite_bytes(store) / size:,.0f}"))
                        log(sqlite_rows[-1])
                        run.remove(store)

            if osrun is not None:
                run_opensearch(osrun, records, queries, truth, size, experiment, args,
                               main_rows, size_rows, k_rows, insert_rows, loads, os_rows)
    finally:
        if engine is not None:
            engine.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    notes.append(f"load at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; median 1-minute "
                 f"load while searching {statistics.median(loads) if loads else 0:.1f}")
    notes.append(f"run took {(time.perf_counter() - started_run) / 60:.0f} min")
    report(args, notes, truth_notes, main_rows, size_rows, k_rows, insert_rows, sqlite_rows,
           os_rows)


def warm_up(osrun, records, queries):
    """Index and search a little first: a fresh JVM runs its first requests interpreted."""
    started = time.perf_counter()
    store = osrun.open("scale-warmup")
    insert_all(store, records[:20_000], 2000)
    one, batch = our_searches(store, 100)
    for _ in range(2):
        for query in queries:
            one(query)
    store.drop()
    log(f"node warmed up ({time.perf_counter() - started:.0f} s)")


def run_opensearch(osrun, records, queries, truth, size, experiment, args,
                   main_rows, size_rows, k_rows, insert_rows, loads, os_rows):
    n = f"{size:,}"
    # Our layout: once, a trial of batch sizes and concurrency on 20,000 records (into an empty
    # index each time); then every full load with the fastest.
    if getattr(osrun, "best_insert", None) is None:
        trial_records = corpus_signatures(20_000, workers=args.workers)
        trials = []  # (rate, batch size, threads)
        for threads in args.es_threads:
            # One thread: every batch size; more threads: the best batch size of one thread.
            for batch_size in (args.es_batches if not trials else [max(trials)[1]]):
                store = osrun.open("scale-trial")
                rate = len(trial_records) / insert_all(store, trial_records, batch_size, threads)
                trials.append((rate, batch_size, threads))
                insert_rows.append((f"OpenSearch ({store.layout})", f"{len(trial_records):,}",
                                    f"batch {batch_size}, {threads} thread(s)", fmt_rate(rate)))
                log(insert_rows[-1])
                store.drop()
        _, best_batch, best_threads = max(trials)
        osrun.best_insert = (best_batch, best_threads)
    batch_size, threads = osrun.best_insert
    store = osrun.open("scale-ours")
    seconds = insert_all(store, records, batch_size, threads)
    rate = size / seconds
    insert_rows.append((f"OpenSearch ({store.layout})", n,
                        f"full load: batch {batch_size}, {threads} thread(s)", fmt_rate(rate)))
    log(insert_rows[-1])
    refreshed, merged, merge_seconds = osrun.merge_and_measure(store.es, store.index, size)
    log(f"ours: {refreshed:,.0f} bytes/record after refresh, {merged:,.0f} merged "
        f"({merge_seconds:.0f} s)")
    for candidates in (args.candidate_sizes if experiment or size == max(args.sizes) else [100]):
        measured = measure_search(*our_searches(store, candidates), queries, args.rounds)
        recall = truth.recall(measured["found"])
        loads.append(load())
        if candidates == 100:
            main_rows.append((f"OpenSearch ({store.layout})", n, fmt_rate(rate),
                              *search_row("", "", measured, recall)[2:], f"{merged:,.0f}"))
            log(main_rows[-1])
            ours = measured
        if candidates != 100 or experiment or size == max(args.sizes):
            size_rows.append(search_row(f"OpenSearch ({store.layout})", n, measured, recall,
                                        (candidates,)))
            log(size_rows[-1])
    if experiment or size == max(args.sizes):
        # Candidates must share at least 2 words (the driver's minimum_should_match).
        store.minimum_should_match = 2
        measured = measure_search(*our_searches(store, 100), queries, args.rounds)
        store.minimum_should_match = 1
        size_rows.append(search_row(f"OpenSearch ({store.layout}), msm 2", n, measured,
                                    truth.recall(measured["found"]), (100,)))
        log(size_rows[-1])
    if experiment:
        k_rows.append(("OpenSearch", 16, n, fmt_rate(rate), *search_row(
            "", "", ours, truth.recall(ours["found"]))[2:], f"{merged:,.0f}"))
    store.drop()

    # image-match 1.x's layout and calls.
    es, index = store.es, "scale-1x"
    single_rate, bulk_rate = legacy_load(es, index, records, args.legacy_sample, threads=threads)
    insert_rows.append(("OpenSearch (1.x)", f"{min(args.legacy_sample, size):,}",
                        "one index call per image", fmt_rate(single_rate)))
    insert_rows.append(("OpenSearch (1.x documents)", f"{max(0, size - args.legacy_sample):,}",
                        f"bulk of 2000, {threads} thread(s) (not 1.x's way)", fmt_rate(bulk_rate)))
    log(insert_rows[-2:])
    refreshed, merged, merge_seconds = osrun.merge_and_measure(es, index, size)
    log(f"1.x: {refreshed:,.0f} bytes/record after refresh, {merged:,.0f} merged "
        f"({merge_seconds:.0f} s)")
    measured = measure_search(legacy_searches(es, index), None, queries, args.rounds)
    recall = truth.recall(measured["found"])
    loads.append(load())
    main_rows.append(("OpenSearch (1.x)", n, fmt_rate(single_rate),
                      *search_row("", "", measured, recall)[2:], f"{merged:,.0f}"))
    log(main_rows[-1])
    osrun.drop(es, index)

    if experiment:
        for cls in _prototype_classes():
            store = osrun.open("scale-prototype", cls)
            getattr(store, "prepare", lambda: None)()
            seconds = insert_all(store, records, batch_size, threads)
            getattr(store, "finish", lambda: None)()
            _, merged, _ = osrun.merge_and_measure(store.es, store.index, size)
            measured = measure_search(*our_searches(store, 100), queries, args.rounds)
            os_rows.append((cls.__name__, n, f"{size / seconds:,.0f}", fmt_ms(measured["p50"]),
                            fmt_ms(measured["p99"]), f"{truth.recall(measured['found'])[0]:.1%}",
                            f"{merged:,.0f}"))
            log(os_rows[-1])
            store.drop()
        for k in args.word_lengths:
            store = osrun.open(f"scale-k{k}", k=k)
            seconds = insert_all(store, records, batch_size, threads)
            _, merged, _ = osrun.merge_and_measure(store.es, store.index, size)
            measured = measure_search(*our_searches(store, 100), queries, args.rounds)
            k_rows.append(("OpenSearch", k, n, fmt_rate(size / seconds), *search_row(
                "", "", measured, truth.recall(measured["found"]))[2:], f"{merged:,.0f}"))
            log(k_rows[-1])
            store.drop()


def report(args, notes, truth_notes, main_rows, size_rows, k_rows, insert_rows, sqlite_rows,
           os_rows):
    out = io.StringIO()

    def both(text=""):
        print(text)
        print(text, file=out)

    both("search_scale.py: " + " ".join(sys.argv[1:]))
    for note in notes + truth_notes:
        both(note)
    both()
    both(f"Main table: size=100 candidates, cutoff {CUTOFF}; latency in ms from the client, one "
         f"query at a time (p50/p95/p99) and per query in batches of {BATCH_QUERIES}; recall (a) "
         f"of all brute-force matches under {CUTOFF} and {LOW_CUTOFF}, (b) of the planted copies; "
         "bytes/record: SQLite file after a WAL checkpoint, OpenSearch primary store after "
         "force-merge to 1 segment. 1.x insert/s: one index call per image.")
    both(print_table(["store", "records", "insert/s", "p50", "p95", "p99", "batched",
                      "recall (a)", "(a) 0.40", "(b) planted", "bytes/record"], main_rows,
                     file=open(os.devnull, "w")))
    if insert_rows:
        both()
        both("Insert (records/s, precomputed signatures, including the final refresh):")
        both(print_table(["store", "records", "how", "records/s"], insert_rows,
                         file=open(os.devnull, "w")))
    if size_rows:
        both()
        both("Candidate size (the engine's top-`size` records by shared words, then exact "
             "distances):")
        both(print_table(["store", "records", "size", "p50", "p95", "p99", "batched",
                          "recall (a)", "(a) 0.40", "(b) planted"], size_rows,
                         file=open(os.devnull, "w")))
    if k_rows:
        both()
        both("Word length k (N=63 words, size=100):")
        both(print_table(["store", "k", "records", "insert/s", "p50", "p95", "p99", "batched",
                          "recall (a)", "(a) 0.40", "(b) planted", "bytes/record"], k_rows,
                         file=open(os.devnull, "w")))
    if sqlite_rows:
        both()
        both("SQLite word-layout prototypes (benchmark-only subclasses; insert records/s per "
             "batch size, search size=100):")
        both(print_table(["prototype", "records", "insert/s (batch)", "p50", "p99",
                          "recall (a)", "(b) planted", "bytes/record"], sqlite_rows,
                         file=open(os.devnull, "w")))
    if os_rows:
        both()
        both("OpenSearch driver prototypes (benchmark-only subclasses; the best batch size and "
             "threads; bytes after force-merge; search size=100):")
        both(print_table(["prototype", "records", "insert/s", "p50", "p99", "recall (a)",
                          "bytes/record"], os_rows, file=open(os.devnull, "w")))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(out.getvalue())


if __name__ == "__main__":
    main()
