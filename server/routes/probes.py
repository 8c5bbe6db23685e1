"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .. import protocol as P
from ..deps import Mtr
from ..errors import responses
from ..service import SugarService

router = APIRouter(tags=["probes"])


@router.head("/health", include_in_schema=False)  # load balancers probe with HEAD
@router.get("/health", response_model=P.Health)
async def health() -> P.Health:
    return P.Health(status="ok")


@router.get("/ready", response_model=P.Health, responses={503: {"model": P.Health}})
async def ready(request: Request):
    service: SugarService | None = getattr(request.app.state, "service", None)
    if service is None:
        return JSONResponse({"status": "starting", "checks": {}}, status_code=503)
    checks = await service.ready()
    if checks["error"]:
        return JSONResponse({"status": "unavailable", "checks": checks}, status_code=503)
    return P.Health(status="ready", checks=checks)


@router.get("/metrics", response_class=Response, responses={
    200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}, **responses(401)})
async def prometheus(request: Request, metrics: Mtr):
    service: SugarService | None = getattr(request.app.state, "service", None)
    if service is not None:
        metrics.queue_depth.labels("embed").set(service.batcher.queued)
        metrics.queue_depth.labels("generate").set(service.generations.active)
        metrics.index_documents.set(service.index.count())
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")
