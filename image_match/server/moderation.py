"""The moderation page (issue 14): ``/`` checks an image against the store, ``/review`` walks
the store's groups of duplicates; both are HTML from ``assets/templates`` (a page's body in the
layout every page shares) with a little hand-written JavaScript and CSS from ``assets/static``
(no CDN, no build step: it works offline).

The page itself is public (it holds no data); everything it shows comes from the JSON API with
the key the moderator enters (a key field appears when the service has keys): ``/v1/search``,
``/v1/images``, ``/v1/duplicates``, and the routes below, which only the page needs:

- ``GET /v1/pictures/{id}`` and ``GET /v1/pictures?url=``: a stored record's picture, or a
  query URL's, as a small JPEG made by the service (``pictures``: local files only under
  ``IMAGE_MATCH_MEDIA_ROOTS``, URLs only through ``fetching``), its original's size in headers;
- ``POST /v1/duplicates/not-duplicates`` (``{"ids"}``: remember these are not duplicates) and
  ``GET`` (every pair remembered);
- ``POST /v1/duplicates/distances`` (``{"kept", "ids"}``: distances to the copy kept).

The pages and the pictures are left out of the OpenAPI document, which describes the API for
programs; the decisions are in it (a program may keep them too).

Every HTML answer carries a Content-Security-Policy allowing nothing but this origin (and the
``blob:`` URLs of the pictures the page fetched), so no page of the service loads anything from
elsewhere, nor can be framed.
"""

import html
from importlib import resources
from string import Template
from typing import Annotated, Dict, List

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, field_validator

from .. import __version__
from ..signature_database_base import MAX_NOT_DUPLICATES
from . import access
from .pictures import NotShown, Pictures, Thumbnail
from .problems import problem
from .v1 import COMPONENTS, URL, _Request, _responses, read_body

router = APIRouter()

ASSETS = resources.files("image_match.server") / "assets"
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' blob:; connect-src 'self'; form-action 'self'; "
                           "base-uri 'none'; frame-ancestors 'none'")
_PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                 "Cache-Control": "no-cache"}


def mount(app):
    """Add the page's routes and its static files to the service's application."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(ASSETS / "static")), name="static")


#: The pages: their title and script; the body is ``templates/<name>.html``, in the layout.
PAGES = {"check": ("Check an image", "check.js"),
         "review": ("Review duplicates", "review.js")}


def _read(name):
    return (ASSETS / "templates" / f"{name}.html").read_text(encoding="utf-8")


def _page(request, name):
    service = access.service(request)
    title, script = PAGES[name]
    values = {"title": title, "script": script, "version": __version__,
              "keys": "required" if request.app.state.keys else "none",
              "cutoff": f"{service.parameters.distance_cutoff:g}"}
    values = {key: html.escape(str(value), quote=True) for key, value in values.items()}
    for other in PAGES:
        values[f"{other}_current"] = ' aria-current="page"' if other == name else ""
    body = Template(_read("layout")).substitute(values, main=_read(name))
    return HTMLResponse(body, headers=_PAGE_HEADERS)


@router.get("/", include_in_schema=False)
async def check_page(request: Request):
    return _page(request, "check")


@router.get("/review", include_in_schema=False)
async def review_page(request: Request):
    return _page(request, "review")


# --- pictures --------------------------------------------------------------------------------------

def pictures(request: Request):
    state = request.app.state
    if getattr(state, "pictures", None) is None or state.pictures.service is not state.service:
        state.pictures = Pictures(state.service, state.service.config.media_roots)
    return state.pictures


def _picture(thumbnail: Thumbnail):
    return Response(thumbnail.jpeg, media_type="image/jpeg", headers={
        "X-Image-Width": str(thumbnail.width), "X-Image-Height": str(thumbnail.height),
        "X-Image-Bytes": str(thumbnail.bytes), "Cache-Control": "private, max-age=300",
        "X-Content-Type-Options": "nosniff"})


@router.get("/v1/pictures/{id}", dependencies=[access.read], include_in_schema=False)
async def record_picture(request: Request, id: str = Path(max_length=512),
                         shown=Depends(pictures)):
    """A stored record's picture, small."""
    try:
        return _picture(await shown.of_record(id))
    except NotShown as refused:
        return problem(403, str(refused), request.url.path)


@router.get("/v1/pictures", dependencies=[access.read], include_in_schema=False)
async def url_picture(request: Request, url: str = Query(pattern=URL, max_length=8192),
                      shown=Depends(pictures)):
    """The picture at a URL (a query the page searched by URL), small, fetched by the service."""
    return _picture(await shown.of_path(url))


# --- decisions on groups (in the OpenAPI document: programs may keep them too) ---------------------

RecordId = Annotated[str, Field(min_length=1, max_length=512)]


class NotDuplicatesRequest(_Request):
    ids: List[RecordId] = Field(
        min_length=2, max_length=MAX_NOT_DUPLICATES, json_schema_extra={"uniqueItems": True},
        description="Records that are not duplicates of each other: every pair of them is "
                    "remembered.")

    @field_validator("ids")
    @classmethod
    def different(cls, ids):
        if len(set(ids)) != len(ids):
            raise ValueError("the ids must differ")
        return ids


class NotDuplicatesMarked(BaseModel):
    pairs: int = Field(description="Pairs remembered.")


class Pair(BaseModel):
    ids: List[str] = Field(description="The two ids, in order.")
    timestamp: str = Field(description="When it was decided (ISO 8601).")


class NotDuplicatesPairs(BaseModel):
    pairs: List[Pair]


class DistancesRequest(_Request):
    kept: RecordId = Field(description="The copy kept.")
    ids: List[RecordId] = Field(max_length=1000, description="The others.")
    all_orientations: bool = Field(True, description="Flipped and turned copies count as "
                                   "/v1/duplicates?all_orientations=true counts them.")


class Distances(BaseModel):
    kept: str
    distances: Dict[str, float] = Field(description="Each id that exists: its distance to the "
                                        "one kept (0 for itself).")


def _json_body(model):
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    COMPONENTS.update(schema.pop("$defs", {}))
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


@router.post("/v1/duplicates/not-duplicates", status_code=201, dependencies=[access.write],
             tags=["v1"],
             openapi_extra=_json_body(NotDuplicatesRequest),
             responses=_responses({201: ("remembered", NotDuplicatesMarked)},
                                  400, 401, 403, 415, 503))
async def mark_not_duplicates(request: Request, service=Depends(access.service)):
    """Remember that these records are not duplicates of each other (a moderator's decision):
    /v1/duplicates, the store's find_duplicates and the CLI's dedupe never group any two of
    them again; export and import carry it."""
    fields, _ = await read_body(request, NotDuplicatesRequest)
    marked = await service.mark_not_duplicates(fields.ids)
    return JSONResponse({"pairs": marked}, 201)


@router.get("/v1/duplicates/not-duplicates", dependencies=[access.read], tags=["v1"],
            responses=_responses({200: ("every pair remembered, oldest first",
                                        NotDuplicatesPairs)}, 401, 503))
async def not_duplicates(service=Depends(access.service)):
    """Every pair of records marked "not duplicates"."""
    return JSONResponse({"pairs": await service.not_duplicates()})


@router.post("/v1/duplicates/distances", dependencies=[access.read], tags=["v1"],
             openapi_extra=_json_body(DistancesRequest),
             responses=_responses({200: ("the distances", Distances)}, 400, 401, 404, 415, 503))
async def distances(request: Request, service=Depends(access.service)):
    """The distance of each record to the one kept, as /v1/duplicates measures it (a moderator
    choosing which copy of a group to keep); ids that do not exist are left out."""
    fields, _ = await read_body(request, DistancesRequest)
    found = await service.distances(fields.kept, fields.ids, fields.all_orientations)
    return JSONResponse({"kept": fields.kept, "distances": found})
