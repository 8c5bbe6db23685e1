"""FastAPI app: native routes (/embed /retrieve /generate /documents), OpenAI-compatible
/v1 routes, probes and metrics.

Heavy state is created once in `lifespan` (or injected by tests) and reached
through `app.state.service`. Every bad input is a 4xx JSON error naming the
field: {"error": {"type", "field", "message"}}.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from index import Hit, IndexError_
from model.sample import Sample, SampleError

from . import protocol as P
from .batching import Overloaded
from .engine import EngineError, GenerationResult, complete_chars
from .metrics import Metrics
from .service import BadRequest, Conflict, NotFound, SugarService
from .settings import Settings

logger = logging.getLogger(__name__)

OPEN_PATHS = {"/health", "/ready"}


def get_service(request: Request) -> SugarService:
    return request.app.state.service


Svc = Annotated[SugarService, Depends(get_service)]


def error(status: int, kind: str, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": kind, "message": message}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return JSONResponse({"error": body}, status_code=status)


def create_app(settings: Settings, service_factory=None, batching: bool = True) -> FastAPI:
    """`service_factory(settings, metrics)` builds the service (default: load checkpoint/index/engine)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        factory = service_factory or load_service
        service = await asyncio.to_thread(factory, settings, metrics, batching)
        app.state.service = service
        await service.start()
        metrics.index_documents.set(service.index.count())
        logger.info("serving %s on %s:%d (engine %s)", settings.checkpoint, settings.host, settings.port,
                    service.engine.name)
        yield
        await service.stop()

    app = FastAPI(title="Sugar", version="0.1.0", lifespan=lifespan,
                  description="Retrieval-augmented multimodal inference: one checkpoint embeds and generates.")
    app.state.settings = settings
    app.state.metrics = metrics

    # ------------------------------------------------------------ middleware
    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        route = _route_name(request)
        t0 = time.perf_counter()
        needs_key = settings.api_key and path not in OPEN_PATHS and not (
            path == "/metrics" and settings.metrics_public)
        if needs_key:
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                metrics.observe(route, 401, time.perf_counter() - t0)
                return error(401, "unauthorized", "missing or wrong API key (Authorization: Bearer …)")
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > settings.max_body_bytes
            except ValueError:
                return error(400, "bad_request", "invalid Content-Length", "Content-Length")
            if too_big:
                metrics.observe(route, 413, time.perf_counter() - t0)
                return error(413, "body_too_large", f"request body of {length} bytes exceeds the limit of "
                             f"{settings.max_body_bytes}", "body")
        if request.method in ("POST", "PUT", "PATCH"):
            # the whole body within a deadline: a client that declares 100 bytes and sends
            # 10 gets a 408 instead of holding its connection (and a worker) forever
            try:
                body = await asyncio.wait_for(request.body(), settings.body_timeout_s)
            except asyncio.TimeoutError:
                metrics.observe(route, 408, time.perf_counter() - t0)
                return error(408, "request_timeout",
                             f"request body not received within {settings.body_timeout_s:g} s", "body")
            if len(body) > settings.max_body_bytes:  # chunked bodies have no Content-Length
                return error(413, "body_too_large", f"request body exceeds {settings.max_body_bytes} bytes", "body")
        response = await call_next(request)
        metrics.observe(route, response.status_code, time.perf_counter() - t0)
        return response

    # ------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError):
        errs = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e["loc"] if x != "body")
            msg = e["msg"] if e["type"] != "extra_forbidden" else "unknown field"
            errs.append({"field": loc, "message": msg})
        first = errs[0] if errs else {"field": "body", "message": "invalid request"}
        return error(422, "invalid_request", f"{first['field']}: {first['message']}", first["field"], errors=errs)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        """FastAPI's own errors (unknown route, wrong method, unparseable body) in our shape."""
        kinds = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        r = error(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail))
        for k, v in (exc.headers or {}).items():
            r.headers[k] = v
        return r

    @app.exception_handler(SampleError)
    async def sample_error(_: Request, exc: SampleError):
        return error(422, "invalid_sample", exc.message, exc.field)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest):
        return error(422, "limit_exceeded", exc.message, exc.field)

    @app.exception_handler(IndexError_)
    async def index_error(_: Request, exc: IndexError_):
        return error(422, "index_refused", str(exc))

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound):
        return error(404, "not_found", exc.args[0])

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict):
        return error(409, "conflict", exc.args[0], "id")

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, exc: Overloaded):
        r = error(429, "overloaded", str(exc))
        r.headers["Retry-After"] = "1"
        return r

    @app.exception_handler(EngineError)
    async def engine_error(_: Request, exc: EngineError):
        return error(503, "engine_unavailable", str(exc))

    # ------------------------------------------------------------ probes
    @app.head("/health", include_in_schema=False)  # load balancers probe with HEAD
    @app.get("/health", response_model=P.Health, tags=["probes"])
    async def health() -> P.Health:
        return P.Health(status="ok")

    @app.get("/ready", response_model=P.Health, tags=["probes"],
             responses={503: {"model": P.Health}})
    async def ready(request: Request):
        service: SugarService | None = getattr(request.app.state, "service", None)
        if service is None:
            return JSONResponse({"status": "starting", "checks": {}}, status_code=503)
        checks = await service.ready()
        if checks["error"]:
            return JSONResponse({"status": "unavailable", "checks": checks}, status_code=503)
        return P.Health(status="ready", checks=checks)

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def prometheus(request: Request):
        service: SugarService | None = getattr(request.app.state, "service", None)
        if service is not None:
            metrics.queue_depth.labels("embed").set(service.batcher.queued)
            metrics.queue_depth.labels("generate").set(service.generations.active)
            metrics.index_documents.set(service.index.count())
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------ native routes
    @app.post("/embed", response_model=P.EmbedResponse, tags=["native"],
              responses={422: {"model": P.ErrorBody}, 429: {"model": P.ErrorBody}})
    async def embed(req: P.EmbedRequest, service: Svc) -> P.EmbedResponse:
        samples = await parse_samples(service, req.samples, "samples")
        embs = await service.embed(samples)
        stored: list[str] = []
        if req.store:
            stored = await service.store(samples, embs, upsert=req.upsert)
            metrics.index_documents.set(service.index.count())
        data = [P.EmbeddingItem(slices=[P.SliceEmbedding(type=s.type, embedding=v.tolist())
                                        for s, v in zip(sample.slices, e.vectors, strict=True)],
                                embedding=e.summary.tolist(), id=(stored[i] if stored else sample.id))
                for i, (sample, e) in enumerate(zip(samples, embs, strict=True))]
        return P.EmbedResponse(data=data, embedding_version=service.model.embedding_version, stored=stored)

    @app.post("/retrieve", response_model=P.RetrieveResponse, tags=["native"], response_model_exclude_none=True,
              responses={422: {"model": P.ErrorBody}, 429: {"model": P.ErrorBody}})
    async def retrieve(req: P.RetrieveRequest, service: Svc) -> P.RetrieveResponse:
        query = await asyncio.to_thread(service.parse, req.query.raw(), "query")
        hits = await service.retrieve(query, req.k, req.k_prime, req.filters,
                                      with_images=req.images == "base64")
        return P.RetrieveResponse(results=[retrieved(h, req.images) for h in hits])

    @app.post("/generate", response_model=P.GenerateResponse, tags=["native"],
              responses={422: {"model": P.ErrorBody}, 429: {"model": P.ErrorBody},
                         503: {"model": P.ErrorBody}})
    async def generate(req: P.GenerateRequest, service: Svc):
        query = await asyncio.to_thread(service.parse, req.query.raw(), "query")
        max_tokens = service.max_tokens(req.max_tokens)
        r = req.retrieval
        t0 = time.perf_counter()
        plan = await service.plan([], query, max_tokens, r.enabled, r.k, r.filters)
        if req.stream:
            return sse(service, lambda: native_stream(service, plan, max_tokens, req.temperature, t0, metrics))
        t1 = time.perf_counter()
        res = await service.generate(plan, max_tokens, req.temperature)
        gen_s = time.perf_counter() - t1
        metrics.tokens(res.completion_tokens, gen_s)
        return P.GenerateResponse(
            text=res.text, documents=[P.DocumentScore(id=h.id, score=h.score) for h in plan.used],
            dropped_documents=[P.DocumentScore(id=h.id, score=h.score) for h in plan.dropped],
            usage=P.Usage(prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens,
                          total_tokens=res.prompt_tokens + res.completion_tokens),
            timings={"retrieval_ms": plan.retrieval_ms, "generation_ms": gen_s * 1e3,
                     "total_ms": (time.perf_counter() - t0) * 1e3},
            finish_reason=res.finish_reason)

    # ------------------------------------------------------------ documents
    @app.post("/documents", response_model=P.DocumentAck, status_code=201, tags=["documents"],
              responses={409: {"model": P.ErrorBody}, 422: {"model": P.ErrorBody}})
    async def create_document(doc: P.SampleIn, service: Svc) -> P.DocumentAck:
        if not doc.id:
            raise BadRequest("id", "a document needs an id (POST /embed with store=true generates one)")
        sample = await asyncio.to_thread(service.parse, doc.raw(), "document")
        [e] = await service.embed([sample])
        await service.store([sample], [e], upsert=False)
        return P.DocumentAck(id=doc.id, status="created")

    @app.put("/documents/{doc_id}", response_model=P.DocumentAck, tags=["documents"],
             responses={422: {"model": P.ErrorBody}})
    async def put_document(doc_id: Annotated[str, Path(pattern=P.ID_PATTERN)], doc: P.SampleIn,
                           service: Svc) -> P.DocumentAck:
        if doc.id is not None and doc.id != doc_id:
            raise BadRequest("id", f"body id {doc.id!r} differs from the path id {doc_id!r}")
        raw = {**doc.raw(), "id": doc_id}
        sample = await asyncio.to_thread(service.parse, raw, "document")
        [e] = await service.embed([sample])
        await service.store([sample], [e], upsert=True)
        return P.DocumentAck(id=doc_id, status="updated")

    @app.get("/documents", response_model=P.DocumentList, tags=["documents"])
    async def list_documents(service: Svc, offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                             limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> P.DocumentList:
        ids = await asyncio.to_thread(service.index.list_ids, offset, limit)
        return P.DocumentList(ids=ids, offset=offset, limit=limit, total=service.index.count())

    @app.get("/documents/{doc_id}", response_model=P.DocumentOut, tags=["documents"],
             response_model_exclude_none=True,
             responses={404: {"model": P.ErrorBody}})
    async def get_document(doc_id: str, service: Svc,
                           images: Annotated[str, Query(pattern="^(url|base64)$")] = "url") -> P.DocumentOut:
        d = await service.get_document(doc_id)
        return P.DocumentOut(id=d.id, metadata=d.metadata, slices=slices_out(d, images),
                             embedding_version=d.embedding_version)

    @app.get("/documents/{doc_id}/images/{position}", tags=["documents"], response_class=Response,
             responses={404: {"model": P.ErrorBody}})
    async def get_image(doc_id: str, position: int, service: Svc):
        d = await service.get_document(doc_id)
        if not 0 <= position < len(d.slices) or d.slices[position]["type"] != "image":
            raise NotFound(f"document {doc_id!r} has no image at position {position}")
        return Response(d.images[d.slices[position]["hash"]], media_type="image/png")

    @app.delete("/documents/{doc_id}", response_model=P.DocumentAck, tags=["documents"],
                responses={404: {"model": P.ErrorBody}})
    async def delete_document(doc_id: str, service: Svc) -> P.DocumentAck:
        await service.delete_document(doc_id)
        return P.DocumentAck(id=doc_id, status="deleted")

    # ------------------------------------------------------------ OpenAI-compatible
    def model_card(service: SugarService) -> dict:
        return {"id": settings.served_model_name, "object": "model", "created": 0, "owned_by": "sugar",
                "max_model_len": service.engine.max_context(),
                "embedding_version": service.model.embedding_version}

    @app.get("/v1/models", tags=["openai"])
    async def models(service: Svc) -> dict:
        return {"object": "list", "data": [model_card(service)]}

    @app.get("/v1/models/{model_id}", tags=["openai"], responses={404: {"model": P.ErrorBody}})
    async def model(model_id: str, service: Svc) -> dict:
        if model_id != settings.served_model_name:
            raise NotFound(f"model {model_id!r} is not served here (served: {settings.served_model_name!r})")
        return model_card(service)

    @app.post("/v1/embeddings", tags=["openai"])
    async def embeddings(req: P.EmbeddingsRequest, service: Svc) -> dict:
        log_ignored("/v1/embeddings", req)
        items = [req.input] if isinstance(req.input, str) else list(req.input)
        if not items:
            raise BadRequest("input", "no input")
        if len(items) > settings.max_samples_per_request:
            raise BadRequest("input", f"{len(items)} inputs exceed the limit of {settings.max_samples_per_request}")
        raws = [{"slices": [{"type": "text", "text": x}]} if isinstance(x, str) else x.raw() for x in items]
        samples = [await asyncio.to_thread(service.parse, r, f"input[{i}]") for i, r in enumerate(raws)]
        embs = await service.embed(samples)
        n_tok = sum(len(service.model.backbone.tokenizer(s.text())["input_ids"]) for s in samples)
        data = [{"object": "embedding", "index": i, "embedding": encode_vector(e.summary, req.encoding_format)}
                for i, e in enumerate(embs)]
        return {"object": "list", "data": data, "model": settings.served_model_name,
                "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}}

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat(req: P.ChatCompletionRequest, service: Svc):
        log_ignored("/v1/chat/completions", req)
        history, query = await chat_inputs(service, req)
        max_tokens = service.max_tokens(req.max_completion_tokens or req.max_tokens)
        r = req.retrieval or P.RetrievalOptions()
        plan = await service.plan(history, query, max_tokens, r.enabled, r.k, r.filters)
        temperature = 0.0 if req.temperature is None else req.temperature
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        retrieved_docs = [{"id": h.id, "score": h.score} for h in plan.used]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return sse(service, lambda: openai_stream(service, plan, max_tokens, temperature, cid, created,
                                                      retrieved_docs, include_usage, metrics))
        t1 = time.perf_counter()
        res = await service.generate(plan, max_tokens, temperature)
        metrics.tokens(res.completion_tokens, time.perf_counter() - t1)
        return {"id": cid, "object": "chat.completion", "created": created, "model": settings.served_model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                             "finish_reason": "length" if res.finish_reason == "length" else "stop"}],
                "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                          "total_tokens": res.prompt_tokens + res.completion_tokens},
                "retrieved": retrieved_docs}

    return app


# ---------------------------------------------------------------- helpers


def _route_name(request: Request) -> str:
    path = request.url.path
    if path.startswith("/documents/"):
        return "/documents/{id}/images" if "/images/" in path else "/documents/{id}"
    return path if path in KNOWN_ROUTES else "other"


KNOWN_ROUTES = {"/health", "/ready", "/metrics", "/embed", "/retrieve", "/generate", "/documents",
                "/v1/models", "/v1/embeddings", "/v1/chat/completions", "/openapi.json", "/docs"}


def log_ignored(route: str, req) -> None:
    extra = sorted((req.model_extra or {}).keys())
    if extra:
        logger.info("%s: ignoring fields %s", route, extra)


async def parse_samples(service: SugarService, items: list[P.SampleIn], where: str) -> list[Sample]:
    if not items:
        raise BadRequest(where, "no samples")
    limit = service.settings.max_samples_per_request
    if len(items) > limit:
        raise BadRequest(where, f"{len(items)} samples exceed the limit of {limit}")
    return [await asyncio.to_thread(service.parse, s.raw(), f"{where}[{i}]") for i, s in enumerate(items)]


def slices_out(d, images: str) -> list[P.SliceOut]:
    out = []
    for k, s in enumerate(d.slices):
        if s["type"] == "text":
            out.append(P.SliceOut(type="text", text=s["text"]))
        elif images == "base64":
            out.append(P.SliceOut(type="image", base64=base64.b64encode(d.images[s["hash"]]).decode()))
        else:
            out.append(P.SliceOut(type="image", url=f"/documents/{d.id}/images/{k}"))
    return out


def retrieved(h: Hit, images: str) -> P.RetrievedDocument:
    return P.RetrievedDocument(id=h.id, score=h.score, ann_score=h.ann_score, metadata=h.metadata,
                               slices=slices_out(h.document, images))


def encode_vector(v: np.ndarray, fmt: str):
    if fmt == "base64":
        return base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
    return v.astype(float).tolist()


async def chat_inputs(service: SugarService, req: P.ChatCompletionRequest):
    """(history as (role, parts), the last user message as the retrieval query)."""
    converted: list[tuple[str, Sample]] = []
    for i, m in enumerate(req.messages):
        where = f"messages[{i}].content"
        if m.content is None or (isinstance(m.content, str) and not m.content.strip()):
            raise BadRequest(where, "empty message")
        if isinstance(m.content, str):
            raw = {"slices": [{"type": "text", "text": m.content}]}
        else:
            slices = []
            for j, part in enumerate(m.content):
                if part.type == "text" and part.text is not None:
                    slices.append({"type": "text", "text": part.text})
                elif part.type == "image_url" and part.image_url is not None:
                    url = part.image_url.url
                    slices.append({"type": "image", "base64": url} if url.startswith("data:")
                                  else {"type": "image", "url": url})
                else:
                    raise BadRequest(f"{where}[{j}]", f"unsupported content part {part.type!r}")
            raw = {"slices": slices}
        role = "system" if m.role == "developer" else m.role
        converted.append((role, await asyncio.to_thread(service.parse, raw, where)))
    last_user = max((i for i, (r, _) in enumerate(converted) if r == "user"), default=None)
    if last_user is None:
        raise BadRequest("messages", "no user message")
    history = [(r, [s.text if s.type == "text" else s.image for s in smp.slices])
               for r, smp in converted[:last_user]]
    return history, converted[last_user][1]


class AdmittedStream(StreamingResponse):
    """An SSE response holding a generation slot taken before it was built (a full
    queue is a 429 before any stream starts); the slot is released when the
    response ends, however it ends (finished, failed, client gone)."""

    def __init__(self, gen: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(gen, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def sse(service, stream: Callable[[], AsyncIterator[str]]) -> StreamingResponse:
    """Admit a streamed generation: acquire a slot now (Overloaded -> 429), then stream."""
    service.generations.acquire()
    try:
        return AdmittedStream(stream(), service.generations.release)
    except BaseException:
        service.generations.release()
        raise


async def native_stream(service, plan, max_tokens, temperature, t0, metrics) -> AsyncIterator[str]:
    result: list[GenerationResult] = []
    t1 = time.perf_counter()
    try:
        async for delta in complete_chars(service.engine.stream(plan.messages, max_tokens, temperature, result)):
            yield f"data: {json.dumps({'delta': delta})}\n\n"
        res = result[0]
        metrics.tokens(res.completion_tokens, time.perf_counter() - t1)
        final = {"done": True, "text": res.text,
                 "documents": [{"id": h.id, "score": h.score} for h in plan.used],
                 "dropped_documents": [{"id": h.id, "score": h.score} for h in plan.dropped],
                 "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                           "total_tokens": res.prompt_tokens + res.completion_tokens},
                 "timings": {"retrieval_ms": plan.retrieval_ms,
                             "generation_ms": (time.perf_counter() - t1) * 1e3,
                             "total_ms": (time.perf_counter() - t0) * 1e3},
                 "finish_reason": res.finish_reason}
        yield f"data: {json.dumps(final)}\n\n"
    except EngineError as e:
        yield f"data: {json.dumps({'error': {'type': 'engine_unavailable', 'message': str(e)}})}\n\n"


async def openai_stream(service, plan, max_tokens, temperature, cid, created, retrieved_docs,
                        include_usage, metrics) -> AsyncIterator[str]:
    name = service.settings.served_model_name
    result: list[GenerationResult] = []

    def chunk(delta: dict, finish=None, **extra) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    t1 = time.perf_counter()
    try:
        yield chunk({"role": "assistant", "content": ""}, retrieved=retrieved_docs)
        async for delta in complete_chars(service.engine.stream(plan.messages, max_tokens, temperature, result)):
            yield chunk({"content": delta})
        res = result[0]
        metrics.tokens(res.completion_tokens, time.perf_counter() - t1)
        yield chunk({}, "length" if res.finish_reason == "length" else "stop")
        if include_usage:
            usage = {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                     "total_tokens": res.prompt_tokens + res.completion_tokens}
            yield f"data: {json.dumps({'id': cid, 'object': 'chat.completion.chunk', 'created': created, 'model': name, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"
    except EngineError as e:
        yield f"data: {json.dumps({'error': {'type': 'engine_unavailable', 'message': str(e)}})}\n\n"


def load_service(settings: Settings, metrics: Metrics, batching: bool = True) -> SugarService:
    """Load the checkpoint, open the index (refusing a mismatch), build the engine."""
    import torch

    from index import DocumentIndex, IndexError_
    from index.embedding import kernel_settings
    from model.sugar import SugarModel

    from .engine import make_engine
    from .settings import StartupError, check_startup

    check_startup(settings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = SugarModel.from_pretrained(settings.checkpoint)
    try:
        index = DocumentIndex(settings.index, dim=model.embed_dim, embedding_version=model.embedding_version,
                              kernel=kernel_settings(model))
    except IndexError_ as e:
        raise StartupError(str(e)) from None
    engine = make_engine(settings, model)
    return SugarService(settings, model, index, engine, batching=batching, on_batch=metrics.batch_size.observe)


__all__ = ["create_app", "load_service"]
