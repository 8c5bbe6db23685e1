"""FastAPI app: a short assembly of the pieces.

- `routes/`: one APIRouter per area — native inference (/embed /retrieve
  /generate), documents (and uploads, index stats), OpenAI-compatible /v1,
  probes and metrics, the web playground (/ui);
- `middleware.py`: API key, body size and deadline, per-route metrics;
- `errors.py`: every error as `{"error": {"type", "message", "field"?}}`;
- `deps.py`: the service, settings and metrics from `app.state`.

Heavy state is created once in `lifespan` (or injected by tests through
`service_factory`) and reached through `app.state.service`.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .auth import KeyRing
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import install_guard
from .openapi import apply_limits
from .routes import collections, documents, native, openai, probes, rerank, ui
from .service import SugarService
from .settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings, service_factory=None, batching: bool = True) -> FastAPI:
    """`service_factory(settings, metrics, batching)` builds the service (default: load
    checkpoint, index and engine)."""
    metrics = Metrics()
    keys = KeyRing(settings.api_key, settings.api_keys_file)  # a keys file that does not parse stops here

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _reload_keys_on_sighup(keys)
        factory = service_factory or load_service
        service = await asyncio.to_thread(factory, settings, metrics, batching)
        app.state.service = service
        await service.start()
        metrics.index_documents.set(service.index.count())
        logger.info("serving %s on %s:%d (engine %s, embeddings %s)", settings.checkpoint, settings.host,
                    settings.port, service.engine.name, service.embedder.name)
        yield
        await service.stop()

    app = FastAPI(title="Sugar", version="0.1.0", lifespan=lifespan,
                  description="Retrieval-augmented multimodal inference: one checkpoint embeds and generates.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.keys = keys
    install_guard(app, settings, metrics, keys)
    install_error_handlers(app)
    for router in (probes.router, native.router, documents.router, collections.router, rerank.router, openai.router,
                   ui.router):
        app.include_router(router)

    def openapi() -> dict:
        if app.openapi_schema is None:
            service = getattr(app.state, "service", None)  # the embedding dimension, once loaded
            app.openapi_schema = apply_limits(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes),
                settings, dim=service.index.dim if service is not None else None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _reload_keys_on_sighup(keys: KeyRing) -> None:
    """SIGHUP reads the keys file again (where the server runs in the main thread)."""
    import signal

    if keys.keys_file is None or not hasattr(signal, "SIGHUP"):
        return
    try:
        signal.signal(signal.SIGHUP, lambda *_: keys.request_reload())
    except ValueError:  # not the main thread (an embedding app, tests): the file's changes still count
        logger.debug("SIGHUP handler not installed (not the main thread)")


def load_service(settings: Settings, metrics: Metrics, batching: bool = True) -> SugarService:
    """Load the checkpoint, open the index (refusing a mismatch), build the engine."""
    import torch

    from index import IndexRefused
    from index.collections import Collections
    from model.kernels import set_threads
    from model.sugar import SugarModel

    from .embedder import make_embedder
    from .engine import make_engine
    from .settings import StartupError, check_startup, resolve_device

    check_startup(settings)  # a checkpoint and an index are given
    location = settings.index_url or settings.index
    assert settings.checkpoint is not None and location is not None
    if settings.threads:
        set_threads(settings.threads)
    device = resolve_device(settings)
    model = SugarModel.from_pretrained(settings.checkpoint, device=device, dtype=getattr(torch, settings.dtype))
    logger.info("model on %s (%s): embedding and in-process generation run there", device, settings.dtype)
    try:
        collections = Collections(location, dim=model.embed_dim, embedding_version=model.embedding_version,
                                  kernel=model.config.kernel, snapshot_every=settings.snapshot_every,
                                  max_collections=settings.max_collections)
    except IndexRefused as e:
        raise StartupError(str(e)) from None
    engine = make_engine(settings, model)
    try:
        embedder = make_embedder(settings, model)
    except ValueError as e:
        raise StartupError(str(e)) from None
    return SugarService(settings, model, collections, engine, batching=batching, on_batch=metrics.batch_size.observe,
                        embedder=embedder)


__all__ = ["create_app", "load_service"]
