"""OpenAI-compatible routes: /v1/models, /v1/embeddings, /v1/chat/completions.

They accept (and log) fields they do not use, as vLLM does; a feature that is
not offered (n > 1) is a 422, never a silent change.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from fastapi import APIRouter

from model.search import DEFAULT_COLLECTION

from .. import protocol as P
from ..deps import Caller, Cfg, Mtr, Svc
from ..errors import COMMON, responses
from ..service import BadRequest, NotFound, SugarService
from ..serving.common import citation, encode_vector
from ..serving.openai import chat_completion, chat_inputs, chat_stream, embedding_inputs
from ..serving.sse import sse
from ..settings import Settings
from .native import SSE

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"])


def log_ignored(route: str, req) -> None:
    extra = sorted((req.model_extra or {}).keys())
    if extra:
        logger.info("%s: ignoring fields %s", route, extra)


def model_card(model_id: str, service: SugarService) -> P.ModelCard:
    return P.ModelCard(id=model_id, max_model_len=service.engine.max_context(),
                       embedding_version=service.model.embedding_version)


def model_ids(settings: Settings, service: SugarService, caller) -> list[str]:  # noqa: ANN001 - a Principal
    """The served model, and `NAME@collection` for each other collection the key may read: a
    chat names it to retrieve from that collection (the default one: the model's own name)."""
    name = settings.served_model_name
    return [name, *(f"{name}@{c}" for c in service.collections.names()
                    if c != DEFAULT_COLLECTION and caller.may(c, "r"))]


def collection_of(model_id: str | None, settings: Settings) -> str | None:
    """The collection a chat's model id names (`NAME@collection`), None for the plain name."""
    prefix = settings.served_model_name + "@"
    return model_id[len(prefix):] if model_id and model_id.startswith(prefix) else None


@router.get("/models", response_model=P.ModelList, responses=responses(401))
async def models(service: Svc, settings: Cfg, caller: Caller) -> P.ModelList:
    ids = await asyncio.to_thread(model_ids, settings, service, caller)
    return P.ModelList(data=[model_card(i, service) for i in ids])


@router.get("/models/{model_id}", response_model=P.ModelCard, responses=responses(401, 404))
async def model(model_id: str, service: Svc, settings: Cfg, caller: Caller) -> P.ModelCard:
    if model_id not in await asyncio.to_thread(model_ids, settings, service, caller):
        raise NotFound(f"model {model_id!r} is not served here (served: {settings.served_model_name!r})")
    return model_card(model_id, service)


@router.post("/embeddings", response_model=P.EmbeddingsResponse, responses=responses(*COMMON, 422, 429))
async def embeddings(req: P.EmbeddingsRequest, service: Svc, settings: Cfg) -> P.EmbeddingsResponse:
    log_ignored("/v1/embeddings", req)
    dim = service.index.dim
    if req.dimensions is not None and req.dimensions != dim:
        raise BadRequest("dimensions", f"{req.dimensions} dimensions asked, the checkpoint gives {dim}: it is not "
                         "trained for truncated (Matryoshka) vectors, and a cut vector would rank wrongly")
    raws, where = embedding_inputs(req)
    if len(raws) > settings.max_samples_per_request:
        raise BadRequest("input", f"{len(raws)} inputs exceed the limit of {settings.max_samples_per_request}")
    samples = [await asyncio.to_thread(service.parse, r, w) for r, w in zip(raws, where, strict=True)]
    embs = await service.embed(samples)
    n_tok = await asyncio.to_thread(service.count_text_tokens, samples)
    data = [P.EmbeddingData(index=i, embedding=encode_vector(e.summary, req.encoding_format))
            for i, e in enumerate(embs)]
    return P.EmbeddingsResponse(data=data, model=settings.served_model_name,
                                usage=P.EmbeddingsUsage(prompt_tokens=n_tok, total_tokens=n_tok))


@router.post("/chat/completions", response_model=P.ChatCompletion,
             responses={**SSE, **responses(*COMMON, 403, 404, 422, 429, 503)})
async def chat(req: P.ChatCompletionRequest, service: Svc, settings: Cfg, metrics: Mtr, caller: Caller):
    log_ignored("/v1/chat/completions", req)
    retrieval = req.retrieval or P.RetrievalOptions()
    named = collection_of(req.model, settings)
    if named is not None and retrieval.collection is None:  # "sugar@alpha": retrieve from alpha
        retrieval = retrieval.model_copy(update={"collection": named})
    if retrieval.enabled:
        caller.require(retrieval.collection or DEFAULT_COLLECTION, "r")
    history, query = await chat_inputs(service, req)
    max_tokens = service.max_tokens(req.max_completion_tokens or req.max_tokens)
    plan = await service.plan(history, query, max_tokens, retrieval)
    temperature = 0.0 if req.temperature is None else req.temperature
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    retrieved_docs = [citation(h) for h in plan.used]
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return sse(service, lambda: chat_stream(service, plan, max_tokens, temperature, cid, created,
                                                retrieved_docs, include_usage, metrics))
    t1 = time.perf_counter()
    res = await service.generate(plan, max_tokens, temperature)
    metrics.tokens(res.completion_tokens, time.perf_counter() - t1)
    return chat_completion(cid, created, settings.served_model_name, res, retrieved_docs)
