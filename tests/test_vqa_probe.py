"""scripts/vqa_probe.py: the learnability probe of the tiny preset's LM (README, training section)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from model.config import SMOKE_TINY

SMALL = {k: v for k, v in SMOKE_TINY.items() if k != "patch_size"}  # the probe sets its own patch size


def load():
    path = Path(__file__).resolve().parents[1] / "scripts" / "vqa_probe.py"
    spec = importlib.util.spec_from_file_location("vqa_probe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_probe_learns_colour_of_full_image_swatches(capsys):
    rows = load().main(["--steps", "40", "--every", "20", "--batch", "12", "--kinds", "color", "--swatch", "1.0",
                        "--patch-size", "16", "--eval-size", "48", "--tiny", json.dumps(SMALL)])
    assert [r["step"] for r in rows] == [20, 40]
    assert rows[-1]["color"] >= 0.6  # chance 1/6: whole-image colour is learnt in a few dozen steps
    assert "'color'" in capsys.readouterr().out


def test_probe_runs_caption_stage_and_several_types():
    rows = load().main(["--steps", "3", "--every", "3", "--align-steps", "2", "--batch", "4", "--eval-size", "40",
                        "--patch-init", "dct", "--image-mean", "0.94", "--tiny", json.dumps(SMALL)])
    assert set(rows[0]) >= {"step", "loss", "elapsed_s"}
    assert set(rows[0]) - {"step", "loss", "elapsed_s"} <= {"color", "size", "count", "position"}
    assert all(0.0 <= rows[0][k] <= 1.0 for k in rows[0] if k not in ("step", "loss", "elapsed_s"))
