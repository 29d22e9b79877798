"""A job from lines of input: each line a URL or path, or a JSON object with ``url`` (or
``path``) and optionally ``id`` and ``metadata``; batches of items sent to the workers. A relative
path is made absolute here (from the submitter's directory), as ``image-match add`` stores it.

An item is known by its line number. A line that is not an item (bad JSON, no ``url``, an ``id``
that is not a string) is recorded as a failure of the job at once, with its reason, like any item
that fails later; blank lines and lines starting with ``#`` are skipped.
"""

import json
import os
import time
import uuid
from urllib.parse import quote, unquote, urlsplit

from .. import settings
from ..errors import ImageMatchError
from . import config
from .jobs import Jobs, mask_password

DEFAULT_BATCH_SIZE = 128
# Seconds of waiting for a job without any worker alive before saying so.
NO_WORKER_AFTER = 5.0


def parse_line(line):
    """The item a line holds, as ``{"source", "id"?, "metadata"?}``; raise ValueError with the
    reason when it holds none; None for a blank or comment line."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if not text.startswith("{"):
        return {"source": text}
    try:
        value = json.loads(text, parse_constant=_not_json)
    except ValueError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError("a JSON line must be an object")
    source = value.get("url", value.get("path"))
    if not isinstance(source, str) or not source.strip():
        raise ValueError('a JSON line needs "url" (or "path"), a non-empty string')
    item = {"source": source.strip()}
    if value.get("id") is not None:
        if not isinstance(value["id"], str) or not value["id"]:
            raise ValueError(f'"id" must be a non-empty string, not {value["id"]!r}')
        item["id"] = value["id"]
    if value.get("metadata") is not None:
        if not isinstance(value["metadata"], dict):
            raise ValueError('"metadata" must be a JSON object')
        item["metadata"] = value["metadata"]
    return item


def _not_json(constant):
    raise ValueError(f"{constant} is not a JSON number")


def absolute_path(source):
    """A local path made absolute, as ``image-match add`` stores it: workers do not run in the
    submitter's directory. URLs stay as they are."""
    if source.lower().startswith(("http://", "https://")):
        return source
    return os.path.abspath(source)


def absolute_sqlite(database):
    """``database`` with a relative SQLite path made absolute: workers do not run in the
    submitter's directory."""
    parts = urlsplit(database)
    path = unquote(parts.path[1:], errors="surrogateescape")
    if parts.scheme.lower() != "sqlite" or not path or os.path.isabs(path) or path == ":memory:":
        return database
    # A file name's bytes that are not UTF-8 go as %XX, which the store's URL parser turns back.
    return "sqlite:///" + quote(os.path.abspath(path), errors="surrogateescape")


def submit(lines, database=None, batch_size=DEFAULT_BATCH_SIZE, source="", app=None, jobs=None):
    """Create a job and send its items in batches of ``batch_size``; return ``(job id, items)``.

    Parameters
    ----------
    lines : iterable of str
        The input (see the module's documentation); read lazily.
    database : str, optional
        The store, an ``open_database`` URL (default ``IMAGE_MATCH_DATABASE``). Workers open the
        store the job names, so one pool of workers serves any number of stores.
    app : celery.Celery, optional
        Default: ``worker.make_app()`` for ``IMAGE_MATCH_BROKER_URL``.
    jobs : Jobs, optional
        Default: ``Jobs()`` for the same Redis.

    Raises
    ------
    ImageMatchError
        The broker cannot be reached.

    Interrupted (KeyboardInterrupt), the job keeps the items sent so far and ends with them.
    """
    import kombu.exceptions
    import redis

    if app is None:
        from .worker import make_app

        app = make_app()
    database = absolute_sqlite(database or settings.get("DATABASE"))
    job = uuid.uuid4().hex
    try:
        jobs = jobs or Jobs()
        jobs.create(job, database, source)
        with app.producer_or_acquire() as producer:
            batch, bad = [], {}

            def send():  # the batch and the bad lines read since the last call
                if batch:
                    key = uuid.uuid4().hex
                    jobs.add_batch(job, key, batch, database)  # before its message: see jobs.py
                    app.send_task(config.TASK_NAME, args=(job, key), queue=config.QUEUE,
                                  producer=producer)
                if bad:
                    jobs.finish(job, failed=bad)
                    jobs.add_submitted(job, len(bad))

            try:
                for number, line in enumerate(lines, 1):
                    try:
                        item = parse_line(line)
                    except ValueError as error:
                        bad[number] = {"source": line.strip()[:200], "reason": str(error),
                                       "status": None, "attempts": 0}
                        continue
                    if item is not None:
                        batch.append(dict(item, source=absolute_path(item["source"]), line=number))
                    if len(batch) >= batch_size or len(bad) >= batch_size:
                        send()
                        batch, bad = [], {}
                send()
            finally:
                total = jobs.end_submission(job)
    except (redis.exceptions.RedisError, kombu.exceptions.OperationalError, OSError) as error:
        raise ImageMatchError(f"cannot reach the broker at {mask_password(app.conf.broker_url)}: "
                              f"{error}") from None
    return job, total


def wait(job, jobs=None, interval=0.5, on_status=None, patience=120.0, on_no_worker=None,
         no_worker_after=NO_WORKER_AFTER):
    """Poll the job until it is finished; return its last ``JobStatus``.

    ``on_status(status)`` is called after each poll. The broker may be unreachable for up to
    ``patience`` seconds at a time (a Redis restart) before ``ImageMatchError`` is raised.
    ``on_no_worker(present)`` is called with False once no worker has announced itself for
    ``no_worker_after`` seconds of waiting (nothing consumes the queue: the job cannot move), then
    with True if one does later.
    """
    import redis

    jobs = jobs or Jobs()
    lost_since = None
    began, alone = time.monotonic(), False
    while True:
        try:
            status = jobs.status(job)
            lost_since = None
            if (on_no_worker is not None and status is not None and status.state != "finished"
                    and time.monotonic() - began >= no_worker_after):
                present = bool(jobs.workers())
                if present == alone:  # news: no worker now, or one at last
                    alone = not present
                    on_no_worker(present)
        except redis.exceptions.RedisError as error:
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > patience:
                raise ImageMatchError(f"job {job}: lost the broker for {patience:g} s ({error})") from None
            time.sleep(interval)
            continue
        if status is None:
            raise ImageMatchError(f"job {job}: no such job (or it expired)")
        if on_status is not None:
            on_status(status)
        if status.state == "finished":
            return status
        time.sleep(interval)
