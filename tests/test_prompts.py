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
