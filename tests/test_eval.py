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
    for attr in ("color", "size", "count", "position", "texture"):
        assert attr in res["minimal_pairs"]
    assert len(res["position_curve"]) == 5
    assert "fashion_mnist" not in res or {"vqa", "retrieval"} <= res["fashion_mnist"].keys()
    for f in ("eval.json", "eval.md", "eval_bars.png", "position_curve.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 100
    assert "| retrieval.r@1 |" in capsys.readouterr().out


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
