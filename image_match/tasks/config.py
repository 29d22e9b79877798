"""Bulk ingestion's settings and the Celery configuration built from them, in one place.

The broker, the store and how long a job's results are kept come from ``image_match.settings``
(``IMAGE_MATCH_BROKER_URL``, ``IMAGE_MATCH_DATABASE``, ``IMAGE_MATCH_RESULT_TTL``); the per-host
fetch limit is the fetcher's (``IMAGE_MATCH_FETCH_PER_HOST_CONCURRENCY``). What only ingestion
needs is in ``image_match.settings`` too; what its values mean together:

==================================  ==============================================  =======
variable                            meaning                                         default
==================================  ==============================================  =======
IMAGE_MATCH_INGEST_LEASE            seconds a worker holds a batch (started, or     30
                                    waiting in the worker) without renewing its
                                    lease; a killed worker's batches are sent
                                    again this long after its last renewal
IMAGE_MATCH_VISIBILITY_TIMEOUT      the longest a batch may run: the Redis          600
                                    transport delivers again a message unsettled
                                    for this long
IMAGE_MATCH_INGEST_THREADS          images fetched and signed at a time in one      8
                                    worker process
IMAGE_MATCH_INGEST_MAX_RETRIES      retries of a transient failure (timeout, HTTP   8
                                    5xx or 429, store unavailable) before the item
                                    is recorded as failed
IMAGE_MATCH_INGEST_RETRY_DELAY      seconds before the first retry; doubled at      2
                                    each retry, with jitter, at most a third of
                                    the visibility timeout
==================================  ==============================================  =======

Leases: each worker's main process renews, every third of the lease, the lease of every batch it
holds (running in its pool, or received and waiting there for its turn or its retry time), and
announces itself (``Jobs.workers``). A worker that dies stops renewing: its batches' leases run
out and any worker's reaper sends them again, within the lease and a reaper's interval (40 s at
the defaults), while a live worker's batch, however long, keeps its lease. The lease is at most
the visibility timeout.

Why a third of the visibility timeout: the Redis transport redelivers any message unacknowledged
for the visibility timeout, including one a worker holds while it waits for its retry time, so a
retry's delay plus the batch's own run must stay below it. A batch stops starting new items after
a third of it too (the rest go on in a follow-up batch), so one slow host cannot make its batch
outlive it. A batch delivered twice anyway costs work, never a record: ids are deterministic and
outcomes idempotent.
"""

import os

from .. import settings

QUEUE = "image-match"
TASK_NAME = "image_match.ingest_batch"


def longest_wait():
    """Seconds a batch may spend before its items are handed on, and the longest retry delay."""
    return settings.get("VISIBILITY_TIMEOUT") / 3


def lease_seconds():
    """Seconds a batch stays a worker's without a renewal (``IMAGE_MATCH_INGEST_LEASE``, at most
    the visibility timeout)."""
    return min(settings.get("INGEST_LEASE"), settings.get("VISIBILITY_TIMEOUT"))


def reap_interval():
    """Seconds between two renewals of a worker's leases, and between two looks of its reaper at
    the unfinished jobs: a third of the lease, within 1 to 10 s."""
    return max(1.0, min(10.0, lease_seconds() / 3))


def celery_config():
    """The Celery configuration, from the environment as it is now."""
    visibility_timeout = settings.get("VISIBILITY_TIMEOUT")
    return {
        "broker_url": settings.get("BROKER_URL"),
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            # Look for abandoned messages often enough that they come back soon after the
            # visibility timeout (kombu's default sweep is every 100 s).
            "unacked_restore_interval": reap_interval(),
            "unacked_restore_throttle": 1,
            # A worker killed while restoring messages holds kombu's lock until it expires.
            "unacked_mutex_expire": min(300.0, visibility_timeout),
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a worker waits for its broker, however long
        # Acknowledge a batch only once it is done; a worker process that dies hands it back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # One process more than cores: each waits on its downloads and its store's bulk call, and
        # the spare one keeps the cores busy meanwhile (benchmarks/ingest_throughput.py: into
        # OpenSearch on 2 cores, 170 images/s with 2 processes, 193 with 3, 195 with 4).
        "worker_concurrency": (os.cpu_count() or 1) + 1,
        # A batch cut off from the broker goes on, records its outcomes (those are in Redis and
        # idempotent) and is delivered again later: the second delivery finds nothing left to do.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
    }
