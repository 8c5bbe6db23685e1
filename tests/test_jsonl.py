"""The JSONL reader: every task kind, paths relative to the file, bad lines by number."""

from __future__ import annotations

import json

import pytest

from model.jsonl import Document, GenerativeRecord, JsonlError, PairRecord, RagRecord, read_jsonl
from tests.conftest import make_image


def write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_reads_every_kind_with_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    make_image(1).save(tmp_path / "imgs" / "a.png")
    img = {"type": "image", "path": "imgs/a.png"}
    txt = {"type": "text", "text": "a red circle"}
    write(tmp_path / "d.jsonl", [
        {"id": "doc1", "slices": [img, txt], "metadata": {"lang": "en"}},
        {"task": "caption", "slices": [img], "answer": "a red circle"},
        {"task": "vqa", "slices": [img, {"type": "text", "text": "What colour?"}], "answer": "red"},
        {"task": "pair", "query": {"slices": [txt]}, "positive": {"slices": [img]},
         "negatives": [{"slices": [{"type": "text", "text": "blue"}]}]},
        {"task": "rag", "context": [{"slices": [txt]}, {"slices": [img]}],
         "query": {"slices": [{"type": "text", "text": "Which?"}]}, "answer": "red"},
    ])
    recs = read_jsonl(tmp_path / "d.jsonl")
    assert [type(r) for r in recs] == [Document, GenerativeRecord, GenerativeRecord, PairRecord, RagRecord]
    assert recs[0].id == "doc1" and recs[0].metadata == {"lang": "en"}
    assert recs[0].sample.slices[0].image.size == (40, 30)
    assert len(recs[3].negatives) == 1 and len(recs[4].context) == 2


def test_bad_lines_reported_with_numbers(tmp_path):
    write(tmp_path / "bad.jsonl", [
        {"id": "ok", "slices": [{"type": "text", "text": "fine"}]},
        "{not json",
        {"task": "vqa", "slices": [{"type": "text", "text": "q"}]},
        {"id": "x", "slices": [{"type": "image", "path": "missing.png"}]},
        {"task": "teleport"},
    ])
    with pytest.raises(JsonlError) as e:
        read_jsonl(tmp_path / "bad.jsonl")
    lines = [line for line, _ in e.value.errors]
    assert lines == [2, 3, 4, 5]
    text = str(e.value)
    assert "bad.jsonl:2: line: invalid JSON" in text
    assert "bad.jsonl:3: answer: missing" in text
    assert "missing.png" in text and "bad.jsonl:4:" in text
    assert "unknown task 'teleport'" in text
