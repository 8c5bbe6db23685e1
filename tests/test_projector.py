"""The normalised projector (model/projector.py): image tokens at the scale of text,
folded into a plain LLaVA projector at save time with identical outputs."""

from __future__ import annotations

import torch

from model.config import SugarConfig, TinyConfig
from model.families.llava import fold_projector
from model.projector import NormalizedProjector
from model.sample import Sample
from model.sugar import SugarModel, build_tiny_model
from tests.conftest import TEST_TINY, make_image


def trained_a_little(seed: int = 0) -> SugarModel:
    """A tiny model whose projector statistics moved off their init (train-mode passes)."""
    model = build_tiny_model(SugarConfig(embed_dim=32), TinyConfig(**TEST_TINY, seed=seed, projector_norm=True))
    proj = model.vlm.model.multi_modal_projector
    assert isinstance(proj, NormalizedProjector)
    proj.train()
    with torch.no_grad():
        for _ in range(100):  # features with a large shared direction, like a trained tower
            proj(torch.randn(6, 16, TEST_TINY["vision_hidden"]) * 3 + 40)
    model.eval()
    return model


def test_image_tokens_are_centred_and_at_text_scale():
    model = trained_a_little()
    proj = model.vlm.model.multi_modal_projector
    x = torch.randn(6, 16, TEST_TINY["vision_hidden"]) * 3 + 40
    with torch.no_grad():
        y = proj(x)  # [6, 16, d]
        plain = proj.linear_2(proj.act(proj.linear_1(x)))
    emb = model.vlm.model.language_model.get_input_embeddings().weight
    text_rms = float(emb.pow(2).mean().sqrt())
    assert abs(float(y.pow(2).mean().sqrt()) / text_rms - 1) < 0.5
    cos = torch.nn.functional.cosine_similarity
    flat_y, flat_p = y.reshape(-1, y.shape[-1]), plain.reshape(-1, plain.shape[-1])
    # the shared direction is gone: tokens no longer all point the same way
    assert float(cos(flat_y[:1], flat_y[1:]).mean()) < 0.5
    assert float(cos(flat_p[:1], flat_p[1:]).mean()) > float(cos(flat_y[:1], flat_y[1:]).mean())


def test_fold_is_exact_and_the_saved_checkpoint_is_plain_llava(tmp_path):
    from transformers import LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    model = trained_a_little()
    x = torch.randn(3, 16, TEST_TINY["vision_hidden"]) * 3 + 40
    with torch.no_grad():
        before = model.vlm.model.multi_modal_projector(x)
    samples = [Sample.build(["a red circle", make_image(1)])]
    model.save_pretrained(tmp_path / "ck")
    assert isinstance(model.vlm.model.multi_modal_projector, LlavaMultiModalProjector)
    assert not fold_projector(model.vlm)  # nothing left to fold
    with torch.no_grad():
        after = model.vlm.model.multi_modal_projector(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ck" / "backbone" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "in_norm" in k or "out_norm" in k or "target_rms" in k]
    plain = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "ck" / "backbone"))
    assert isinstance(plain.model.multi_modal_projector, LlavaMultiModalProjector)
    loaded = SugarModel.from_pretrained(tmp_path / "ck")
    torch.testing.assert_close(loaded.embed(samples).slices, model.embed(samples).slices, atol=1e-5, rtol=1e-4)


def test_float16_checkpoint_vectors_match_its_embedding_version(tmp_path):
    model = trained_a_little()
    samples = [Sample.build(["a red circle", make_image(2)]), Sample.build(["three blue squares"])]
    model.save_pretrained(tmp_path / "ck", dtype=torch.float16)
    size16 = (tmp_path / "ck" / "backbone" / "model.safetensors").stat().st_size
    loaded = SugarModel.from_pretrained(tmp_path / "ck")
    # the in-memory model was rounded to what was stored: same vectors, same version
    torch.testing.assert_close(loaded.embed(samples).slices, model.embed(samples).slices, atol=1e-5, rtol=1e-4)
    assert loaded.compute_embedding_version() == loaded.embedding_version == model.embedding_version
    model.save_pretrained(tmp_path / "ck32")
    assert size16 < 0.6 * (tmp_path / "ck32" / "backbone" / "model.safetensors").stat().st_size


def test_training_forward_is_the_served_function():
    """Running statistics in training: after a step's update, train mode and eval mode
    (and the folded plain projector) compute the same thing on the same batch."""
    model = trained_a_little()
    proj = model.vlm.model.multi_modal_projector
    x = torch.randn(4, 16, TEST_TINY["vision_hidden"]) * 3 + 40
    proj.train()
    with torch.no_grad():
        proj(x)  # updates the running statistics
        proj.in_norm.momentum = proj.out_norm.momentum = 0.0  # freeze them for the comparison
        proj.in_norm.num_batches_tracked.fill_(10**6)
        proj.out_norm.num_batches_tracked.fill_(10**6)
        train_out = proj(x)
        proj.eval()
        torch.testing.assert_close(proj(x), train_out)
