"""The `sugar` command through main(argv): embed and the kernel benchmark."""

from __future__ import annotations

import json

import pytest

from sugar_cli.main import main
from tests.conftest import make_image


def test_embed_prints_slices_in_command_line_order(tiny_ckpt, tmp_path, capsys):
    img = tmp_path / "a.png"
    make_image(1).save(img)
    assert main(["embed", "--checkpoint", str(tiny_ckpt), "--text", "a red circle",
                 "--image", str(img), "--text", "after", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["type"] for s in out["slices"]] == ["text", "image", "text"]
    assert len(out["embedding"]) == 32
    assert out["embedding_version"]


def test_embed_human_output(tiny_ckpt, capsys):
    assert main(["embed", "--checkpoint", str(tiny_ckpt), "--text", "hello"]) == 0
    out = capsys.readouterr().out
    assert "1 slices, D=32" in out and "summary g" in out


def test_embed_errors(tmp_path):
    with pytest.raises(SystemExit, match="at least one --text or --image"):
        main(["embed"])
    with pytest.raises(SystemExit, match="cannot read image"):
        main(["embed", "--image", str(tmp_path / "missing.png")])


def test_bench_kernels_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "kernels", "--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"kernels", "embedding"} <= data.keys()
    for rec in data["kernels"]:
        assert rec["max_rel_diff_log"] < 1e-4
        assert rec["tslearn_vs_sugar"] > 0 and rec["sugar_vs_matmul"] > 0
    printed = capsys.readouterr().out
    assert "tslearn" in printed and "samples/s" in printed


def test_serve_default_home_indexes_the_builtin_collection(tiny_ckpt, tmp_path, monkeypatch):
    import shutil

    from index import DocumentIndex
    from sugar_cli.main import ensure_default

    home = tmp_path / "home"
    shutil.copytree(tiny_ckpt, home / "checkpoints" / "tiny")  # trained already: no training here
    ckpt, index = ensure_default(home)
    assert ckpt == home / "checkpoints" / "tiny"
    idx = DocumentIndex(index)
    assert idx.count() >= 500 and idx.verify()[0]
    assert idx.get("house-" + idx.get(idx.list_ids(0, 1)[0]).metadata["house"].lower()) is not None


def test_serve_refuses_to_start_without_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("SUGAR_CHECKPOINT", str(tmp_path / "missing"))
    monkeypatch.setenv("SUGAR_INDEX", str(tmp_path / "ix"))
    with pytest.raises(SystemExit, match="not a Sugar checkpoint"):
        main(["serve"])
