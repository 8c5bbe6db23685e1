"""Dependencies: the heavy state lives in `app.state` (built once in the lifespan);
routes reach it through these `Annotated` aliases, tests swap them with
`dependency_overrides`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .auth import Principal
from .metrics import Metrics
from .service import SugarService
from .settings import Settings


def get_service(request: Request) -> SugarService:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_principal(request: Request) -> Principal:
    """Who the request acts as (server/auth.py; set by the guard from its API key)."""
    return request.state.principal


Svc = Annotated[SugarService, Depends(get_service)]
Caller = Annotated[Principal, Depends(get_principal)]
Cfg = Annotated[Settings, Depends(get_settings)]
Mtr = Annotated[Metrics, Depends(get_metrics)]
