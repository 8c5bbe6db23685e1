"""`sugar eval --ablations`: every variant of docs/METHOD.md §6 at the same budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLUMNS = [
    ("seen.retrieval.r@1", "seen ret R@1"), ("seen.minimal_pairs.overall", "seen min-pair"),
    ("seen.vqa.overall", "seen VQA"), ("seen.vqa_blank.overall", "seen VQA blank"),
    ("retrieval.r@1", "ret R@1"), ("retrieval_cosine.r@1", "cos R@1"),
    ("minimal_pairs.overall", "min-pair"), ("vqa.overall", "VQA"), ("vqa.color", "VQA col"),
    ("vqa.count", "VQA cnt"), ("fashion_mnist.vqa", "FMNIST"), ("rag.own_retrieval", "RAG own"),
    ("rag.no_retrieval", "RAG none"),
]


def run_ablations(out: Path, preset_name: str, steps: int | None, seeds: int, eval_cfg,
                  variants: list[str] | None, cache: Path, seed_start: int = 0) -> str:
    """Train and evaluate every (seed, variant) in `out`; a run already trained is not trained
    again, and one already evaluated with the same evaluation settings is not evaluated again
    (so an interrupted table resumes, and seeds can run in separate processes with
    `seed_start`, then be tabled together)."""
    from training.config import ABLATIONS, preset
    from training.evaluate import flat
    from training.loop import train

    variants = variants or list(ABLATIONS)
    rows: dict[str, list[dict]] = {v: [] for v in variants}
    # seed-major: an interrupted run has every variant at the seeds it finished
    for seed in range(seed_start, seed_start + seeds):
        for variant in variants:
            cfg = preset(preset_name).with_overrides([f"ablation={json.dumps(variant)}", f"seed={seed}"])
            if steps:
                cfg = cfg.with_overrides([f"steps={steps}"])
            ckpt = out / f"{variant}-seed{seed}"
            if not (ckpt / "sugar_config.json").is_file():
                train(cfg, ckpt, cache_dir=cache)
            rows[variant].append(flat(_evaluated(ckpt, eval_cfg)))
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
    table = "\n".join(lines) + "\n\n" + image_reliance(rows)
    claims = claims_table(rows)
    (out / "ablations.md").write_text(
        f"# Ablations (preset {preset_name}, steps {steps or 'preset'}, seeds {seeds})\n\n{table}\n\n"
        f"## The paper's claims\n\n{claims}\n")
    (out / "ablations.json").write_text(json.dumps(rows, indent=2) + "\n")
    return table + "\n\n" + claims


# (claim, metric, the variant that should win, the variant it is compared with); metrics
# of the `seen` split (what was learned) unless they say otherwise
CLAIMS = [
    ("joint > generative-only on VQA", "seen.vqa.overall", "joint", "gen_only"),
    ("joint > generative-only on minimal pairs", "seen.minimal_pairs.overall", "joint", "gen_only"),
    ("joint > discriminative-only on retrieval", "seen.retrieval.r@1", "joint", "disc_only"),
    ("GA kernel > summary cosine (multi-slice retrieval, trained without GA)",
     "seen.retrieval.r@1", "joint", "no_ga"),
    ("GA kernel > summary cosine (same joint model, ranking only)",
     "seen.retrieval.r@1", "joint", "joint:seen.retrieval_cosine.r@1"),
    ("triple kernel > none on minimal pairs", "seen.minimal_pairs.overall", "joint", "no_triple"),
    ("mean pooling > last-token pooling on retrieval", "seen.retrieval.r@1", "joint", "last_token"),
    ("mean pooling > last-token pooling on minimal pairs", "seen.minimal_pairs.overall", "joint",
     "last_token"),
]


def _evaluated(ckpt: Path, eval_cfg) -> dict:
    """The evaluation of `ckpt` under `eval_cfg`, reused when it was already made with them."""
    import dataclasses

    from training.evaluate import evaluate

    stamp = ckpt / "eval" / "eval_config.json"
    want = dataclasses.asdict(eval_cfg)
    done = ckpt / "eval" / "eval.json"
    if stamp.is_file() and done.is_file() and json.loads(stamp.read_text()) == want:
        return json.loads(done.read_text())
    res = evaluate(ckpt, ckpt / "eval", eval_cfg)  # writes eval/eval.json
    stamp.write_text(json.dumps(want, indent=2) + "\n")
    return res


def image_reliance(rows: dict[str, list[dict]]) -> str:
    """Per variant: in how many runs the seen VQA is above its image-blanked score (a VQA
    claim is only testable where the answers use the image), and the smallest margin."""
    out = []
    for variant, results in rows.items():
        gaps = [r["seen.vqa.overall"] - r["seen.vqa_blank.overall"] for r in results
                if "seen.vqa.overall" in r and "seen.vqa_blank.overall" in r]
        if gaps and any(r.get("seen.vqa.overall", 0) > 0 for r in results):
            out.append(f"- {variant}: seen VQA above its image-blanked score in {sum(g > 0 for g in gaps)} "
                       f"of {len(gaps)} runs (smallest margin {min(gaps):+.3f})")
    return "\n".join(out)


def _values(rows: dict[str, list[dict]], variant: str, metric: str) -> list[float]:
    if ":" in variant:  # "variant:other.metric": another metric of the same runs
        variant, metric = variant.split(":", 1)
    return [r[metric] for r in rows.get(variant, []) if metric in r]


def claims_table(rows: dict[str, list[dict]]) -> str:
    """mean ± std per cell; "reproduced" only where the gap exceeds twice the larger std."""
    lines = ["| claim | metric | winner (mean ± std) | other (mean ± std) | gap | verdict |",
             "|---|---|---|---|---|---|"]
    for claim, metric, a, b in CLAIMS:
        va, vb = _values(rows, a, metric), _values(rows, b, metric)
        if not va or not vb:
            lines.append(f"| {claim} | {metric} | - | - | - | not run |")
            continue
        ma, mb, sa, sb = np.mean(va), np.mean(vb), np.std(va), np.std(vb)
        gap = ma - mb
        if len(va) < 2 or len(vb) < 2:
            verdict = "one seed: no verdict"
        elif gap > 2 * max(sa, sb):
            verdict = "reproduced"
        elif -gap > 2 * max(sa, sb):
            verdict = "reversed"
        else:
            verdict = "not reproduced (within noise)"
        lines.append(f"| {claim} | {metric} | {a.split(':')[0]} {ma:.3f} ± {sa:.3f} | "
                     f"{b.replace(':', ' ')} {mb:.3f} ± {sb:.3f} | {gap:+.3f} | {verdict} |")
    return "\n".join(lines)
