"""scripts/rag_probe.py and scripts/served_banners.py: the RAG answers' inner loop and the served check of #20."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_eval_set_places_the_asked_house_by_rank():
    probe = load("rag_probe")
    items = probe.eval_set(3, seed=0)
    assert [layout for layout, _ in items[: len(probe.LAYOUTS)]] == list(probe.LAYOUTS)
    for layout, ex in items:
        name = ex.query.slices[0].text.split("House ")[1].rstrip("?")
        houses = [d.metadata.get("house") or d.slices[0].text.split("House ")[1].split(":")[0] for d in ex.documents]
        assert len(houses) == {"k1": 1, "k5": 5}.get(layout, 3) and houses.count(name) == 1
        if layout.endswith("rank1") or layout == "k1":
            assert houses[0] == name
        if layout.endswith("rank3"):
            assert houses[2] == name
        if layout.startswith("text"):
            assert all(d.modalities == ["text"] for d in ex.documents)


def test_eval_set_asks_the_shape_question_when_told():
    from training.data import builtin_houses

    probe = load("rag_probe")
    shapes = {h.name: h.banner.shape for h in builtin_houses()}
    for _, ex in probe.eval_set(2, seed=0, question="shape"):
        name = ex.query.slices[0].text.split("House ")[1].rstrip("?")
        assert ex.query.slices[0].text.startswith("What shape") and ex.answer == shapes[name]


def test_probe_continues_a_checkpoint_and_reports_every_layout(tiny_ckpt, capsys):
    rows = load("rag_probe").main([
        "--init", str(tiny_ckpt), "--steps", "2", "--every", "2", "--eval-houses", "2", "--batch", "4",
        "--houses", "12", "--threads", "1", "--gold-first", "1", "--context-order", "best_last",
        "--kinds", json.dumps({"rag": 0.5, "bind": 0.5})])
    assert [r["step"] for r in rows] == [0, 2]
    for row in rows:
        assert all(0.0 <= row[k] <= 1.0 for k in ("k1", "k3-rank1", "k3-rank3", "k3", "k5", "text-k3"))
    assert "'k3-rank1'" in capsys.readouterr().out


def test_served_banners_asks_the_server_the_readme_question(tiny_ckpt):
    from training.data import builtin_houses
    from training.phrasing import FAMILIES, HELD_OUT

    result = load("served_banners").main(["--checkpoint", str(tiny_ckpt), "--houses", "2",
                                          "--attributes", "color", "shape", "--families", "--abstention",
                                          "--context-order", "best_last"])
    assert set(result["attributes"]) == {"color", "shape"}
    assert all(v.endswith("/2") and 0 <= int(v.split("/")[0]) <= 2 for v in result["attributes"].values())
    assert result["readme"]["house"] == "Vyd" and result["readme"]["want"] == "blue"
    assert result["context_order"] == "best_last"
    assert sum(int(v.split("/")[1]) for v in result["by_rank_of_the_asked_house"].values()) == 4
    assert set(result["families"]) == set(FAMILIES)
    assert all(v.split(" ")[0].endswith("/2") and (("held out" in v) == (f in HELD_OUT))
               for f, v in result["families"].items())
    # out-of-world questions: houses that are really absent (none of the built-in names), and the
    # false abstentions counted over every in-world question asked (Vyd's two included)
    assert result["abstention"]["absent_houses"].endswith("/40")
    assert result["abstention"]["unanswerable_about_present_houses"].endswith("/2")
    vyd_asked_too = "Vyd" not in {h.name for h in builtin_houses()[:2]}
    assert result["false_abstention"].endswith(f"/{2 * 2 + 2 * vyd_asked_too + 2 * len(FAMILIES)}")


def test_probe_trains_the_vision_side_only_when_asked(tiny_ckpt, tmp_path):
    from model.sugar import SugarModel
    from training.vision import vision_parameters

    before = [p.detach().clone() for p in vision_parameters(SugarModel.from_pretrained(tiny_ckpt).backbone)]
    common = ["--init", str(tiny_ckpt), "--steps", "2", "--every", "2", "--eval-houses", "1", "--batch", "4",
              "--houses", "12", "--threads", "1", "--lr", "1e-2", "--kinds", json.dumps({"blob": 0.5, "rag": 0.5})]
    for flag, moved in (([], False), (["--train-vision"], True)):
        out = tmp_path / str(moved)
        load("rag_probe").main(common + flag + ["--save", str(out)])
        after = list(vision_parameters(SugarModel.from_pretrained(out).backbone))
        assert any(not torch.equal(a.float(), b.float()) for a, b in zip(before, after, strict=True)) is moved


def test_world_suite_reports_attributes_mixed_contexts_and_the_served_rule(tiny_ckpt):
    from training.phrasing import FAMILIES

    row = load("rag_probe").main(["--init", str(tiny_ckpt), "--suite", "world", "--eval-houses", "2",
                                  "--threads", "1", "--abstain-threshold", "0.5"])[0]
    keys = {*(f"attr:{a}" for a in ("color", "shape", "size", "count", "position", "texture")),
            *(f"family:{f}" for f in FAMILIES), "mixed", "mixed_abstain", "false_abstain",
            "abstain:absent", "abstain:unknown", "abstain:text"}
    assert keys <= set(row)
    decided = ("false_abstain", "abstain:absent", "abstain:unknown", "abstain:text")
    for prefix in ("served", "cal"):
        assert {f"{prefix}:{k}" for k in decided} <= set(row)
    # 2 houses x (6 attributes + 8 families + 1 mixed) = 30 answerable items: a 3 % budget allows none
    # at or above the fitted threshold
    assert row["cal:false_abstain"] == 0.0 and isinstance(row["cal:threshold"], float)
    assert all(0.0 <= v <= 1.0 for k, v in row.items() if k not in ("step", "cal:threshold"))
