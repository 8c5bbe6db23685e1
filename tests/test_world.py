"""The synthetic world: determinism, disjoint splits, minimal pairs, RAG samples."""

from __future__ import annotations

import random

from training.data import SyntheticPools
from training.world import (
    ATTRIBUTES,
    COLORS,
    SHAPES,
    WorldSplit,
    held_out_combo,
    interleaved_document,
    invent_names,
    knowledge_base,
)


def test_deterministic_by_seed():
    a = SyntheticPools("train", 3, 20, 5, 5)
    b = SyntheticPools("train", 3, 20, 5, 5)
    assert [s.key for s in a.scenes] == [s.key for s in b.scenes]
    assert a.image(a.scenes[0]).tobytes() == b.image(b.scenes[0]).tobytes()
    c = SyntheticPools("train", 4, 20, 5, 5)
    assert [s.key for s in a.scenes] != [s.key for s in c.scenes]


def test_splits_are_disjoint():
    train = SyntheticPools("train", 0, 300, 20, 50)
    test = SyntheticPools("test", 0, 300, 20, 50)
    assert all(not held_out_combo(s.shape, s.color) for s in train.scenes)
    assert all(held_out_combo(s.shape, s.color) for s in test.scenes)
    assert not {h.name for h in train.houses} & {h.name for h in test.houses}
    held = [(s, c) for s in SHAPES for c in COLORS if held_out_combo(s, c)]
    assert 3 <= len(held) <= 8
    assert set(invent_names(WorldSplit("test", 0), 30)).isdisjoint(invent_names(WorldSplit("train", 0), 200))


def test_minimal_pairs_differ_in_exactly_one_attribute():
    split = WorldSplit("train", 0)
    rng = random.Random(0)
    fields = {"color": "color", "shape": "shape", "size": "size", "count": "count",
              "position": "position", "texture": "texture"}
    n = 0
    for _ in range(200):
        sc = split.scene(rng, "single")
        for attr in ATTRIBUTES:
            tw = split.twin(sc, attr, rng)
            if tw is None:
                continue
            diff = [f for f in fields.values() if getattr(sc, f) != getattr(tw, f)]
            assert diff == [fields[attr]]
            assert sc.caption() != tw.caption()
            n += 1
    assert n > 500


def test_interleaved_documents_have_2_to_6_slices_alternating():
    split = WorldSplit("train", 0)
    rng = random.Random(1)
    for i in range(30):
        doc, scenes = interleaved_document(split, rng, i)
        assert 2 <= len(doc.slices) <= 6
        assert doc.modalities == ["image", "text"] * len(scenes)


def test_rag_sample_places_gold_at_requested_position():
    pools = SyntheticPools("train", 0, 10, 2, 12)
    rng = random.Random(0)
    for pos in range(5):
        ex = pools.rag_example(rng, k=5, position=pos)
        assert len(ex.documents) == 5
        name = ex.query.slices[0].text.split("House ")[1].rstrip("?")
        assert ex.documents[pos].metadata["house"] == name
        assert ex.answer in COLORS or ex.answer in SHAPES


def test_knowledge_docs_bind_names_to_banners():
    kb = knowledge_base(WorldSplit("train", 0), 5)
    doc = kb[0].document()
    assert doc.modalities == ["text", "image"]
    assert kb[0].name in doc.slices[0].text
