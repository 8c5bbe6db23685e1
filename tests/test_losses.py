"""Losses against slow references: InfoNCE with hard negatives and duplicates, KL structure."""

from __future__ import annotations

import math

import torch

from training.losses import ContrastiveLoss, GenerativeLoss, StructureLoss


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
