"""`sugar bench train`: steps per second of a training recipe, old code beside new, one run.

Each side runs in a process of its own (the same driver, `python -c`): it builds
the preset's Trainer (pools, model, teachers; the teacher features precomputed
into a shared cache, as a real run does before step 0), runs `--warmup`
untimed steps, then times `--steps` steps. With `--baseline REV` the old side
is a git worktree of REV running its own code on its own preset settings; the
sides alternate for `--rounds` rounds, so both numbers come from the same
machine state, and the ratio is printed. The new side also reports the wall
time per phase of a step (training/profile.py); a revision without the phase
timer reports only its total. `--set` overrides apply to the new side only
(e.g. to time a variant of the recipe).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from ..home import teacher_cache, write_json
from .baseline import REPO, env_for, worktree

DRIVER = r"""
import json, sys, time, logging
logging.disable(logging.WARNING)
import torch
from training.config import preset
from training.loop import Trainer
args = json.loads(sys.argv[1])
cfg = preset(args["preset"]).with_overrides(args["set"])
torch.set_num_threads(args["threads"])
cfg = cfg.with_overrides([f"threads={args['threads']}"])
t = Trainer(cfg, args["out"], args["cache"])
if hasattr(t, "vision_stage"):
    t.vision_stage()
t.precompute_teachers()
start = args["start"]
for s in range(start, start + args["warmup"]):
    t.step(s)
timer = getattr(t, "timer", None)
if timer is not None:
    timer.enabled = True
    timer.reset()
t0 = time.perf_counter()
for s in range(start + args["warmup"], start + args["warmup"] + args["steps"]):
    t.step(s)
wall = time.perf_counter() - t0
phases = {k: v / args["steps"] for k, v in timer.reset().items()} if timer is not None else {}
print("BENCH " + json.dumps({"s_per_step": wall / args["steps"], "phases": phases}))
"""

PHASES = ("data", "encode", "gen_forward", "embed_forward", "losses", "backward", "optimizer")


def _side(root: Path, preset: str, overrides: list[str], threads: int, warmup: int, steps: int,
          start: int, cache: Path) -> dict:
    with tempfile.TemporaryDirectory() as out:
        args = {"preset": preset, "set": overrides, "threads": threads, "warmup": warmup, "steps": steps,
                "start": start, "out": out, "cache": str(cache)}
        proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)], cwd=root, env=env_for(root),
                              capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"bench train: the side at {root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH "):])


def run(*, preset: str, overrides: list[str], baseline: str | None, threads: int, warmup: int, steps: int,
        start: int, rounds: int, cache: Path) -> list[dict]:
    with ExitStack() as stack:
        sides = [("new", REPO, overrides)]
        if baseline:
            sides.insert(0, (f"old {baseline}", stack.enter_context(worktree(baseline)), []))
        records: list[dict] = []
        for r in range(rounds):
            for name, root, sets in sides:
                rec = _side(root, preset, sets, threads, warmup, steps, start, cache)
                rec.update(side=name, round=r + 1)
                records.append(rec)
                print(f"round {r + 1} {name:>14}: {rec['s_per_step']:.3f} s/step "
                      f"({1 / rec['s_per_step']:.2f} steps/s)", flush=True)
    print_table(records)
    return records


def print_table(records: list[dict]) -> None:
    names = list(dict.fromkeys(r["side"] for r in records))
    best = {n: min((r for r in records if r["side"] == n), key=lambda r: r["s_per_step"]) for n in names}
    print("\n| phase (s/step, best round) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for ph in PHASES:
        cells = [f"{best[n]['phases'][ph]:.3f}" if ph in best[n]["phases"] else "-" for n in names]
        print(f"| {ph} | " + " | ".join(cells) + " |")
    print("| **total** | " + " | ".join(f"**{best[n]['s_per_step']:.3f}**" for n in names) + " |")
    print("| steps/s | " + " | ".join(f"{1 / best[n]['s_per_step']:.2f}" for n in names) + " |")
    if len(names) == 2:
        print(f"\nspeed-up (steps/s, new / old, best rounds): "
              f"{best[names[0]]['s_per_step'] / best[names[1]]['s_per_step']:.2f}x")


def add_parser(bsub) -> None:
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
    tr.add_argument("--json", type=Path, help="also write the records to this file (JSON)")
    tr.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    write_json(args.json, run(preset=args.preset, overrides=args.set, baseline=args.baseline, threads=args.threads,
                              warmup=args.warmup, steps=args.steps, start=args.start, rounds=args.rounds,
                              cache=teacher_cache(args.cache)))
    return 0
