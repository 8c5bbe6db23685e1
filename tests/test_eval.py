"""`sugar eval`: the JSON keys the issue fixes, the markdown report and the plots."""

from __future__ import annotations

import json

import pytest

from sugar_cli.main import main
from training.evaluate import _contains_run, _rank_metrics

REQUIRED = [
    ("retrieval", "r@1"), ("retrieval", "r@5"), ("retrieval", "r@10"), ("retrieval", "mrr"),
    ("retrieval_cosine", "r@1"), ("minimal_pairs", "overall"), ("vqa", "overall"),
    ("rag", "no_retrieval"), ("rag", "own_retrieval"), ("rag", "gold"),
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "ck"
    assert main(["train", "--preset", "smoke", "--out", str(out), "--steps", "2"]) == 0
    return out


def test_eval_writes_json_report_and_plots(smoke, tmp_path, capsys):
    js = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(smoke), "--quick", "--json", str(js),
                 "--out", str(tmp_path / "rep")]) == 0
    res = json.loads(js.read_text())
    for group, key in REQUIRED:
        assert 0.0 <= res[group][key] <= 1.0, (group, key)
    for split in (res, res["seen"]):
        for attr in ("color", "shape", "size", "count", "position", "texture"):
            assert attr in split["minimal_pairs"], attr  # every attribute, shape included, both splits
        assert 0.0 <= split["vqa_blank"]["overall"] <= 1.0
        for group, key in REQUIRED:
            assert 0.0 <= split[group][key] <= 1.0, (group, key)
    assert len(res["position_curve"]) == 5 and len(res["seen"]["position_curve"]) == 5
    for split in (res, res["seen"]):
        tok = split["image_tokens"]
        assert tok["norm_ratio"] > 0 and 0 <= tok["common_share"] <= 1 and -1 <= tok["cos_between_images"] <= 1
    # baselines mirror the result paths: chance everywhere, majority where answers are scored
    b = res["baselines"]
    assert b["minimal_pairs"]["color"]["chance"] == 0.25
    assert b["vqa"]["color"]["chance"] == pytest.approx(1 / 6) and 0 < b["vqa"]["color"]["majority"] <= 1
    assert b["seen"]["retrieval"]["r@1"]["chance"] < b["seen"]["retrieval"]["r@5"]["chance"]
    assert {"chance", "majority"} <= b["rag"]["own_retrieval"].keys()
    # the server's hybrid retrieval: a 2-step model cannot rank houses, their names' words can
    for split in (res, res["seen"]):
        assert split["rag"]["hybrid"]["retrieval_r@1"] >= 0.9
        assert 0.0 <= split["rag"]["hybrid"]["own_retrieval"] <= 1.0
    assert b["rag"]["hybrid"]["retrieval_r@1"]["chance"] == b["rag"]["retrieval_r@1"]["chance"]
    assert "| rag.hybrid.retrieval_r@1 |" in (tmp_path / "rep" / "eval.md").read_text()
    assert "fashion_mnist" not in res or {"vqa", "retrieval"} <= res["fashion_mnist"].keys()
    for f in ("eval.json", "eval.md", "eval_bars.png", "position_curve.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 100
    assert "| retrieval.r@1 |" in capsys.readouterr().out


def test_image_token_statistics_against_known_projectors():
    import torch

    from model.config import SugarConfig, TinyConfig
    from model.sugar import build_tiny_model
    from tests.conftest import TEST_TINY
    from training.evaluate import EvalConfig, Evaluator

    model = build_tiny_model(SugarConfig(embed_dim=32), TinyConfig(**TEST_TINY))
    ev = Evaluator(model, EvalConfig.quick(), "seen")
    proj = model.vlm.model.multi_modal_projector
    text_rms = float(model.vlm.get_input_embeddings().weight.pow(2).mean().sqrt())
    with torch.no_grad():
        proj.linear_2.weight.zero_()  # every image token is the bias: one shared vector
        proj.linear_2.bias.copy_(torch.linspace(-1, 1, proj.linear_2.bias.numel()))
        tok = ev.image_tokens()["image_tokens"]
        bias_rms = float(proj.linear_2.bias.pow(2).mean().sqrt())
        assert tok["common_share"] == pytest.approx(1.0, abs=1e-5)
        assert tok["cos_between_images"] == pytest.approx(1.0, abs=1e-5)
        assert tok["norm_ratio"] == pytest.approx(bias_rms / text_rms, rel=1e-4)
        # tokens that differ image to image: the shared share and the cosine fall
        proj.linear_2.weight.normal_()
        proj.linear_2.bias.zero_()
        spread = ev.image_tokens()["image_tokens"]
        assert spread["common_share"] < 0.99 and spread["cos_between_images"] < 0.99


def test_rank_metrics_against_hand_computed():
    import torch

    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.1, 0.2, 0.3]])
    m = _rank_metrics(sim, [{0}, {1}, {0, 1}])
    # ranks: 1, 2, 2 (doc 1 is second for query 2)
    assert m["r@1"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_relevance_is_an_ordered_run():
    assert _contains_run(["a", "b", "c"], ["b", "c"])
    assert not _contains_run(["a", "b", "c"], ["c", "b"])


def test_chance_rank_metrics_match_enumeration():
    import itertools

    from training.evaluate import _chance_rank_metrics

    n, rel = 5, {1, 3}
    ranks = []
    for perm in itertools.permutations(range(n)):
        ranks.append(min(perm.index(j) for j in rel) + 1)
    exact = _chance_rank_metrics(n, [rel])
    assert exact["r@1"] == pytest.approx(sum(r <= 1 for r in ranks) / len(ranks))
    assert exact["r@5"] == pytest.approx(1.0)
    assert exact["mrr"] == pytest.approx(sum(1 / r for r in ranks) / len(ranks))


def test_claims_verdicts():
    from sugar_cli.ablations import claims_table

    def runs(v):
        return [{"seen.vqa.overall": x} for x in v]

    for joint, gen, verdict in (([0.5, 0.52, 0.51], [0.3, 0.31, 0.29], "| reproduced |"),
                                ([0.5, 0.6, 0.4], [0.45, 0.5, 0.4], "not reproduced (within noise)"),
                                ([0.3, 0.31, 0.29], [0.5, 0.52, 0.51], "| reversed |"),
                                ([0.5], [0.3], "one seed")):
        table = claims_table({"joint": runs(joint), "gen_only": runs(gen)})
        line = next(x for x in table.splitlines() if x.startswith("| joint > generative-only on VQA"))
        assert verdict in line, line


def test_image_reliance_counts_runs_whose_answers_use_the_image():
    from sugar_cli.ablations import image_reliance

    rows = {"joint": [{"seen.vqa.overall": 0.7, "seen.vqa_blank.overall": 0.4},
                      {"seen.vqa.overall": 0.5, "seen.vqa_blank.overall": 0.52}],
            "disc_only": [{"seen.vqa.overall": 0.0, "seen.vqa_blank.overall": 0.0}]}
    text = image_reliance(rows)
    assert "joint: seen VQA above its image-blanked score in 1 of 2 runs (smallest margin -0.020)" in text
    assert "disc_only" not in text  # no generative loss, no answers: nothing to say


def test_ablation_evaluations_are_reused_only_under_the_same_settings(tmp_path, monkeypatch):
    import json

    import sugar_cli.ablations as ab
    import training.evaluate as ev
    from training.evaluate import EvalConfig

    calls = []

    def fake_evaluate(ckpt, out_dir, cfg):
        calls.append(cfg.n_scenes)
        out_dir.mkdir(parents=True, exist_ok=True)
        res = {"vqa": {"overall": 0.5}, "n": cfg.n_scenes}
        (out_dir / "eval.json").write_text(json.dumps(res))
        return res

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    ckpt = tmp_path / "joint-seed0"
    assert ab._evaluated(ckpt, EvalConfig.quick())["n"] == EvalConfig.quick().n_scenes
    assert ab._evaluated(ckpt, EvalConfig.quick())["n"] == EvalConfig.quick().n_scenes  # reused
    assert ab._evaluated(ckpt, EvalConfig.medium())["n"] == EvalConfig.medium().n_scenes  # other settings
    assert calls == [EvalConfig.quick().n_scenes, EvalConfig.medium().n_scenes]
