"""What the service does, for every face of it: dsys/match's routes, the ``/v1`` routes and the
moderation page all call one ``Service`` (one per worker process), never a store or the signer
directly.

Where the work happens, so that the event loop only ever waits:

- signing (decoding and the signature's arithmetic: CPU work) in a process pool shared by the
  worker's requests, ``IMAGE_MATCH_SIGNING_PROCESSES`` processes; at most
  ``IMAGE_MATCH_SIGNING_QUEUE`` images wait for it, beyond which a request is refused with
  ``UnavailableError`` (HTTP 503, ``Retry-After``) instead of joining an unbounded backlog;
- store calls in threads, each with its own store handle (an SQLite connection; a client of the
  engine), ``IMAGE_MATCH_STORE_CONNECTIONS`` at a time, so that requests do not wait for each
  other's round trips;
- URLs fetched in threads through ``image_match.fetching`` only (its address rules, allowlist,
  byte cap and timeouts), never handed to the loader as a string, which would read local files.

The store is opened with ``open_database`` from the same URL, settings and defaults as the CLI.
Errors are those of ``image_match.errors`` (and the few below, for what only a service meets);
``http_status`` says which HTTP status each one is.
"""

import asyncio
import functools
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from .. import __version__, fetching
from ..drivers import open_database
from ..errors import (CorruptImageError, DatabaseError, FetchError, ImageLoadError, ImageMatchError,
                      InvalidParameterError, RecordNotFoundError, UnavailableError)
from ..extras import install_command
from ..goldberg import normalized_distance, signature_variants
from ..records import content_id, default_id, normalize_filter
from ..signature_database_base import check_record_ids
from . import metrics

#: Seconds a client is told to wait when the engine or the broker is down.
RETRY_ENGINE = 5
#: Seconds a client is told to wait when the signing queue is full.
RETRY_BUSY = 1
#: Threads fetching URLs at a time (each fetch is bounded by its own deadline).
FETCH_THREADS = 16
#: Seconds ``ready`` waits for the store to answer.
READY_TIMEOUT = 5.0
#: How long ``duplicates`` waits for groups being computed before answering "still computing".
DUPLICATES_WAIT = 5.0


class NotFound(ImageMatchError):
    """What a request names does not exist: a job, a page of groups."""


class Conflict(ImageMatchError):
    """The request contradicts what is stored: a record that exists, given ``replace=False``; a
    cursor of groups computed again since; a search option the store was not made for."""


class NotConfigured(ImageMatchError):
    """This service was not set up for the request (jobs without Celery and redis-py)."""


class UnsupportedMediaType(ImageMatchError):
    """A body or an upload of a kind the service does not take (HTTP 415)."""


class UnsupportedImage(ImageLoadError, UnsupportedMediaType):
    """Uploaded bytes that are not an image format at all (a broken image is 422)."""


def http_status(error):
    """``(status, headers)`` for an error: 4xx when the caller can fix it, 502 when a URL's host
    failed, 503 (with ``Retry-After``) when retrying later may succeed, 500 otherwise."""
    if isinstance(error, UnavailableError):
        return 503, {"Retry-After": str(max(1, round(error.retry_after or RETRY_BUSY)))}
    if isinstance(error, (RecordNotFoundError, NotFound)):
        return 404, {}
    if isinstance(error, Conflict):
        return 409, {}
    if isinstance(error, NotConfigured):
        return 501, {}
    if isinstance(error, UnsupportedMediaType):
        return 415, {}
    if isinstance(error, FetchError):
        if not error.transient:
            return 422, {}
        return 502, ({"Retry-After": str(max(1, round(error.retry_after)))}
                     if error.retry_after else {})
    if isinstance(error, ImageLoadError):
        return 422, {}
    if isinstance(error, InvalidParameterError):
        return 400, {}
    if isinstance(error, DatabaseError) and error.transient:
        return 503, {"Retry-After": str(RETRY_ENGINE)}
    return 500, {}


@dataclass(frozen=True)
class Image:
    """An image a request gave: uploaded ``data``, or a ``url`` to fetch. ``name`` is how
    messages call it (``image 'cat.jpg' (1234 bytes)``, or the URL)."""

    name: str
    data: bytes = None
    url: str = None

    @classmethod
    def upload(cls, field, filename, data):
        label = f"{field} {filename!r}" if filename else field
        return cls(f"{label} ({len(data)} bytes)", data=data)

    @classmethod
    def from_url(cls, url):
        return cls(url, url=url)


class Service:
    """The service of one worker process; ``await start()`` before use, ``await close()`` after.

    Parameters
    ----------
    database : str
        The store's URL (``open_database``).
    config : image_match.settings.Settings
        The settings (signing processes and queue, store connections, request timeout...).
    """

    def __init__(self, database, config):
        self.database = database
        self.config = config
        self.started = time.time()
        self._processes = config.signing_processes or os.cpu_count() or 1
        self._pool = None
        self._pool_lock = threading.Lock()
        self._threads = ThreadPoolExecutor(config.store_connections, thread_name_prefix="store")
        self._fetchers = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch")
        self._idle = deque()  # store handles not in use; at most one per store thread
        self._handles = []
        self._prototype = None  # a handle for the store's parameters (signers, cutoff)
        self._signers = {}
        self._waiting = 0  # images fetched or signed, or waiting to be
        self._loop = None
        self._duplicates = _DuplicateGroups(self)
        self._jobs = None

    # --- life --------------------------------------------------------------------------------

    async def start(self):
        self._loop = asyncio.get_running_loop()
        self._prototype = await self._loop.run_in_executor(self._threads, self._take)
        self._idle.append(self._prototype)
        self._record_signer = self._prototype.record_signer()
        self._pool = self._new_pool()
        # Start every signing process now (each imports numpy and Pillow), not on first requests.
        await asyncio.gather(*(asyncio.wrap_future(self._pool.submit(_warm, 0.2))
                               for _ in range(self._processes)))

    async def close(self):
        """Let running work finish, then stop the processes and threads and close the store."""
        self._duplicates.close()
        await self._loop.run_in_executor(None, self._shutdown)

    def _shutdown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._threads.shutdown(wait=True)
        self._fetchers.shutdown(wait=True)
        for handle in self._handles:
            close = getattr(handle, "close", None)
            if close is not None:
                close()

    def _new_pool(self):
        return ProcessPoolExecutor(self._processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_quiet_child)

    # --- the store, in threads -----------------------------------------------------------------

    def _take(self):
        """A store handle for this thread's call: an idle one, else a new one (there are never
        more than threads)."""
        try:
            return self._idle.pop()
        except IndexError:
            handle = open_database(self.database, create=True)
            self._handles.append(handle)
            return handle

    def _call_store(self, operation, call):
        handle = self._take()
        started = time.perf_counter()
        try:
            return call(handle)
        finally:
            metrics.STORE_SECONDS.labels(operation).observe(time.perf_counter() - started)
            self._idle.append(handle)

    async def store(self, operation, call):
        """``call(store)`` in a store thread; ``operation`` names it for the metrics."""
        return await self._loop.run_in_executor(self._threads, self._call_store, operation, call)

    @property
    def parameters(self):
        """A store handle to read the store's parameters from (cutoff, signature, crop windows);
        not for calls, which go through ``store``."""
        return self._prototype

    # --- images: fetched and signed off the event loop -------------------------------------------

    def _admit(self):
        if self._waiting >= self.config.signing_queue:
            metrics.REFUSED.inc()
            raise UnavailableError(
                f"busy: {self._waiting} images are waiting to be signed "
                f"(IMAGE_MATCH_SIGNING_QUEUE={self.config.signing_queue}); retry shortly",
                retry_after=RETRY_BUSY)
        self._waiting += 1
        metrics.WAITING.inc()

    def _release(self):
        self._waiting -= 1
        metrics.WAITING.dec()

    async def image_bytes(self, image):
        """The bytes of an upload, or of its URL fetched through ``fetching`` (within the
        request's time: a fetch outliving its request would hold a thread for nothing)."""
        if image.url is None:
            if fetching.sniff_image_type(image.data[:32]) is None:
                raise UnsupportedImage(image.name, "not an image (unrecognized format)")
            return image.data
        self._admit()
        try:
            fetched = await self._loop.run_in_executor(
                self._fetchers, functools.partial(fetching.fetch, image.url,
                                                  deadline=self.config.request_timeout))
        finally:
            self._release()
        return fetched.content

    async def sign(self, function, image):
        """``function(bytes of image)`` in the signing pool; the pool is replaced if a process of
        it died (the image that killed it fails with a 500, the next ones are signed)."""
        data = await self.image_bytes(image)
        self._admit()
        started = time.perf_counter()
        try:
            future = self._submit(function, data)
        except BaseException:
            self._release()
            raise
        # Released when the work is done, not when the request stops waiting: a request that
        # timed out leaves its image in the queue until it is signed.
        future.add_done_callback(lambda _: self._loop.call_soon_threadsafe(self._release))
        try:
            return await asyncio.wrap_future(future)
        except ImageLoadError as error:
            if type(error) in (ImageLoadError, CorruptImageError):  # name the input as given
                raise type(error)(image.name, error.reason) from None
            raise
        except BrokenProcessPool:
            self._replace_pool()
            raise ImageMatchError(f"{image.name}: the signing process died while reading it") from None
        finally:
            metrics.SIGNING_SECONDS.observe(time.perf_counter() - started)

    def _submit(self, function, data):
        with self._pool_lock:
            pool = self._pool
        try:
            return pool.submit(function, data)
        except BrokenProcessPool:
            return self._replace_pool(pool).submit(function, data)

    def _replace_pool(self, broken=None):
        with self._pool_lock:
            if broken is None or self._pool is broken:
                old, self._pool = self._pool, self._new_pool()
                old.shutdown(wait=False, cancel_futures=True)
            return self._pool

    def query_signer(self, **options):
        """``query_signer`` of the store for these search options, made once."""
        key = tuple(sorted(options.items()))
        if key not in self._signers:
            try:
                self._signers[key] = self._prototype.query_signer(**options)
            except InvalidParameterError as error:
                # Well-formed options this store cannot follow (corner crops, no crop windows).
                raise Conflict(str(error)) from None
        return self._signers[key]

    # --- adding --------------------------------------------------------------------------------

    async def add(self, image, path=None, record_id=None, metadata=None, replace=True,
                  replace_path=False, refresh=False):
        """Sign an image and store it; return ``(id, path, "added" | "replaced")``.

        Parameters
        ----------
        path : str, optional
            The name the record keeps; default the URL, or for an upload its content id (the
            same bytes make the same path).
        record_id : str, optional
            Default: the store's scheme (a hash of the path in the stores image-match 2 makes).
        replace : bool
            False: refuse (``Conflict``) when a record has this id.
        replace_path : bool
            Also delete every other record whose path is exactly ``path`` (dsys/match's ``/add``).
        refresh : bool
            Make the record searchable before answering.
        """
        data = await self.image_bytes(image)
        if path is None:
            path = image.url or content_id(data)
        signed = await self.sign(self._record_signer, Image(image.name, data=data))

        def store(db):
            wanted = record_id or (default_id(path) if db.ids == "path" else None)
            existed = bool(wanted) and bool(db.get_many([wanted]))
            if existed and not replace:
                raise Conflict(f"{db.location}: a record with id {wanted!r} exists "
                               "(replace it with replace=true)")
            older = db.ids_with_path(path) if replace_path else []
            result = db.add_signatures([{"path": path, **signed, "metadata": metadata,
                                         "id": wanted}], refresh_after=refresh)[0]
            if isinstance(result, ImageMatchError):
                raise result
            others = [other for other in older if other != result]
            for other in others:
                db.delete(other)
            return result, path, "replaced" if existed or others else "added"

        outcome = await self.store("add", store)
        self._duplicates.stale()
        return outcome

    # --- searching and comparing ---------------------------------------------------------------

    async def search(self, image, top=10, cutoff=None, pre_filter=None, **options):
        """The stored copies of an image, nearest first: ``search_image``'s dicts, at most
        ``top``. ``options``: ``query_signer``'s (all_orientations, robust, frames...)."""
        return (await self.search_many([image], top, cutoff, pre_filter, **options))[0].result()

    async def search_many(self, images, top=10, cutoff=None, pre_filter=None, **options):
        """``search`` for several images, with one store round trip for all: per image an
        ``Outcome`` (its matches, or the error that kept it from being searched)."""
        pre_filter = check_filter(pre_filter)
        signer = self.query_signer(**options)
        signed = await asyncio.gather(*(self.sign(signer, image) for image in images),
                                      return_exceptions=True)
        outcomes = [Outcome(error=result) if isinstance(result, BaseException) else None
                    for result in signed]
        for outcome in outcomes:  # anything but an ImageMatchError is a bug: let it show
            if outcome is not None and not isinstance(outcome.error, ImageMatchError):
                raise outcome.error
        queries = [query for query, outcome in zip(signed, outcomes) if outcome is None]
        if queries:
            found = iter(await self.store("search", lambda db: db.search_queries(
                queries, pre_filter, size=max(db.size, top), distance_cutoff=cutoff)))
            outcomes = [outcome or Outcome(matches=next(found)[:top]) for outcome in outcomes]
        return outcomes

    async def compare(self, first, second, all_orientations=False):
        """``(distance, cutoff)``: the distance between two images as the store signs them (the
        nearest of the first's 8 orientations with ``all_orientations``), and its cutoff."""
        gis = self._prototype.gis
        a, b = await asyncio.gather(self.sign(gis.generate_signature, first),
                                    self.sign(gis.generate_signature, second))
        candidates = (signature_variants(a, gis.n, gis.diagonal_neighbors) if all_orientations
                      else a[None])
        return float(np.min(normalized_distance(candidates, b))), self._prototype.distance_cutoff

    # --- reading and deleting ----------------------------------------------------------------

    async def get(self, record_id):
        return await self.store("get", lambda db: db.get(record_id))

    async def delete(self, record_id):
        """Delete a record; RecordNotFoundError when there is none."""
        def delete(db):
            if not db.delete(record_id):
                raise RecordNotFoundError(f"{db.location}: no record with id {record_id!r}")
        await self.store("delete", delete)
        self._duplicates.stale()

    async def delete_path(self, path):
        """Delete every record whose path is exactly ``path``; how many there were."""
        deleted = await self.store("delete", lambda db: db.delete_path(path))
        self._duplicates.stale()
        return deleted

    async def page(self, after=None, limit=100):
        return await self.store("list", lambda db: db.records_page(after, limit))

    async def paths(self, offset=0, limit=20):
        return await self.store("list", lambda db: db.paths(offset, limit))

    async def count(self):
        return await self.store("count", lambda db: db.count())

    async def stats(self):
        description = await self.store("stats", lambda db: db.describe())
        store = self._prototype
        return {"store": description,
                "parameters": {"cutoff": store.distance_cutoff, "ids": store.ids,
                               "crop_windows": list(store.crop_windows),
                               "signature": store.gis.parameters()},
                "service": {"version": __version__, "pid": os.getpid(),
                            "uptime": round(time.time() - self.started, 3),
                            "signing_processes": self._processes,
                            "signing_queue": self.config.signing_queue,
                            "waiting": self._waiting,
                            "store_connections": self.config.store_connections}}

    async def ready(self):
        """Whether the store answers within ``READY_TIMEOUT`` seconds; the reason if not."""
        try:
            count = await asyncio.wait_for(self.count(), READY_TIMEOUT)
        except asyncio.TimeoutError:
            return False, f"the store did not answer within {READY_TIMEOUT:g} s"
        except ImageMatchError as error:
            return False, str(error)
        metrics.RECORDS.set(count)
        return True, count

    # --- groups of duplicates ------------------------------------------------------------------

    async def duplicates(self, after=None, limit=20, cutoff=None, all_orientations=False,
                         refresh=False):
        """A page of the store's groups of near-duplicates (``find_duplicates``), computed once
        in the background and kept until the store changes through this service or its count
        changes. Returns ``(page or None while computing, next cursor, snapshot info)``."""
        return await self._duplicates.page(after, limit, cutoff, all_orientations, refresh)

    # --- the moderation page's decisions (its thumbnails are server.pictures') ------------------

    async def mark_not_duplicates(self, ids):
        """Remember in the store that these records are not duplicates of each other (every
        pair); the groups are computed again on the next first page. How many pairs."""
        marked = await self.store("not_duplicates", lambda db: db.mark_not_duplicates(ids))
        self._duplicates.stale()
        return marked

    async def not_duplicates(self):
        return await self.store("not_duplicates", lambda db: db.not_duplicates())

    async def distances(self, kept, ids, all_orientations=True):
        """``{id: distance to the record kept}`` as ``duplicates`` measures it, for the records
        of ``ids`` that exist (a moderator choosing which copy of a group to keep)."""
        check_record_ids([kept, *ids])

        def measure(db):
            records = db.get_many([kept, *ids])
            if not isinstance(records.get(kept), dict):
                raise RecordNotFoundError(f"{db.location}: no record with id {kept!r}")
            others = [records[i] for i in ids if isinstance(records.get(i), dict)]
            found = db.distances_to(records[kept], others, all_orientations) if others else []
            return {record["id"]: 0.0 if record["id"] == kept else float(distance)
                    for record, distance in zip(others, found)}

        return await self.store("distances", measure)

    # --- bulk ingestion jobs -------------------------------------------------------------------

    async def submit_job(self, lines):
        """A Celery job of ``lines`` (URLs, or JSON lines with ``url``, ``id``, ``metadata``)
        into this service's store: ``(job id, items)``."""
        app, jobs = await self._job_tools()

        def submit():
            from ..tasks.submit import submit as submit_lines

            try:
                return submit_lines(lines, database=self.database, source="service", app=app,
                                    jobs=jobs)
            except ImageMatchError as error:  # the broker does not answer
                raise UnavailableError(str(error), retry_after=RETRY_ENGINE) from None

        return await self._loop.run_in_executor(self._fetchers, submit)

    async def job(self, job_id, failures=1000):
        """A job's status as a dict, with up to ``failures`` of its failures."""
        _, jobs = await self._job_tools()

        def read():
            import redis

            try:
                status = jobs.status(job_id)
                if status is None:
                    raise NotFound(f"job {job_id}: no such job (unknown, or expired)")
                listed = jobs.failures(job_id)[:failures] if status.failed else []
            except redis.exceptions.RedisError as error:
                raise UnavailableError(f"cannot reach the broker: {error}",
                                       retry_after=RETRY_ENGINE) from None
            return dict(status.as_dict(), failures=listed)

        return await self._loop.run_in_executor(self._fetchers, read)

    async def _job_tools(self):
        if self._jobs is None:
            def make():
                try:
                    import celery  # noqa: F401
                    import redis  # noqa: F401
                except ImportError as error:
                    raise NotConfigured(f"jobs need Celery and redis-py ({error.name} is missing):"
                                        f" {install_command('celery')}") from None
                from ..tasks.jobs import Jobs, redis_client
                from ..tasks.worker import make_app

                try:
                    return make_app(), Jobs(redis_client(patience=2.0))
                except ImageMatchError as error:
                    raise NotConfigured(str(error)) from None

            self._jobs = await self._loop.run_in_executor(self._fetchers, make)
        return self._jobs


@dataclass
class Outcome:
    """One image of a batch: its ``matches``, or the ``error`` that kept it out."""

    matches: list = None
    error: BaseException = None

    def result(self):
        if self.error is not None:
            raise self.error
        return self.matches


def check_filter(pre_filter):
    """A metadata filter from a request, in the portable form only (``{"key": value or [values]}``;
    never raw query DSL, which could ask the engine for anything)."""
    if pre_filter is None:
        return None
    if isinstance(pre_filter, dict) and any(isinstance(value, dict)
                                            for value in pre_filter.values()):
        raise InvalidParameterError(
            "filter: values must be strings, numbers or booleans, or lists of them")
    return normalize_filter(pre_filter)


class _DuplicateGroups:
    """``find_duplicates`` over the whole store, computed in a thread of its own (it searches
    every record: minutes for a large store) and paged from a snapshot.

    A first page (no cursor) computes the groups again when asked to (``refresh``), when this
    service wrote to the store since, or when the store's count moved (another writer); a cursor
    pages the snapshot it came from, or is refused (``Conflict``) once that snapshot is gone.
    """

    def __init__(self, service):
        self.service = service
        self.snapshots = {}  # (cutoff, all_orientations) -> _Snapshot
        self.generation = 0  # writes through this service
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="duplicates")

    def stale(self):
        self.generation += 1

    def close(self):
        self.thread.shutdown(wait=False, cancel_futures=True)

    async def page(self, after, limit, cutoff, all_orientations, refresh):
        key = (cutoff, bool(all_orientations))
        snapshot = self.snapshots.get(key)
        if after is not None:
            snapshot_id, _, position = after.partition(":")
            if not position.isdigit():
                raise InvalidParameterError(f"cursor {after!r}: not one this service gave")
            if snapshot is None or snapshot.id != snapshot_id:
                raise Conflict(f"cursor {after!r}: the groups were computed again since; start "
                               "from the first page")
            offset = int(position)
        else:
            offset = 0
            count = await self.service.count()
            if (snapshot is None or refresh or snapshot.failed()
                    or snapshot.done() and (snapshot.generation, snapshot.count)
                    != (self.generation, count)):
                snapshot = self._compute(key, count)
        try:
            groups = await asyncio.wait_for(asyncio.shield(snapshot.future), DUPLICATES_WAIT)
        except asyncio.TimeoutError:
            return None, None, snapshot.info()
        snapshot.computed = snapshot.computed or time.time()
        following = f"{snapshot.id}:{offset + limit}" if offset + limit < len(groups) else None
        return groups[offset:offset + limit], following, snapshot.info()

    def _compute(self, key, count):
        cutoff, all_orientations = key
        snapshot = _Snapshot(self.generation, count)
        snapshot.future = asyncio.wrap_future(self.thread.submit(
            self.service._call_store, "duplicates",
            lambda db: db.find_duplicates(distance_cutoff=cutoff, all_orientations=all_orientations)))
        self.snapshots[key] = snapshot
        return snapshot


class _Snapshot:
    def __init__(self, generation, count):
        self.id = uuid.uuid4().hex[:12]
        self.generation = generation
        self.count = count
        self.started = time.time()
        self.computed = None
        self.future = None

    def done(self):
        return self.future.done()

    def failed(self):
        return self.done() and (self.future.cancelled() or self.future.exception() is not None)

    def info(self):
        total = len(self.future.result()) if self.done() and not self.failed() else None
        return {"records": self.count, "total": total, "started": self.started,
                "computed": self.computed}


def _warm(seconds):
    """A first task for each signing process: imports done, then hold it so that the next task
    starts another process."""
    import image_match.goldberg  # noqa: F401

    time.sleep(seconds)


def _quiet_child():
    # Ctrl-C reaches the whole process group: the service stops its pool itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
