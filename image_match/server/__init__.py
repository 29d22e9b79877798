"""The service: ``image-match serve``, a REST API over a store (FastAPI on uvicorn; the
``[server]`` extra).

::

    image-match serve --db sqlite:///images.db            # http://127.0.0.1:8000
    curl -F image=@photo.jpg http://127.0.0.1:8000/v1/search

One module a job:

- ``run``: ``serve()``, checks, binds and runs uvicorn (``image-match serve`` calls it);
- ``app``: the FastAPI application (``create_app``), its error rendering and middleware stack;
- ``service``: what every route does, over one ``Service`` per worker process (signing in a
  process pool, store calls in threads, URLs through ``fetching``);
- ``dsys``: dsys/match's API at the root, for its clients unchanged;
- ``v1``: the JSON API under ``/v1``;
- ``ops``: ``/healthz``, ``/readyz``, ``/metrics``;
- ``auth`` and ``access``: API keys, and the routes' dependencies that check them;
- ``middleware``: the body cap, request timeout, loopback-only rule, metrics and access log;
- ``metrics``: the Prometheus metrics;
- ``moderation`` and ``pictures``: the moderation page (``/``, ``/review``, templates and scripts
  in ``assets/``) and the thumbnails it shows.

Its settings are ``image_match.settings``' (``IMAGE_MATCH_API_KEYS``,
``IMAGE_MATCH_MAX_UPLOAD_BYTES``, ``IMAGE_MATCH_REQUEST_TIMEOUT``, ``IMAGE_MATCH_SIGNING_*``,
``IMAGE_MATCH_STORE_CONNECTIONS``, ``IMAGE_MATCH_ALL_ORIENTATIONS``) with the store's and the
fetcher's. This package imports FastAPI only when ``serve`` or ``app`` is used.
"""


def serve(*args, **kwargs):
    """Run the service; see ``image_match.server.run.serve``."""
    from .run import serve as run

    return run(*args, **kwargs)
