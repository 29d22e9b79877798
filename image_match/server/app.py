"""The FastAPI application: the routes of each face mounted over one ``Service``, every error
rendered as its face speaks (dsys/match's envelope at the root, ``application/problem+json``
under ``/v1`` and for the operations routes), and the middleware around it all.

``create_app()`` reads the settings when it is called; ``image-match serve`` calls it in each
worker process (``uvicorn image_match.server.app:create_app --factory`` does the same).
"""

import contextlib
import logging
import sys

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from .. import __version__, settings
from ..errors import ImageMatchError
from . import dsys, metrics, moderation, ops, v1
from .auth import Denied, Keys
from .middleware import BodyTooLarge, Guard, Observe
from .problems import problem, validation_message
from .service import Service, http_status

log = logging.getLogger("image_match.server")

DESCRIPTION = """Find the stored copies of a picture.

Two APIs over one store: dsys/match's form-encoded API at the root (`/add`, `/search`,
`/compare`, `/delete`, `/count`, `/list`, `/ping`), unchanged for its clients, and the JSON API
under `/v1`. Errors under `/v1` are `application/problem+json` (RFC 9457) whose `detail` is one
line naming the input and the reason.

Keys (`IMAGE_MATCH_API_KEYS`): `Authorization: Bearer KEY` or `X-API-Key: KEY`; a `KEY:read`
key may search, compare, get and list, others may also add and delete.
"""


def create_app(database=None, config=None):
    """The service's application.

    Parameters
    ----------
    database : str, optional
        The store's URL; default ``IMAGE_MATCH_DATABASE`` (as the CLI).
    config : image_match.settings.Settings, optional
        Default: ``settings.current()``.
    """
    config = config or settings.current()
    database = database or config.database
    keys = Keys.parse(config.api_keys)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service = Service(database, config)
        await service.start()
        app.state.service = service
        try:
            yield
        finally:
            await service.close()
            metrics.process_ended()

    app = FastAPI(title="image-match", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # no page from a CDN
    app.state.keys = keys
    app.include_router(ops.router)
    app.include_router(v1.router)
    app.include_router(dsys.router)
    moderation.mount(app)  # the moderation page: /, /review, /static, its /v1 helpers
    _add_components(app, v1.COMPONENTS)

    @app.exception_handler(ImageMatchError)
    async def image_match_error(request, error):
        status, headers = http_status(error)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, error)
        return render(request.url.path, status, str(error), headers)

    @app.exception_handler(Denied)
    async def denied(request, error):
        return render(request.url.path, error.status, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error):
        return render(request.url.path, 400, validation_message(error.errors()), generic=True)

    @app.exception_handler(HTTPException)
    async def http_error(request, error):
        headers = dict(error.headers or {})
        if error.status_code == 405:  # every method of the path, not the first route's
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return render(request.url.path, error.status_code, str(error.detail), headers,
                      generic=True)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request, error):
        return render(request.url.path, 413, str(error), {"Connection": "close"})

    @app.exception_handler(Exception)
    async def unexpected(request, error):
        request_id = request.scope.get("state", {}).get("request_id", "")
        log.exception("%s %s failed (request %s)", request.method, request.url.path, request_id)
        return render(request.url.path, 500, f"internal error ({type(error).__name__}); the "
                      f"service's log has the details under request id {request_id}")

    _log_to_stderr()
    # Outermost first: Observe sees every answer, Guard's refusals included.
    guarded = Guard(app, render, config.max_upload_bytes, config.request_timeout,
                    loopback_only=not keys and not config.no_auth)
    return _Application(app, Observe(guarded))


class _Application:
    """The FastAPI app behind the middleware, keeping the app's attributes (``state``,
    ``openapi()``) reachable."""

    def __init__(self, app, stack):
        self.app = app
        self.stack = stack

    async def __call__(self, scope, receive, send):
        await self.stack(scope, receive, send)

    def __getattr__(self, name):
        return getattr(self.app, name)


def render(path, status, message, headers=None, generic=False):
    """The error response of ``path``'s face: dsys/match's envelope at the root, a problem
    document (RFC 9457) under ``/v1`` and for the operations routes. ``generic``: a malformed
    request, an unknown path or method, which dsys/match answered in its own words."""
    if dsys.owns(path):
        return dsys.failure(status, message, headers, generic)
    return problem(status, message, path, headers)


def allowed_methods(app, scope):
    """The methods the routes of a request's path take."""
    from starlette.routing import Match

    methods = set()
    for route in app.router.routes:
        if getattr(route, "methods", None) and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)


def _add_components(app, schemas):
    """The OpenAPI document FastAPI generates, with the schemas the routes' hand-written bodies
    and answers reference, and a malformed request documented as it is answered: 400 (FastAPI
    documents its own 422, which this service gives an unreadable image instead)."""
    generate = app.openapi

    def openapi():
        if app.openapi_schema is None:
            document = generate()
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update(schemas)
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            for path, operations in document["paths"].items():
                for operation in operations.values():
                    responses = operation["responses"]
                    if responses.get("422", {}).get("description") == "Validation Error":
                        del responses["422"]
                        responses.setdefault("400", dsys.BAD_REQUEST if dsys.owns(path)
                                             else v1.BAD_REQUEST)
        return app.openapi_schema

    app.openapi = openapi


def _log_to_stderr():
    """Access and service log lines to stderr, unless the host application set up logging."""
    for name in ("image_match.access", "image_match.server"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
