"""Losses against slow references: InfoNCE with hard negatives and duplicates, KL structure."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import ContrastiveLoss, GenerativeLoss, StructureLoss, image_token_loss


def ce(row, target):
    return -row[target] + math.log(sum(math.exp(v) for v in row))


def test_nce_matches_reference_with_hard_negatives_and_duplicates():
    g = torch.Generator().manual_seed(0)
    B, N = 4, 2
    sim = torch.randn(B, B + N, generator=g, dtype=torch.float64)
    same = torch.zeros(B, B + N, dtype=torch.bool)
    same.fill_diagonal_(True)
    same[0, 2] = same[2, 0] = True  # rows 0 and 2 share the same positive content
    loss = ContrastiveLoss(temperature=0.5, learnable=False)(sim, same)["nce_loss"]
    s = (sim * 2.0).tolist()
    q2d = []
    for i in range(B):
        row = [v for j, v in enumerate(s[i]) if not (same[i, j] and j != i)]
        q2d.append(ce(row, [j for j in range(B + N) if not (same[i, j] and j != i)].index(i)))
    d2q = []
    for j in range(B):  # documents -> queries: the B x B block only, no hard negatives
        cols = [i for i in range(B) if not (same[i, j] and i != j)]
        d2q.append(ce([s[i][j] for i in cols], cols.index(j)))
    want = 0.5 * (sum(q2d) / B + sum(d2q) / B)
    assert abs(float(loss) - want) < 1e-9


def test_struct_loss_is_kl_and_skips_uninformative_rows():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[-0.1, -0.5, -0.9], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    out = StructureLoss(teacher_temperature=0.5)(student, teacher)["struct_loss"]
    t = torch.softmax(teacher[0] / 0.5, 0)
    s = torch.log_softmax(student[0], 0)
    want = float((t * (t.log() - s)).sum())  # row 1 is constant: the teacher says nothing
    assert abs(float(out) - want) < 1e-9
    none = StructureLoss()(student[1:], teacher[1:])["struct_loss"]
    assert float(none) == 0.0


def test_struct_loss_respects_column_mask():
    student = torch.tensor([[2.0, 1.0, 0.0]])
    teacher = torch.tensor([[-0.1, -0.2, -3.0]])
    mask = torch.tensor([[True, True, False]])
    out = StructureLoss(teacher_temperature=1.0)(student, teacher, mask)["struct_loss"]
    t = torch.softmax(teacher[0, :2], 0)
    s = torch.log_softmax(student[0, :2], 0)
    assert abs(float(out) - float((t * (t.log() - s)).sum())) < 1e-6


def test_gen_loss_only_counts_labelled_tokens():
    logits = torch.randn(1, 4, 7)
    labels = torch.tensor([[-100, -100, 3, 5]])
    got = GenerativeLoss()(logits, labels)["gen_loss"]
    want = torch.nn.functional.cross_entropy(logits[0, 1:3], torch.tensor([3, 5]))
    torch.testing.assert_close(got, want)


def _image_token_loss_reference(tokens, text_rms):
    rows = tokens.tolist()
    n, d = len(rows), len(rows[0])
    mean = [sum(r[j] for r in rows) / n for j in range(d)]
    unit = d * text_rms ** 2
    common = math.log(1 + sum(m * m for m in mean) / unit)
    spread = sum(sum((v - m) ** 2 for v, m in zip(r, mean, strict=True)) for r in rows) / n
    return common + (0.5 * math.log(spread / unit)) ** 2


def test_image_token_loss_matches_reference_and_its_extremes():
    torch.manual_seed(0)
    y = torch.randn(12, 5) * 2 + torch.tensor([3.0, -1.0, 0.0, 0.5, 2.0])
    assert float(image_token_loss(y, torch.tensor(0.4))) == pytest.approx(_image_token_loss_reference(y, 0.4), rel=1e-5)
    centred = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # mean 0, RMS 1: nothing to penalise
    assert float(image_token_loss(centred, torch.tensor(1.0))) == pytest.approx(0.0, abs=1e-7)
    # 10x the text scale costs log(10)^2
    assert float(image_token_loss(centred * 10, torch.tensor(1.0))) == pytest.approx(math.log(10) ** 2, rel=1e-6)
    # a shared vector 100x a text token in energy costs log(101), whatever the spread's scale
    shifted = centred + torch.tensor([10.0, 10.0])
    assert float(image_token_loss(shifted, torch.tensor(1.0))) == pytest.approx(math.log(101), rel=1e-6)
