"""The JSON API under ``/v1``.

A request that carries an image is ``multipart/form-data`` (the file, and the other fields as
text) or ``application/json`` with a ``url`` (fetched through ``image_match.fetching``); both are
checked against one model, strictly for JSON. Unknown fields are refused, so that a misspelt
option fails instead of being ignored. Errors are problem documents (RFC 9457) whose ``detail``
is the one-line reason the CLI prints; ``service.http_status`` says which status.
"""

import json
import re
from typing import Annotated, Any, Dict, List, Literal, Optional, Union
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from ..cli_common import json_scalar
from ..errors import InvalidParameterError
from ..signature_database_base import MAX_PAGE
from . import access
from .problems import problem_document, validation_message
from .service import Image, UnsupportedMediaType, http_status

router = APIRouter(prefix="/v1", tags=["v1"])

#: Images in one batch search; more are refused (several requests do the same work).
MAX_BATCH = 64
#: Text fields a form may have.
MAX_FIELDS = 100
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")
#: Schemas the OpenAPI document references under components (``app.create_app`` adds them).
COMPONENTS = {}

# Written with explicit ranges: Python's, pydantic's and JSON Schema's \S disagree on characters
# such as U+0085.
_URL = r"[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f]+"
#: What an image's URL must look like (it is fetched by ``image_match.fetching`` only).
URL = f"^{_URL}$"
#: A job as text: one URL a line.
URL_LINES = f"^{_URL}(\r?\n{_URL})*(\r?\n)?$"
#: The CLI's --filter: KEY=VALUE, VALUE read as JSON when it is a number, true/false or quoted.
ASSIGNMENT = r"^[^=]+="
Scalar = Union[str, int, float, bool]
#: An integer; JSON's 2.0 is one too (JSON Schema's integers are numbers without a fraction).
Integer = Annotated[int, BeforeValidator(
    lambda value: int(value) if isinstance(value, float) and value.is_integer() else value)]
Filter = Union[
    Annotated[Dict[Annotated[str, Field(min_length=1)],
                   Union[Scalar, Annotated[List[Scalar], Field(min_length=1)]]],
              Field(min_length=1)],
    List[Annotated[str, Field(pattern=ASSIGNMENT)]]]


# --- requests ------------------------------------------------------------------------------------

class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchOptions(_Request):
    top: Integer = Field(10, ge=1, le=1000, description="At most this many matches per image.")
    cutoff: Optional[float] = Field(None, ge=0, le=1, description="Matches are closer than "
                                    "this (default: the store's: 0.40 in a store image-match 2 "
                                    "made).")
    all_orientations: bool = Field(False, description="Also find flipped and rotated copies.")
    frames: bool = Field(False, description="Also find copies with bars or a border added.")
    small_rotations: bool = Field(False, description="Also find copies turned by up to about 15 "
                                  "degrees.")
    insets: bool = Field(False, description="Also find copies pasted into a larger picture.")
    corner_crops: bool = Field(False, description="In a store with crop windows: also find "
                               "copies cropped at a corner.")
    robust: bool = Field(False, description="All of frames, small_rotations, insets and (with "
                         "crop windows) corner_crops.")
    filter: Optional[Filter] = Field(None, description='Only records whose metadata has these '
                                     'values: {"key": value or [values]}, or the CLI\'s '
                                     '"KEY=VALUE" strings (the same KEY twice: either value).')

    def options(self):
        return {name: getattr(self, name) for name in
                ("all_orientations", "frames", "small_rotations", "insets", "corner_crops",
                 "robust")}

    def pre_filter(self):
        if isinstance(self.filter, list):
            chosen = {}
            for text in self.filter:
                key, _, value = text.partition("=")
                chosen.setdefault(key, []).append(json_scalar(value))
            return {key: values[0] if len(values) == 1 else values
                    for key, values in chosen.items()} or None
        return self.filter


class SearchRequest(SearchOptions):
    url: Optional[str] = Field(None, pattern=URL, description="The image's http(s) URL (or "
                               "upload `image`).")


class BatchRequest(SearchOptions):
    urls: List[Annotated[str, Field(pattern=URL)]] = Field(
        [], max_length=MAX_BATCH, description="The images' http(s) URLs (or upload them as "
        "`image`, repeated).")


class AddRequest(_Request):
    url: Optional[str] = Field(None, pattern=URL, description="The image's http(s) URL (or "
                               "upload `image`).")
    path: Optional[str] = Field(None, min_length=1, description="The name the record keeps "
                                "(default: the URL, or for an upload a hash of its bytes).")
    id: Optional[str] = Field(None, min_length=1, max_length=512, description="The record's id "
                              "(default: the store's: a hash of the path).")
    metadata: Optional[Dict[str, Any]] = Field(None, description="Any JSON object, kept with the "
                                               "record; searches filter on it.")
    replace: bool = Field(True, description="False: refuse (409) when a record has this id.")
    refresh: bool = Field(False, description="Make the record searchable before answering.")


class CompareRequest(_Request):
    url1: Optional[str] = Field(None, pattern=URL, description="The first image's URL (or upload "
                                "`image1`).")
    url2: Optional[str] = Field(None, pattern=URL, description="The second image's URL (or "
                                "upload `image2`).")
    cutoff: Optional[float] = Field(None, ge=0, le=1, description="The verdict's cutoff "
                                    "(default: the store's).")
    all_orientations: bool = Field(False, description="The nearest of the first image's 8 "
                                   "flips and rotations.")


class JobItem(_Request):
    url: str = Field(pattern=URL, description="An http(s) URL.")
    id: Optional[str] = Field(None, min_length=1, max_length=512)
    metadata: Optional[Dict[str, Any]] = None


class JobRequest(_Request):
    urls: List[Annotated[str, Field(pattern=URL)]] = Field(
        [], description="http(s) URLs of images to add.")
    items: List[JobItem] = Field([], description="Images with their id and metadata.")


# --- answers (for the schema; the routes write the JSON themselves) ------------------------------

class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: Optional[str] = None


class Match(BaseModel):
    id: str
    path: str
    dist: float = Field(description="normalized distance to the query: 0 the same picture; "
                                    "below the cutoff a copy")
    score: Optional[float] = Field(description="the store's score of the candidate (its index "
                                               "terms shared with the query, rare ones weighing "
                                               "more); "
                                               "not dsys/match's (1 - dist) * 100")
    metadata: Optional[Dict[str, Any]]


class SearchResult(BaseModel):
    matches: List[Match]


class BatchItem(BaseModel):
    matches: Optional[List[Match]] = None
    error: Optional[Problem] = None


class BatchResult(BaseModel):
    results: List[BatchItem]


class Added(BaseModel):
    id: str
    path: str
    status: Literal["added", "replaced"]


class StoredImage(BaseModel):
    id: str
    path: str
    metadata: Optional[Dict[str, Any]]
    timestamp: Optional[str]
    signature: Optional[List[int]] = None
    windows: Optional[List[List[int]]] = None


class ImagePage(BaseModel):
    items: List[StoredImage]
    next: Optional[str]


class Comparison(BaseModel):
    distance: float
    cutoff: float
    match: bool


class Member(BaseModel):
    id: str
    path: str
    dist: float
    metadata: Optional[Dict[str, Any]]


class Duplicates(BaseModel):
    status: Literal["ready", "computing"]
    groups: Optional[List[List[Member]]] = None
    next: Optional[str] = None
    records: Optional[int] = None
    total: Optional[int] = Field(None, description="Groups in all.")
    started: Optional[float] = None
    computed: Optional[float] = None


class JobCreated(BaseModel):
    job: str
    items: int


class JobStatus(BaseModel):
    job: str
    state: str
    total: Optional[int]
    submitted: int
    done: int
    failed: int
    remaining: int
    created: float
    finished: Optional[float]
    database: str
    source: str
    elapsed: float
    images_per_second: float
    failures: List[Dict[str, Any]]


class Stats(BaseModel):
    store: Dict[str, Any]
    parameters: Dict[str, Any]
    service: Dict[str, Any]


def _ref(model):
    """A ``$ref`` to ``model``'s schema, which (and its parts) goes into ``COMPONENTS``."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    COMPONENTS.update(schema.pop("$defs", {}))
    COMPONENTS[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


_PROBLEM = {"application/problem+json": {"schema": _ref(Problem)}}
#: A malformed request, documented where FastAPI documents its validation error.
BAD_REQUEST = {"description": "the request is malformed (the detail names the field)",
               "content": _PROBLEM}
_REASONS = {400: "the request is malformed (the detail names the field)",
            401: "no API key, or not one of the service's", 403: "the key may not write",
            404: "no such record or job", 409: "a record has this id (replace=false), the "
            "cursor's groups were computed again, or the store was not made for an option "
            "(corner_crops without crop windows)", 413: "the body is larger than "
            "IMAGE_MATCH_MAX_UPLOAD_BYTES", 415: "not multipart/form-data or JSON, or the upload "
            "is not an image format", 422: "the image cannot be read, or its URL gives none",
            501: "jobs need Celery (image-match's [celery] extra)",
            502: "the URL's host failed (timeout, HTTP 5xx)",
            503: "busy (the signing queue is full), or the engine or broker is down: see "
            "Retry-After"}


def _responses(success, *errors):
    """The ``responses`` of a route: ``success`` is ``{status: (description, model or None)}``."""
    described = {}
    for status, (text, model) in success.items():
        described[status] = {"description": text}
        if model is not None:
            described[status]["content"] = {"application/json": {"schema": _ref(model)}}
    for status in errors:
        described[status] = {"description": _REASONS[status], "content": _PROBLEM}
    return described


def _body(model, files=(), form_fields=None, json_required=()):
    """``openapi_extra`` for a body that is JSON (``model``, ``json_required`` fields given and
    not null: the images' URLs) or a form (``model``'s other fields as text, ``form_fields``
    where they differ, and ``files``, the uploads, all required)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    COMPONENTS.update(schema.pop("$defs", {}))
    json_schema = dict(schema, properties=dict(schema["properties"]))
    for name in json_required:
        field = json_schema["properties"][name]
        json_schema["properties"][name] = next(
            (option for option in field.get("anyOf", [field]) if option.get("type") != "null"),
            field)
    if json_required:
        json_schema["required"] = list(json_required)
    properties = {name: field for name, field in schema["properties"].items()
                  if name not in json_required}
    properties.update(form_fields or {})
    properties.update((name, {"type": "string", "format": "binary"}) for name in files
                      if name not in (form_fields or {}))
    form = {"type": "object", "additionalProperties": False, "properties": properties,
            "required": list(files)}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": json_schema}, "multipart/form-data": {"schema": form}}}}


def _batch_body():
    """A batch's body: JSON with ``urls``, or a form with the uploads ``image`` (repeated)."""
    body = _body(BatchRequest, ("image",), {
        **_FILTER_FORM, "image": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH,
                                  "items": {"type": "string", "format": "binary"}}}, ["urls"])
    body["requestBody"]["content"]["application/json"]["schema"]["properties"]["urls"][
        "minItems"] = 1
    return body


_FILTER_FORM = {"filter": {"type": "array", "items": {"type": "string", "pattern": ASSIGNMENT},
                           "description": "KEY=VALUE, repeatable"}}
_METADATA_FORM = {"metadata": {"type": "string", "description": "A JSON object, as text."}}
_IMAGE_ERRORS = (400, 401, 403, 413, 415, 422, 502, 503)


# --- reading a request ---------------------------------------------------------------------------

async def read_body(request, model, files=(), repeated=(), json_text=(), json_only=()):
    """``(model instance, {file field: [Image]})`` from a JSON or form body.

    In a form, ``repeated`` fields may come several times (a list), ``json_text`` fields hold
    JSON, ``files`` are the upload fields and ``json_only`` fields are refused (a form uploads
    its images, JSON gives their URLs); the other fields' text is read as the model's
    type (``true``/``false`` for a boolean, digits for an integer). Both are then checked
    strictly against the model: what the schema calls a boolean is a boolean."""
    media_type = _media_type(request)
    if media_type == "application/json":
        try:
            data = json.loads(await request.body(), parse_constant=_no_constant)
        except ValueError as error:
            raise InvalidParameterError(f"the body is not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise InvalidParameterError("the body must be a JSON object")
        return _validated(model, data, strict=True), {}
    if media_type not in _FORMS:
        raise UnsupportedMediaType(f"Content-Type {media_type or '(none)'}: send "
                                   "multipart/form-data or application/json")
    form = await request.form(max_files=MAX_BATCH, max_fields=MAX_FIELDS)
    data, uploads = {}, {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in files:
                raise InvalidParameterError(f"{name}: not a file field here "
                                            f"({', '.join(files) or 'none'})")
            uploads.setdefault(name, []).append(Image.upload(name, value.filename,
                                                             await value.read()))
        elif name in files:
            raise InvalidParameterError(f"{name}: must be a file upload")
        elif name in json_only:
            raise InvalidParameterError(f"{name}: goes in a JSON body (a form uploads the image)")
        elif name in repeated:
            data.setdefault(name, []).append(value)
        elif name in data:
            raise InvalidParameterError(f"{name}: given more than once")
        elif name in json_text:
            try:
                data[name] = json.loads(value, parse_constant=_no_constant)
            except ValueError as error:
                raise InvalidParameterError(f"{name}: not valid JSON ({error})") from None
        else:
            data[name] = _from_text(value, _json_types(model, name))
    return _validated(model, data, strict=True), uploads


def _json_types(model, name):
    """The JSON types a model's field may have (``{"integer", "null"}``...)."""
    field = model.model_json_schema()["properties"].get(name, {})
    return {option.get("type") for option in field.get("anyOf", [field])}


def _from_text(value, types):
    """A form field's text as the JSON value it stands for, when it is one of ``types``; else
    the text, which validation then refuses (or takes, for a string)."""
    if "boolean" in types and value in ("true", "false"):
        return value == "true"
    if "null" in types and value == "null":
        return None
    if "integer" in types and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    if "number" in types and re.fullmatch(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?", value):
        return float(value)
    return value


def _media_type(request):
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _validated(model, data, strict):
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as error:
        raise InvalidParameterError(validation_message(error.errors())) from None


def _one_image(url, uploads, url_field, file_field):
    """The image of a request: its upload (a form), or its URL (JSON)."""
    if url is not None:
        return Image.from_url(url)
    files = uploads.get(file_field, [])
    if len(files) != 1:
        raise InvalidParameterError(
            f"{file_field}: one file, not {len(files)}" if files else
            f"give an image: upload {file_field} (multipart/form-data), or JSON {{\"{url_field}\"}}")
    return files[0]


def _record(record, signature):
    if not signature:
        record.pop("signature", None)
        record.pop("windows", None)
    return record


# --- routes --------------------------------------------------------------------------------------

@router.post("/images", dependencies=[access.write],
             responses=_responses({201: ("stored; Location names it", Added)}, *_IMAGE_ERRORS, 409),
             openapi_extra=_body(AddRequest, ("image",), _METADATA_FORM, ["url"]))
async def add_image(request: Request, service=Depends(access.service)):
    """Sign an image and store it: an upload (`image`, multipart) or JSON with its `url`;
    `path`, `id`, `metadata` optional. Status `replaced` when a record had this id."""
    fields, uploads = await read_body(request, AddRequest, files=("image",),
                                      json_text=("metadata",), json_only=("url",))
    image = _one_image(fields.url, uploads, "url", "image")
    record_id, path, status = await service.add(image, path=fields.path, record_id=fields.id,
                                                metadata=fields.metadata, replace=fields.replace,
                                                refresh=fields.refresh)
    return JSONResponse({"id": record_id, "path": path, "status": status}, 201,
                        headers={"Location": f"/v1/images/{quote(record_id, safe='')}"})


@router.get("/images/{id}", dependencies=[access.read],
            responses=_responses({200: ("the record", StoredImage)}, 400, 401, 404, 503))
async def get_image(id: str = Path(max_length=512),
                    signature: bool = Query(False, description="Include the signature."),
                    service=Depends(access.service)):
    """One record: `id`, `path`, `metadata`, `timestamp` (and `signature`)."""
    return JSONResponse(_record(await service.get(id), signature))


@router.delete("/images/{id}", status_code=204, dependencies=[access.write],
               responses=_responses({204: ("deleted", None)}, 400, 401, 403, 404, 503))
async def delete_image(id: str = Path(max_length=512), service=Depends(access.service)):
    """Delete one record."""
    await service.delete(id)
    return Response(status_code=204)


@router.get("/images", dependencies=[access.read],
            responses=_responses({200: ("a page of records, and the next page's cursor",
                                        ImagePage)}, 400, 401, 503))
async def list_images(limit: int = Query(100, ge=1, le=MAX_PAGE),
                      cursor: str = Query(None, min_length=1, max_length=1024,
                                          description="`next` of the previous page."),
                      signature: bool = Query(False, description="Include the signatures."),
                      service=Depends(access.service)):
    """The records page by page, in the store's own order; `next` is null on the last page."""
    records, following = await service.page(cursor, limit)
    return JSONResponse({"items": [_record(r, signature) for r in records], "next": following})


@router.post("/search", dependencies=[access.read],
             responses=_responses({200: ("the matches, nearest first", SearchResult)},
                                  *_IMAGE_ERRORS, 409),
             openapi_extra=_body(SearchRequest, ("image",), _FILTER_FORM, ["url"]))
async def search(request: Request, service=Depends(access.service)):
    """The stored copies of an image (an upload `image`, multipart, or JSON with its `url`),
    nearest first."""
    fields, uploads = await read_body(request, SearchRequest, files=("image",),
                                      repeated=("filter",), json_only=("url",))
    image = _one_image(fields.url, uploads, "url", "image")
    matches = await service.search(image, fields.top, fields.cutoff, fields.pre_filter(),
                                   **fields.options())
    return JSONResponse({"matches": matches})


@router.post("/search/batch", dependencies=[access.read],
             responses=_responses({200: ("per image, in order, its matches or its error",
                                         BatchResult)}, 400, 401, 403, 409, 413, 415, 503),
             openapi_extra=_batch_body())
async def search_batch(request: Request, service=Depends(access.service)):
    """Several images in one request (uploads `image`, repeated, or JSON `urls`), signed in
    parallel and searched in one store round trip; an image that cannot be read gets its error
    and the others their matches."""
    fields, uploads = await read_body(request, BatchRequest, files=("image",),
                                      repeated=("filter",), json_only=("urls",))
    images = uploads.get("image", []) + [Image.from_url(url) for url in fields.urls]
    if not images:
        raise InvalidParameterError("give images: upload image (repeatable), or urls")
    if len(images) > MAX_BATCH:
        raise InvalidParameterError(f"{len(images)} images: at most {MAX_BATCH} a request")
    outcomes = await service.search_many(images, fields.top, fields.cutoff, fields.pre_filter(),
                                         **fields.options())
    return JSONResponse({"results": [
        {"matches": outcome.matches} if outcome.error is None
        else {"error": problem_document(http_status(outcome.error)[0], str(outcome.error),
                                        request.url.path)} for outcome in outcomes]})


@router.post("/compare", dependencies=[access.read],
             responses=_responses({200: ("the distance and the verdict", Comparison)},
                                  *_IMAGE_ERRORS),
             openapi_extra=_body(CompareRequest, ("image1", "image2"), None, ["url1", "url2"]))
async def compare(request: Request, service=Depends(access.service)):
    """The distance between two images (uploads `image1`, `image2`, multipart, or JSON with
    `url1`, `url2`) as the store signs them, and whether it is below the cutoff."""
    fields, uploads = await read_body(request, CompareRequest, files=("image1", "image2"),
                                      json_only=("url1", "url2"))
    first = _one_image(fields.url1, uploads, "url1", "image1")
    second = _one_image(fields.url2, uploads, "url2", "image2")
    distance, cutoff = await service.compare(first, second, fields.all_orientations)
    cutoff = cutoff if fields.cutoff is None else fields.cutoff
    return JSONResponse({"distance": distance, "cutoff": cutoff, "match": distance < cutoff})


@router.get("/duplicates", dependencies=[access.read],
            responses=_responses({200: ("a page of groups", Duplicates),
                                  202: ("still computing: ask again after Retry-After", Duplicates)},
                                 400, 401, 409, 503))
async def duplicates(limit: int = Query(20, ge=1, le=1000),
                     cursor: str = Query(None, min_length=1, max_length=64),
                     cutoff: float = Query(None, ge=0, le=1),
                     all_orientations: bool = Query(False),
                     refresh: bool = Query(False, description="Compute the groups again."),
                     service=Depends(access.service)):
    """The store's groups of near-duplicates, largest first, each member with its distance to
    the first. Computed in the background over the whole store (a first call on a large store
    answers 202 until they are ready), and kept until the store changes."""
    groups, following, info = await service.duplicates(cursor, limit, cutoff, all_orientations,
                                                       refresh)
    if groups is None:
        return JSONResponse({"status": "computing", "records": info["records"],
                             "started": info["started"]}, 202, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "groups": groups, "next": following, **info})


@router.post("/jobs", dependencies=[access.write],
             responses=_responses({202: ("submitted; follow it at Location", JobCreated)},
                                  400, 401, 403, 413, 415, 501, 503),
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"allOf": [_ref(JobRequest)], "anyOf": [
                     {"required": ["urls"], "properties": {"urls": {"minItems": 1}}},
                     {"required": ["items"], "properties": {"items": {"minItems": 1}}}]}},
                 "text/plain": {"schema": {"type": "string", "pattern": URL_LINES}}}}})
async def submit_job(request: Request, service=Depends(access.service)):
    """Bulk ingestion on the Celery workers: `{"urls": [...]}` or `{"items": [{"url", "id",
    "metadata"}]}`, or text with one URL a line. Only http(s) URLs: a worker never reads its own
    files for a request."""
    media_type = _media_type(request)
    if media_type == "text/plain":
        text = (await request.body()).decode("utf-8", "replace")
        if not re.fullmatch(URL_LINES, text):
            raise InvalidParameterError("the body must be http(s) URLs, one a line")
        lines = [line for line in re.split(r"\r?\n", text) if line]
    elif media_type == "application/json":
        fields, _ = await read_body(request, JobRequest)
        lines = [json.dumps({"url": url}) for url in fields.urls] + [
            json.dumps(item.model_dump(exclude_none=True)) for item in fields.items]
    else:
        raise UnsupportedMediaType(f"Content-Type {media_type or '(none)'}: send "
                                   "application/json or text/plain")
    if not lines:
        raise InvalidParameterError("no image to add: give urls or items")
    job, items = await service.submit_job(lines)
    return JSONResponse({"job": job, "items": items}, 202,
                        headers={"Location": f"/v1/jobs/{job}"})


@router.get("/jobs/{id}", dependencies=[access.read],
            responses=_responses({200: ("the job's counts and failures", JobStatus)},
                                 401, 404, 501, 503))
async def job(id: str = Path(max_length=64), service=Depends(access.service)):
    """A job's counts (done, failed, remaining) and its failures with their reasons."""
    return JSONResponse(await service.job(id))


@router.get("/stats", dependencies=[access.read],
            responses=_responses({200: ("the store and the service", Stats)}, 401, 503))
async def stats(service=Depends(access.service)):
    """The store's engine, location, records and size; its parameters; this worker's service."""
    return JSONResponse(await service.stats())

