"""Teachers: offline encoders, hub loaders on tiny random models, cache, triple kernel."""

from __future__ import annotations

import logging

import pytest
import torch

from model.sample import Sample, Slice
from model.teachers import (
    CachedTeacher,
    EfficientNetLiteTeacher,
    HubClipTeacher,
    HubImageTeacher,
    SentenceTransformerTeacher,
    Teacher,
    TripleKernel,
    minilm_text_teacher,
)
from tests.conftest import make_image


class CountingTeacher(Teacher):
    role, name, dim = "text", "counting", 4

    def __init__(self):
        self.calls = 0

    def encode_texts(self, texts):
        self.calls += len(texts)
        return torch.tensor([[len(t), 1.0, 0.0, 0.0] for t in texts])


def test_cache_computes_each_distinct_slice_once_and_persists(tmp_path):
    inner = CountingTeacher()
    t = CachedTeacher(inner, tmp_path)
    slices = [Slice.of_text("ab"), Slice.of_text("abc"), Slice.of_text("ab")]
    a = t.encode_slices(slices)
    b = t.encode_slices(slices)
    assert inner.calls == 2
    torch.testing.assert_close(a, b)
    t.flush()
    again = CachedTeacher(CountingTeacher(), tmp_path)
    torch.testing.assert_close(again.encode_slices(slices), a)
    assert again.inner.calls == 0


def test_two_processes_flushing_one_cache_at_once_both_land(tmp_path, monkeypatch):
    """Two trainings sharing a teacher cache (ablation seeds in two shells) flush at the same
    moment: the second flush runs between the first's write and its rename. Both must succeed
    (a shared temporary name made the first rename fail: FileNotFoundError), and a flush keeps
    the features another writer put in the file since (the last of two simultaneous writers
    wins, and its next flush brings the other's back)."""
    import os

    from model import teachers

    first, second = CachedTeacher(CountingTeacher(), tmp_path), CachedTeacher(CountingTeacher(), tmp_path)
    a = first.encode_slices([Slice.of_text("ab")])
    b = second.encode_slices([Slice.of_text("abcd")])
    real_replace, calls = os.replace, []

    def interleaved(src, dst):
        calls.append(src)
        if len(calls) == 1:  # the first writer is between its write and its rename
            second.flush()
        real_replace(src, dst)

    monkeypatch.setattr(teachers.os, "replace", interleaved)
    first.flush()
    assert len(calls) == 2 and calls[0] != calls[1]
    monkeypatch.setattr(teachers.os, "replace", real_replace)
    assert not list(tmp_path.glob("*.tmp"))
    second.flush()  # reads the first's features back in before writing
    again = CachedTeacher(CountingTeacher(), tmp_path)
    torch.testing.assert_close(again.encode_slices([Slice.of_text("ab"), Slice.of_text("abcd")]),
                               torch.cat([a, b]))
    assert again.inner.calls == 0


def test_a_flush_reads_the_file_back_only_when_another_writer_changed_it(tmp_path, monkeypatch):
    from model import teachers

    t = CachedTeacher(CountingTeacher(), tmp_path)
    t.encode_slices([Slice.of_text("ab")])
    t.flush()
    loads = []
    real_load = teachers.torch.load
    monkeypatch.setattr(teachers.torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    t.encode_slices([Slice.of_text("abc")])
    t.flush()
    assert loads == []  # nobody else wrote: no read
    other = CachedTeacher(CountingTeacher(), tmp_path)  # reads the file (1)
    other.encode_slices([Slice.of_text("abcd")])
    other.flush()
    t.flush()  # the file changed under it: read back (2)
    assert len(loads) == 2
    assert (t.file.stat().st_mode & 0o777) == 0o644


def test_unsupported_modality_is_zero():
    t = CountingTeacher()
    out = t.encode_slices([Slice.of_text("x"), Slice.of_image(make_image(0))])
    assert out[1].abs().sum() == 0 and out[0].norm() == pytest.approx(1.0)


def test_offline_teachers_tell_text_and_images_apart():
    text = minilm_text_teacher()
    v = text.encode_slices([Slice.of_text(t) for t in ("a red circle", "a red circle.", "tax law")])
    assert v.shape == (3, 384)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])
    image = EfficientNetLiteTeacher()
    from PIL import Image

    imgs = [Image.new("RGB", (32, 32), c) for c in ((250, 0, 0), (240, 10, 10), (0, 0, 250))]
    f = image.encode_slices([Slice.of_image(i) for i in imgs])
    assert f.shape == (3, 1280)
    assert float(f[0] @ f[1]) > float(f[0] @ f[2])


def _tiny_tokenizer_dir(path):
    from model.config import PromptFormat
    from model.tiny import train_tokenizer

    tok = train_tokenizer(["a red circle", "a blue square"], 300, PromptFormat())
    tok.save_pretrained(str(path))
    return tok


def test_hub_clip_teacher_loads_tiny_random_clip(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tok = _tiny_tokenizer_dir(tmp_path)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(str(tmp_path))
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(str(tmp_path))
    t = HubClipTeacher(tmp_path)
    out = t.encode_slices([Slice.of_text("a red circle"), Slice.of_image(make_image(1))])
    assert out.shape == (2, 16)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))


def test_hub_image_teacher_loads_tiny_random_dinov2(tmp_path):
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, image_size=32, patch_size=8)).save_pretrained(str(tmp_path))
    processor = BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(str(tmp_path))
    t = HubImageTeacher(tmp_path)
    out = t.encode_slices([Slice.of_image(make_image(2)), Slice.of_text("ignored")])
    assert out.shape == (2, 32) and out[1].abs().sum() == 0


def test_sentence_transformer_teacher_loads_tiny_random_bert(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "blue"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(str(tmp_path))
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(str(tmp_path))
    t = SentenceTransformerTeacher(tmp_path)
    out = t.encode_slices([Slice.of_text("a red circle"), Slice.of_text("blue")])
    assert out.shape == (2, 16)


def test_triple_kernel_zero_weight_for_missing_roles(caplog):
    caplog.set_level(logging.INFO, logger="model.teachers")
    tk = TripleKernel(text=CountingTeacher(), weights=(1.0, 1.0, 1.0))
    assert tk.active == ["text"]
    assert tk.weights["image"] == 0 and tk.weights["cross"] == 0
    assert "no image teacher, weight set to 0" in caplog.text
    assert "no cross teacher, weight set to 0" in caplog.text
    q = [Sample.build(["abc"]), Sample.build(["abcdefgh", "x"])]
    s = tk.similarity(q, q)
    assert s.shape == (2, 2)
    torch.testing.assert_close(torch.diagonal(s), torch.zeros(2), atol=1e-6, rtol=0)


def test_triple_kernel_rejects_teacher_in_wrong_role():
    with pytest.raises(ValueError, match="has role 'text', given as the image teacher"):
        TripleKernel(image=CountingTeacher())


def test_phi_scales_by_sqrt_weight():
    tk = TripleKernel(text=CountingTeacher(), weights=(4.0, 0.0, 0.0))
    phi = tk.slice_features([Slice.of_text("ab")])
    assert float(phi.norm()) == pytest.approx(2.0)
