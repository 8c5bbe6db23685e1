"""Rerank and score with the alignment kernel: /v1/rerank (/rerank, /v2/rerank), /score."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

from fastapi import APIRouter

from model.sample import Sample
from model.search import DEFAULT_COLLECTION

from .. import protocol as P
from ..deps import Caller, Cfg, Svc
from ..errors import COMMON, responses
from ..service import BadRequest, SugarService
from ..serving.openai import content_sample_raw

router = APIRouter(tags=["rerank"])
DOC = """Scores each document against the query with the checkpoint's alignment kernel over
slice vectors (the second stage of `/retrieve`): `relevance_score` = exp(s̄), s̄ the
length-normalised log global alignment kernel, in (0, 1]. Documents are strings, Sugar samples,
chat-style content (`{"content": [parts with image_url]}`), or `{"id": ...}` of a stored document
(its stored vectors, nothing embedded again). `explain: true` adds which query slice aligned with
which document slice and how strongly."""


async def _sample(service: SugarService, item: Any, where: str) -> Sample | str:
    """A wire document or query as a sample to embed, or the id of a stored one."""
    if isinstance(item, P.StoredRef):
        return item.id
    if isinstance(item, str | P.TextDocument):
        text = item if isinstance(item, str) else item.text
        raw: dict[str, Any] = {"slices": [{"type": "text", "text": text}]}
    elif isinstance(item, P.ContentDocument):
        raw = content_sample_raw(item.content)
    else:
        raw = item.raw()
    return await asyncio.to_thread(service.parse, raw, where)


def _document_out(item: Any, sample: Sample | str) -> P.RerankedDocument:
    if isinstance(sample, str):
        return P.RerankedDocument(id=sample)
    text = "\n".join(s.text for s in sample.slices if s.type == "text")  # type: ignore[misc]
    plain = isinstance(item, str | P.TextDocument)
    return P.RerankedDocument(text=text if plain else (text or None),
                              slices=None if plain else [{"type": s.type} for s in sample.slices])


def _explanation(raw: dict[str, Any] | None) -> P.Explanation | None:
    return None if raw is None else P.Explanation(**raw)


def _check_count(service: SugarService, n: int, field: str) -> None:
    """At most max_samples_per_request samples in one list (the schema's maxItems)."""
    limit = service.settings.max_samples_per_request
    if n > limit:
        raise BadRequest(field, f"{n} {'queries' if field in ('queries', 'text_1') else 'documents'} exceed "
                         f"the limit of {limit}")


async def _tokens(service: SugarService, samples: list[Sample]) -> int:
    return await asyncio.to_thread(service.count_text_tokens, samples) if samples else 0


@router.post("/v1/rerank", response_model=P.RerankResponse, response_model_exclude_none=True, description=DOC,
             responses=responses(*COMMON, 403, 404, 422, 429))
@router.post("/rerank", response_model=P.RerankResponse, response_model_exclude_none=True, description=DOC,
             include_in_schema=False)
@router.post("/v2/rerank", response_model=P.RerankResponse, response_model_exclude_none=True, description=DOC,
             include_in_schema=False)
async def rerank(req: P.RerankRequest, service: Svc, settings: Cfg, caller: Caller) -> P.RerankResponse:
    items = req.items()
    field = "documents" if req.documents is not None else "texts"
    _check_count(service, len(items), field)
    if any(isinstance(d, P.StoredRef) for d in items):
        caller.require(req.collection or DEFAULT_COLLECTION, "r")
    query = await _sample(service, req.query, "query")
    assert isinstance(query, Sample)
    docs = [await _sample(service, d, f"{field}[{k}]") for k, d in enumerate(items)]
    scored = await service.score([query], docs, req.collection, pairwise=False, explain=req.explain, field=field)
    order = sorted(range(len(docs)), key=lambda k: -scored[k][0])[: req.top_n or len(docs)]
    results = [P.RerankResult(index=k, relevance_score=math.exp(scored[k][0]),
                              document=_document_out(items[k], docs[k]) if req.return_documents else None,
                              explanation=_explanation(scored[k][1]))
               for k in order]
    tokens = await _tokens(service, [query, *(d for d in docs if isinstance(d, Sample))])
    return P.RerankResponse(id=f"rerank-{uuid.uuid4().hex}", model=settings.served_model_name,
                            results=results, usage=P.RerankUsage(total_tokens=tokens))


@router.post("/score", response_model=P.ScoreResponse, responses=responses(*COMMON, 403, 404, 422, 429),
             description="vLLM's /score: relevance = exp(s̄) of each query and document (see /v1/rerank).")
async def score(req: P.ScoreRequest, service: Svc, settings: Cfg, caller: Caller) -> P.ScoreResponse:
    first, second = req.sides()
    names = ("text_1", "text_2") if req.text_1 is not None else ("queries", "documents")
    if len(first) > 1 and len(first) != len(second):
        raise BadRequest(names[0], f"{len(first)} queries and {len(second)} documents: one query, or as many "
                         "queries as documents (pairwise)")
    _check_count(service, len(first), names[0])
    _check_count(service, len(second), names[1])
    if any(isinstance(d, P.StoredRef) for d in second):
        caller.require(req.collection or DEFAULT_COLLECTION, "r")
    queries = [await _sample(service, q, f"{names[0]}[{k}]") for k, q in enumerate(first)]
    docs = [await _sample(service, d, f"{names[1]}[{k}]") for k, d in enumerate(second)]
    scored = await service.score([q for q in queries if isinstance(q, Sample)], docs, req.collection,
                                 pairwise=len(first) > 1, field=names[1])
    tokens = await _tokens(service, [s for s in [*queries, *docs] if isinstance(s, Sample)])
    return P.ScoreResponse(id=f"score-{uuid.uuid4().hex}", model=settings.served_model_name,
                           data=[P.ScoreData(index=k, score=math.exp(sc)) for k, (sc, _) in enumerate(scored)],
                           usage=P.RerankUsage(total_tokens=tokens))
