"""The Celery app, the ingestion task and the reaper; ``celery -A image_match.tasks worker`` runs them.

The app is configured from the environment when this module is imported (``config.celery_config``),
which is when a worker starts. ``make_app()`` builds another one from the environment as it is
now: submitting needs only the broker, so a client sends batches by the task's name without
importing the task.

A message is ``(job, batch)``: the task reads the batch's items from the job's ledger in Redis
and takes a lease on it (``Jobs.start``). Each worker's main process runs two threads: a heartbeat
that renews the leases of every batch the worker holds (running in its pool, or received and
waiting there) and announces the worker (``Jobs.renew``, ``Jobs.announce_worker``), and a reaper
that sends again the batches of unfinished jobs whose lease ran out (their worker died) or whose
message was lost (``Jobs.reap``); a batch sent twice is skipped the second time.
"""

import logging
import os
import socket
import threading
import weakref

from celery import Celery, signals

from . import batch as batches
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
        payload = jobs.start(job, batch, config.lease_seconds())
        if payload is None:
            return {"settled already": True}
        return batches.ingest(job, payload["database"], payload["items"], payload["attempt"],
                              jobs, send, batch=batch)
    except redis.exceptions.RedisError as error:
        # The batch stays in the job's ledger: a reaper sends it again once its lease runs out.
        log.warning("job %s: batch %s left for later: Redis failed (%s)", job, batch, error)
        return {"left for later": str(error)}


# The requests this worker's main process has received and not yet settled (acknowledged or
# handed back): what its heartbeat renews. Celery drops a request once it is done with it.
_received = weakref.WeakSet()


@signals.task_received.connect
def _track(request=None, **kwargs):
    if request is not None and getattr(request, "name", None) == config.TASK_NAME:
        _received.add(request)


def held_batches():
    """``{job: [batch]}`` of the requests this worker holds."""
    held = {}
    for request in list(_received):
        args = getattr(request, "args", None) or ()
        if not request.acknowledged and len(args) == 2:
            held.setdefault(str(args[0]), []).append(str(args[1]))
    return held


class Heartbeat(threading.Thread):
    """Every third of the lease: renew the leases of the batches this worker holds, and say
    that it is alive. Both stop with the process, which is the point."""

    def __init__(self, name):
        super().__init__(name="image-match-heartbeat", daemon=True)
        self.worker_name = name
        self.stopping = threading.Event()

    def run(self):
        import redis

        interval = config.reap_interval()
        jobs = Jobs(redis_client(patience=interval))
        while True:
            try:
                jobs.announce_worker(self.worker_name, 3 * interval)
                held = held_batches()
                if held:
                    jobs.renew(held, config.lease_seconds())
            except (redis.exceptions.RedisError, OSError) as error:
                log.warning("heartbeat: %s", error)
            except Exception:  # keep beating whatever one round met
                log.exception("heartbeat")
            if self.stopping.wait(interval):
                return


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


_threads = []


@signals.worker_ready.connect
def _start_threads(sender=None, **kwargs):
    if not _threads:
        name = getattr(sender, "hostname", None) or f"{socket.gethostname()}:{os.getpid()}"
        _threads.extend([Heartbeat(name), Reaper(getattr(sender, "app", None) or app)])
        for thread in _threads:
            thread.start()


@signals.worker_shutting_down.connect
def _stop_threads(**kwargs):
    for thread in _threads:
        thread.stopping.set()
