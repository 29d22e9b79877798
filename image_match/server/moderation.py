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

They are left out of the OpenAPI document, which describes the API for programs.

Every HTML answer carries a Content-Security-Policy allowing nothing but this origin (and the
``blob:`` URLs of the pictures the page fetched), so no page of the service loads anything from
elsewhere, nor can be framed.
"""

import html
from importlib import resources
from string import Template
from typing import Annotated, List

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import Field

from .. import __version__
from . import access
from .pictures import NotShown, Pictures, Thumbnail
from .problems import problem
from .v1 import URL, _Request, read_body

router = APIRouter(include_in_schema=False)

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


@router.get("/")
async def check_page(request: Request):
    return _page(request, "check")


@router.get("/review")
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


@router.get("/v1/pictures/{id}", dependencies=[access.read])
async def record_picture(request: Request, id: str = Path(max_length=512),
                         shown=Depends(pictures)):
    """A stored record's picture, small."""
    try:
        return _picture(await shown.of_record(id))
    except NotShown as refused:
        return problem(403, str(refused), request.url.path)


@router.get("/v1/pictures", dependencies=[access.read])
async def url_picture(request: Request, url: str = Query(pattern=URL, max_length=8192),
                      shown=Depends(pictures)):
    """The picture at a URL (a query the page searched by URL), small, fetched by the service."""
    return _picture(await shown.of_path(url))


# --- decisions on groups -----------------------------------------------------------------------------

class NotDuplicatesRequest(_Request):
    ids: List[str] = Field(min_length=2, description="Records that are not duplicates of each "
                           "other (every pair of them is remembered).")


class DistancesRequest(_Request):
    kept: str = Field(min_length=1, max_length=512)
    ids: List[Annotated[str, Field(min_length=1, max_length=512)]] = Field(max_length=1000)
    all_orientations: bool = True


@router.post("/v1/duplicates/not-duplicates", dependencies=[access.write])
async def mark_not_duplicates(request: Request, service=Depends(access.service)):
    fields, _ = await read_body(request, NotDuplicatesRequest)
    marked = await service.mark_not_duplicates(fields.ids)
    return JSONResponse({"pairs": marked}, 201)


@router.get("/v1/duplicates/not-duplicates", dependencies=[access.read])
async def not_duplicates(service=Depends(access.service)):
    return JSONResponse({"pairs": await service.not_duplicates()})


@router.post("/v1/duplicates/distances", dependencies=[access.read])
async def distances(request: Request, service=Depends(access.service)):
    fields, _ = await read_body(request, DistancesRequest)
    found = await service.distances(fields.kept, fields.ids, fields.all_orientations)
    return JSONResponse({"kept": fields.kept, "distances": found})
