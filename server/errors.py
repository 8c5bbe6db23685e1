"""One error shape for every status, the framework's own included:
`{"error": {"type", "message", "field"?}}`; and the OpenAPI declarations of those errors."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from index import IndexRefused, StoreUnavailable
from model.sample import SampleError

from . import protocol as P
from .auth import Forbidden
from .batching import Overloaded
from .engine import EngineError
from .service import BadRequest, Conflict, NotFound, UploadRefused


def error(status: int, kind: str, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": kind, "message": message}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return JSONResponse({"error": body}, status_code=status)


_DESCRIPTIONS = {
    400: "malformed request (e.g. an invalid Content-Length)",
    401: "missing or wrong API key",
    403: "the API key may not do this on this collection (the message names it)",
    404: "no such document, image, model, collection or route",
    405: "method not allowed (see the Allow header)",
    408: "the request body did not arrive in time",
    409: "the document id exists (or: the default collection cannot be deleted)",
    413: "request body too large",
    422: "invalid request: schema, limits, bad images, refused URLs or paths, unreadable files",
    429: "queue full: retry after the Retry-After header",
    503: "generation engine unavailable or timed out",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error statuses, all with the ErrorBody schema."""
    return {c: {"model": P.ErrorBody, "description": _DESCRIPTIONS[c]} for c in codes}


# what the middleware can answer on any route
COMMON = (400, 401, 408, 413)


_UNION_TAGS = {"text", "image", "image_url"}  # discriminator values pydantic puts in a location


def field_path(loc: tuple) -> str:
    """("body", "samples", 0, "slices", 0, "text", "text") -> "samples[0].slices[0].text",
    the same notation as the sample parser's errors; union tags and validator names dropped."""
    out = ""
    parts = [x for x in loc if x != "body"]
    for i, x in enumerate(parts):
        if isinstance(x, int):
            out += f"[{x}]"
            continue
        x = str(x)
        after_index = i > 0 and isinstance(parts[i - 1], int)
        if (after_index and x in _UNION_TAGS and i + 1 < len(parts)) or "[" in x or x in ("str", "int"):
            continue
        out += f".{x}" if out else x
    return out or "body"


async def validation(_: Request, exc: RequestValidationError):
    errs = []
    for e in exc.errors():
        msg = e["msg"] if e["type"] != "extra_forbidden" else "unknown field"
        errs.append({"field": field_path(e["loc"]), "message": msg.removeprefix("Value error, ")})
    # a union (e.g. content: text | parts) reports every branch: lead with the error
    # that says what is wrong, not "Input should be a valid string" of another branch
    specific = [e for e in errs if not e["message"].startswith("Input should be")]
    first = (specific or errs or [{"field": "body", "message": "invalid request"}])[0]
    return error(422, "invalid_request", f"{first['field']}: {first['message']}", first["field"], errors=errs)


async def http_error(request: Request, exc: StarletteHTTPException):
    """FastAPI's own errors (unknown route, wrong method, unparseable body) in our shape."""
    kinds = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
    r = error(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail))
    for k, v in (exc.headers or {}).items():
        r.headers[k] = v
    if exc.status_code == 405 and (allowed := allowed_methods(request)):
        r.headers["Allow"] = allowed
    return r


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path, from the app's OpenAPI paths (GET implies
    HEAD): Starlette's 405 names only the methods of the first route whose path matched (GET,
    PUT and DELETE /documents/{id} are three routes)."""
    table = getattr(request.app.state, "allowed_methods", None)
    if table is None:
        table = [(re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$"),
                  {m.upper() for m in ops} | ({"HEAD"} if "get" in ops else set()))
                 for path, ops in request.app.openapi().get("paths", {}).items()]
        request.app.state.allowed_methods = table
    methods = set().union(*(ms for regex, ms in table if regex.match(request.url.path)))
    return ", ".join(sorted(methods))


async def sample_error(_: Request, exc: SampleError):
    return error(422, "invalid_sample", exc.message, exc.field)


async def bad_request(_: Request, exc: BadRequest):
    return error(422, "limit_exceeded", exc.message, exc.field)


async def upload_refused(_: Request, exc: UploadRefused):
    return error(422, "invalid_files", str(exc), "files", files=exc.files)


async def index_error(_: Request, exc: IndexRefused):
    return error(422, "index_refused", str(exc))


async def forbidden(_: Request, exc: Forbidden):
    return error(403, "forbidden", str(exc), "collection" if exc.collection is not None else None)


async def not_found(_: Request, exc: NotFound):
    return error(404, "not_found", exc.args[0])


async def conflict(_: Request, exc: Conflict):
    return error(409, "conflict", exc.args[0], exc.field)


async def overloaded(_: Request, exc: Overloaded):
    r = error(429, "overloaded", str(exc))
    r.headers["Retry-After"] = str(exc.retry_after)
    return r


async def engine_error(_: Request, exc: EngineError):
    return error(503, "engine_unavailable", str(exc))


async def store_unavailable(_: Request, exc: StoreUnavailable):
    return error(503, "index_unavailable", str(exc))


async def store_failed(request: Request, exc: sqlite3.DatabaseError):
    """The store failed under a request: a 503 naming why (its files changed under the
    process, or SQLite's own error), never a 500."""
    try:
        request.app.state.service.index.check_available()
    except StoreUnavailable as e:
        return error(503, "index_unavailable", str(e))
    return error(503, "index_unavailable", f"the index store failed ({exc})")


HANDLERS = {
    RequestValidationError: validation,
    StarletteHTTPException: http_error,
    SampleError: sample_error,
    BadRequest: bad_request,
    UploadRefused: upload_refused,
    IndexRefused: index_error,
    NotFound: not_found,
    Forbidden: forbidden,
    Conflict: conflict,
    Overloaded: overloaded,
    EngineError: engine_error,
    StoreUnavailable: store_unavailable,
    sqlite3.DatabaseError: store_failed,
}


async def database_failed(_: Request, exc: Exception):
    """A shared index's PostgreSQL went away under a request: 503, and the next request
    reconnects by itself (index/pg.py)."""
    return error(503, "index_unavailable", f"the index database is unavailable ({type(exc).__name__})")


def install_error_handlers(app: FastAPI) -> None:
    """Every error a request can meet answered in one shape (`error`), with its status."""
    for exc, handler in HANDLERS.items():
        app.add_exception_handler(exc, handler)  # type: ignore[arg-type]
    try:
        import psycopg
    except ImportError:  # no shared index without it
        return
    app.add_exception_handler(psycopg.OperationalError, database_failed)
