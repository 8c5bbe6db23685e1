"""Checkpoint I/O: round trip, embedding version, errors that name the file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model.sample import Sample
from model.sugar import CheckpointError, SugarModel, read_training_info
from tests.conftest import make_image


def test_layout_and_round_trip(tiny_model, tiny_ckpt):
    assert sorted(p.name for p in tiny_ckpt.iterdir()) == [
        "backbone", "heads.safetensors", "sugar_config.json", "training.json",
    ]
    backbone_files = {p.name for p in (tiny_ckpt / "backbone").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= backbone_files
    assert not any("heads" in f for f in backbone_files), "backbone/ holds the HF model only"
    cfg = json.loads((tiny_ckpt / "sugar_config.json").read_text())
    for key in ("embed_dim", "pooling", "hidden_layer", "kernel_sigma", "kernel_gamma",
                "length_normalization", "prompts", "format_version", "embedding_version"):
        assert key in cfg
    assert read_training_info(tiny_ckpt) == {"note": "random init, tests"}
    loaded = SugarModel.from_pretrained(tiny_ckpt)
    s = [Sample.build(["round", make_image(1), "trip"])]
    torch.testing.assert_close(loaded.embed(s).slices, tiny_model.embed(s).slices)
    assert loaded.embedding_version == tiny_model.embedding_version != ""


def test_embedding_version_tracks_the_vectors(tiny_model):
    v0 = tiny_model.compute_embedding_version()
    assert tiny_model.compute_embedding_version() == v0
    w = tiny_model.heads.text_proj.weight
    with torch.no_grad():
        w.add_(1e-3)
        v1 = tiny_model.compute_embedding_version()
        w.sub_(1e-3)
    assert v1 != v0
    other = SugarModel(tiny_model.backbone, tiny_model.config.replace(pooling="last"))
    other.heads.load_state_dict(tiny_model.heads.state_dict())
    assert other.compute_embedding_version() != v0


@pytest.mark.parametrize(
    "damage,name,message",
    [
        (lambda p: (p / "sugar_config.json").unlink(), "sugar_config.json", "missing"),
        (lambda p: (p / "sugar_config.json").write_text("{oops"), "sugar_config.json", "corrupt JSON"),
        (lambda p: (p / "sugar_config.json").write_text('{"pooling": "max"}'), "sugar_config.json", "invalid"),
        (lambda p: (p / "heads.safetensors").unlink(), "heads.safetensors", "missing"),
        (lambda p: (p / "heads.safetensors").write_bytes(b"\x00" * 20), "heads.safetensors", "corrupt"),
        (lambda p: _truncate(p / "backbone" / "model.safetensors"), "model.safetensors", "corrupt"),
        (lambda p: shutil.rmtree(p / "backbone"), "backbone", "missing backbone"),
    ],
)
def test_damaged_checkpoint_names_the_file(tiny_ckpt, tmp_path, damage, name, message):
    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    damage(ck)
    with pytest.raises(CheckpointError) as e:
        SugarModel.from_pretrained(ck)
    assert e.value.path.name == name
    assert message in str(e.value)


def _truncate(f):
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        SugarModel.from_pretrained(tmp_path / "none")


def test_a_retired_config_key_is_ignored_an_unknown_one_refused():
    """`backbone_family` was written by earlier versions and read by nothing (retired, #21):
    checkpoints carrying it still load; a key nobody ever wrote is still an error."""
    from model.config import SugarConfig

    assert SugarConfig.from_dict({"backbone_family": "llava", "embed_dim": 64}).embed_dim == 64
    with pytest.raises(ValueError, match="unknown keys"):
        SugarConfig.from_dict({"backbone_familly": "llava"})
