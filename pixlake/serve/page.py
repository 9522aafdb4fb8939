"""The search page at ``/``: one HTML file, a script and a style sheet, served from the
package (no build step). The page holds no data; everything it shows comes from the
authenticated API, with the key the user enters."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from pixlake.serve.schemas import ErrorBody

router = APIRouter()

_ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "style.css": "text/css; charset=utf-8"}
# Only our own script and styles run; thumbnails are blob: URLs made from authenticated fetches.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@lru_cache(maxsize=None)
def _asset(name: str) -> bytes:
    return resources.files("pixlake.serve").joinpath("static", name).read_bytes()


def _response(name: str) -> Response:
    return Response(_asset(name), media_type=_ASSETS[name], headers=_HEADERS)


@router.get("/", include_in_schema=False)
async def page() -> Response:
    """The search page."""
    return _response("index.html")


@router.get("/page/{name}", include_in_schema=False, responses={404: {"model": ErrorBody}})
async def asset(name: str) -> Response:
    """The page's script and style sheet."""
    if name not in _ASSETS or name == "index.html":
        return Response(ErrorBody(error="not_found", message=f"no page asset {name!r}").model_dump_json(exclude_none=True),
                        status_code=404, media_type="application/json")
    return _response(name)
