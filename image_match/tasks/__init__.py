"""Bulk ingestion with Celery and Redis: fetch, sign and store images from a queue of URLs.

::

    image-match worker --concurrency 4          # on each machine (or: celery -A image_match.tasks worker)
    image-match ingest urls.txt --wait          # a job: batches of URLs on the queue, a progress bar
    image-match job <id> [--json]               # its counts and failures, kept in Redis

- ``config``: the settings (``IMAGE_MATCH_BROKER_URL``, ``IMAGE_MATCH_DATABASE``, ...) and the
  Celery configuration built from them.
- ``worker``: the Celery app (``app``) and the task ``image_match.ingest_batch``.
- ``batch``: what the task does with a batch, without Celery.
- ``jobs``: a job's counts and failures in Redis (redis-py only).
- ``submit``: a file of URLs or JSON lines into a job's batches.
- ``cli``: the ``ingest``, ``worker`` and ``job`` commands (importable without Celery).

Nothing here imports Celery until ``image_match.tasks.app`` is asked for.
"""


def __getattr__(name):
    # `celery -A image_match.tasks` looks up `app` here; importing the package stays cheap.
    if name == "app":
        from .worker import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
