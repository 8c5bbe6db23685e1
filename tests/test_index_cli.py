"""`sugar index …` through main(argv) with a tiny checkpoint."""

from __future__ import annotations

import json

import pytest

from sugar_cli.main import main
from tests.conftest import make_image


@pytest.fixture()
def corpus(tmp_path):
    make_image(1).save(tmp_path / "a.png")
    rows = [{"id": f"doc{i}", "slices": [{"type": "text", "text": f"document number {i}"},
                                          {"type": "image", "path": "a.png"}],
             "metadata": {"group": "even" if i % 2 == 0 else "odd"}} for i in range(12)]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path / "docs.jsonl"


def test_add_search_stats_verify_delete(tiny_ckpt, corpus, tmp_path, capsys):
    ix = str(tmp_path / "ix")
    assert main(["index", "add", "--index", ix, "--checkpoint", str(tiny_ckpt), "--data", str(corpus)]) == 0
    capsys.readouterr()
    assert main(["index", "stats", "--index", ix, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["count"] == 12 and st["dim"] == 32 and st["type"] == "flat"
    assert main(["index", "search", "--index", ix, "--checkpoint", str(tiny_ckpt),
                 "--query", "document number 3", "-k", "4", "--filter", "group=odd", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 4 and all(h["metadata"]["group"] == "odd" for h in hits)
    # hybrid by default: "3" is a word of doc3's text only, so BM25 puts it first
    assert hits[0]["id"] == "doc3" and hits[0]["lexical_score"] > 0
    assert set(hits[0]) == {"id", "score", "ann_score", "metadata", "dense_score", "lexical_score"}
    assert main(["index", "search", "--index", ix, "--checkpoint", str(tiny_ckpt),
                 "--query", "document number 3", "--mode", "dense", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)[0]) == {"id", "score", "ann_score", "metadata"}
    assert main(["index", "verify", "--index", ix]) == 0
    assert main(["index", "delete", "--index", ix, "doc0", "doc1"]) == 0
    capsys.readouterr()
    main(["index", "stats", "--index", ix, "--json"])
    assert json.loads(capsys.readouterr().out)["count"] == 10
    with pytest.raises(SystemExit, match="no document 'nope'"):
        main(["index", "delete", "--index", ix, "nope"])
    capsys.readouterr()
    # the same file again: unchanged (deleted ids are not brought back: the source is as it was)
    assert main(["index", "add", "--index", ix, "--checkpoint", str(tiny_ckpt), "--data", str(corpus)]) == 0
    assert "1 unchanged" in capsys.readouterr().out
    other = tmp_path / "other.jsonl"
    other.write_text(corpus.read_text().replace("document number", "another text"))
    assert main(["index", "add", "--index", ix, "--checkpoint", str(tiny_ckpt), "--data", str(other)]) == 1
    assert f"exists from {corpus} (use --upsert to replace it)" in capsys.readouterr().out
    assert main(["index", "add", "--index", ix, "--checkpoint", str(tiny_ckpt), "--data", str(other),
                 "--upsert"]) == 0


def test_verify_exit_code_when_faiss_and_store_disagree(tiny_ckpt, corpus, tmp_path):
    ix = tmp_path / "ix"
    main(["index", "add", "--index", str(ix), "--checkpoint", str(tiny_ckpt), "--data", str(corpus)])
    from index import DocumentIndex

    idx = DocumentIndex(ix)
    idx.vectors.remove([next(iter(idx.vectors.ids()))])  # FAISS loses one behind the store's back
    idx.vectors.save(ix, idx.store.last_seq())
    assert main(["index", "verify", "--index", str(ix)]) == 1


def test_verify_and_rebuild_the_text_index(tiny_ckpt, corpus, tmp_path, capsys):
    ix = tmp_path / "ix"
    main(["index", "add", "--index", str(ix), "--checkpoint", str(tiny_ckpt), "--data", str(corpus)])
    from index import DocumentIndex

    idx = DocumentIndex(ix)
    idx.store.conn.execute("DELETE FROM docs_text WHERE rowid IN (SELECT rowid FROM docs_text LIMIT 2)")
    idx.close()
    capsys.readouterr()
    assert main(["index", "verify", "--index", str(ix)]) == 1
    assert "text index differs from the store: 2 documents missing, 0 extra" in capsys.readouterr().err
    assert main(["index", "rebuild", "--index", str(ix)]) == 0
    assert main(["index", "verify", "--index", str(ix)]) == 0
    again = DocumentIndex(ix)
    assert len(again.store.lexical("document number", 100, again.embedding_version)) == 12


def test_reembed_with_another_checkpoint(tiny_ckpt, corpus, tmp_path, capsys):
    import shutil

    from model.sugar import SugarModel

    ix = str(tmp_path / "ix")
    main(["index", "add", "--index", ix, "--checkpoint", str(tiny_ckpt), "--data", str(corpus)])
    other = tmp_path / "other"
    shutil.copytree(tiny_ckpt, other)
    m = SugarModel.from_pretrained(other)
    with __import__("torch").no_grad():
        m.heads.text_proj.weight.mul_(1.5)
    m.save_pretrained(other)
    with pytest.raises(SystemExit, match="embedding version"):
        main(["index", "search", "--index", ix, "--checkpoint", str(other), "--query", "x"])
    assert main(["index", "reembed", "--index", ix, "--checkpoint", str(other)]) == 0
    capsys.readouterr()
    main(["index", "stats", "--index", ix, "--json"])
    st = json.loads(capsys.readouterr().out)
    assert st["embedding_version"] == m.embedding_version and st["embedding_versions"] == {m.embedding_version: 12}
    assert main(["index", "search", "--index", ix, "--checkpoint", str(other), "--query", "x"]) == 0


def test_bad_lines_and_non_documents_are_refused(tiny_ckpt, tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text('{"task": "vqa", "slices": [{"type":"text","text":"q"}], "answer": "a"}\n'
                                      '{"id": 3}\n')
    assert main(["index", "add", "--index", str(tmp_path / "ix"), "--checkpoint", str(tiny_ckpt),
                 "--data", str(tmp_path / "d.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "d.jsonl:1: a 'vqa' record is not a document" in out
    assert "d.jsonl:2:" in out


def test_bench_index_small(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "index", "--sizes", "2000", "--dim", "32", "--queries", "20", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ann"][0]["hnsw"]["recall@10"] > 0.5
    e2e = data["end_to_end"]["2000"]
    assert e2e["search_hybrid_k'50_p50_ms"] > 0 and e2e["hybrid/dense_p50"] > 0
    assert "GA rerank per query" in capsys.readouterr().out


def test_the_parsers_search_modes_are_the_index_ones():
    from index.index import SEARCH_MODES
    from sugar_cli.commands.index import SEARCH_MODES as cli_modes

    assert sorted(cli_modes) == sorted(SEARCH_MODES)

