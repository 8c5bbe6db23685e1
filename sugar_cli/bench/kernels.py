"""`sugar bench kernels`: the GA kernel against its peers, side by side in one run.

For each case (pairs Bx×By, lengths m=n, dimension D) it times, interleaved
on the same inputs: the bare [B·m, D] × [D, B·n] matmul every implementation
must do (the machine's floor for this work), Sugar's `ga_similarity` (float32,
inference path), Sugar's differentiable sweep (training path), tslearn's
`cdist_gak` (float64), and a naive Python double loop (timed on a subsample
of pairs and scaled). It prints ratios and the max difference of the
normalised log-values against tslearn in float64, then the slice-embedding
throughput of a tiny model at batch 1 vs 32.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..home import write_json

if TYPE_CHECKING:
    import torch

FULL_GRID = [
    # (pairs per side, length, D)
    (64, 4, 64),
    (64, 16, 128),
    (256, 4, 128),
    (256, 16, 128),
    (256, 32, 128),
    (256, 16, 256),
    (512, 8, 64),
    (512, 16, 128),
]
QUICK_GRID = [(16, 4, 16), (32, 8, 32)]


def _best(fn: Callable[[], object], repeat: int) -> float:

    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _tslearn(x: torch.Tensor, y: torch.Tensor, sigma: float, budget_s: float) -> tuple[np.ndarray, int, float]:
    """tslearn's cdist_gak (the reference): on a subsample of rows when the full run would
    exceed the budget; (kernel values, rows computed, seconds scaled to all rows)."""

    from tslearn.metrics import cdist_gak

    B = len(x)
    xs64, ys64 = x.double().numpy(), y.double().numpy()
    probe = max(1, B // 32)
    t_probe = _best(lambda: cdist_gak(xs64[:probe], ys64, sigma=sigma), 1)
    rows = B if t_probe * B / probe <= budget_s else max(probe, int(budget_s / t_probe * probe))
    t0 = time.perf_counter()
    ref = cdist_gak(xs64[:rows], ys64, sigma=sigma)
    return ref, rows, (time.perf_counter() - t0) * B / rows


def _case(B: int, L: int, D: int, repeat: int, sigma: float, budget_s: float) -> dict:
    import torch
    import torch.nn.functional as F

    from model.kernels import ga_log_kernel_naive, ga_similarity

    g = torch.Generator().manual_seed(B * 1000 + L * 10 + D)
    x = F.normalize(torch.randn(B, L, D, generator=g), dim=-1)
    y = F.normalize(torch.randn(B, L, D, generator=g), dim=-1)
    ga_similarity(x[:2], y[:2], sigma=sigma)  # warm-up (numba compile, allocator)

    def mm():
        return x.reshape(-1, D) @ y.reshape(-1, D).T

    def fast():
        with torch.no_grad():
            return ga_similarity(x, y, sigma=sigma)

    xg = x.clone().requires_grad_(True)

    def sweep():
        return ga_similarity(xg, y, sigma=sigma, impl="linear")

    t_mm = _best(mm, repeat)
    t_fast = _best(fast, repeat)
    t_sweep = _best(sweep, max(1, repeat // 2))
    ref, rows, t_ts = _tslearn(x, y, sigma, budget_s)
    # naive loop: a few pairs, scaled to all B*B
    n_pairs = 3
    t0 = time.perf_counter()
    for k in range(n_pairs):
        ga_log_kernel_naive(x[k].double(), y[k].double(), sigma)
    t_naive = (time.perf_counter() - t0) / n_pairs * 3 * B * B  # cross + 2 self terms per pair
    s32 = fast()[:rows].double().numpy()
    with np.errstate(divide="ignore"):
        log_ref = np.log(ref)
    diff = float(np.max(np.abs(s32 - log_ref)))
    rel = float(np.max(np.abs(s32 - log_ref) / np.maximum(np.abs(log_ref), 1e-12)))
    return {
        "pairs": f"{B}x{B}", "length": L, "dim": D,
        "matmul_ms": t_mm * 1e3, "sugar_ms": t_fast * 1e3, "sugar_grad_ms": t_sweep * 1e3,
        "tslearn_ms": t_ts * 1e3, "tslearn_scaled": rows < B, "naive_ms": t_naive * 1e3,
        "sugar_vs_matmul": t_fast / t_mm, "tslearn_vs_sugar": t_ts / t_fast,
        "naive_vs_sugar": t_naive / t_fast, "max_abs_diff_log": diff, "max_rel_diff_log": rel,
    }


def _embed_throughput(quick: bool) -> dict:

    from PIL import Image

    from model.config import SugarConfig, TinyConfig
    from model.sample import Sample
    from model.sugar import build_tiny_model

    model = build_tiny_model(SugarConfig(), TinyConfig())
    rng = np.random.default_rng(0)
    n = 32 if quick else 128
    samples = [
        Sample.build([f"item {i}: a small red square", Image.fromarray(
            rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))])
        for i in range(n)
    ]
    model.embed(samples[:2], batch_size=2)  # warm-up
    t1 = _best(lambda: model.embed(samples[: n // 4], batch_size=1), 1) / (n // 4)
    t32 = _best(lambda: model.embed(samples, batch_size=32), 2) / n
    return {"batch1_samples_per_s": 1 / t1, "batch32_samples_per_s": 1 / t32, "gain": t1 / t32}


def run(*, quick: bool = False, threads: int = 2) -> dict:
    from model.kernels import set_threads

    set_threads(threads)
    grid = QUICK_GRID if quick else FULL_GRID
    repeat = 2 if quick else 3
    budget = 0.5 if quick else 4.0
    records = []
    header = (
        f"{'pairs':>9} {'m=n':>4} {'D':>4} | {'matmul':>8} {'sugar':>8} {'x mm':>5} | "
        f"{'grad':>8} | {'tslearn':>9} {'speedup':>7} | {'naive':>9} {'speedup':>8} | "
        f"{'max|Δs|':>8} {'rel':>8}"
    )
    print(f"GA kernel, float32 (tslearn float64), sigma=1, {threads} threads; times in ms")
    print(header)
    print("-" * len(header))
    for B, L, D in grid:
        r = _case(B, L, D, repeat, 1.0, budget)
        records.append(r)
        star = "*" if r["tslearn_scaled"] else " "
        print(
            f"{r['pairs']:>9} {L:>4} {D:>4} | {r['matmul_ms']:8.1f} {r['sugar_ms']:8.1f} "
            f"{r['sugar_vs_matmul']:5.1f} | {r['sugar_grad_ms']:8.1f} | {r['tslearn_ms']:8.0f}{star} "
            f"{r['tslearn_vs_sugar']:6.1f}x | {r['naive_ms']:9.0f} {r['naive_vs_sugar']:7.0f}x | "
            f"{r['max_abs_diff_log']:8.1e} {r['max_rel_diff_log']:8.1e}"
        )
    print("* tslearn timed on a subsample of rows and scaled; naive loop always scaled from 3 pairs")
    emb = _embed_throughput(quick)
    print(
        f"tiny-model slice embedding: batch 1 {emb['batch1_samples_per_s']:.1f} samples/s, "
        f"batch 32 {emb['batch32_samples_per_s']:.1f} samples/s (gain {emb['gain']:.1f}x)"
    )
    return {"kernels": records, "embedding": emb, "threads": threads}


def add_parser(bsub) -> None:
    k = bsub.add_parser("kernels", help="GA kernel vs tslearn vs naive loop vs bare matmul")
    k.add_argument("--json", type=Path, help="also write the records to this file")
    k.add_argument("--quick", action="store_true", help="a small grid (seconds), for smoke tests")
    k.add_argument("--threads", type=int, default=2, help="torch/numba threads (default 2)")
    k.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    write_json(args.json, run(quick=args.quick, threads=args.threads))
    return 0
