"""Operations: ``/healthz`` (the process answers), ``/readyz`` (the store answers), ``/metrics``
(Prometheus). The probes need no key (orchestrators call them bare); ``/metrics`` needs a key
that may read when the service has keys (it tells the store's size and the traffic)."""

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from . import access, metrics
from .service import READY_TIMEOUT

router = APIRouter(tags=["operations"])

_STATUS = {"application/json": {"schema": {
    "type": "object", "required": ["status"],
    "properties": {"status": {"type": "string"}, "records": {"type": "integer"},
                   "detail": {"type": "string"}}}}}
_PROBLEM = {"application/problem+json": {"schema": {"type": "object"}}}


@router.get("/healthz", responses={200: {"description": "the process answers",
                                         "content": _STATUS}})
async def healthz():
    """The process is up and its event loop answers."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", responses={
    200: {"description": "the store answers", "content": _STATUS},
    503: {"description": "the store does not answer", "content": _STATUS}})
async def readyz(service=Depends(access.service)):
    """The store answers a count within a few seconds: send traffic here."""
    ready, detail = await service.ready()
    if ready:
        return JSONResponse({"status": "ready", "records": detail})
    return JSONResponse({"status": "unavailable", "detail": detail}, 503,
                        headers={"Retry-After": "5"})


@router.get("/metrics", dependencies=[access.read], responses={
    200: {"description": "Prometheus text format", "content": {"text/plain": {}}},
    401: {"description": "no API key", "content": _PROBLEM}})
async def prometheus(service=Depends(access.service)):
    """Requests by route and status, latency, signing and store time, the signing queue, and
    the store's records (counted at each scrape)."""
    try:
        await asyncio.wait_for(service.ready(), READY_TIMEOUT)
    except asyncio.TimeoutError:
        pass
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
