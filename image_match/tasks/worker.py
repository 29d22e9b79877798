"""The Celery app, the ingestion task and the reaper; ``celery -A image_match.tasks worker`` runs them.

The app is configured from the environment when this module is imported (``config.celery_config``),
which is when a worker starts. ``make_app()`` builds another one from the environment as it is
now: submitting needs only the broker, so a client sends batches by the task's name without
importing the task.

A message is ``(job, batch)``: the task reads the batch's items from the job's ledger in Redis
and takes a lease on it (``Jobs.start``). Each worker's main process runs a reaper thread that
sends again the batches of unfinished jobs whose lease ran out or whose message was lost
(``Jobs.reap``); a batch sent twice is skipped the second time.
"""

import logging
import os
import threading

from celery import Celery, signals

from . import batch as batches
from .. import settings
from . import config
from .jobs import Jobs, redis_client

log = logging.getLogger(__name__)


def make_app():
    """A Celery app configured from the current environment."""
    app = Celery("image_match")
    app.conf.update(config.celery_config())
    return app


app = make_app()

_jobs = {}  # per process: the Jobs of the broker's Redis


def _process_jobs():
    pid = os.getpid()
    if pid not in _jobs:
        _jobs.clear()
        _jobs[pid] = Jobs()
    return _jobs[pid]


@app.task(name=config.TASK_NAME)
def ingest_batch(job, batch):
    """Fetch, sign and store the items of ``batch`` (see ``image_match.tasks.batch.ingest``)."""
    import redis

    def send(follow_up, delay):
        ingest_batch.apply_async((job, follow_up), countdown=delay)

    jobs = _process_jobs()
    try:
        payload = jobs.start(job, batch, settings.get("VISIBILITY_TIMEOUT"))
        if payload is None:
            return {"settled already": True}
        return batches.ingest(job, payload["database"], payload["items"], payload["attempt"],
                              jobs, send, batch=batch)
    except redis.exceptions.RedisError as error:
        # The batch stays in the job's ledger: a reaper sends it again once its lease runs out.
        log.warning("job %s: batch %s left for later: Redis failed (%s)", job, batch, error)
        return {"left for later": str(error)}


class Reaper(threading.Thread):
    """Every few seconds, send again the batches of unfinished jobs that need it."""

    def __init__(self, app):
        super().__init__(name="image-match-reaper", daemon=True)
        self.app = app
        self.stopping = threading.Event()

    def run(self):
        import redis

        interval = config.reap_interval()
        jobs = Jobs(redis_client(patience=interval))
        while not self.stopping.wait(interval):
            try:
                for job in jobs.active():
                    for batch in jobs.reap(job, config.QUEUE, grace=2 * interval):
                        log.info("job %s: sending batch %s again", job, batch)
                        self.app.send_task(config.TASK_NAME, args=(job, batch), queue=config.QUEUE)
            except (redis.exceptions.RedisError, OSError) as error:
                log.warning("reaper: %s", error)
            except Exception:  # keep reaping whatever one round met
                log.exception("reaper")


_reaper = []


@signals.worker_ready.connect
def _start_reaper(sender=None, **kwargs):
    if not _reaper:
        _reaper.append(Reaper(getattr(sender, "app", None) or app))
        _reaper[0].start()


@signals.worker_shutting_down.connect
def _stop_reaper(**kwargs):
    for reaper in _reaper:
        reaper.stopping.set()
