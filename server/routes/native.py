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
from ..service import BadRequest
from ..serving.common import parse_samples
from ..serving.native import generate_response, generate_stream, retrieved, timings
from ..serving.sse import sse

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
    asked = req.all_queries()
    limit = service.settings.max_samples_per_request
    if len(asked) > limit:
        raise BadRequest("queries", f"{len(asked)} queries exceed the limit of {limit}")
    where = "query" if req.query is not None else "queries"
    queries = [q.id if isinstance(q, P.StoredRef) else
               await asyncio.to_thread(service.parse, q.raw(), where if req.query is not None else f"{where}[{i}]")
               for i, q in enumerate(asked)]
    rankings = await service.retrieve_many(queries, params, explain=req.explain)
    multi = len(params.collections) > 1
    out = [[retrieved(h, req.images, multi) for h in hits] for hits in rankings]
    if req.query is not None:
        return P.RetrieveResponse(results=out[0])
    return P.RetrieveResponse(batch=[P.RetrieveResults(results=r) for r in out])


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
        return sse(service, lambda: generate_stream(service, plan, max_tokens, req.temperature, t0, metrics))
    t1 = time.perf_counter()
    res = await service.generate(plan, max_tokens, req.temperature)
    metrics.tokens(res.completion_tokens, time.perf_counter() - t1)
    return generate_response(plan, res, timings(plan, t0, t1))
