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
    from index import DocumentIndex
    from model.sugar import read_sugar_config
    from sugar_cli.home import ensure_default

    home = tmp_path / "home"
    ckpt, index = ensure_default(home, tiny_ckpt)
    assert ckpt == tiny_ckpt
    # one index per embedding version: a new shipped checkpoint never meets an old index
    assert index == home / "index" / f"default-{read_sugar_config(tiny_ckpt).embedding_version}"
    idx = DocumentIndex(index)
    assert idx.count() >= 500 and idx.verify()[0]
    assert idx.get("house-" + idx.get(idx.list_ids(0, 1)[0]).metadata["house"].lower()) is not None


@pytest.mark.parametrize("damage", ["missing_dir", "missing_weights", "truncated_weights",
                                    "corrupt_config", "missing_heads"])
def test_default_checkpoint_damage_is_an_error_naming_the_file_and_the_rebuild(
        tiny_ckpt, tmp_path, damage):
    import shutil

    from sugar_cli.home import ensure_default

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    weights = ck / "backbone" / "model.safetensors"
    named = {"missing_dir": ck, "missing_weights": weights, "truncated_weights": weights,
             "corrupt_config": ck / "sugar_config.json", "missing_heads": ck / "heads.safetensors"}[damage]
    if damage == "missing_dir":
        shutil.rmtree(ck)
    elif damage == "missing_weights" or damage == "missing_heads":
        named.unlink()
    elif damage == "truncated_weights":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    else:
        named.write_text("{not json")
    with pytest.raises(SystemExit) as e:
        ensure_default(tmp_path / "home", ck)
    msg = str(e.value)
    assert str(named) in msg and "sugar train --preset shipped" in msg
    assert not (tmp_path / "home" / "index").exists()  # nothing trained or indexed behind the user's back


def test_shipped_checkpoint_is_intact_and_small():
    """The checkpoint in the package: every file present and readable, <= 25 MB."""
    from model.sugar import DEFAULT_CHECKPOINT, check_checkpoint

    cfg = check_checkpoint(DEFAULT_CHECKPOINT)
    assert cfg.embedding_version
    size = sum(f.stat().st_size for f in DEFAULT_CHECKPOINT.rglob("*") if f.is_file())
    assert size <= 25 * 1024 * 1024
    for f in ("training.json", "metrics.jsonl", "loss_curves.png", "eval/eval.json", "eval/eval.md"):
        assert (DEFAULT_CHECKPOINT / f).is_file(), f


def test_serve_refuses_to_start_without_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("SUGAR_CHECKPOINT", str(tmp_path / "missing"))
    monkeypatch.setenv("SUGAR_INDEX", str(tmp_path / "ix"))
    with pytest.raises(SystemExit, match="not a Sugar checkpoint"):
        main(["serve"])


def test_settings_refuse_an_unknown_retrieval_mode(monkeypatch):
    from pydantic import ValidationError

    from server.settings import Settings

    assert Settings().retrieval_mode == "hybrid" and Settings().retrieval_lexical_weight == 0.6
    monkeypatch.setenv("SUGAR_RETRIEVAL_MODE", "bm25")
    with pytest.raises(ValidationError, match="retrieval_mode"):
        Settings()
    monkeypatch.setenv("SUGAR_RETRIEVAL_MODE", "hybrid")
    monkeypatch.setenv("SUGAR_RETRIEVAL_LEXICAL_WEIGHT", "2")
    with pytest.raises(ValidationError, match="retrieval_lexical_weight"):
        Settings()


def test_startup_logs_no_faiss_loader_lines(tmp_path):
    """faiss's loader probes CPU-specific builds and logs 'Could not load library ...' at INFO:
    the CLI keeps it out of the log (issue #21)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "sugar_cli", "index", "stats", "--index", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=300)
    assert "faiss.loader" not in proc.stderr and "Could not load library" not in proc.stderr
    assert proc.returncode != 0 and "no index here" in proc.stderr


def test_the_rebuild_recipe_of_a_damaged_shipped_checkpoint_is_its_recorded_history(tmp_path, monkeypatch):
    """What `sugar serve` prints to rebuild the shipped checkpoint is every run of its own
    training.json history, in order, as recorded (not a summary that builds another model)."""
    import json
    import shutil

    import model.sugar as ms
    from sugar_cli.home import ensure_default

    history = json.loads((ms.DEFAULT_CHECKPOINT / "training.json").read_text())["history"]
    assert len(history) >= 2 and all(run["command"].startswith("sugar train ") for run in history)
    assert ms.rebuild_commands() == [run["command"] for run in history]
    ck = tmp_path / "shipped"
    shutil.copytree(ms.DEFAULT_CHECKPOINT, ck, ignore=shutil.ignore_patterns("eval", "*.png"))
    (ck / "heads.safetensors").unlink()
    monkeypatch.setattr(ms, "DEFAULT_CHECKPOINT", ck)
    with pytest.raises(SystemExit) as e:
        ensure_default(tmp_path / "home")
    msg = str(e.value)
    assert str(ck / "heads.safetensors") in msg
    at = [msg.index(run["command"]) for run in history]  # every run, in the recorded order
    assert at == sorted(at)


def test_the_cli_is_one_module_per_command_and_its_help_loads_no_torch():
    import subprocess
    import sys

    from sugar_cli import bench, main
    from sugar_cli.commands import embed, eval, index, serve, train

    assert main.COMMANDS == (embed, train, eval, serve, index, bench)
    for module in (*main.COMMANDS, *bench.BENCHES):  # each adds its own parser
        assert callable(module.add_parser)
    code = ("import sys; from sugar_cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'faiss', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # `sugar --help`, `sugar index stats` start without the heavy imports
