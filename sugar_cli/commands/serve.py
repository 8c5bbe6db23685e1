"""`sugar serve`: the API (/embed /retrieve /generate /v1/… /ui) on one checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..home import ensure_default, sugar_home


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve /embed /retrieve /generate and the OpenAI-compatible API")
    p.add_argument("--checkpoint", type=Path, help="checkpoint (default: the one shipped in the package, "
                   "model/default_checkpoint)")
    p.add_argument("--index", type=Path, help="index directory (default: $SUGAR_HOME/index/default-VERSION, "
                   "the built-in collection embedded by the checkpoint, built if missing)")
    p.add_argument("--index-url", help="a shared index on PostgreSQL + pgvector instead (postgresql://…; "
                   "also $SUGAR_INDEX_URL): every replica that serves it serves one collection")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--api-key", help="require Authorization: Bearer KEY (except /health, /ready)")
    p.add_argument("--engine", choices=["hf", "vllm"], help="generation engine (default hf)")
    p.add_argument("--vllm-url", help="the vLLM OpenAI server (engine vllm)")
    p.add_argument("--embed-engine", choices=["hf", "vllm"],
                   help="where embeddings are computed (default hf: in this process; vllm: a vLLM pooling runner "
                   "on the checkpoint's backbone, slice pooling and heads applied here)")
    p.add_argument("--vllm-embed-url", help="the vLLM pooling server (embed engine vllm)")
    p.add_argument("--no-batching", action="store_true", help="embed each request alone (benchmarks)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.settings import Settings, StartupError, check_startup

    overrides = {k: v for k, v in {
        "checkpoint": args.checkpoint, "index": args.index, "index_url": args.index_url, "host": args.host,
        "port": args.port, "api_key": args.api_key, "engine": args.engine, "vllm_url": args.vllm_url,
        "embed_engine": args.embed_engine, "vllm_embed_url": args.vllm_embed_url}.items() if v is not None}
    settings = Settings(**overrides)
    if settings.index is None and settings.index_url is None:
        # the built-in collection, indexed once per embedding version (the shipped checkpoint's,
        # or --checkpoint's: a checkpoint just trained is served on the built-in world at once)
        settings.checkpoint, settings.index = ensure_default(sugar_home(), settings.checkpoint)
    elif settings.checkpoint is None and settings.index_url is not None:  # a shared index, the shipped checkpoint
        from model.sugar import DEFAULT_CHECKPOINT

        settings.checkpoint = DEFAULT_CHECKPOINT
    try:
        check_startup(settings)
    except StartupError as e:
        raise SystemExit(f"sugar serve: {e}") from None
    app = create_app(settings, batching=not args.no_batching)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    except StartupError as e:
        raise SystemExit(f"sugar serve: {e}") from None
    return 0
