"""training/collate.py: length buckets against brute force; bucketed losses equal one batch's."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from training.collate import encode_embed_buckets, encode_gen, encode_gen_buckets, length_buckets
from training.config import preset
from training.loop import Trainer
from training.losses import GenerativeLoss


def _cost(lengths, groups):
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def _brute(lengths, k):
    """Every way to cut the sorted lengths into at most k contiguous groups."""
    ls = sorted(lengths)
    n, best = len(ls), None
    for j in range(1, min(k, n) + 1):
        for cuts in itertools.combinations(range(1, n), j - 1):
            bounds = [0, *cuts, n]
            c = sum((b - a) * ls[b - 1] for a, b in itertools.pairwise(bounds))
            best = c if best is None else min(best, c)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_length_buckets_are_optimal_and_a_partition(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([5, 30, 31, 60, 140]) + rng.randrange(4) for _ in range(rng.randrange(1, 11))]
    for k in (1, 2, 3):
        groups = length_buckets(lengths, k)
        assert 1 <= len(groups) <= k
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        assert _cost(lengths, groups) == _brute(lengths, k)
    assert length_buckets([], 3) == []


def test_bucketed_generative_loss_equals_one_padded_batch(tmp_path):
    tr = Trainer(preset("smoke"), tmp_path)
    tr.model.eval()
    gen = [g for s in range(3) for g in tr.batch(s).gen]
    loss = GenerativeLoss()
    with torch.no_grad():
        batch, labels = encode_gen(tr.model, gen)
        ref = loss(tr.model.vlm(**batch.model_inputs()).logits, labels)["gen_loss"]
        parts = encode_gen_buckets(tr.model, gen)
        n = float(sum((lab[:, 1:] != -100).sum() for _, lab in parts))
        got = sum(loss(tr.model.vlm(**b.model_inputs()).logits, lab, normalizer=n)["gen_loss"] for b, lab in parts)
    assert len(parts) > 1
    assert float(got) == pytest.approx(float(ref), rel=1e-5)


def test_bucketed_embeddings_equal_one_padded_batch(tmp_path):
    tr = Trainer(preset("smoke"), tmp_path)
    tr.model.eval()
    samples = [s for p in tr.batch(0).pairs for s in (p.query, p.positive, *p.negatives)]
    with torch.no_grad():
        ref = tr.model.embed_batch(tr.model.encode(samples))
        batches, order = encode_embed_buckets(tr.model, samples)
        got = tr.model.embed_batches(batches)
    assert len(batches) > 1 and sorted(order) == list(range(len(samples)))
    inv = torch.tensor(order).argsort()
    m = ref.slices.shape[1]
    torch.testing.assert_close(got.slices[inv][:, :m], ref.slices, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.summary[inv], ref.summary, atol=1e-5, rtol=1e-4)
