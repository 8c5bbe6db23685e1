"""Backbone seam, tiny LLaVA, slice spans, pooling, and the vLLM-compatible layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from model.families import load_backbone
from model.families.llava import LlavaBackbone
from model.heads import pool_slices
from model.prompts import embedding_prompt
from model.sample import Sample
from tests.conftest import make_image


def test_spans_text_image_text_image(tiny_model):
    bb = tiny_model.backbone
    n_img = bb.image_token_count()
    s1 = Sample.build(["a red circle", make_image(1), "and a square", make_image(2)])
    s2 = Sample.build([make_image(3), "short"])
    batch = tiny_model.encode([s1, s2])
    B, T = batch.input_ids.shape
    assert batch.slice_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert batch.slice_is_image.tolist()[0] == [False, True, False, True]
    ids = batch.input_ids
    for b, sample in enumerate((s1, s2)):
        for k, sl in enumerate(sample.slices):
            pos = (batch.token_slice[b] == k).nonzero()[:, 0]
            assert len(pos) > 0
            assert (pos[1:] - pos[:-1] == 1).all(), "a slice is one contiguous token run"
            if sl.type == "image":
                assert len(pos) == n_img
                assert (ids[b, pos] == bb.image_token_id).all()
            else:
                decoded = bb.tokenizer.decode(ids[b, pos])
                assert decoded.strip() == sl.text  # the word keeps its leading space
    # padding (right) belongs to no slice; image tokens are never outside image slices
    assert (batch.token_slice[batch.attention_mask == 0] == -1).all()
    img_tok = ids == bb.image_token_id
    assert batch.slice_is_image.gather(1, batch.token_slice.clamp_min(0))[img_tok].all()


def test_encode_equals_processor(tiny_model):
    bb = tiny_model.backbone
    s = Sample.build(["x", make_image(4), "y z", make_image(5)])
    p = embedding_prompt(s, tiny_model.config.prompts)
    ours = bb.encode([p])
    theirs = bb.processor(text=[p.text], images=p.images, return_tensors="pt")
    assert torch.equal(ours.input_ids, theirs["input_ids"])
    assert torch.equal(ours.pixel_values, theirs["pixel_values"])


def test_pooling_matches_a_loop_reference():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 5, generator=g)
    token_slice = torch.tensor([[-1, 0, 0, 1, 1, 1, -1], [2, 2, -1, 0, 1, -1, -1]])
    mean = pool_slices(hidden, token_slice, 3, "mean")
    last = pool_slices(hidden, token_slice, 3, "last")
    for b in range(2):
        for k in range(3):
            pos = [t for t in range(7) if token_slice[b, t] == k]
            if not pos:
                assert (mean[b, k] == 0).all() and (last[b, k] == 0).all()
                continue
            torch.testing.assert_close(mean[b, k], hidden[b, pos].mean(0))
            torch.testing.assert_close(last[b, k], hidden[b, pos[-1]])


def test_embeddings_shapes_norms_and_batch_independence(tiny_model):
    samples = [
        Sample.build(["one", make_image(6), "two", make_image(7)]),
        Sample.build(["just text"]),
        Sample.build([make_image(8)]),
    ]
    e = tiny_model.embed(samples)
    assert e.slices.shape == (3, 4, 32) and e.summary.shape == (3, 32)
    norms = e.slices.norm(dim=-1)
    torch.testing.assert_close(norms[e.mask], torch.ones(int(e.mask.sum())))
    assert (norms[~e.mask] == 0).all()
    torch.testing.assert_close(e.summary.norm(dim=-1), torch.ones(3))
    alone = tiny_model.embed(samples[1:2])
    torch.testing.assert_close(alone.slices[0, :1], e.slices[1, :1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_embed_batches_equals_one_padded_batch(tiny_model, training):
    # the training step embeds queries apart from documents (each padded to its own longest);
    # the result equals one batch of both, batch statistics before the heads included
    queries = [Sample.build(["a red circle"]), Sample.build(["two"])]
    docs = [Sample.build([make_image(1), "a long caption under the figure", make_image(2), "more"]),
            Sample.build([make_image(3)])]
    saved = {k: v.clone() for k, v in tiny_model.heads.state_dict().items()}  # running statistics
    tiny_model.train(training)
    try:
        with torch.no_grad():
            one = tiny_model.embed_batch(tiny_model.encode(queries + docs))
            two = tiny_model.embed_batches([tiny_model.encode(queries), tiny_model.encode(docs)])
    finally:
        tiny_model.eval()
        tiny_model.heads.load_state_dict(saved)
    torch.testing.assert_close(two.slices, one.slices, atol=1e-5, rtol=1e-4)
    assert torch.equal(two.mask, one.mask) and torch.equal(two.is_image, one.is_image)
    torch.testing.assert_close(two.summary, one.summary, atol=1e-5, rtol=1e-4)


def test_last_token_pooling_config(tiny_model):
    from model.sugar import SugarModel

    cfg = tiny_model.config.replace(pooling="last")
    m = SugarModel(tiny_model.backbone, cfg)
    m.heads.load_state_dict(tiny_model.heads.state_dict())
    s = [Sample.build(["several words of text", make_image(9)])]
    a, b = tiny_model.embed(s), m.embed(s)
    assert not torch.allclose(a.slices[0, 0], b.slices[0, 0])


def test_saved_layout_loads_in_transformers_with_identical_outputs(tiny_model, tmp_path):
    bb = tiny_model.backbone
    bb.save(tmp_path / "bb")
    with safe_open(str(tmp_path / "bb" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    vision = [k for k in keys if k.startswith("vision_tower.")]
    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)
    re = load_backbone(tmp_path / "bb")
    assert isinstance(re, LlavaBackbone)
    s = Sample.build(["check", make_image(10), "outputs"])
    p = embedding_prompt(s, tiny_model.config.prompts)
    batch = bb.encode([p])
    with torch.no_grad():
        a = bb.model(**batch.model_inputs()).logits
        b = re.model(**re.encode([p]).model_inputs()).logits
    assert torch.equal(a, b)


def test_unsupported_family_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="config.json: model_type 'mamba' is not supported"):
        load_backbone(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        load_backbone(tmp_path / "nope")


def test_dct_patch_init_reads_colour_the_same_wherever_the_object_edge_falls():
    from model.families.llava import dct_patch_init_

    conv = torch.nn.Conv2d(3, 24, kernel_size=8, stride=8, bias=False)
    dct_patch_init_(conv.weight)
    w = conv.weight.detach().reshape(24, -1)
    assert torch.allclose(w @ w.T, torch.eye(24), atol=1e-5)  # orthonormal filters
    colour = torch.tensor([0.9, -0.4, 0.2])
    dc = []
    for mask in (torch.ones(8, 8), torch.tril(torch.ones(8, 8)), torch.zeros(8, 8).index_fill_(1, torch.arange(3), 1)):
        patch = colour[:, None, None] * mask  # the object covers `mask`, the background is 0
        out = conv(patch[None]).detach().reshape(-1)
        dc.append(out[:3] / out[:3].norm())  # channels 0-2: the DC filter of R, G, B
    for d in dc:
        assert torch.allclose(d, colour / colour.norm(), atol=1e-5)


def test_tiny_config_image_mean_and_patch_init_round_trip(tmp_path):
    from model.config import TinyConfig
    from model.families.llava import LlavaBackbone
    from model.tiny import build_tiny

    with pytest.raises(ValueError, match="patch_init must be 'dct' or 'random'"):
        TinyConfig(patch_init="gabor")
    cfg = TinyConfig(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2,
                     text_hidden=64, text_layers=1, text_heads=2, text_kv_heads=2, vocab_size=400,
                     image_mean=0.5, patch_init="dct")
    build_tiny(cfg, out_dir=tmp_path)
    again = LlavaBackbone.from_pretrained(tmp_path)
    assert list(again.processor.image_processor.image_mean) == [0.5, 0.5, 0.5]
    w = again.model.model.vision_tower.embeddings.patch_embedding.weight
    assert torch.allclose(w[0, 1], torch.zeros_like(w[0, 1]))  # DC filter of R: zero on G
    rnd = build_tiny(TinyConfig(**{**cfg.to_dict(), "patch_init": "random", "image_mean": None}))
    w = rnd.model.model.vision_tower.embeddings.patch_embedding.weight
    assert not torch.allclose(w[0, 1], torch.zeros_like(w[0, 1]))  # CLIP's own random init kept
    assert rnd.processor.image_processor.image_mean[0] == pytest.approx(0.4815, abs=1e-3)
