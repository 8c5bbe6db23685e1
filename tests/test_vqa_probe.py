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
                        "--patch-size", "16", "--eval-size", "48", "--threads", "1", "--tiny", json.dumps(SMALL)])
    assert [r["step"] for r in rows] == [20, 40]
    assert rows[-1]["color"] >= 0.6  # chance 1/6: whole-image colour is learnt in a few dozen steps
    assert "'color'" in capsys.readouterr().out


def test_probe_runs_caption_stage_and_several_types():
    rows = load().main(["--steps", "3", "--every", "3", "--align-steps", "2", "--batch", "4", "--eval-size", "40",
                        "--patch-init", "dct", "--image-mean", "0.94", "--threads", "1", "--tiny", json.dumps(SMALL)])
    timing = {"step", "loss", "elapsed_s", "total_s"}
    assert set(rows[0]) >= timing
    assert set(rows[0]) - timing <= {"color", "size", "count", "position"}
    assert all(0.0 <= rows[0][k] <= 1.0 for k in rows[0] if k not in timing)


def test_oracle_code_is_read_by_the_lm_within_a_few_dozen_steps():
    # the LM side alone: a fixed code per colour on every image position (issue #20's oracle)
    rows = load().main(["--steps", "30", "--every", "30", "--batch", "12", "--kinds", "color", "--oracle", "code",
                        "--eval-size", "48", "--threads", "1", "--tiny", json.dumps(SMALL)])
    assert rows[-1]["color"] >= 0.9


def test_oracle_code_at_one_noisy_position_is_not_read():
    # the failure seen with random-init image tokens: a code on one token, fresh noise 3x its size
    # on every token; the LM stays at a constant answer (the eval set's share of one colour)
    rows = load().main(["--steps", "30", "--every", "30", "--batch", "12", "--kinds", "color",
                        "--oracle", "code-one-noise", "--eval-size", "48", "--threads", "1",
                        "--tiny", json.dumps(SMALL)])
    assert rows[-1]["color"] <= 0.35


def test_standardised_frozen_vision_side_is_read_and_the_plain_one_is_not():
    # the staged recipe's lever, same seed and steps: the projector's output standardised to the
    # text scale with the vision side frozen against the default (everything trained, as is)
    args = ["--steps", "150", "--every", "150", "--batch", "16", "--kinds", "color", "--patch-size", "16",
            "--eval-size", "60", "--threads", "1", "--tiny", json.dumps(SMALL)]
    plain = load().main(args)[-1]["color"]
    staged = load().main([*args, "--standardize", "--freeze-vision"])[-1]["color"]
    assert staged >= 0.6 and staged >= plain + 0.3
