"""The web playground: static files from the package at /ui (`/` redirects there).

The page holds no data and no secret: it calls the same API routes as any
client, with the key the user types (kept in sessionStorage), so serving its
files needs no key. Every UI response carries a Content-Security-Policy that
allows scripts, styles, images and requests from this origin only (no
inline script), and the page renders document text as text, never as HTML.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from ..service import NotFound

router = APIRouter(include_in_schema=False)
UI_DIR = Path(__file__).resolve().parents[1] / "ui"
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "style.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
async def ui_page() -> Response:
    return _file("index.html")


@router.get("/ui/{name}")
async def ui_file(name: str) -> Response:
    return _file(name)


def _file(name: str) -> Response:
    if name not in FILES:
        raise NotFound(f"no UI file {name!r}")
    return Response((UI_DIR / name).read_bytes(), media_type=FILES[name], headers=HEADERS)
