"""The service's Prometheus metrics, and their exposition at ``GET /metrics``.

With several worker processes (``image-match serve --workers N``) each keeps its own values in
files under ``PROMETHEUS_MULTIPROC_DIR``, which ``serve`` sets before the workers start, and a
scrape adds them up (prometheus-client's multiprocess mode); with one worker they live in memory.
"""

import os

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5, 10, 30)

REQUESTS = Counter("image_match_http_requests", "HTTP requests answered, by route, method and "
                   "status", ["route", "method", "status"])
LATENCY = Histogram("image_match_http_request_duration_seconds", "Seconds from a request's arrival "
                    "to the end of its answer, by route and method", ["route", "method"],
                    buckets=_LATENCY_BUCKETS)
SIGNING_SECONDS = Histogram("image_match_signing_seconds", "Seconds an image spent in the signing "
                            "pool, waiting and signed", buckets=_LATENCY_BUCKETS)
STORE_SECONDS = Histogram("image_match_store_seconds", "Seconds of store calls, by operation",
                          ["operation"], buckets=_LATENCY_BUCKETS)
WAITING = Gauge("image_match_signing_waiting", "Images being fetched or signed, or waiting to be",
                multiprocess_mode="livesum")
REFUSED = Counter("image_match_signing_refused", "Requests refused because the signing queue was "
                  "full (IMAGE_MATCH_SIGNING_QUEUE)")
RECORDS = Gauge("image_match_store_records", "Records in the store, as last counted (at each scrape)",
                multiprocess_mode="mostrecent")


def exposition():
    """``(body, content type)`` of the metrics, every worker's together."""
    registry = REGISTRY
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def process_ended():
    """A worker process is ending: its live gauges stop counting (multiprocess mode)."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
