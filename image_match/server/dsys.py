"""dsys/match's API at the root, as its clients see it: seven form-encoded endpoints (``form`` or
``multipart``), every answer the envelope ``{"status", "error", "method", "result"}`` as JSON.

What differs from dsys/match, on purpose:

- ``/add`` and ``/delete`` act on the records whose path is exactly ``filepath`` (dsys/match
  matched it as words of a full-text query, and removed at most 10 old records); ``/add`` gives
  its record the id of its path, so adding a path again always replaces it.
- ``/list`` pages past 10,000 records (dsys/match failed there: from + size).
- ``url`` is fetched through ``image_match.fetching`` (no private or loopback addresses, timeouts,
  a byte cap; dsys/match read any URL, a local path included); an upload is capped
  (``IMAGE_MATCH_MAX_UPLOAD_BYTES``).
- A failure says what failed: an unreadable image, metadata that is not a JSON object, an engine
  that does not answer (dsys/match: a 500 with the exception's text, or a traceback); a missing
  field is 400 ``["bad request"]``, an unknown path 404 ``["not found"]``, a wrong method 405
  ``["method not allowed"]``, as there.
- Search uses the store's cutoff and candidates; ``score`` is ``(1 - dist) * 100`` as there.
  ``all_orientations`` is true only for the text ``true``; absent, ``IMAGE_MATCH_ALL_ORIENTATIONS``.
- Keys, when the service has them (``auth``): ``/add`` and ``/delete`` need a key that may write,
  the others but ``/ping`` one that may read.
"""

import json

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse

from ..errors import InvalidParameterError
from ..records import default_id
from ..signature_database_base import MAX_PAGE
from . import access
from .service import Image

router = APIRouter(tags=["dsys/match"])

#: The most paths ``/list`` gives at a time.
MAX_LIST = 10 * MAX_PAGE
#: What dsys/match answered for these, word for word.
GENERIC = {400: "bad request", 404: "not found", 405: "method not allowed"}
#: Paths that are not dsys/match's (their errors are problem documents).
_OTHERS = ("/v1/", "/healthz", "/readyz", "/metrics", "/openapi.json")


def owns(path):
    """Whether a path's errors are dsys/match's envelope (every path but ``/v1`` and operations)."""
    return not path.startswith(_OTHERS) and path != "/v1"


def envelope(method, result=()):
    return JSONResponse({"status": "ok", "error": [], "method": method, "result": list(result)})


def failure(status, message, headers=None, generic=False):
    """dsys/match's failed envelope: its own words for a malformed request, an unknown path or
    method (``generic``), else the message."""
    text = GENERIC[status] if generic and status in GENERIC else message
    return JSONResponse({"status": "fail", "error": [text], "method": "", "result": []}, status,
                        headers=headers)


_ENVELOPE = {"application/json": {"schema": {
    "type": "object", "required": ["status", "error", "method", "result"],
    "properties": {"status": {"type": "string", "enum": ["ok", "fail"]},
                   "error": {"type": "array", "items": {"type": "string"}},
                   "method": {"type": "string"}, "result": {"type": "array"}}}}}


#: A malformed request, documented where FastAPI documents its validation error.
BAD_REQUEST = {"description": "a field missing or malformed", "content": _ENVELOPE}


def _responses(*statuses):
    described = {200: "done", 400: "a field missing or malformed", 401: "no API key",
                 403: "the key may not write", 404: "not found", 413: "the body is too large",
                 415: "the upload is not an image format", 422: "the image cannot be read",
                 502: "the URL's host failed", 503: "busy, or the engine is down"}
    return {status: {"description": described[status], "content": _ENVELOPE}
            for status in (200, *statuses)}


_IMAGE_ERRORS = (400, 401, 403, 413, 415, 422, 502, 503)
_TEXT = {"type": "string", "minLength": 1}
_OPTIONAL_TEXT = {"type": "string"}
_FILE = {"type": "string", "format": "binary"}
_GIVEN = {"minLength": 1}


def _form(fields, required=(), alternatives=(), optional=False):
    """``openapi_extra`` for a dsys/match form, ``multipart/form-data`` or urlencoded (which
    cannot carry the files): ``alternatives`` are groups of fields of which one at least is
    given, not empty (a URL or a file; the URL is used when both are; an empty field is an
    absent one, as FastAPI reads forms); ``optional``: the body may be left out."""
    def schema(with_files):
        properties = {name: field for name, field in fields.items()
                      if with_files or field is not _FILE}
        body = {"type": "object", "properties": properties}
        if required:
            body["required"] = list(required)
        groups = [[name for name in group if name in properties] for group in alternatives]
        if groups:
            body["allOf"] = [{"anyOf": [{"required": [name], "properties": {name: _GIVEN}}
                                        for name in group]} for group in groups]
        return body

    return {"requestBody": {"required": not optional, "content": {
        "multipart/form-data": {"schema": schema(True)},
        "application/x-www-form-urlencoded": {"schema": schema(False)}}}}


async def _image(url, upload, url_field, file_field):
    """The image a form gives: its ``url`` field when there is one (as dsys/match), else the
    uploaded file; neither is a bad request."""
    if url is not None:
        return Image.from_url(url)
    if upload is None:
        raise HTTPException(400, f"give {url_field} or {file_field}")  # "bad request", as there
    return Image.upload(file_field, upload.filename, await upload.read())


def _metadata(text):
    if text is None:
        return None
    try:
        metadata = json.loads(text)
    except ValueError as error:
        raise InvalidParameterError(f"metadata: not valid JSON ({error})") from None
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidParameterError("metadata: must be a JSON object")
    return metadata


@router.post("/add", responses=_responses(*_IMAGE_ERRORS), dependencies=[access.write],
             openapi_extra=_form({"filepath": _TEXT, "url": _OPTIONAL_TEXT, "image": _FILE,
                                  "metadata": {"type": "string"}}, ["filepath"],
                                 [("url", "image")]))
async def add(filepath: str = Form(..., min_length=1), url: str = Form(None),
              image: UploadFile = File(None),
              metadata: str = Form(None), service=Depends(access.service)):
    """Sign an image (`url`, or the file `image`) and store it as `filepath`, replacing every
    record of exactly that path; `metadata` is a JSON object as text."""
    picture = await _image(url, image, "url", "image")
    await service.add(picture, path=filepath, record_id=default_id(filepath),
                      metadata=_metadata(metadata), replace_path=True)
    return envelope("add")


@router.delete("/delete", responses=_responses(400, 401, 403, 503), dependencies=[access.write],
               openapi_extra=_form({"filepath": _TEXT}, ["filepath"]))
async def delete(filepath: str = Form(..., min_length=1), service=Depends(access.service)):
    """Delete every record whose path is exactly `filepath` (none is not an error)."""
    await service.delete_path(filepath)
    return envelope("delete")


@router.post("/search", responses=_responses(*_IMAGE_ERRORS), dependencies=[access.read],
             openapi_extra=_form({"url": _OPTIONAL_TEXT, "image": _FILE,
                                  "all_orientations": {"type": "string"}},
                                 alternatives=[("url", "image")]))
async def search(url: str = Form(None), image: UploadFile = File(None),
                 all_orientations: str = Form(None), service=Depends(access.service)):
    """The stored copies of an image (`url`, or the file `image`), best first, as
    `{"score": (1 - dist) * 100, "filepath", "metadata"}`."""
    picture = await _image(url, image, "url", "image")
    oriented = (service.config.all_orientations if all_orientations is None
                else all_orientations == "true")
    matches = await service.search(picture, top=service.parameters.size,
                                   all_orientations=oriented)
    return envelope("search", ({"score": (1 - match["dist"]) * 100, "filepath": match["path"],
                                "metadata": match["metadata"]} for match in matches))


@router.post("/compare", responses=_responses(*_IMAGE_ERRORS), dependencies=[access.read],
              openapi_extra=_form({"url1": _OPTIONAL_TEXT, "image1": _FILE, "url2": _OPTIONAL_TEXT,
                                   "image2": _FILE},
                                  alternatives=[("url1", "image1"), ("url2", "image2")]))
async def compare(url1: str = Form(None), image1: UploadFile = File(None),
                  url2: str = Form(None), image2: UploadFile = File(None),
                  service=Depends(access.service)):
    """How alike two images are: `[{"score": (1 - distance) * 100}]`."""
    first = await _image(url1, image1, "url1", "image1")
    second = await _image(url2, image2, "url2", "image2")
    distance, _ = await service.compare(first, second)
    return envelope("compare", [{"score": (1 - distance) * 100}])


async def _count(service):
    return envelope("count", [await service.count()])


@router.get("/count", responses=_responses(401, 503), dependencies=[access.read])
async def count(service=Depends(access.service)):
    """How many records the store holds: `[n]`."""
    return await _count(service)


@router.post("/count", responses=_responses(401, 503), dependencies=[access.read])
async def count_post(service=Depends(access.service)):
    """As `GET /count`."""
    return await _count(service)


async def _list(service, offset, limit):
    return envelope("list", await service.paths(max(offset, 0), max(limit, 0)))


@router.get("/list", responses=_responses(400, 401, 503), dependencies=[access.read])
async def list_paths(offset: int = Query(0), limit: int = Query(20, le=MAX_LIST),
                     service=Depends(access.service)):
    """The paths of `limit` records from the `offset`-th on (negatives count as 0), in the
    store's own order, as far into the store as it goes."""
    return await _list(service, offset, limit)


@router.post("/list", responses=_responses(400, 401, 503), dependencies=[access.read],
             openapi_extra=_form({"offset": {"type": "integer"},
                                  "limit": {"type": "integer", "maximum": MAX_LIST}},
                                 optional=True))
async def list_paths_post(offset: int = Form(0), limit: int = Form(20, le=MAX_LIST),
                          service=Depends(access.service)):
    """As `GET /list`, with `offset` and `limit` in the form."""
    return await _list(service, offset, limit)


@router.get("/ping", responses=_responses())
async def ping():
    """The service answers."""
    return envelope("ping")


@router.post("/ping", responses=_responses())
async def ping_post():
    """As `GET /ping`."""
    return envelope("ping")
