"""Prompt and label encoding for training batches, padded in length buckets.

`gen_prompt` renders a generative example (RAG context, question) plus its
answer; `encode_gen` tokenises a list of them with labels on the answer
tokens only. A training batch mixes prompts of very different lengths (a
question about one image: ~30 tokens; a RAG example with five documents:
~140), and one padded tensor makes every row as long as the longest: most of
the LM's work would be padding. `length_buckets` splits a batch into at most
`max_buckets` groups of similar length, chosen (dynamic programming over the
lengths sorted) to pad the fewest token slots, and each group runs as its own
forward pass. Everything after the forward pass is unchanged: the generative
loss is a sum over response tokens divided by their global count, and the
slice embeddings of all groups go through the heads together in the original
order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from model.backbone import EncodedBatch
from model.prompts import Prompt, answer_text, chat_prompt, embedding_prompt, rag_parts
from model.sample import Sample
from model.sugar import SugarModel

from .data import Batch, GenExample

MAX_BUCKETS = 3


def gen_prompt(ex: GenExample, fmt, eos: str) -> Prompt:
    """The generation prompt plus the answer; spans[0] covers the answer (the labels)."""
    p = chat_prompt([("user", rag_parts(ex.documents, ex.query, fmt))], fmt, eos=eos)
    start = len(p.text)
    p.text += answer_text(ex.answer, eos)
    p.spans = [(start, len(p.text))]
    p.modalities = ["text"]
    return p


def _labels(batch: EncodedBatch) -> torch.Tensor:
    return torch.where(batch.token_slice == 0, batch.input_ids, torch.full_like(batch.input_ids, -100))


def encode_gen(model: SugarModel, examples: Sequence[GenExample]) -> tuple[EncodedBatch, torch.Tensor]:
    """One padded batch and its labels (-100 outside the answer)."""
    bb = model.backbone
    batch = bb.encode([gen_prompt(e, model.config.prompts, bb.eos_token) for e in examples],
                      padding_side="right")
    return batch, _labels(batch)


def length_buckets(lengths: Sequence[int], max_buckets: int = MAX_BUCKETS) -> list[list[int]]:
    """Indices into `lengths`, grouped (shortest first) so that padding every group to its
    own longest costs the fewest slots, in at most `max_buckets` groups."""
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    k = min(max_buckets, n)
    inf = float("inf")
    # best[j][i]: the cheapest cost of the first i sorted items in j groups; cut: where the last starts
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            for s in range(j - 1, i):
                c = best[j - 1][s] + (i - s) * ls[i - 1]
                if c < best[j][i]:
                    best[j][i], cut[j][i] = c, s
    j = min(range(1, k + 1), key=lambda g: best[g][n])
    groups, i = [], n
    while j > 0:
        s = cut[j][i]
        groups.append(order[s:i])
        i, j = s, j - 1
    return groups[::-1]


def prompt_lengths(model: SugarModel, prompts: Sequence[Prompt]) -> list[int]:
    return [model.backbone.prompt_length(p) for p in prompts]


def encode_gen_buckets(model: SugarModel, examples: Sequence[GenExample]) -> list[tuple[EncodedBatch, torch.Tensor]]:
    """`encode_gen` per length bucket (the loss does not depend on the order of examples)."""
    bb = model.backbone
    prompts = [gen_prompt(e, model.config.prompts, bb.eos_token) for e in examples]
    out = []
    for group in length_buckets(prompt_lengths(model, prompts)):
        batch = bb.encode([prompts[i] for i in group], padding_side="right")
        out.append((batch, _labels(batch)))
    return out


def encode_embed_buckets(model: SugarModel, samples: Sequence[Sample]) -> tuple[list[EncodedBatch], list[int]]:
    """Embedding batches per length bucket and the order of their rows (indices into
    `samples`): row r of the concatenated result is sample `order[r]`."""
    prompts = [embedding_prompt(s, model.config.prompts) for s in samples]
    groups = length_buckets(prompt_lengths(model, prompts))
    batches = [model.backbone.encode([prompts[i] for i in g], padding_side="right") for g in groups]
    return batches, [i for g in groups for i in g]


@dataclass
class EncodedStep:
    """One step's inputs: the generative batches with their labels, and the embedding batches
    (queries, then positives and hard negatives) with the order of their rows."""

    gen: list[EncodedBatch] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    embed: list[EncodedBatch] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # row r of the embeddings is example order[r]


def encode_step(model: SugarModel, batch: Batch) -> EncodedStep:
    """Queries, positives and hard negatives, each group padded in length buckets; the heads
    then run once over all of them, so the batch statistics before the heads cover every
    slice of the step (queries and documents normalised alike) and every rank runs the same
    collectives."""
    gen = encode_gen_buckets(model, batch.gen) if batch.gen else []
    out = EncodedStep([b for b, _ in gen], [lab for _, lab in gen])
    if batch.pairs:
        negs = [n for p in batch.pairs for n in p.negatives]
        q_batches, q_order = encode_embed_buckets(model, [p.query for p in batch.pairs])
        d_batches, d_order = encode_embed_buckets(model, [p.positive for p in batch.pairs] + negs)
        out.embed = q_batches + d_batches
        out.order = q_order + [len(batch.pairs) + i for i in d_order]
    return out
