"""The request guard: API key, body size and body deadline, the request's pixel
budget (`model.sample.pixel_budget`: all the images one request decodes), per-route
metrics.

Runs before any route: a request that fails here never reaches the service.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Request

from model.sample import pixel_budget

from .auth import ADMIN, KeyRing
from .errors import error
from .metrics import Metrics
from .settings import Settings

OPEN_PATHS = {"/health", "/ready"}  # probes carry no secrets
UI_PATHS = ("/", "/ui")  # the playground's static files (server/routes/ui.py): no data, no secret
KNOWN_ROUTES = {"/health", "/ready", "/metrics", "/embed", "/retrieve", "/generate", "/documents",
                "/v1/models", "/v1/embeddings", "/v1/chat/completions", "/openapi.json", "/docs",
                "/documents/upload", "/index/stats", "/", "/ui"}


def route_name(request: Request) -> str:
    """A bounded label set for metrics (ids never become labels)."""
    path = request.url.path
    if path.startswith("/documents/"):
        return "/documents/{id}/images" if "/images/" in path else "/documents/{id}"
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return path if path in KNOWN_ROUTES else "other"


def install_guard(app: FastAPI, settings: Settings, metrics: Metrics, keys: KeyRing) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        route = route_name(request)
        t0 = time.perf_counter()

        def refuse(status: int, *args, **kw):
            metrics.observe(route, status, time.perf_counter() - t0)
            return error(status, *args, **kw)

        open_metrics = path == "/metrics" and settings.metrics_public
        needs_key = keys.enabled and path not in OPEN_PATHS and not open_metrics and not (
            request.method in ("GET", "HEAD") and (path in UI_PATHS or path.startswith("/ui/")))
        request.state.principal = ADMIN  # no keys configured: everything is open
        if needs_key:
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            principal = keys.authenticate(token) if token else None
            if principal is None:
                return refuse(401, "unauthorized", "missing or wrong API key (Authorization: Bearer …)")
            request.state.principal = principal
            if path == "/metrics" and not principal.admin:
                return refuse(403, "forbidden", "/metrics needs the admin key (SUGAR_API_KEY) or "
                              "SUGAR_METRICS_PUBLIC")
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > settings.max_body_bytes
            except ValueError:
                return refuse(400, "bad_request", "invalid Content-Length", "Content-Length")
            if too_big:
                return refuse(413, "body_too_large", f"request body of {length} bytes exceeds the limit of "
                              f"{settings.max_body_bytes}", "body")
        if request.method in ("POST", "PUT", "PATCH"):
            # the whole body within a deadline: a client that declares 100 bytes and sends
            # 10 gets a 408 instead of holding its connection (and a worker) forever
            try:
                body = await asyncio.wait_for(request.body(), settings.body_timeout_s)
            except asyncio.TimeoutError:
                return refuse(408, "request_timeout",
                              f"request body not received within {settings.body_timeout_s:g} s", "body")
            if len(body) > settings.max_body_bytes:  # chunked bodies have no Content-Length
                return refuse(413, "body_too_large", f"request body exceeds {settings.max_body_bytes} bytes",
                              "body")
        with pixel_budget(settings.max_request_pixels):  # the route's threads inherit it
            response = await call_next(request)
        metrics.observe(route, response.status_code, time.perf_counter() - t0)
        return response
