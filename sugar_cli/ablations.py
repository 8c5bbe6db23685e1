"""`sugar eval --ablations`: every variant of docs/METHOD.md §6 at the same budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLUMNS = [
    ("retrieval.r@1", "ret R@1"), ("retrieval_cosine.r@1", "cos R@1"),
    ("minimal_pairs.overall", "min-pair"), ("vqa.overall", "VQA"), ("vqa.color", "VQA col"),
    ("vqa.count", "VQA cnt"), ("fashion_mnist.vqa", "FMNIST"), ("rag.own_retrieval", "RAG own"),
    ("rag.no_retrieval", "RAG none"),
]


def run_ablations(out: Path, preset_name: str, steps: int | None, seeds: int, eval_cfg,
                  variants: list[str] | None, cache: Path) -> str:
    from training.config import ABLATIONS, preset
    from training.evaluate import evaluate, flat
    from training.loop import train

    rows: dict[str, list[dict]] = {}
    for variant in variants or list(ABLATIONS):
        for seed in range(seeds):
            cfg = preset(preset_name).with_overrides([f"ablation={json.dumps(variant)}", f"seed={seed}"])
            if steps:
                cfg = cfg.with_overrides([f"steps={steps}"])
            ckpt = out / f"{variant}-seed{seed}"
            if not (ckpt / "sugar_config.json").is_file():
                train(cfg, ckpt, cache_dir=cache)
            res = evaluate(ckpt, ckpt / "eval", eval_cfg)
            rows.setdefault(variant, []).append(flat(res))
    lines = ["| variant | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for variant, results in rows.items():
        cells = []
        for key, _ in COLUMNS:
            vals = [r[key] for r in results if key in r]
            if not vals:
                cells.append("-")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.3f}")
            else:
                cells.append(f"{np.mean(vals):.3f}±{np.std(vals):.3f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "ablations.md").write_text(
        f"# Ablations (preset {preset_name}, steps {steps or 'preset'}, seeds {seeds})\n\n{table}\n")
    (out / "ablations.json").write_text(json.dumps(rows, indent=2) + "\n")
    return table
