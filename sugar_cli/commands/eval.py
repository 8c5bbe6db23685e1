"""`sugar eval`: evaluate a checkpoint on the held-out split (or train and table the ablations)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..home import sugar_home, teacher_cache, write_json


def add_parser(sub) -> None:
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.evaluate import EvalConfig, evaluate, summary_table

    cfg = EvalConfig.quick() if args.quick else EvalConfig.medium() if args.medium else EvalConfig()
    if args.ablations:
        from ..ablations import run_ablations

        table = run_ablations(args.out or sugar_home() / "ablations", args.preset, args.steps, args.seeds, cfg,
                              args.variants, teacher_cache(args.cache), args.seed_start)
        print(table)
        return 0
    if args.checkpoint is None:
        raise SystemExit("sugar eval: --checkpoint is required (or --ablations)")
    results = evaluate(args.checkpoint, args.out, cfg, calibrate=args.calibrate)
    write_json(args.json, results)
    print(summary_table(results))
    return 0
