"""Prompt formats: the chat template renders exactly what model.prompts builds."""

from __future__ import annotations

import pytest

from model.config import PromptFormat
from model.prompts import chat_prompt, embedding_prompt, generation_prompt, openai_parts, rag_parts
from model.sample import Sample, SampleError
from tests.conftest import make_image

FMT = PromptFormat()


def test_generation_and_rag_prompt_text():
    q = Sample.build(["What colour is the banner?"])
    d1 = Sample.build(["House Vell", make_image(1)])
    d2 = Sample.build([make_image(2)])
    p = generation_prompt(q, FMT, [d1, d2])
    assert p.text == (
        "USER: Context:\n[1]\nHouse Vell\n<image>\n[2]\n<image>\nQuestion:\n"
        "What colour is the banner? ASSISTANT:"
    )
    assert len(p.images) == 2
    assert generation_prompt(q, FMT).text == "USER: What colour is the banner? ASSISTANT:"


def test_best_last_context_order_puts_the_top_ranked_document_nearest_the_question():
    """`context_order: best_last` numbers documents by rank and writes them in reverse; the
    embedding prompts, and so the embedding version, do not depend on it."""
    import dataclasses

    q = Sample.build(["Which banner?"])
    docs = [Sample.build(["first ranked", make_image(1)]), Sample.build(["second"]), Sample.build(["third"])]
    last = dataclasses.replace(FMT, context_order="best_last")
    p = generation_prompt(q, last, docs)
    assert p.text == ("USER: Context:\n[3]\nthird\n[2]\nsecond\n[1]\nfirst ranked\n<image>\nQuestion:\n"
                      "Which banner? ASSISTANT:")
    assert generation_prompt(q, FMT, docs).text.index("[1]") < generation_prompt(q, FMT, docs).text.index("[3]")
    assert last.embedding_fields() == FMT.embedding_fields()
    assert embedding_prompt(docs[0], last).text == embedding_prompt(docs[0], FMT).text
    with pytest.raises(ValueError, match="context_order must be one of"):
        PromptFormat(context_order="random")


def test_context_order_is_saved_and_loaded_with_the_checkpoint(tiny_model, tmp_path):
    from model.sugar import SugarModel

    tiny_model.config.prompts.context_order = "best_last"
    try:
        tiny_model.save_pretrained(tmp_path / "ckpt")
    finally:
        tiny_model.config.prompts.context_order = "ranked"
    loaded = SugarModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.prompts.context_order == "best_last"
    assert loaded.compute_embedding_version() == tiny_model.compute_embedding_version()


def test_embedding_prompt_spans_cover_slices():
    s = Sample.build(["first", make_image(3), "second"])
    p = embedding_prompt(s, FMT)
    assert [p.text[a:b] for a, b in p.spans] == ["first", "<image>", "second"]
    assert p.modalities == ["text", "image", "text"]


def test_placeholder_in_user_text_is_refused():
    with pytest.raises(SampleError, match="reserved image placeholder"):
        embedding_prompt(Sample.build(["sneaky <image> text"]), FMT)


def test_chat_template_equals_chat_prompt(tiny_model):
    tok = tiny_model.backbone.tokenizer
    img = make_image(4)
    q = Sample.build(["Which house?", img])
    docs = [Sample.build(["doc one"]), Sample.build([img, "doc two"])]
    conversations = [
        [("user", rag_parts(docs, q, FMT))],
        [("system", ["Be brief."]), ("user", ["hi", img]), ("assistant", ["hello"]),
         ("user", ["and now?"])],
    ]
    for conv in conversations:
        ours = chat_prompt(conv, FMT, eos=tok.eos_token).text
        messages = [{"role": r, "content": openai_parts(parts)} for r, parts in conv]
        theirs = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert theirs == ours
    # string content renders the same as one text part
    s = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                add_generation_prompt=True)
    assert s == chat_prompt([("user", ["hi"])], FMT).text
