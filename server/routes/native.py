"""Native inference routes: /embed, /retrieve, /generate."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter

from model.search import DEFAULT_COLLECTION

from .. import protocol as P
from ..deps import Caller, Mtr, Svc
from ..errors import COMMON, responses
from ..streaming import native_stream as _native_stream
from ..streaming import sse
from .wire import parse_samples

router = APIRouter(tags=["native"])
SSE: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {}, "text/event-stream": {}},
             "description": "JSON, or server-sent events with `stream: true`"}}


@router.post("/embed", response_model=P.EmbedResponse, responses=responses(*COMMON, 403, 404, 409, 422, 429))
async def embed(req: P.EmbedRequest, service: Svc, metrics: Mtr, caller: Caller) -> P.EmbedResponse:
    if req.store:  # embedding alone reads no collection; storing writes one
        caller.require(req.collection or DEFAULT_COLLECTION, "rw")
    samples = await parse_samples(service, req.samples, "samples")
    embs = await service.embed(samples)
    stored: list[str] = []
    if req.store:
        stored = await service.store(samples, embs, upsert=req.upsert, collection=req.collection)
        metrics.index_documents.set(service.index.count())
    data = [P.EmbeddingItem(slices=[P.SliceEmbedding(type=s.type, embedding=v.tolist())
                                    for s, v in zip(sample.slices, e.vectors, strict=True)],
                            embedding=e.summary.tolist(), id=(stored[i] if stored else sample.id))
            for i, (sample, e) in enumerate(zip(samples, embs, strict=True))]
    return P.EmbedResponse(data=data, embedding_version=service.model.embedding_version, stored=stored)


@router.post("/retrieve", response_model=P.RetrieveResponse, response_model_exclude_none=True,
             responses=responses(*COMMON, 403, 404, 422, 429))
async def retrieve(req: P.RetrieveRequest, service: Svc, caller: Caller) -> P.RetrieveResponse:
    params = req.to_search_params()
    for name in params.collections:
        caller.require(name, "r")
    query = await asyncio.to_thread(service.parse, req.query.raw(), "query")
    hits = await service.retrieve(query, params)
    return P.RetrieveResponse(results=[P.retrieved(h, req.images, len(params.collections) > 1) for h in hits])


@router.post("/generate", response_model=P.GenerateResponse,
             responses={**SSE, **responses(*COMMON, 403, 404, 422, 429, 503)})
async def generate(req: P.GenerateRequest, service: Svc, metrics: Mtr, caller: Caller):
    if req.retrieval.enabled:
        caller.require(req.retrieval.collection or DEFAULT_COLLECTION, "r")
    query = await asyncio.to_thread(service.parse, req.query.raw(), "query")
    max_tokens = service.max_tokens(req.max_tokens)
    t0 = time.perf_counter()
    plan = await service.plan([], query, max_tokens, req.retrieval)
    if req.stream:
        return sse(service, lambda: _native_stream(service, plan, max_tokens, req.temperature, t0, metrics))
    t1 = time.perf_counter()
    res = await service.generate(plan, max_tokens, req.temperature)
    metrics.tokens(res.completion_tokens, time.perf_counter() - t1)
    return P.generate_response(plan, res, P.timings(plan, t0, t1))
