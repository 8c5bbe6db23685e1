"""The staged recipe (training/vision.py, issue #20): stage 0 on the vision side, the
projector's standardisation, stage 1 with the vision side frozen, then the joint phase."""

from __future__ import annotations

import json
import random

import pytest
import torch

from model.config import SugarConfig, TinyConfig
from model.sugar import SugarModel, build_tiny_model
from tests.conftest import TEST_TINY
from training.config import TrainConfig, preset
from training.loop import Trainer
from training.vision import (
    CaptionWordsObjective,
    caption_targets,
    standardize_projector,
    train_vision,
    vision_parameters,
)
from training.world import WorldSplit


def _model() -> SugarModel:
    return build_tiny_model(SugarConfig(embed_dim=16), TinyConfig(**TEST_TINY))


def _pairs(rng: random.Random, n: int, size: int = 32) -> list:
    split = WorldSplit("train", 0)
    out = []
    for _ in range(n):
        sc = split.scene(rng)
        out.append((sc.render(size), sc.caption()))
    return out


def test_global_standardisation_centres_and_sets_one_scale():
    model = _model()
    images = [im for im, _ in _pairs(random.Random(2), 64)]
    with torch.no_grad():
        y0 = model.backbone.image_tokens(images).reshape(-1, model.backbone.hidden_size)
    report = standardize_projector(model.backbone, images, scale=3.0)
    tau = float(model.backbone.text_embedding_rms())
    with torch.no_grad():
        y = model.backbone.image_tokens(images).reshape(-1, model.backbone.hidden_size)
    assert y.mean(0).abs().max() < 1e-3 * tau
    assert float(y.pow(2).mean().sqrt()) == pytest.approx(3.0 * tau, rel=1e-3)
    assert report["norm_ratio_after"] == pytest.approx(3.0, rel=1e-3)
    # one scale for every feature: the centred tokens keep their shape (no feature lifted)
    c0, c1 = y0 - y0.mean(0), y - y.mean(0)
    ratio = c1.std(0) / c0.std(0)
    assert ratio.std() / ratio.mean() < 1e-3


def test_caption_targets_are_the_captions_tokens():
    model = _model()
    tok = model.backbone.tokenizer
    t = caption_targets(tok, ["a red circle", "two blue squares"])
    assert t.shape == (2, len(tok))
    for row, cap in zip(t, ["a red circle", "two blue squares"], strict=True):
        assert set(row.nonzero()[:, 0].tolist()) == set(tok(cap, add_special_tokens=False)["input_ids"])


def test_caption_words_objective_matches_a_loop_reference():
    torch.manual_seed(0)
    obj = CaptionWordsObjective(8, 5)
    tokens = torch.randn(3, 4, 8)
    targets = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 1]])

    def ce(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # -sum_w p(w) log q(w), p uniform on the caption
        logq = torch.log_softmax(obj.readout(obj.norm(x)), -1)
        return -sum(logq[w] for w in t.nonzero()[:, 0]) / t.sum()

    with torch.no_grad():
        ref = sum(ce(tokens[i, t], targets[i]) for i in range(3) for t in range(4)) / 12
        ref += sum(ce(tokens[i].mean(0), targets[i]) for i in range(3)) / 3
        got = float(obj(tokens, targets)["vision_loss"])
    assert got == pytest.approx(float(ref), rel=1e-5)


def test_vision_stage_learns_and_leaves_the_language_model_alone():
    model = _model()
    llava = model.backbone.model
    vision = {id(p) for p in vision_parameters(model.backbone)}
    lm_before = {n: p.detach().clone() for n, p in llava.named_parameters() if id(p) not in vision}
    vis_before = [p.detach().clone() for p in vision_parameters(model.backbone)]
    rng = random.Random(0)
    rows = train_vision(model.backbone, lambda _s: _pairs(rng, 16), steps=40, lr=5e-3, batch=16, log_every=10)
    assert rows[-1]["vision_loss"] < 0.8 * rows[0]["vision_loss"]
    for n, p in llava.named_parameters():
        if id(p) not in vision:
            assert torch.equal(p, lm_before[n]), n
    assert any(not torch.equal(a, b) for a, b in zip(vis_before, vision_parameters(model.backbone), strict=True))


def test_standardize_projector_centres_and_scales_to_text_and_saves_a_plain_llava(tmp_path):
    model = _model()
    images = [im for im, _ in _pairs(random.Random(1), 64)]
    report = standardize_projector(model.backbone, images, per_feature=True)
    tau = float(model.backbone.text_embedding_rms())
    with torch.no_grad():
        y = model.backbone.image_tokens(images).reshape(-1, model.backbone.hidden_size)
    assert y.mean(0).abs().max() < 1e-3 * tau * 10
    assert y.std(0) == pytest.approx(torch.full((y.shape[1],), tau), rel=2e-2)
    assert report["norm_ratio_after"] == pytest.approx(1.0, abs=0.01)
    # a fixed affine map in linear_2: the saved checkpoint reloads with the same image tokens
    model.save_pretrained(tmp_path / "ckpt")
    again = SugarModel.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        y2 = again.backbone.image_tokens(images).reshape(-1, again.backbone.hidden_size)
    torch.testing.assert_close(y2, y, rtol=1e-4, atol=1e-5)


def _staged(**kw) -> TrainConfig:
    sets = [f"{k}={json.dumps(v)}" for k, v in kw.items()]
    return preset("smoke").with_overrides(["steps=6", "warmup=1", "vision_batch=8", *sets])


def test_stage_one_trains_the_lm_alone_on_generative_examples_then_the_joint_phase(tmp_path):
    tr = Trainer(_staged(vision_steps=3, standardize_projector="global", read_steps=3, vision_lr_scale=0.5),
                 tmp_path)
    tr.vision_stage()
    assert tr.vision_report["norm_ratio_after"] == pytest.approx(1.0, abs=0.05)
    assert len(tr.vision_report["rows"]) == 1
    vis = [p.detach().clone() for p in tr.vision_params]
    assert tr.vision_params and len(tr.optimizer.param_groups) == 2
    for s in range(3):
        assert tr.batch(s).pairs == [] and tr.batch(s).gen
        rec = tr.step(s)
        assert "nce_loss" not in rec and "gen_loss" in rec
        assert tr.scheduler.get_last_lr()[1] == 0.0 or s == 2  # the vision group's lr
    assert all(torch.equal(a, b) for a, b in zip(vis, tr.vision_params, strict=True))
    rec = tr.step(3)
    assert {"gen_loss", "nce_loss"} <= rec.keys()
    assert any(not torch.equal(a, b) for a, b in zip(vis, tr.vision_params, strict=True))


def test_vision_lr_scale_zero_freezes_the_vision_side_throughout(tmp_path):
    tr = Trainer(_staged(vision_lr_scale=0.0), tmp_path)
    vis = [p.detach().clone() for p in tr.vision_params]
    for s in range(3):
        tr.step(s)
    assert all(torch.equal(a, b) for a, b in zip(vis, tr.vision_params, strict=True))
    assert all(p.grad is None for p in tr.vision_params)


def test_staged_run_resumes_exactly_and_reports_the_vision_stage(tmp_path):
    cfg = _staged(vision_steps=2, standardize_projector="global", read_steps=2, checkpoint_every=3)
    straight = Trainer(cfg, tmp_path / "a")
    straight.vision_stage()
    ref = [straight.step(s)["loss"] for s in range(6)]
    first = Trainer(cfg, tmp_path / "b")
    first.vision_stage()
    for s in range(3):
        first.metrics.append(first.step(s))
    first.save_state(2)
    resumed = Trainer(cfg, tmp_path / "b")
    assert resumed.load_state() and resumed.start_step == 3
    assert resumed.vision_report["norm_ratio_after"] == first.vision_report["norm_ratio_after"]
    got = [resumed.step(s)["loss"] for s in range(3, 6)]
    assert got == pytest.approx(ref[3:], rel=1e-5, abs=1e-6)


def test_read_steps_beyond_steps_is_refused():
    with pytest.raises(ValueError, match="read_steps"):
        preset("smoke").with_overrides(["steps=4", "read_steps=5"])
    with pytest.raises(ValueError, match="standardize_projector"):
        preset("smoke").with_overrides(["standardize_projector=yes"])
    with pytest.raises(ValueError, match="vision_lr_scale"):
        preset("smoke").with_overrides(["vision_lr_scale=-1"])


def test_disc_only_has_no_generative_stage(tmp_path):
    cfg = _staged(read_steps=3, align_steps=2, ablation="disc_only").ablated()
    assert cfg.read_steps == 0 and cfg.align_steps == 0
    tr = Trainer(_staged(read_steps=3, ablation="disc_only"), tmp_path)
    rec = tr.step(0)
    assert "nce_loss" in rec and "gen_loss" not in rec


def test_loss_curves_mark_where_the_stages_begin(tmp_path):
    tr = Trainer(_staged(read_steps=3, align_steps=2), tmp_path)
    assert tr.stage_marks() == {"captions end": 2, "joint phase": 3}
    assert Trainer(_staged(), tmp_path / "b").stage_marks() == {}
