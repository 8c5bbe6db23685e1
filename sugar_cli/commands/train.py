"""`sugar train`: train a Sugar checkpoint (joint generative + discriminative)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..home import teacher_cache

BASE_LORA_RANK = 16  # `sugar train --base DIR`: LoRA on the base's decoder unless --set lora_rank=...


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a Sugar checkpoint (joint generative + discriminative)")
    p.add_argument("--preset", default="tiny", help="shipped (the recipe of the checkpoint in the package; then "
                   "shipped_rag, shipped_houses, shipped_world, shipped_world_tune, shipped_world_mixed and "
                   "shipped_world_or, each with --set init=DIR, continue it), tiny "
                   "(300 steps, the default), claims, claims_staged, claims_world or smoke (training/config.py)")
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
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the flags describe: the preset or --config, --base, --set, then the
    named flags (--steps, --seed, --ablation, --data)."""
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


def run(args: argparse.Namespace) -> int:
    from training.loop import train

    out = train(config_from_args(args), args.out, resume=args.resume, cache_dir=teacher_cache(args.cache))
    print(f"checkpoint: {out}")
    return 0
