"""The service under load: searches/s and latency over HTTP beside ``search_image`` in process.

    python benchmarks/service_throughput.py                        # SQLite and OpenSearch, 100k
    python benchmarks/service_throughput.py --stores sqlite --records 10000 --seconds 10
    python benchmarks/service_throughput.py --steady-seconds 600   # and the 10-minute steady run
    python benchmarks/service_throughput.py --dsys-match ~/src/match   # and dsys/match's server

Per store, in one run and on the same records:

- in process: ``search_image`` from N threads, each with its own store handle (as a Python user
  of the library would search from threads);
- over HTTP: ``image-match serve`` (one worker, its defaults: signing processes = cores) loaded
  from another process, N connections, each sending the next search as soon as the last one is
  answered (closed loop): ``POST /v1/search`` with the image uploaded;
- with ``--dsys-match DIR``: dsys/match's ``server.py`` from that checkout under gunicorn
  (``--dsys-workers``, 4 as its Dockerfile), on image-match 1.1.2 installed ``--no-deps`` in a
  throwaway virtualenv (Flask and gunicorn from PyPI; numpy, Pillow, scikit-image and
  elasticsearch-py 7 are this environment's), with its defaults (``ALL_ORIENTATIONS`` true, as
  its Dockerfile), loaded the same way with the same call, ``POST /search``, which image-match
  2's service is also loaded with (its dsys/match API, ``all_orientations`` true by default
  too). It speaks to Elasticsearch only (elasticsearch-py 7.17
  refuses OpenSearch), so these rows run on an Elasticsearch 7.17 node (``--es7-url``, else one
  started from engines/): an index of the records in image-match 1.x's layout, which dsys/match
  and image-match 2 both serve (what a dsys/match user gets by pointing ``image-match serve`` at
  the index they have), and an index image-match 2 makes of the same pictures (what they get
  once their images are added again).

N is each of ``--concurrency`` (1, 8, 32; the Elasticsearch 7.17 rows ``--dsys-concurrency``, 1
and 8); each level runs ``--seconds`` after a warm-up, every way back to back, and the whole is
done ``--runs`` times (3). The table gives each row's medians (searches/s, p50 and p99 latency in
ms) and its errors; the ratios below it (HTTP over in-process, ours over dsys/match's) are taken
within a run, then their median and range given: the machine is shared, and a ratio of two loads
measured the same minute moves far less than either.

``--steady-seconds S`` adds an open-loop run at ``--steady-rate`` searches/s (50) against the
service on ``--steady-store`` (OpenSearch): each search is sent at its scheduled time whatever
the answers do,
latency counted from that time; the service's memory (RSS of its process and its signing
processes) is sampled every ``--rss-every`` seconds.

Records (``--records``, 100,000): the dev corpus's photos signed as the store signs them, then
windows of them (10-60% of the area, random place and aspect, mirrored half the time, at full or
half resolution), kept when at least 0.4 from their photo: distinct pictures with the word
statistics of photos, signed from grey arrays (no image is decoded per record), cached in the
benchmark cache, and stored with ``add_signatures``. Queries are copies of the first 200 photos
(halved, cropped by 5% a side, or recompressed at quality 50), uploaded as JPEG bytes.

Run heavy runs under ``flock /work/notes/bench.lock``: OpenSearch is started here
(``--data-dir``) unless ``--es-url`` names a node, and stopped at the end.
"""

import argparse
import hashlib
import http.client
import io
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import CACHE, corpus_paths, machine_line, print_table, tree_rss  # noqa: E402
from image_match.drivers import open_database  # noqa: E402
from image_match.goldberg import normalized_distance  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 10_000
BOUNDARY = "image-match-benchmark"


def log(*parts):
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}]", *parts, file=sys.stderr,
          flush=True)


# --- records and queries ---------------------------------------------------------------------

def _greys(gis):
    _, paths = corpus_paths()
    return [gis.decode(str(path)) for path in paths]


def _window_chunk(job):
    """``CHUNK`` signatures of windows of the corpus's photos, from the random stream (seed,
    chunk); cached."""
    parameters, seed, chunk, path = job
    from image_match.goldberg import ImageSignature

    gis = ImageSignature(**parameters)
    decoded = _greys(gis)
    originals = np.array([gis.signature_of_grey(grey, shape) for grey, shape in decoded])
    rng = np.random.default_rng([seed, chunk])
    signatures = []
    while len(signatures) < CHUNK:
        source = int(rng.integers(len(decoded)))
        grey = decoded[source][0]
        h, w = grey.shape
        area, aspect = rng.uniform(0.10, 0.60), rng.uniform(0.6, 1.6)
        ch = min(h, max(16, int(h * np.sqrt(area * aspect))))
        cw = min(w, max(16, int(w * np.sqrt(area / aspect))))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        window = grey[top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            window = window[:, ::-1]
        step = int(rng.integers(1, 3))
        signature = gis.signature_of_grey(np.ascontiguousarray(window[::step, ::step]))
        if normalized_distance(signature, originals[source]) >= 0.4:
            signatures.append(signature)
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(temporary, np.array(signatures, dtype=np.int8))
    os.replace(temporary, path)


def record_signatures(gis, count, seed=0, workers=2):
    """``count`` signatures: the corpus's photos, then windows of them (cached, deterministic)."""
    _, paths = corpus_paths()
    originals = np.array([gis.generate_signature(str(path)) for path in paths], dtype=np.int8)
    parameters = gis.parameters()
    key = hashlib.blake2b(json.dumps(parameters, sort_keys=True).encode(),
                          digest_size=6).hexdigest()
    chunks = max(0, -(-(count - len(originals)) // CHUNK))
    jobs = [(parameters, seed, c, CACHE / f"service-windows-{key}-{seed}-{c}.npy")
            for c in range(chunks)]
    missing = [job for job in jobs if not job[3].exists()]
    if missing:
        CACHE.mkdir(parents=True, exist_ok=True)
        log(f"signing {len(missing)} chunks of {CHUNK} window signatures")
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for done, _ in enumerate(pool.imap_unordered(_window_chunk, missing), 1):
                log(f"records: chunk {done}/{len(missing)}")
    parts = [originals] + [np.load(job[3]) for job in jobs]
    return [str(path) for path in paths], np.concatenate(parts)[:count]


def query_images(limit=200):
    """JPEG bytes of copies of the first ``limit`` corpus photos (each photo is record i)."""
    _, paths = corpus_paths()
    queries = []
    for index, path in enumerate(paths[:limit]):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        w, h = rgb.size
        if index % 3 == 0:
            rgb = rgb.resize((w // 2, h // 2), Image.LANCZOS)
        elif index % 3 == 1:
            rgb = rgb.crop((w // 20, h // 20, w - w // 20, h - h // 20))
        buffer = io.BytesIO()
        rgb.save(buffer, "JPEG", quality=50 if index % 3 == 2 else 85)
        queries.append(buffer.getvalue())
    return queries


def fill(url, count, legacy=False):
    """The store at ``url`` with ``count`` records (kept between runs when it has them)."""
    store = open_database(url)
    if store.count() == count:
        log(f"{url}: {count} records already")
        return store
    store.drop()
    store = open_database(url)
    paths, signatures = record_signatures(store.gis, count)
    names = paths + [f"window/{n}" for n in range(len(paths), count)]
    started = time.perf_counter()
    for start in range(0, count, 5000):
        results = store.add_signatures([{"path": names[n], "signature": signatures[n]}
                                        for n in range(start, min(start + 5000, count))])
        failed = [r for r in results if not isinstance(r, str)]
        if failed:
            raise SystemExit(f"{url}: {failed[0]}")
    settle(store, count)
    log(f"{url}: {count} records stored in {time.perf_counter() - started:.0f} s")
    return store


def settle(store, count, patience=600):
    """Refresh until all ``count`` records are searchable: on a busy machine an engine's refresh of
    a fresh 100k-record index can outlast the client's 30 s read timeout (it goes on regardless)."""
    from image_match.errors import DatabaseError

    deadline = time.monotonic() + patience
    while True:
        try:
            store.refresh()
            if store.count() == count:
                return
        except DatabaseError as error:
            if not error.transient or time.monotonic() > deadline:
                raise
            log(f"{store.location}: {error}; waiting")
        if time.monotonic() > deadline:
            raise SystemExit(f"{store.location}: {store.count()} of {count} records searchable")
        time.sleep(5)


# --- load ------------------------------------------------------------------------------------

def summary(latencies, errors, seconds):
    """``{"rate", "p50", "p99", "errors", "n"}`` (latencies in seconds; p50/p99 in ms)."""
    ordered = sorted(latencies)

    def quantile(q):
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else None

    return {"rate": len(latencies) / seconds, "p50": quantile(0.50), "p99": quantile(0.99),
            "errors": errors, "n": len(latencies)}


def closed_loop(call, items, concurrency, seconds, warmup):
    """``concurrency`` threads each calling ``call(item)`` back to back for ``warmup`` then
    ``seconds`` seconds; the measured part's summary. ``call`` returns True on success."""
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup
    latencies, errors, lock = [], [0], threading.Lock()

    def worker(offset):
        index = offset
        local, bad = [], 0
        state = {}
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                break
            ok = call(items[index % len(items)], state)
            ended = time.perf_counter()
            index += concurrency
            if started >= measure_from and ended <= stop_at:
                if ok:
                    local.append(ended - started)
                else:
                    bad += 1
        with lock:
            latencies.extend(local)
            errors[0] += bad

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(latencies, errors[0], seconds)


def multipart(field, data):
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"q.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def http_caller(url, path, field, expect):
    """A ``call`` for ``closed_loop`` posting a prepared body on a kept-alive connection per
    thread; ``expect(status, body)`` says whether the answer is a success."""
    parts = urlsplit(url)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}

    def call(body, state):
        for attempt in (1, 2):
            connection = state.get("connection")
            if connection is None:
                connection = state["connection"] = http.client.HTTPConnection(
                    parts.hostname, parts.port, timeout=120)
                connection.connect()
                # As urllib3 (requests) does: without it, the headers and the body leave in two
                # packets and the second waits for the server's delayed ACK (40 ms).
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                answer = response.read()
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    state.pop("connection")
                return expect(response.status, answer)
            except (OSError, http.client.HTTPException):
                connection.close()
                state.pop("connection", None)
                if attempt == 2:
                    return False
        return False

    return call


def _found(status, body):
    return status == 200


def client_main():
    """The load generator's process: reads its job as JSON on stdin, prints its results."""
    job = json.load(sys.stdin)
    queries = [bytes.fromhex(q) for q in job["queries"]]
    bodies = [multipart(job["field"], q) for q in queries]
    call = http_caller(job["url"], job["path"], job["field"], _found)
    if job.get("rate"):
        result = open_loop(call, bodies, job["rate"], job["seconds"], job.get("sample_every"),
                           job.get("pids"))
    else:
        result = closed_loop(call, bodies, job["concurrency"], job["seconds"], job["warmup"])
    cpu = os.times()
    result["client_cpu"] = cpu.user + cpu.system
    print(json.dumps(result))


def run_client(url, path, field, queries, **job):
    """Run the load generator in its own process and return its results."""
    job = dict(job, url=url, path=path, field=field, queries=[q.hex() for q in queries])
    done = subprocess.run([sys.executable, __file__, "client"], input=json.dumps(job),
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"load generator failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def open_loop(call, items, rate, seconds, sample_every, pids):
    """Searches at ``rate`` a second for ``seconds``, each at its scheduled time (from a pool of
    threads large enough not to fall behind); latency from the scheduled time. RSS of ``pids``'
    process trees sampled every ``sample_every`` seconds."""
    interval = 1.0 / rate
    total = int(rate * seconds)
    latencies, errors, lock = [], [0], threading.Lock()
    samples = []
    local = threading.local()

    def one(index, scheduled):
        state = getattr(local, "state", None)
        if state is None:
            state = local.state = {}
        ok = call(items[index % len(items)], state)
        ended = time.perf_counter()
        with lock:
            if ok:
                latencies.append(ended - scheduled)
            else:
                errors[0] += 1

    started = time.perf_counter()
    next_sample = started
    with ThreadPoolExecutor(64) as pool:
        for index in range(total):
            scheduled = started + index * interval
            now = time.perf_counter()
            if now >= next_sample and pids:
                samples.append((round(now - started), tree_rss(pids)))
                next_sample += sample_every
            if scheduled > now:
                time.sleep(scheduled - now)
            pool.submit(one, index, scheduled)
    elapsed = time.perf_counter() - started
    if pids:
        samples.append((round(time.perf_counter() - started), tree_rss(pids)))
    result = summary(latencies, errors[0], elapsed)
    result["rss"] = samples
    return result


# --- servers -----------------------------------------------------------------------------------

class Served:
    """A server process (ours, or dsys/match's gunicorn) on a free port, stopped on exit."""

    def __init__(self, command, url=None, env=None, ready_path="/ping"):
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log,
                                        env=dict(os.environ, **(env or {})),
                                        start_new_session=True)
        if url is None:
            line = self.process.stdout.readline().decode()
            if " on http" not in line:
                raise SystemExit(f"the service did not start: {line}{self._tail()}")
            url = line.split(" on ", 1)[1].split()[0]
        self.url = url
        deadline = time.monotonic() + 120
        parts = urlsplit(url)
        while True:
            try:
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
                connection.request("GET", ready_path)
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not answer: {self._tail()}")
            time.sleep(0.2)

    def _tail(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def serve_ours(url):
    return Served([sys.executable, "-m", "image_match", "serve", "--db", url, "--port", "0"],
                  env={"IMAGE_MATCH_REQUEST_TIMEOUT": "120"})


def dsys_venv(folder):
    """A throwaway virtualenv with Flask, gunicorn and image-match 1.1.2 (``--no-deps``); the
    rest (numpy, Pillow, scikit-image, elasticsearch-py) comes from this environment, and a
    ``sitecustomize`` gives 1.1.2 scikit-image's ``as_gray`` under its old name ``as_grey``."""
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "flask", "gunicorn"],
                       check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                        "image-match==1.1.2"], check=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (site / "benchmark-host-packages.pth").write_text("\n".join(ours) + "\n")
    (site / "sitecustomize.py").write_text(
        "import skimage.io\n"
        "_imread = skimage.io.imread\n"
        "def imread(path, as_grey=False, **kwargs):\n"
        "    return _imread(path, as_gray=as_grey, **kwargs)\n"
        "skimage.io.imread = imread\n")
    return python


def serve_dsys(checkout, python, es_address, index, workers):
    port = _free_port()
    return Served([str(python), "-m", "gunicorn", "-t", "120", "-b", f"127.0.0.1:{port}",
                   "-w", str(workers), "--chdir", str(checkout), "server:app"],
                  url=f"http://127.0.0.1:{port}",
                  env={"ELASTICSEARCH_URL": es_address, "ELASTICSEARCH_INDEX": index,
                       "ELASTICSEARCH_DOC_TYPE": "_doc", "ALL_ORIENTATIONS": "true"})


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fill_legacy(address, index, count):
    """``count`` records in image-match 1.x's document layout (dynamic mapping, ``path``,
    ``signature`` as numbers, ``simple_word_0..62``), as dsys/match reads them."""
    import elasticsearch
    import elasticsearch.helpers

    from image_match.goldberg import ImageSignature
    from image_match.words import make_words

    es = elasticsearch.Elasticsearch([address], timeout=120)
    if es.indices.exists(index=index) and es.count(index=index)["count"] == count:
        log(f"{address}/{index}: {count} 1.x records already")
        return
    es.indices.delete(index=index, ignore=[404])
    es.indices.create(index=index, body={"settings": {"number_of_shards": 1,
                                                      "number_of_replicas": 0}})
    gis = ImageSignature(draft=False)  # 1.x's
    paths, signatures = record_signatures(gis, count)
    names = paths + [f"window/{n}" for n in range(len(paths), count)]
    words = make_words(signatures)

    def actions():
        for n in range(count):
            document = {"path": names[n], "signature": signatures[n].tolist(),
                        "timestamp": "2026-01-01T00:00:00"}
            document.update((f"simple_word_{i}", int(w)) for i, w in enumerate(words[n]))
            yield {"_index": index, "_source": document}

    elasticsearch.helpers.bulk(es, actions(), chunk_size=2000, request_timeout=300)
    es.indices.refresh(index=index)
    log(f"{address}/{index}: {count} 1.x records stored")


# --- the run -----------------------------------------------------------------------------------

def measure(label, store_url, queries, args, rows, levels, dsys=None, dsys_api=False):
    """In-process and HTTP rows for one store at each concurrency of ``levels``, ``args.runs``
    times; in each run a level is measured every way back to back, so that a ratio compares loads
    of the same minute. With ``dsys_api`` also dsys/match's call, ``POST /search``, on image-match
    2's service, and on dsys/match's own server when ``dsys`` is one."""
    def in_process(data, state):
        store = state.get("store")
        if store is None:
            store = state["store"] = open_database(store_url)
        store.search_image(data, bytestream=True)
        return True

    def over_http(url, path, concurrency):
        return run_client(url, path, "image", queries, concurrency=concurrency,
                          seconds=args.seconds, warmup=args.warmup)

    served = serve_ours(store_url)
    try:
        for run in range(args.runs):
            for concurrency in levels:
                log(f"{label}, run {run + 1}/{args.runs}, concurrency {concurrency}")
                rows.append((label, "search_image, in process", concurrency, run, closed_loop(
                    in_process, queries, concurrency, args.seconds, args.warmup)))
                rows.append((label, "image-match serve, POST /v1/search", concurrency, run,
                             over_http(served.url, "/v1/search", concurrency)))
                if dsys_api:
                    rows.append((label, "image-match serve, POST /search", concurrency, run,
                                 over_http(served.url, "/search", concurrency)))
                if dsys is not None:
                    rows.append((label, f"dsys/match ({args.dsys_workers} gunicorn workers), "
                                        "POST /search", concurrency, run,
                                 over_http(dsys.url, "/search", concurrency)))
    finally:
        served.stop()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        return client_main()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", nargs="*", default=["sqlite", "opensearch"],
                        choices=["sqlite", "opensearch"])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=30.0, help="per level, measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="per level, not measured")
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds of every measurement; the table gives their medians (0: "
                             "none, only the steady run)")
    parser.add_argument("--steady-seconds", type=float, default=0.0)
    parser.add_argument("--steady-rate", type=float, default=50.0)
    parser.add_argument("--steady-store", default="opensearch", choices=["sqlite", "opensearch"])
    parser.add_argument("--rss-every", type=float, default=30.0)
    parser.add_argument("--dsys-match", type=Path, default=None, help="a dsys/match checkout")
    parser.add_argument("--dsys-workers", type=int, default=4)
    parser.add_argument("--dsys-concurrency", type=int, nargs="+", default=[1, 8],
                        help="the levels of the Elasticsearch 7.17 rows (dsys/match's searches "
                             "are slow: 32 connections would only queue on its workers)")
    parser.add_argument("--es-url", help="an OpenSearch node of one's own (else one is started)")
    parser.add_argument("--es7-url", help="an Elasticsearch 7.17 node for the dsys/match rows")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/service/os"))
    parser.add_argument("--heap", default="2g")
    parser.add_argument("--sqlite", type=Path, default=Path("/tmp/service/bench.db"))
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "service_throughput.txt")
    args = parser.parse_args()

    queries = query_images()
    rows, engines, steady = [], [], None
    started_load = os.getloadavg()

    def steady_run(url):
        served = serve_ours(url)
        try:
            log(f"steady: {args.steady_rate:g}/s for {args.steady_seconds:g} s on {url}")
            return run_client(served.url, "/v1/search", "image", queries, rate=args.steady_rate,
                              seconds=args.steady_seconds, sample_every=args.rss_every,
                              pids=[served.process.pid])
        finally:
            served.stop()

    def node(kind, given, folder):
        if given:
            return given.rstrip("/")
        from image_match import local_engine

        started = local_engine.start(kind, data_dir=folder, heap=args.heap)
        engines.append(started)
        return started.url

    try:
        for kind in args.stores:
            if kind == "sqlite":
                args.sqlite.parent.mkdir(parents=True, exist_ok=True)
                url = f"sqlite:///{args.sqlite}"
                label = f"SQLite, {args.records:,}"
            else:
                url = f"{node('opensearch', args.es_url, args.data_dir)}/service-bench-{args.records}"
                label = f"OpenSearch 2.19, {args.records:,}"
            fill(url, args.records)
            if args.runs:  # --runs 0: only the steady run
                measure(label, url, queries, args, rows, args.concurrency)
            if args.steady_seconds and kind == args.steady_store:
                steady = steady_run(url)
            while engines:  # each engine stopped once measured: it would load the others' runs
                engines.pop().stop()
        if args.dsys_match is not None:
            address = node("elasticsearch", args.es7_url, args.data_dir.parent / "es7")
            index = f"service-bench-1x-{args.records}"
            fill_legacy(address, index, args.records)
            python = dsys_venv(CACHE / "dsys-match-venv")
            dsys = serve_dsys(args.dsys_match.resolve(), python, address, index, args.dsys_workers)
            try:
                measure(f"Elasticsearch 7.17, 1.x layout, {args.records:,}",
                        f"{address}/{index}", queries, args, rows, args.dsys_concurrency,
                        dsys=dsys, dsys_api=True)
            finally:
                dsys.stop()
            ours = f"{address}/service-bench-{args.records}"
            fill(ours, args.records)
            measure(f"Elasticsearch 7.17, {args.records:,}", ours, queries, args, rows,
                    args.dsys_concurrency, dsys_api=True)
    finally:
        while engines:
            engines.pop().stop()
    report(args, rows, steady, started_load)


def report(args, rows, steady, started_load):
    def ms(value):
        return "-" if value is None else f"{value:.1f}"

    def median(results, key):
        values = [r[key] for r in results if r[key] is not None]
        return statistics.median(values) if values else None

    grouped = {}  # (store, how, concurrency) -> the result of each run, in the order measured
    for store, how, concurrency, _, result in rows:
        grouped.setdefault((store, how, concurrency), []).append(result)
    table = [(store, how, concurrency, f"{median(results, 'rate'):.1f}",
              ms(median(results, "p50")), ms(median(results, "p99")),
              sum(r["errors"] for r in results))
             for (store, how, concurrency), results in grouped.items()]
    lines = [f"python benchmarks/service_throughput.py {' '.join(sys.argv[1:])}",
             machine_line(), f"load average at start {started_load[0]:.1f}, at end "
             f"{os.getloadavg()[0]:.1f} (1 min)", ""]
    if table:
        lines[-1:] = [f"medians of {args.runs} runs of {args.seconds:g} s a row (after "
                      f"{args.warmup:g} s of warm-up); ratios are of rows of the same run "
                      "(median, and the runs' range)", ""]
        buffer = io.StringIO()
        print_table(["store", "searches", "concurrency", "searches/s", "p50 ms", "p99 ms",
                     "errors"], table, file=buffer)
        lines.append(buffer.getvalue())

    def per_run(store, how, concurrency):
        return {run: result for s, h, c, run, result in rows
                if (s, h, c) == (store, how, concurrency)}

    def ratio(numerator, denominator, form):
        values = [numerator[run]["rate"] / denominator[run]["rate"] for run in numerator
                  if run in denominator and denominator[run]["rate"]]
        if not values:
            return None
        return (f"{form(statistics.median(values))} ({form(min(values))}-{form(max(values))})"
                if len(values) > 1 else form(values[0]))

    def percent(value):
        return f"{value:.0%}"

    def times(value):
        return f"{value:.1f}x"

    dsys_how = f"dsys/match ({args.dsys_workers} gunicorn workers), POST /search"
    for store in dict.fromkeys(store for store, _, _, _, _ in rows):
        for concurrency in sorted({c for s, _, c, _, _ in rows if s == store}):
            ours = per_run(store, "image-match serve, POST /v1/search", concurrency)
            inner = per_run(store, "search_image, in process", concurrency)
            if not ours or not inner:
                continue
            tails = [r["p99"] / r["p50"] for r in ours.values() if r["p50"]]
            line = (f"{store}, concurrency {concurrency}: HTTP "
                    f"{ratio(ours, inner, percent)} of in-process; p99/p50 over HTTP "
                    f"{statistics.median(tails):.1f} ({min(tails):.1f}-{max(tails):.1f})")
            dsys = per_run(store, dsys_how, concurrency)
            if dsys:
                same_call = per_run(store, "image-match serve, POST /search", concurrency)
                line += (f"; POST /search {ratio(same_call, dsys, times)} dsys/match's, "
                         f"POST /v1/search {ratio(ours, dsys, times)}")
            lines.append(line)
    if steady:
        rss = steady["rss"]
        lines += ["", f"steady {args.steady_rate:g} searches/s for {args.steady_seconds:g} s: "
                      f"{steady['n']} answered at {steady['rate']:.1f}/s, {steady['errors']} errors, "
                      f"p50 {ms(steady['p50'])} ms, p99 {ms(steady['p99'])} ms; RSS of the service "
                      f"(its process and signing processes): "
                      f"{rss[0][1] / 2**20:.0f} MiB at start, {rss[-1][1] / 2**20:.0f} MiB at end",
                  "RSS samples (s, MiB): " + ", ".join(f"{t}: {b / 2**20:.0f}" for t, b in rss)]
    text = "\n".join(lines)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
