"""The synthetic world: determinism, disjoint splits, minimal pairs, RAG samples."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
import torch

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


def asked(ex, pools) -> str:
    """The name of the house a question asks about (any phrasing: case, word order)."""
    q = ex.query.slices[0].text.lower()
    [name] = [h.name for h in pools.houses if f"house {h.name.lower()}" in q]
    return name


def test_rag_sample_places_gold_at_requested_position():
    from training.world import answer_of

    pools = SyntheticPools("train", 0, 10, 2, 12)
    rng = random.Random(0)
    for pos in range(5):
        ex = pools.rag_example(rng, k=5, position=pos)
        assert len(ex.documents) == 5
        name = asked(ex, pools)
        assert ex.documents[pos].metadata["house"] == name
        banner = next(h.banner for h in pools.houses if h.name == name)
        assert ex.answer in {answer_of(banner, a) for a in ATTRIBUTES}


def test_rag_gold_first_puts_the_gold_document_at_rank_one_that_often():
    """`rag_gold_first` (TrainConfig): the served distribution, where retrieval ranks the asked
    house first; 0 keeps every rank equally likely."""
    pools = SyntheticPools("train", 0, 10, 2, 12)

    def first_share(p: float) -> float:
        pools.gold_first = p
        rng, hits = random.Random(0), 0
        for _ in range(400):
            ex = pools.rag_example(rng, k=4)
            hits += ex.documents[0].metadata["house"] == asked(ex, pools)
        return hits / 400

    assert first_share(1.0) == 1.0
    assert 0.85 <= first_share(0.9) <= 0.98  # 0.9 + 0.1 / 4
    assert 0.18 <= first_share(0.0) <= 0.32  # 1 / 4


def test_binding_examples_tell_the_banners_in_words():
    pools = SyntheticPools("train", 0, 10, 2, 12)
    from training.world import answer_of

    ex = pools.gen_example(random.Random(3), {"bind": 1.0})
    name = asked(ex, pools)
    house = next(h for h in pools.houses if h.name == name)
    assert ex.kind == "bind" and 2 <= len(ex.documents) <= 5
    assert all(d.modalities == ["text"] for d in ex.documents)
    told = [d.slices[0].text for d in ex.documents if f"House {name}:" in d.slices[0].text]
    b = house.banner
    tex = "striped " if b.texture == "striped" else ""
    assert told == [f"The banner of House {name}: a {b.size} {b.color} {tex}{b.shape} on the {b.position}."]
    assert ex.answer in {answer_of(b, a) for a in ATTRIBUTES}


def _decoupled(kind: str, n: int) -> list[tuple[object, str, set[tuple[int, ...]]]]:
    """(example, question, the image's colours) for n examples of a decoupled kind."""
    import numpy as np

    pools = SyntheticPools("train", 0, 10, 2, 12)
    rng = random.Random(5)
    out = []
    for _ in range(n):
        ex = pools.gen_example(rng, {kind: 1.0})
        image, question = ex.query.slices
        assert ex.kind == kind
        out.append((ex, question.text, {tuple(p) for p in np.asarray(image.image).reshape(-1, 3)}))
    return out


def test_blob_examples_ask_every_colour_on_an_outline_that_is_no_shape():
    import numpy as np

    from training.world import Scene

    examples = _decoupled("blob", 120)
    assert {ex.answer for ex, _, _ in examples} == set(COLORS)
    for ex, question, pixels in examples[:30]:
        assert question == "What colour is the shape?"
        # the fill is the answer's colour and no other of the six
        assert COLORS[ex.answer] in pixels and not (pixels & {c for n, c in COLORS.items() if n != ex.answer})
    # the outline is none of the shapes: its mask differs from each shape's drawn in the same place
    blob = Scene("blob", "red", size="large", position="left", seed=3).render(64)
    for shape in SHAPES:
        drawn = Scene(shape, "red", size="large", position="left", seed=3).render(64)
        red = [np.all(np.asarray(im) == COLORS["red"], axis=-1) for im in (blob, drawn)]
        assert (red[0] ^ red[1]).sum() > 40, shape


def test_offcolour_examples_ask_the_shape_of_a_shape_in_no_asked_colour():
    from training.world import OFF_COLORS

    examples = _decoupled("offcolour", 60)
    assert {ex.answer for ex, _, _ in examples} == set(SHAPES)
    for _, question, pixels in examples[:20]:
        assert question == "What shape is shown?"
        assert pixels & set(OFF_COLORS.values()) and not pixels & set(COLORS.values())


def test_knowledge_docs_bind_names_to_banners():
    kb = knowledge_base(WorldSplit("train", 0), 5)
    doc = kb[0].document()
    assert doc.modalities == ["text", "image"]
    assert kb[0].name in doc.slices[0].text


def test_phrasing_families_ask_the_same_question_differently():
    """training/phrasing.py: every family of every banner attribute names the house and the
    attribute; canonical is the README's form; the held-out families are never drawn in training."""
    from training.phrasing import (
        FAMILIES,
        HELD_OUT,
        TRAINED,
        banner_question,
        pick_family,
        vqa_question,
    )

    rng = random.Random(0)
    cue = {"color": ("colour", "color"), "shape": ("shape",), "size": ("small",), "texture": ("striped",),
           "count": ("how many", "count", "number"), "position": ("where", "part", "sit")}
    assert banner_question("color", "Vyd", "canonical", rng) == "What colour is the banner of House Vyd?"
    for attr in ATTRIBUTES:
        seen = set()
        for family in FAMILIES:
            for _ in range(6):
                q = banner_question(attr, "Vyd", family, rng)
                seen.add(q)
                assert "house vyd" in q.lower() and any(c in q.lower() for c in cue[attr]), (attr, family, q)
                assert vqa_question(attr, False, family, rng)
        assert len(seen) >= 8  # families differ
    assert "color" in banner_question("color", "Vyd", "spelling", rng)
    for _ in range(10):
        q = banner_question("size", "Vyd", "case", rng)
        assert q in (q.lower(), q.upper())
    drawn = {pick_family(rng) for _ in range(500)}
    assert drawn == set(TRAINED) and not drawn & set(HELD_OUT)


def test_abstention_examples_cannot_be_answered_from_their_documents():
    from training.data import licence_passages
    from training.phrasing import ABSTAIN, UNKNOWN_TRAINED

    pools = SyntheticPools("train", 0, 10, 2, 12)
    rng = random.Random(0)
    kinds = set()
    for _ in range(60):
        ex = pools.gen_example(rng, {"abstain": 1.0})
        kinds.add(ex.kind)
        assert ex.answer == ABSTAIN
        q = ex.query.slices[0].text.lower()
        names = [h.name for h in pools.houses if f"house {h.name.lower()}" in q]
        in_docs = [d.metadata.get("house") for d in ex.documents]
        if ex.kind == "abstain-absent":
            assert names and names[0] not in in_docs  # the asked house is not among the documents
        elif ex.kind == "abstain-unknown":
            assert names[0] in in_docs and any(t.format(n=names[0]).lower() == q for t in UNKNOWN_TRAINED)
        else:
            assert ex.kind == "abstain-text" and all(d.modalities == ["text"] and not d.metadata for d in ex.documents)
    assert kinds == {"abstain-absent", "abstain-unknown", "abstain-text"}
    held_out = licence_passages(held_out=True)
    trained = licence_passages(held_out=False)
    assert held_out and trained and not set(held_out) & set(trained)
    assert any("Apache License" in t for t in held_out) and not any("Apache License, Version 2.0" in t for t in trained)


def test_wide_swapped_and_word_unknown_questions_are_drawn_only_when_asked_and_never_the_held_out_ones():
    from training.config import TrainConfig
    from training.phrasing import (
        BANNER,
        NOT_SHOWN,
        UNKNOWN_HELD_OUT,
        UNKNOWN_TRAINED,
        UNKNOWN_WIDE,
    )

    def unknown_questions(mode: str) -> list[str]:
        pools = SyntheticPools("train", 0, 10, 2, 12)
        pools.unknown_questions = mode
        rng = random.Random(0)
        out = []
        for _ in range(400):
            ex = pools.gen_example(rng, {"abstain": 1.0})
            q = ex.query.slices[0].text
            if ex.kind == "abstain-unknown":
                out.append((q, next(h.name for h in pools.houses if f"house {h.name.lower()}" in q.lower())))
        return out

    base = unknown_questions("base")
    assert {q for q, _ in base} <= {t.format(n=n) for t in UNKNOWN_TRAINED for _, n in base}
    wide = unknown_questions("wide")
    templates = {t for q, n in wide for t in UNKNOWN_WIDE if t.format(n=n).lower() == q.lower()}
    assert len(templates) >= 15  # far more than the four, and in the trained surface families
    assert any(q == q.lower() for q, _ in wide) and any(q == q.upper() for q, _ in wide)
    assert not set(UNKNOWN_WIDE) & set(UNKNOWN_HELD_OUT)
    assert not any(w in t.lower().split() for t in UNKNOWN_WIDE for w in ("old", "lord", "age"))
    # swapped: half the trained four, half a banner question with the banner swapped for a thing
    # the document does not show (one noun apart from an answerable question)
    swapped = unknown_questions("swapped")
    four = [q for q, n in swapped if q in {t.format(n=n) for t in UNKNOWN_TRAINED}]
    banner_forms = {t.format(n=n).replace("banner", thing).lower(): thing for _, n in swapped
                    for fams in BANNER.values() for ts in fams.values() for t in ts for thing in NOT_SHOWN}
    others = [q for q, _ in swapped if q not in four]
    assert 0.35 < len(four) / len(swapped) < 0.65
    assert all("banner" not in q.lower() for q in others)
    hits = [banner_forms.get(q.lower()) for q in others]  # the trained families change case, not words
    assert None not in hits and len(set(hits)) >= 8 and any(q == q.lower() for q in others)
    from training.world import askable_words, world_words

    # words: a third the four, else about a word of the training licences that no world question uses
    askable = set(askable_words(["The Licensor grants a licence; the old lord's name, colour and shape."]))
    assert askable == {"the", "licensor", "grants", "licence", "and"} - world_words() and "the" not in askable
    assert not {"old", "lord", "name", "age", "colour", "banner", "striped", "left"} & askable
    words = unknown_questions("words")
    asked = [q for q, n in words if q not in {t.format(n=n) for t in UNKNOWN_TRAINED}]
    assert 0.55 < len(asked) / len(words) < 0.8
    assert 0.3 < sum(q.lower().startswith("how ") and " shape" not in q for q in asked) / len(asked) < 0.7
    pools = SyntheticPools("train", 0, 10, 2, 12)
    for q in asked:
        assert set(re.findall(r"[a-z]+", q.lower())) & set(pools.askable), q
    if pools.licences:
        assert len(pools.askable) > 1000 and len({q.lower() for q in asked}) > 0.9 * len(asked)
    assert pools.lookalikes == ()  # no tokenizer given
    assert TrainConfig().unknown_questions == "base"
    with pytest.raises(ValueError, match="unknown_questions must be base, wide, swapped or words, got 'many'"):
        TrainConfig(unknown_questions="many")


def test_rag_examples_take_real_text_distractors_and_still_answer_the_banner():
    from training.config import TrainConfig
    from training.data import licence_passages

    held_out = set(licence_passages(held_out=True))
    for share in (0.0, 1.0):
        pools = SyntheticPools("train", 0, 10, 2, 12)
        pools.text_distractors = share
        rng = random.Random(0)
        with_text = 0
        for _ in range(40):
            ex = pools.rag_example(rng, 3)
            houses = [d.metadata.get("house") for d in ex.documents if d.metadata]
            texts = [d.text() for d in ex.documents if not d.metadata]
            asked = next(h for h in pools.houses if f"house {h.name.lower()}" in ex.query.slices[0].text.lower())
            assert len(ex.documents) == 3 and asked.name in houses and ex.answer != "not in the documents"
            assert len(texts) <= 2
            assert not set(texts) & held_out  # never the evaluation's licences
            with_text += bool(texts)
        assert with_text == (40 if share else 0)
    with pytest.raises(ValueError, match="rag_text_distractors must be a probability"):
        TrainConfig(rag_text_distractors=1.5)


def test_the_filler_family_is_trained_only_and_shares_no_words_with_extra():
    from training.config import TrainConfig
    from training.phrasing import _EXTRA, _FILLER, FAMILIES, TRAIN_ONLY, banner_question, vqa_question

    assert "filler" in TRAIN_ONLY and "filler" not in FAMILIES  # never in the evaluation's table
    extra_words = {w.strip(":!?.,").lower() for pre, post in _EXTRA for w in (pre + post).split()}
    filler_words = {w.strip(":!?.,").lower() for pre, post in _FILLER for w in (pre + post).split()}
    assert not extra_words & filler_words
    rng = random.Random(0)
    for _ in range(30):
        q = banner_question("color", "Vyd", "filler", rng)
        assert "House Vyd" in q or "house Vyd" in q
        assert any(q.startswith(pre) and q.endswith(post) for pre, post in _FILLER), q
        v = vqa_question("size", False, "filler", rng)
        assert any(v.startswith(pre) and v.endswith(post) for pre, post in _FILLER), v
    assert TrainConfig(phrasings=["canonical", "filler"]).phrasings == ("canonical", "filler")
    with pytest.raises(ValueError, match="phrasings must be a non-empty list"):
        TrainConfig(phrasings=["chatter"])


def test_knowledge_pairs_take_real_text_negatives_and_passage_pairs_are_inverse_cloze():
    from training.data import EVAL_LICENCES, inverse_cloze, licence_passages

    held_out = set(licence_passages(held_out=True))
    pools = SyntheticPools("train", 0, 10, 2, 12)
    rng = random.Random(0)
    # off by default: no negative, and no extra draw (the earlier recipes' streams are unchanged)
    before = [pools.pair_example(random.Random(1), {"knowledge": 1.0}, 0.5).query.text() for _ in range(3)]
    assert all(not pools.pair_example(rng, {"knowledge": 1.0}, 0.5).negatives for _ in range(20))
    pools.text_negatives = 1.0
    for _ in range(20):
        ex = pools.pair_example(rng, {"knowledge": 1.0}, 0.5)
        (neg,) = ex.negatives
        assert neg.modalities == ["text"] and neg.text() in pools.licences and neg.text() not in held_out
        assert ex.positive.metadata["house"].lower() in ex.query.text().lower()
    pools.text_negatives = 0.0
    assert [pools.pair_example(random.Random(1), {"knowledge": 1.0}, 0.5).query.text() for _ in range(3)] == before
    for _ in range(20):
        ex = pools.pair_example(rng, {"passage": 1.0}, 0.5)
        q, d = ex.query.text(), ex.positive.text()
        assert ex.kind == "passage" and len(q.split()) == 12 and q not in d
        whole = next(p for p in pools.licences if inverse_cloze(p) == (q, d))
        words = whole.split()
        i = next(i for i in range(len(words)) if words[i : i + 12] == q.split())
        assert words[:i] + words[i + 12 :] == d.split() and whole not in held_out
    assert inverse_cloze("a b c d") == ("a b", "c d")
    assert EVAL_LICENCES == ("Apache-2.0", "GPL-3")
    pools._licences = []  # no licence texts installed: a passage pair is drawn as a knowledge one, counted
    ex = pools.pair_example(rng, {"passage": 1.0}, 0.5)
    assert ex.kind == "knowledge" and not ex.negatives
    assert pools.substitutions["pair passage -> knowledge (no licence texts in /usr/share/common-licenses)"] == 1


def test_or_lookalikes_are_the_words_a_tokenizer_begins_as_it_begins_or():
    from transformers import AutoTokenizer

    from model.sugar import DEFAULT_CHECKPOINT
    from training.phrasing import or_lookalikes

    def two_pieces(s: str) -> list[str]:  # " or" -> [" o", "r"], " old" -> [" o", "ld"]
        return [s[:2], s[2:]] if len(s) > 2 else [s]

    words = ("old", "other", "or", "open", "banner", "ox")
    assert or_lookalikes(words, two_pieces) == ("old", "other", "open", "ox")
    assert or_lookalikes(words, lambda s: [s]) == ()  # " or" one piece: nothing looks like it
    # the shipped checkpoint's tokenizer keeps " or" whole since §12.9 (it split it as " o" + "r",
    # as it splits " old"): no askable word looks like "or" to it any more
    tok = AutoTokenizer.from_pretrained(DEFAULT_CHECKPOINT / "backbone")
    pools = SyntheticPools("train", 0, 10, 2, 12)
    pools.unknown_questions, pools.tokenize = "words", tok.tokenize
    if not pools.licences:
        pytest.skip("no licence texts")
    assert tok.tokenize(" or") == ["Ġor"] and tok.tokenize(" old")[0] == "Ġo" and pools.lookalikes == ()
    pools = SyntheticPools("train", 0, 10, 2, 12)
    pools.unknown_questions, pools.tokenize = "words", two_pieces  # the earlier split's kind
    assert 10 < len(pools.lookalikes) < len(pools.askable) / 10
    assert set(pools.lookalikes) <= set(pools.askable) and "old" not in pools.lookalikes
    assert all(w.startswith("o") for w in pools.lookalikes)
    rng = random.Random(0)
    asked = [ex.query.slices[0].text for ex in (pools.gen_example(rng, {"abstain": 1.0}) for _ in range(600))
             if ex.kind == "abstain-unknown"]
    drawn = [q for q in asked if set(re.findall(r"[a-z]+", q.lower())) & set(pools.lookalikes)]
    assert 0.2 < len(drawn) / len(asked) < 0.5  # half of the two thirds that ask about a word


def test_abstain_unknown_share_moves_the_abstention_examples_from_absent_houses_to_present_ones():
    from training.config import TrainConfig

    def kinds(share: float) -> Counter:
        pools = SyntheticPools("train", 0, 10, 2, 12)
        pools.unknown_share = share
        rng = random.Random(0)
        return Counter(pools.gen_example(rng, {"abstain": 1.0}).kind for _ in range(1000))

    base, more = kinds(0.3), kinds(0.6)
    assert base == kinds(TrainConfig().abstain_unknown_share)  # the default keeps the earlier stream
    assert 0.25 < base["abstain-unknown"] / 1000 < 0.35 and 0.55 < more["abstain-unknown"] / 1000 < 0.65
    assert more["abstain-absent"] < base["abstain-absent"] / 2 and abs(more["abstain-text"] - base["abstain-text"]) < 30
    with pytest.raises(ValueError, match="abstain_unknown_share must be in 0..0.7"):
        TrainConfig(abstain_unknown_share=0.8)


def test_the_shipped_tokenizer_keeps_or_whole_and_old_apart():
    """The shipped checkpoint is `shipped_world_or` (docs/EXPERIMENTS.md §12.9): " or" one piece,
    " old" still begins with " o" — which no longer reads as "or"; the preset rebuilds it as is."""
    from model.sugar import DEFAULT_CHECKPOINT, SugarModel
    from training.build import build_model
    from training.config import TrainConfig, preset

    shipped = SugarModel.from_pretrained(DEFAULT_CHECKPOINT)
    tok = shipped.backbone.tokenizer
    assert tok.tokenize(" or") == ["Ġor"] and tok.tokenize(" old") == ["Ġo", "l", "d"]
    assert len(tok) == shipped.backbone.model.get_input_embeddings().weight.shape[0] == 2049
    text = "What colour is the banner of House Vyd? Is it striped or solid? How old is it?"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    cfg = preset("shipped_world_or").with_overrides([f"init={DEFAULT_CHECKPOINT}"])
    assert cfg.steps == 0 and cfg.tokenizer_words == (" or",) and cfg.tokenizer_words_init == "move"
    again = build_model(cfg, [])  # already whole: nothing is added or moved
    for name, t in shipped.vlm.state_dict().items():
        assert torch.equal(again.vlm.state_dict()[name], t), name
    for bad, message in (([" "], "tokenizer_words must be non-empty words"),
                         (" or", "tokenizer_words must be a list of words, got the string ' or'")):
        with pytest.raises(ValueError, match=re.escape(message)):
            TrainConfig(tokenizer_words=bad)
    with pytest.raises(ValueError, match="tokenizer_words_init must be mean or move, got 'copy'"):
        TrainConfig(tokenizer_words_init="copy")


def test_unknown_questions_take_real_text_distractors_beside_the_present_house():
    from training.config import TrainConfig
    from training.data import licence_passages

    held_out = set(licence_passages(held_out=True))

    def draw(p: float) -> list:
        pools = SyntheticPools("train", 0, 10, 2, 12)
        pools.unknown_share, pools.unknown_text_distractors = 0.7, p
        rng = random.Random(0)
        return [ex for ex in (pools.gen_example(rng, {"abstain": 1.0}) for _ in range(300))
                if ex.kind == "abstain-unknown"]

    plain, mixed = draw(0.0), draw(1.0)
    assert [ex.query.slices[0].text for ex in plain] == [ex.query.slices[0].text for ex in draw(
        TrainConfig().unknown_text_distractors)]  # the default keeps the earlier stream
    for examples, share in ((plain, 0), (mixed, 1)):
        with_text = 0
        for ex in examples:
            houses = [d.metadata["house"] for d in ex.documents if d.metadata]
            texts = [d.text() for d in ex.documents if not d.metadata]
            assert ex.answer == "not in the documents" and len(houses) >= 1
            assert any(f"house {h.lower()}" in ex.query.slices[0].text.lower() for h in houses)
            assert not set(texts) & held_out  # never the evaluation's licences
            with_text += bool(texts)
        if SyntheticPools("train", 0, 10, 2, 12).licences:
            # one-document contexts (k = 1) have no distractor to replace
            assert with_text == 0 if share == 0 else with_text == sum(len(ex.documents) > 1 for ex in examples) > 50
    with pytest.raises(ValueError, match=r"unknown_text_distractors must be a probability \(0..1\)"):
        TrainConfig(unknown_text_distractors=1.5)
