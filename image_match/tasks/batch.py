"""One batch of an ingestion job: fetch and sign its images in parallel, store them in one call,
record every item's outcome.

This is the body of the Celery task (``image_match.tasks.worker``) without Celery, so that it can be
called and tested on its own. An item is a dict ``{"line": <its line number in the input>, "source": <URL or path>}``
with optionally ``"id"`` and ``"metadata"``. What becomes of each item:

- stored: its record id is ``id``, or ``default_id(source)``, so a batch delivered twice replaces
  its records instead of adding new ones; the item is recorded done;
- a permanent failure (HTTP 4xx, not an image, too large, refused address, unreadable image, a
  record the store refuses): recorded failed with its reason, not retried;
- a transient failure (timeout, lost connection, HTTP 5xx or 429, the store unavailable): handed to
  a follow-up batch after an exponential delay with jitter (at least the server's
  ``Retry-After``), up to ``IMAGE_MATCH_INGEST_MAX_RETRIES`` times, then recorded failed with
  the last reason;
- already settled by an earlier delivery of the same batch: skipped.

Follow-ups are batches of their own, registered in the job's ledger (``jobs``) with the outcomes.

A worker process downloads a batch's images with ``IMAGE_MATCH_INGEST_THREADS`` threads (each
host at most ``IMAGE_MATCH_FETCH_PER_HOST_CONCURRENCY`` at a time, the fetcher's limit) and signs
them in its own thread as they arrive, so that one image's decode overlaps the next downloads.
Signing in the download threads too was measured slower: about 10% more CPU per image (the
threads contend for the GIL) for no more images per second; the worker's processes are what
spread signing over the cores.
"""

import logging
import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..drivers import open_database
from ..errors import FetchError, ImageLoadError, ImageMatchError
from ..fetching import fetch
from ..records import default_id
from .. import settings
from . import config

log = logging.getLogger(__name__)

_URL_PREFIXES = ("http://", "https://")  # what the loader fetches too


@dataclass
class Outcome:
    """What happened to one item in this delivery."""

    item: dict
    signed: dict = None  # what the store keeps of the image (SignatureDatabaseBase.sign)
    reason: str = None
    transient: bool = False
    status: int = None
    retry_after: float = None
    deferred: bool = False  # not started: the batch ran out of time


def ingest(job, database, items, attempt, jobs, send, batch=None):
    """Ingest ``items`` of ``job`` into the store at ``database``.

    Parameters
    ----------
    attempt : int
        0 for a first delivery, n for the n-th retry of these items.
    jobs : image_match.tasks.jobs.Jobs
        Where outcomes are recorded.
    send : callable
        ``send(batch, delay)`` sends the message of a follow-up batch (already registered in the
        job) to be started ``delay`` seconds from now.
    batch : str, optional
        The batch being run, dropped from the job's ledger with the outcomes.

    Returns
    -------
    dict
        How many items were stored, failed, retried later or skipped (for the worker's log).
    """
    started = time.monotonic()
    unsettled = set(jobs.unsettled(job, [item["line"] for item in items]))
    summary = {"stored": 0, "failed": 0, "retried": 0, "skipped": len(items) - len(unsettled)}
    items = [item for item in items if item["line"] in unsettled]
    if not items:
        jobs.finish(job, batch)
        return summary
    try:
        store = open_store(database)
    except ImageMatchError as error:
        outcomes = [Outcome(item, reason=str(error), transient=_is_transient(error)) for item in items]
    else:
        outcomes = sign(store, items, deadline=started + config.longest_wait())
        _store(store, [o for o in outcomes if o.signed is not None])

    done = [o.item["line"] for o in outcomes if o.reason is None and not o.deferred]
    failed = {o.item["line"]: _failure(o, attempt) for o in outcomes if o.reason and not o.transient}
    transient = [o for o in outcomes if o.reason and o.transient]
    follow_ups = []  # (batch, delay, items, attempt)
    if transient and attempt < settings.get("INGEST_MAX_RETRIES"):
        delay = backoff(attempt, max((o.retry_after or 0.0) for o in transient))
        follow_ups.append((_new_batch(), delay, [o.item for o in transient], attempt + 1))
        log.warning("job %s: %d items to retry in %.1f s, e.g. %s: %s", job, len(transient), delay,
                    transient[0].item["source"], transient[0].reason)
    else:
        failed.update((o.item["line"], _failure(o, attempt, gave_up=True)) for o in transient)
    deferred = [o.item for o in outcomes if o.deferred]
    if deferred:
        follow_ups.append((_new_batch(), 0.0, deferred, attempt))
    # Outcomes and follow-ups are recorded in one step, then the follow-ups are sent: a worker
    # that dies in between leaves leased batches that the reapers send again.
    # Leased until their time comes, and a lease more: by then a worker holds their message and
    # renews them; if none does (the message was lost), a reaper sends them again.
    lease_end = time.time() + config.lease_seconds()
    jobs.finish(job, batch, done, failed,
                [(key, lease_end + delay, follow, next_attempt, database)
                 for key, delay, follow, next_attempt in follow_ups])
    for key, delay, _, _ in follow_ups:
        send(key, delay)
    summary.update(stored=len(done), failed=len(failed),
                   retried=sum(len(follow) for _, _, follow, _ in follow_ups))
    return summary


def sign(store, items, deadline):
    """An ``Outcome`` per item: downloaded by this process's threads, signed for ``store`` (with
    its crop windows when it keeps them) in this thread as the downloads arrive, in order. Items
    whose download had not started by ``deadline`` (``time.monotonic()``) are deferred."""
    def download(item):
        if time.monotonic() > deadline:
            return None
        source = item["source"]
        if not source.lower().startswith(_URL_PREFIXES):
            return source  # a path: read when it is signed
        try:
            return fetch(source).content
        except ImageMatchError as error:
            return error
        except Exception as error:  # a bug must not lose the item: record it against it
            log.exception("fetching %s", source)
            return error

    return [_sign_one(store, item, downloaded)
            for item, downloaded in zip(items, _executor().map(download, items))]


def _sign_one(store, item, downloaded):
    if downloaded is None:
        return Outcome(item, deferred=True)
    try:
        if isinstance(downloaded, Exception):
            raise downloaded
        return Outcome(item, signed=store.sign(downloaded))
    except FetchError as error:
        return Outcome(item, reason=error.reason, transient=error.transient, status=error.status,
                       retry_after=error.retry_after)
    except ImageLoadError as error:
        return Outcome(item, reason=error.reason)
    except ImageMatchError as error:
        return Outcome(item, reason=str(error), transient=_is_transient(error))
    except Exception as error:
        log.exception("signing %s", item["source"])
        return Outcome(item, reason=f"internal error ({type(error).__name__}: {error})")


def _store(store, signed):
    """Add the signed outcomes' records in one call; mark each outcome with the store's answer."""
    if not signed:
        return
    # The id is chosen here, not by the store: a store may give new ids (ids="new", 1.x's), and
    # a batch delivered twice must replace its records.
    records = [{"path": o.item["source"], **o.signed,
                "id": o.item.get("id") or default_id(o.item["source"]),
                "metadata": o.item.get("metadata")} for o in signed]
    try:
        results = store.add_signatures(records)
    except ImageMatchError as error:
        results = [error] * len(signed)
    for outcome, result in zip(signed, results):
        if isinstance(result, ImageMatchError):
            outcome.reason, outcome.transient = str(result), _is_transient(result)
        outcome.signed = None


def backoff(attempt, retry_after=0.0):
    """Seconds before retry ``attempt + 1``: ``IMAGE_MATCH_INGEST_RETRY_DELAY * 2**attempt`` with
    +-50% jitter (so that items that failed together do not come back together), at least what
    the server asked for, at most ``config.longest_wait()``."""
    delay = settings.get("INGEST_RETRY_DELAY") * 2 ** attempt * random.uniform(0.5, 1.5)
    return min(max(delay, retry_after or 0.0), config.longest_wait())


def _failure(outcome, attempt, gave_up=False):
    reason = outcome.reason
    if gave_up and attempt:
        reason += f" (gave up after {attempt + 1} attempts)"
    return {"source": outcome.item["source"], "reason": reason, "status": outcome.status,
            "attempts": attempt + 1}


def _new_batch():
    return uuid.uuid4().hex


def _is_transient(error):
    return bool(getattr(error, "transient", False))


# --- per process: the stores and the threads --------------------------------------------------

_stores = {}
_pool = {}


def open_store(database):
    """The store at ``database``, opened once per process (a forked worker opens its own)."""
    key = (os.getpid(), database)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = open_database(database)
    return store


def _executor():
    pid = os.getpid()
    if pid not in _pool:
        _pool.clear()
        _pool[pid] = ThreadPoolExecutor(settings.get("INGEST_THREADS"), thread_name_prefix="ingest")
    return _pool[pid]
