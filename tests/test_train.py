"""Training: smoke run through the CLI, exact resume, reproducibility, JSONL data, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.sugar import SugarModel
from sugar_cli.main import main
from tests.conftest import make_image
from training.collate import encode_gen
from training.config import TrainConfig, preset
from training.data import GenExample, text
from training.loop import Trainer, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "ckpt"
    assert main(["train", "--preset", "smoke", "--out", str(out), "--steps", "6"]) == 0
    return out


def test_train_writes_a_loadable_checkpoint_with_logs(smoke_ckpt):
    model = SugarModel.from_pretrained(smoke_ckpt)
    assert model.embedding_version
    metrics = [json.loads(line) for line in (smoke_ckpt / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(6))
    assert {"gen_loss", "nce_loss", "loss", "lr"} <= metrics[0].keys()
    assert (smoke_ckpt / "loss_curves.png").stat().st_size > 1000
    info = json.loads((smoke_ckpt / "training.json").read_text())
    assert info["steps"] == 6 and info["seed"] == 0 and "code_version" in info


def test_a_warm_start_begins_from_the_checkpoint_s_weights(smoke_ckpt, tmp_path):
    """`init`: the run starts from a checkpoint's weights (not from random init, not from its
    optimiser state) and trains on: a continuation with another data mix."""
    saved = SugarModel.from_pretrained(smoke_ckpt)
    cfg = preset("smoke").with_overrides([f"init={json.dumps(str(smoke_ckpt))}", "steps=2",
                                          'gen_kinds={"rag": 1.0}'])
    warm = Trainer(cfg, tmp_path / "warm")
    start = warm.model.state_dict()
    for k, v in saved.state_dict().items():
        assert torch.equal(start[k], v), k
    head = next(k for k, v in start.items() if k.startswith("heads.") and v.is_floating_point() and v.dim() == 2)
    cold = Trainer(preset("smoke").with_overrides(["steps=2", "seed=1"]), tmp_path / "cold")
    assert not torch.equal(cold.model.state_dict()[head], start[head])
    assert main(["train", "--preset", "smoke", "--set", f"init={json.dumps(str(smoke_ckpt))}",
                 "--steps", "2", "--out", str(tmp_path / "out")]) == 0
    after = SugarModel.from_pretrained(tmp_path / "out")
    assert not torch.equal(after.state_dict()[head], saved.state_dict()[head])  # trained on


def test_context_order_is_trained_and_saved(smoke_ckpt, tmp_path):
    """`context_order` on a warm start: the saved checkpoint's prompts carry it (the server
    renders its RAG prompts with it); unknown orders and gold shares are refused."""
    assert SugarModel.from_pretrained(smoke_ckpt).config.prompts.context_order == "ranked"
    assert main(["train", "--preset", "smoke", "--set", f"init={json.dumps(str(smoke_ckpt))}", "--set",
                 "context_order=best_last", "--set", "rag_gold_first=0.9", "--steps", "2",
                 "--out", str(tmp_path / "out")]) == 0
    assert SugarModel.from_pretrained(tmp_path / "out").config.prompts.context_order == "best_last"
    with pytest.raises(ValueError, match="context_order must be one of"):
        preset("smoke").with_overrides(["context_order=random"])
    with pytest.raises(ValueError, match="rag_gold_first must be a probability"):
        preset("smoke").with_overrides(["rag_gold_first=2"])


def test_resume_is_exact(tmp_path):
    cfg = preset("smoke").with_overrides(["steps=6", "checkpoint_every=3"])
    straight = Trainer(cfg, tmp_path / "a")
    ref = [straight.step(s)["loss"] for s in range(6)]
    first = Trainer(cfg.with_overrides(["steps=6"]), tmp_path / "b")
    for s in range(3):
        first.metrics.append(first.step(s))
    first.save_state(2)
    resumed = Trainer(cfg, tmp_path / "b")
    assert resumed.load_state() and resumed.start_step == 3
    got = [resumed.step(s)["loss"] for s in range(3, 6)]
    assert got == pytest.approx(ref[3:], rel=1e-5, abs=1e-6)


def test_same_seed_same_losses_other_seed_differs(tmp_path):
    cfg = preset("smoke").with_overrides(["steps=2"])
    a = [Trainer(cfg, tmp_path / "a").step(s)["loss"] for s in range(2)]
    b = [Trainer(cfg, tmp_path / "b").step(s)["loss"] for s in range(2)]
    c = [Trainer(cfg.with_overrides(["seed=1"]), tmp_path / "c").step(s)["loss"] for s in range(2)]
    assert a == pytest.approx(b, rel=1e-6)
    assert a != pytest.approx(c, rel=1e-3)


def test_labels_only_on_response_tokens(tmp_path):
    tr = Trainer(preset("smoke"), tmp_path)
    ex = GenExample(text("What colour?"), "red", "vqa")
    batch, labels = encode_gen(tr.model, [ex])
    tok = tr.model.backbone.tokenizer
    assert tok.decode(labels[labels != -100]) == " red</s>"
    assert (labels[0, : int((labels[0] != -100).nonzero()[0])] == -100).all()


@pytest.mark.parametrize("ablation,present,absent", [
    ("gen_only", {"gen_loss"}, {"nce_loss"}),
    ("disc_only", {"nce_loss"}, {"gen_loss"}),
    ("joint", {"gen_loss", "nce_loss"}, set()),
])
def test_ablation_switches(tmp_path, ablation, present, absent):
    tr = Trainer(preset("smoke").with_overrides([f'ablation="{ablation}"']), tmp_path)
    rec = tr.step(0)
    assert present <= rec.keys() and not (absent & rec.keys())


def test_last_token_and_no_ga_variants(tmp_path):
    tr = Trainer(preset("smoke").with_overrides(['ablation="last_token"']), tmp_path / "a")
    assert tr.model.config.pooling == "last"
    tr2 = Trainer(preset("smoke").with_overrides(['ablation="no_ga"']), tmp_path / "b")
    assert not tr2.cfg.use_ga and "nce_loss" in tr2.step(0)


def test_train_on_user_jsonl(tmp_path):
    make_image(1).save(tmp_path / "a.png")
    make_image(2).save(tmp_path / "b.png")
    img = {"type": "image", "path": "a.png"}
    rows = [
        {"task": "caption", "slices": [img], "answer": "noise one"},
        {"task": "vqa", "slices": [img, {"type": "text", "text": "What is it?"}], "answer": "noise"},
        {"task": "pair", "query": {"slices": [{"type": "text", "text": "first"}]},
         "positive": {"slices": [img]}},
        {"task": "pair", "query": {"slices": [{"type": "text", "text": "second"}]},
         "positive": {"slices": [{"type": "image", "path": "b.png"}]}},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "ck"
    assert main(["train", "--preset", "smoke", "--data", str(tmp_path / "d.jsonl"), "--out", str(out),
                 "--steps", "2", "--set", "pair_batch=2", "--set", "gen_batch=2"]) == 0
    assert SugarModel.from_pretrained(out).embedding_version


def test_bad_jsonl_fails_with_line_numbers(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"task": "vqa"}\n')
    from model.jsonl import JsonlError

    with pytest.raises(JsonlError, match=r"bad.jsonl:1: answer: missing"):
        main(["train", "--preset", "smoke", "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "x")])


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys \\['stepz'\\]"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="ablation must be one of"):
        TrainConfig(ablation="nope")


def test_lora_recipe_parses():
    cfg = TrainConfig.from_file(ROOT / "training" / "recipes" / "llava-1.5-7b-lora.json")
    assert cfg.lora_rank > 0 and cfg.backbone.startswith("llava-hf/")


def test_one_gpu_recipe_per_family_parses():
    """training/recipes/: a bf16 LoRA recipe for each family's real base (a hub id)."""
    bases = {}
    for f in sorted((ROOT / "training" / "recipes").glob("*.json")):
        cfg = TrainConfig.from_file(f)
        assert cfg.lora_rank > 0 and cfg.bf16 and cfg.backbone.count("/") == 1, f.name
        bases[f.name] = cfg.backbone
    assert {"Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct", "HuggingFaceTB/SmolVLM-Instruct",
            "llava-hf/llava-1.5-7b-hf"} <= set(bases.values())


def test_lora_on_tiny_backbone_trains_and_merges(tmp_path):
    cfg = preset("smoke").with_overrides(["steps=2", "lora_rank=4"])
    tr = Trainer(cfg, tmp_path / "ck")
    trainable = {n for n, p in tr.model.vlm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    tr.run()
    m = SugarModel.from_pretrained(tmp_path / "ck")
    assert not any("lora" in k for k in m.vlm.state_dict())


@pytest.mark.slow  # two torch processes on two cores: .ci/run runs -m slow
def test_ddp_two_processes_match_single_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = str(ROOT / "tests" / "ddp_worker.py")
    single = tmp_path / "single.json"
    double = tmp_path / "ddp.json"
    subprocess.run([sys.executable, worker, str(single), "3"], check=True, env=env, cwd=tmp_path,
                   timeout=300)
    from tests.server_fixtures import free_port

    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(free_port()), worker, str(double), "3"], check=True, env=env,
                   cwd=tmp_path, timeout=300)
    a, b = json.loads(single.read_text()), json.loads(double.read_text())
    assert a["world"] == 1 and b["world"] == 2
    for ra, rb in zip(a["records"], b["records"], strict=True):
        for key in ("gen_loss", "nce_loss", "loss"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), (ra["step"], key)
    _ = torch


def test_align_steps_feed_only_captions_then_the_mix(tmp_path):
    cfg = preset("smoke").with_overrides(["align_steps=2", "gen_batch=8"])
    tr = Trainer(cfg, tmp_path)
    assert {g.kind for s in (0, 1) for g in tr.batch(s).gen} == {"caption"}
    later = {g.kind for s in range(2, 8) for g in tr.batch(s).gen}
    assert "caption" in later and len(later) > 2  # vqa-*, rag ... come back after stage 1
    assert all(len(tr.batch(s).pairs) == cfg.pair_batch for s in (0, 3))  # pairs unchanged


def test_jsonl_pools_pick_tasks_by_weight(tmp_path):
    from training.data import JsonlPools

    make_image(1).save(tmp_path / "a.png")
    img = {"type": "image", "path": "a.png"}
    rows = [{"task": "caption", "slices": [img], "answer": "c"}] + [
        {"task": "vqa", "slices": [img, {"type": "text", "text": "Q?"}], "answer": f"a{i}"} for i in range(9)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pools = JsonlPools(tmp_path / "d.jsonl")
    import random

    rng = random.Random(0)
    assert {pools.gen_example(rng, {"caption": 1.0}).kind for _ in range(20)} == {"caption"}
    assert {pools.gen_example(rng, {"vqa": 1.0}).kind for _ in range(20)} == {"vqa"}
    # weights over tasks the file lacks fall back to every example
    assert {pools.gen_example(rng, {"rag": 1.0}).kind for _ in range(200)} == {"caption", "vqa"}


def test_substitutions_and_drops_are_recorded_in_training_json(tmp_path, monkeypatch):
    import training.data as data

    # Fashion-MNIST absent: its share is drawn as VQA / caption examples, counted
    monkeypatch.setattr(data, "fashion_available", lambda root=data.FASHION_DIR: False)
    cfg = preset("smoke").with_overrides(["steps=2", 'gen_kinds={"fashion": 1.0}', 'pair_kinds={"fashion": 1.0}'])
    out = train(cfg, tmp_path / "a")
    report = json.loads((out / "training.json").read_text())["data_report"]
    assert report["substituted"] == {"generative fashion -> vqa (Fashion-MNIST not installed)": 8,
                                     "pair fashion -> caption (Fashion-MNIST not installed)": 16}
    # a JSONL without pair lines: every pair example of every step is dropped, and said so
    make_image(1).save(tmp_path / "a.png")
    row = {"task": "caption", "slices": [{"type": "image", "path": "a.png"}], "answer": "noise"}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    cfg = preset("smoke").with_overrides(["steps=2", "pair_batch=3", f'data="{tmp_path / "d.jsonl"}"'])
    out = train(cfg, tmp_path / "b")
    report = json.loads((out / "training.json").read_text())["data_report"]
    assert report["dropped"] == {"pair examples: the data has none": 6}


def _image_token_penalty(tr: Trainer) -> float:
    """The regulariser's value on the projector's image tokens of 24 training scenes."""
    from training.losses import image_token_loss

    backbone = tr.model.backbone
    with torch.no_grad():
        y = backbone.image_tokens([tr.pools.image(sc) for sc in tr.pools.scenes[:24]])
        return float(image_token_loss(y.reshape(-1, y.shape[-1]), backbone.text_embedding_rms()))


def test_image_reg_keeps_image_tokens_centred_and_at_text_scale(tmp_path):
    # the regulariser (ρ = image_reg) pulls the image tokens' common vector down and
    # their spread to the text scale; plain training does not
    runs = {}
    for rho in (0.0, 5.0):
        cfg = preset("smoke").with_overrides(["steps=30", "warmup=2", "lr=0.01", f"image_reg={rho}"])
        tr = Trainer(cfg, tmp_path / f"r{rho}")
        before = _image_token_penalty(tr)
        recs = [tr.step(s) for s in range(30)]
        runs[rho] = (before, _image_token_penalty(tr), recs)
    (b0, a0, recs0), (b5, a5, recs5) = runs[0.0], runs[5.0]
    assert b0 == pytest.approx(b5)  # same seed, same start
    assert "image_reg_loss" not in recs0[-1] and "image_reg_loss" in recs5[-1]
    assert a5 < 0.5 * b5 and a5 < 0.5 * a0
    # the penalty is part of the logged total: L = gen + λ(nce + β struct) + ρ image_reg
    r = recs5[-1]
    total = r["gen_loss"] + r["nce_loss"] + 0.1 * r.get("struct_loss", 0.0) + 5.0 * r["image_reg_loss"]
    assert r["loss"] == pytest.approx(total, rel=1e-5)


def test_a_training_step_runs_at_most_three_functions_of_the_loop(tmp_path):
    """Issue #21: loop.py keeps the Trainer and nothing else; the step's work (batches,
    encoding, forward, losses, schedule) lives in the modules that own it."""
    import sys

    import training.loop as loop

    tr = Trainer(preset("smoke"), tmp_path)
    tr.step(0)  # warm (lazy imports)
    entered: list[str] = []

    def profile(frame, event, _arg):
        if event == "call" and frame.f_code.co_filename == loop.__file__:
            entered.append(frame.f_code.co_qualname)

    sys.setprofile(profile)
    try:
        rec = tr.step(1)
    finally:
        sys.setprofile(None)
    assert {"gen_loss", "nce_loss"} <= rec.keys()
    assert len(entered) <= 3, entered
    assert len(Path(loop.__file__).read_text().splitlines()) <= 350
