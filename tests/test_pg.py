"""The PostgreSQL + pgvector backend (issue #23) against a real server: the index contract on
both backends, the same ranking of one collection, BM25 in SQL, two processes sharing one
collection, and start-up errors that name what to fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index import DocumentIndex, DocumentVectors, IndexRefused
from model.sample import Sample
from tests.test_index import D, bm25_reference, check_contract, rand_emb, word_docs


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """An empty index location on each backend."""
    if request.param == "sqlite":
        return tmp_path / "ix"
    return request.getfixturevalue("pg").create_database()


def test_the_index_contract_on_both_backends(location):
    idx = DocumentIndex(location, dim=D, embedding_version="v1")
    check_contract(idx)
    with pytest.raises(IndexRefused, match="vector dimension 8 does not match the index"):
        idx.add([(Sample.build(["x"], id="x"), DocumentVectors(np.ones((1, 8), np.float32), np.ones(8, np.float32)))],
                version="v1")
    idx.close()
    again = DocumentIndex(location)  # reopened: everything is there
    assert again.count() == 48 and again.dim == D and again.embedding_version == "v1"
    with pytest.raises(IndexRefused, match="built with embedding version v1, not v2"):
        DocumentIndex(location, dim=D, embedding_version="v2")


def _fill(location, seed=3):
    idx = DocumentIndex(location, dim=D, embedding_version="v1")
    rng = np.random.default_rng(seed)
    samples = word_docs(120)
    for i, s in enumerate(samples):
        s.metadata["source"] = f"/notes/{'a' if i % 3 else 'b'}/{i}.md"
    embs = [rand_emb(rng, len(s.slices)) for s in samples]
    idx.add(list(zip(samples, embs, strict=True)), version="v1")
    return idx, embs


def test_both_backends_rank_one_collection_alike(pg, tmp_path):
    lite, embs = _fill(tmp_path / "ix")
    shared, _ = _fill(pg.create_database())
    queries = [(embs[4], "banner of house zyx"), (embs[17], "What colour is the banner of House Vyd?"),
               (embs[50], "UNICODE page figure cat")]
    for q, text in queries:
        for mode in ("dense", "lexical", "hybrid"):
            for filters in (None, {"odd": True}, {"source": {"$prefix": "/notes/b/"}}):
                a = lite.search(q, k=10, k_prime=40, text=text, mode=mode, filters=filters)
                b = shared.search(q, k=10, k_prime=40, text=text, mode=mode, filters=filters)
                assert [h.id for h in a] == [h.id for h in b], (mode, filters, text)
                assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-5, abs=1e-6)
                assert [h.metadata for h in a] == [h.metadata for h in b]
    assert lite.store.sources() == shared.store.sources()
    assert lite.store.source_documents("/notes/b/0.md") == shared.store.source_documents("/notes/b/0.md")


def test_bm25_in_sql_is_fts5_s(pg):
    idx, _ = _fill(pg.create_database())
    texts = {f: "\n".join(sl["text"] for sl in d.slices if sl["type"] == "text")
             for f, d in idx.store.get_by_fids(sorted(idx.store.fids()), D).items()}
    for query in ("What colour is the banner of House Vyd?", "UNICODE page, figure: cat", "zebra"):
        want = bm25_reference(texts, query)
        got = dict(idx.store.lexical(query, 1000, "v1"))
        assert got.keys() == want.keys()
        for f in want:
            assert got[f] == pytest.approx(want[f], rel=1e-6, abs=1e-9)


def test_lexical_tokens_and_vector_literals_against_references(pg):
    """The ASCII shortcut of `lexical_tokens` against the full Unicode walk (the slow reference),
    and a summary's text literal read back by pgvector as the same float32 values."""
    import re
    import unicodedata

    import psycopg

    from index.pg import lexical_tokens, vector_literal

    def reference(text):
        folded = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
        return re.findall(r"\w+", folded.replace("_", " "))

    texts = ["What colour is the banner of House Vyd?", "snake_case x86-64 3.14 e=mc^2 [1] {a:b}", "",
             "\t\n  MiXeD  CaSe\r\n", "".join(chr(i) for i in range(128)), "Café Ünïcödé naïve", "日本語 テキスト"]
    rng = np.random.default_rng(4)
    texts += ["".join(chr(c) for c in rng.integers(32, 127, 200)) for _ in range(50)]
    for text in texts:
        assert lexical_tokens(text) == reference(text), text
    url = pg.create_database()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        for v in (rng.standard_normal(128).astype(np.float32), np.array([1e-38, -3.4e38, 0.0, 1 / 3], np.float32)):
            back = c.execute("SELECT %s::vector::text", (vector_literal(v),)).fetchone()[0]
            np.testing.assert_array_equal(np.array(json.loads(back), np.float32), v)


def test_two_openers_share_one_collection(pg):
    url = pg.create_database()
    a = DocumentIndex(url, dim=D, embedding_version="v1")
    b = DocumentIndex(url)  # a second replica: no dimension given, it reads the shared one
    rng = np.random.default_rng(5)
    e = rand_emb(rng, 1)
    a.add([(Sample.build(["written through a"], id="x1"), e)], version="v1")
    assert b.get("x1").to_sample().text() == "written through a"
    assert b.search(e, k=1)[0].id == "x1"  # at once: no snapshot, no sync
    assert b.search(e, k=1, text="written", mode="lexical")[0].id == "x1"
    b.delete(["x1"])
    assert a.get("x1") is None and a.count() == 0 == b.count()
    assert a.stats()["embedding_version"] == b.stats()["embedding_version"] == "v1"


def test_a_bulk_load_builds_the_graph_once_and_ranks_as_row_by_row(location, tmp_path):
    """`bulk_load` into an empty collection: on PostgreSQL the HNSW index is dropped, searches
    meanwhile are exact, and the graph built at the end ranks as an index filled row by row; the
    embedded backend has nothing to defer."""
    idx = DocumentIndex(location, dim=D, embedding_version="v1")
    shared = isinstance(location, str)
    rng = np.random.default_rng(11)
    samples = word_docs(150)
    embs = [rand_emb(rng, len(s.slices)) for s in samples]
    with idx.bulk_load() as deferred:
        assert deferred is shared
        idx.add(list(zip(samples[:100], embs[:100], strict=True)), version="v1")
        if shared:
            assert not idx.store._has_vector_index()
            assert idx.verify()[1] == ["the HNSW index on the summary vectors is being built by a bulk load "
                                       "in progress"]
        for q in embs[:5]:  # searches during the load: right answers
            best = max(range(100), key=lambda i: float(embs[i].summary @ q.summary))
            assert idx.search(q, k=1, mode="dense")[0].id == samples[best].id
        idx.add(list(zip(samples[100:], embs[100:], strict=True)), version="v1")
    assert idx.verify() == (True, [])
    with idx.bulk_load() as again:  # it holds documents now: rows go into the graph one by one
        assert again is False
    rows = DocumentIndex(tmp_path / "rows", dim=D, embedding_version="v1")
    for i in range(0, 150, 10):
        rows.add(list(zip(samples[i : i + 10], embs[i : i + 10], strict=True)), version="v1")
    for q in embs[::10]:
        assert ([h.id for h in idx.search(q, k=10, k_prime=40, mode="dense")]
                == [h.id for h in rows.search(q, k=10, k_prime=40, mode="dense")])
    idx.close()
    rows.close()


def test_a_bulk_load_killed_midway_is_finished_by_the_next_opener(pg):
    """kill -9 inside `bulk_load`: the committed rows stay, the HNSW index is missing, and a
    second process opening the collection meanwhile leaves it alone (the loader's session lock
    is held); the first one to open it after the loader died builds it."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    url = pg.create_database()
    DocumentIndex(url, dim=D, embedding_version="v1").close()
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from index import DocumentIndex
        from tests.test_index import rand_emb, word_docs
        idx = DocumentIndex({url!r}, dim={D}, embedding_version="v1")
        rng = np.random.default_rng(2)
        samples = word_docs(60)
        with idx.bulk_load() as deferred:
            assert deferred
            idx.add([(s, rand_emb(rng, len(s.slices))) for s in samples], version="v1")
            print("loaded", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "loaded"
        meanwhile = DocumentIndex(url)  # opened during the load: the index is the loader's to build
        assert meanwhile.count() == 60 and not meanwhile.store._has_vector_index()
        with meanwhile.bulk_load() as deferred:
            assert deferred is False  # one load at a time
        meanwhile.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    after = DocumentIndex(url)
    assert after.store._has_vector_index() and after.count() == 60
    assert after.verify() == (True, [])
    after.close()


def test_an_unreachable_database_is_refused_naming_it(pg):
    from tests.pg_fixtures import _free_port

    url = f"postgresql://postgres:secret@127.0.0.1:{_free_port()}/nowhere"
    with pytest.raises(IndexRefused, match="cannot connect to PostgreSQL at postgresql://postgres:\\*\\*\\*@127.0.0.1"):
        DocumentIndex(url, dim=D)
    missing = pg.url("no_such_database")
    with pytest.raises(IndexRefused, match='database "no_such_database" does not exist'):
        DocumentIndex(missing, dim=D)


# ------------------------------------------------------------------ the server and the CLI on PostgreSQL
@pytest.mark.parametrize("round_", range(3))
def test_two_servers_on_one_database_serve_one_collection(pg, tiny_ckpt, round_):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from tests.server_fixtures import seed_index, settings_for

    url = pg.create_database()
    seed_index(url, tiny_ckpt, n=3)
    doc = {"slices": [{"type": "text", "text": "The banner of House Qel is green."}], "metadata": {"k": 1}}
    a = TestClient(create_app(settings_for(tiny_ckpt, None, index_url=url, ready_cache_s=0)))
    b = TestClient(create_app(settings_for(tiny_ckpt, None, index_url=url, ready_cache_s=0)))
    with a, b:
        assert a.put("/documents/house-qel", json=doc).status_code == 200
        assert b.get("/documents/house-qel").json()["metadata"] == {"k": 1}
        hits = b.post("/retrieve", json={"query": {"slices": [{"type": "text", "text": "House Qel"}]}, "k": 1,
                                         "mode": "lexical"}).json()["results"]
        assert hits[0]["id"] == "house-qel"
        assert a.get("/index/stats").json()["count"] == b.get("/index/stats").json()["count"] == 4
        up = a.post("/documents/upload", files=[("files", ("qel.md", b"# Qel\n\nQel sails at dawn.", "text/markdown"))])
        assert up.status_code == 200, up.text
        [chunk] = up.json()["ids"]
        assert b.get(f"/documents/{chunk}").status_code == 200
        qel = ("qel.md", b"# Qel\n\nQel sails at dawn.", "text/markdown")
        again = b.post("/documents/upload", files=[("files", qel)])
        assert again.json()["files"][0]["status"] == "unchanged"  # B sees what A stored
        assert b.delete(f"/documents/{chunk}").status_code == 200
        assert b.delete("/documents/house-qel").status_code == 200
        assert a.get("/documents/house-qel").status_code == 404
        # PostgreSQL killed mid-traffic: 503 naming the index, /ready red, no 500 and no hang
        pg.kill()
        r = a.put("/documents/late", json=doc)
        assert r.status_code == 503 and r.json()["error"]["type"] == "index_unavailable", r.text
        assert b.get("/documents/house-0").status_code == 503
        assert a.get("/ready").status_code == 503
        assert a.get("/health").status_code == 200
        pg.start()  # crash recovery replays the WAL; the servers reconnect by themselves
        assert a.get("/ready").status_code == 200
        assert a.put("/documents/late", json=doc).status_code == 200
        assert b.get("/documents/late").status_code == 200 and b.get("/documents/house-2").status_code == 200


def test_cli_add_stats_verify_export_import_across_backends(pg, tiny_ckpt, tmp_path, capsys):
    from sugar_cli.main import main
    from tests.docs_fixtures import write_notes

    notes = tmp_path / "notes"
    write_notes(notes)
    url = pg.create_database()
    ck = ["--checkpoint", str(tiny_ckpt)]
    assert main(["index", "add", "--index-url", url, *ck, "--data", str(notes)]) == 0
    assert main(["index", "verify", "--index-url", url]) == 0
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:  # damage: the ANN index and one document's postings
        c.execute("DROP INDEX docs_summary_hnsw")
        c.execute("DELETE FROM postings WHERE fid = (SELECT min(fid) FROM docs WHERE n_tokens > 0)")
    capsys.readouterr()
    assert main(["index", "verify", "--index-url", url]) == 1
    out = capsys.readouterr().err
    assert "HNSW index on the summary vectors is missing" in out and "postings disagree with 1 documents" in out
    assert main(["index", "rebuild", "--index-url", url]) == 0
    assert main(["index", "verify", "--index-url", url]) == 0
    capsys.readouterr()
    assert main(["index", "stats", "--index-url", url, "--json"]) == 0
    import json

    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] > 0 and stats["type"] == "hnsw (pgvector)" and stats["path"] == url
    # PostgreSQL -> JSONL -> the embedded index -> JSONL: every document, vector and metadata value
    assert main(["index", "export", "--index-url", url, "--out", str(tmp_path / "a.jsonl")]) == 0
    assert main(["index", "import", "--index", str(tmp_path / "ix"), *ck, "--data", str(tmp_path / "a.jsonl")]) == 0
    from index import DocumentIndex

    # and back: the embedded index -> JSONL -> a new PostgreSQL database
    assert main(["index", "export", "--index", str(tmp_path / "ix"), "--out", str(tmp_path / "b.jsonl")]) == 0
    back = pg.create_database()
    assert main(["index", "import", "--index-url", back, *ck, "--data", str(tmp_path / "b.jsonl")]) == 0
    assert main(["index", "verify", "--index-url", back]) == 0
    shared, local, again = DocumentIndex(url), DocumentIndex(tmp_path / "ix"), DocumentIndex(back)
    assert sorted(shared.list_ids(0, 1000)) == sorted(local.list_ids(0, 1000)) == sorted(again.list_ids(0, 1000))

    def kept(meta):  # `import` records the JSONL file as the source
        return {k: v for k, v in meta.items() if k not in ("source", "format", "source_hash")}

    for doc_id in shared.list_ids(0, 1000):
        x, y, z = shared.get(doc_id), local.get(doc_id), again.get(doc_id)
        assert x.slices == y.slices == z.slices and x.images == y.images == z.images
        assert kept(x.metadata) == kept(y.metadata) == kept(z.metadata)
        np.testing.assert_allclose(x.vectors, y.vectors, atol=1e-5)
        np.testing.assert_allclose(x.vectors, z.vectors, atol=1e-5)


def test_startup_names_what_to_fix(pg, tiny_ckpt):
    """A wrong URL, an unreachable server, a missing database, another embedding version: one
    clear message each, before serving."""
    from server.app import load_service
    from server.metrics import Metrics
    from server.settings import StartupError
    from sugar_cli.main import main
    from tests.pg_fixtures import _free_port
    from tests.server_fixtures import settings_for

    with pytest.raises(SystemExit, match="is not a postgresql:// URL"):
        main(["serve", "--checkpoint", str(tiny_ckpt), "--index-url", "mysql://db/x"])
    with pytest.raises(StartupError, match="cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:"):
        load_service(settings_for(tiny_ckpt, None, index_url=f"postgresql://postgres@127.0.0.1:{_free_port()}/x"),
                     Metrics())
    with pytest.raises(StartupError, match='database "absent" does not exist'):
        load_service(settings_for(tiny_ckpt, None, index_url=pg.url("absent")), Metrics())
    url = pg.create_database()
    DocumentIndex(url, dim=32, embedding_version="not-this-model").close()
    with pytest.raises(StartupError, match="built with embedding version not-this-model"):
        load_service(settings_for(tiny_ckpt, None, index_url=url), Metrics())
    with pytest.raises(StartupError, match='cannot connect to PostgreSQL at .*role "intruder" does not exist'):
        load_service(settings_for(tiny_ckpt, None, index_url=pg.url().replace("postgres@", "intruder@")), Metrics())


@pytest.mark.parametrize("row,message", [
    (None, "the pgvector extension is not available in this PostgreSQL"),
    (("0.7.4", None), "pgvector 0.7.4 is too old"),
    (("0.8.6", "0.7.0"), "pgvector 0.7.0 is too old"),  # installed older than available: its version counts
])
def test_pgvector_missing_or_older_than_0_8_is_refused(row, message):
    """What `pg_available_extensions` says decides (the bundled server has 0.8.6 only, so the
    refusals are checked on the answer itself)."""
    from index.pg import PgStore

    class Answer:
        def execute(self, *_):
            return self

        def fetchone(self):
            return row

    store = PgStore.__new__(PgStore)
    store.where = "postgresql://db/x"
    with pytest.raises(IndexRefused, match=message):
        store._check_pgvector(Answer())
    store._check_pgvector(type("Ok", (Answer,), {"fetchone": lambda self: ("0.8.6", "0.8.6")})())


@pytest.mark.parametrize("round_", [0, *(pytest.param(r, marks=pytest.mark.slow) for r in (1, 2))])  # 1, 2: slow
def test_two_sugar_serve_replicas_race_and_one_is_killed(pg, tiny_ckpt, round_):
    """Two `sugar serve` processes on one database: 8 clients race PUT and DELETE on the same
    3 ids through both and PUT ids of their own; replica A is killed with SIGKILL mid-traffic.
    After: `sugar index verify` is clean, every id either replica acknowledged is there, and
    every stored document is found by a search for its own vector."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    import httpx

    from sugar_cli.main import main
    from tests.server_fixtures import free_port, seed_index, wait_until_up

    url = pg.create_database()
    seed_index(url, tiny_ckpt, n=1)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "SUGAR_INDEX_URL": url, "SUGAR_INGEST_WORKERS": "0"}
    procs, bases = [], []
    for _ in range(2):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "sugar_cli.main", "serve", "--checkpoint",
                                       str(tiny_ckpt), "--port", str(port)], cwd=root, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        bases.append(f"http://127.0.0.1:{port}")
    try:
        for p, base in zip(procs, bases, strict=True):
            wait_until_up(base, p)
        deadline = time.time() + 120
        acked: list[str] = []
        acks = [0]
        stop = threading.Event()

        def client(k: int) -> None:
            rng = random.Random(100 * round_ + k)
            n = 0
            while not stop.is_set():
                base = bases[(k + n) % 2]
                n += 1
                doc = f"race-{rng.randrange(3)}"
                body = {"slices": [{"type": "text", "text": f"client {k} writes {rng.random()}"}]}
                try:
                    own = f"own-{k}-{n}"
                    if httpx.put(f"{base}/documents/{own}", json=body, timeout=30).status_code == 200:
                        acked.append(own)
                    r = (httpx.put(f"{base}/documents/{doc}", json=body, timeout=30) if rng.random() < 0.6
                         else httpx.delete(f"{base}/documents/{doc}", timeout=30))
                    assert r.status_code in (200, 404), r.text  # never a 409 or a 500 from the race
                    acks[0] += 1
                except httpx.HTTPError:
                    continue  # replica A is gone: the next request goes to B

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        while acks[0] < 60 + 20 * round_ and time.time() < deadline + 60:
            time.sleep(0.01)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=30)
        time.sleep(1.0)  # B goes on alone
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert acks[0] >= 60
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)
    assert main(["index", "verify", "--index-url", url]) == 0
    idx = DocumentIndex(url)
    ids = set(idx.list_ids(0, 100_000))
    assert set(acked) <= ids and len(acked) > 8
    for doc_id in ids:
        d = idx.get(doc_id)
        from index import DocumentVectors

        hits = idx.search(DocumentVectors(d.vectors, d.summary), k=10, k_prime=len(ids))
        assert doc_id in [h.id for h in hits if h.score >= hits[0].score - 1e-5]  # texts alike: ties


def test_bench_index_backends_side_by_side(pg, capsys):
    from sugar_cli.main import main

    assert main(["bench", "index", "--backend", "postgres", "--sizes", "1500", "--queries", "5",
                 "--index-url", pg.create_database()]) == 0
    out = capsys.readouterr().out
    assert "backends side by side: 1500 documents" in out and "postgres / embedded search p50" in out
    assert "postgres / embedded ingest: " in out
    rows = {line.split("|")[0].strip(): line for line in out.splitlines() if "|" in line}
    assert rows["postgres"].split("|")[-1].strip() == "10.0"  # the 1 % filter returns k


def test_hybrid_top5_on_the_debian_manuals_matches_the_embedded_backend(pg, tiny_ckpt, tmp_path, capsys):
    """The real corpus of the ingestion tests (an HTML manual, a PDF manual, a README) in both
    backends: the hybrid top-5 of every query (a sentence from each chunk) is the same."""
    import random
    import shutil

    from model.sample import Sample
    from model.sugar import SugarModel
    from sugar_cli.main import main
    from tests.test_ingest import REAL

    if not all(p.exists() for p in REAL.values()):
        pytest.skip("Debian libtasn1-doc, libxslt1-dev, libjs-underscore not installed (.ci/run installs them)")
    corpus = tmp_path / "corpus"
    shutil.copytree(REAL["html"], corpus / "xslt")
    shutil.copy(REAL["pdf"], corpus / "libtasn1.pdf")
    shutil.copy(REAL["md"], corpus / "README.md")
    url = pg.create_database()
    for where in (["--index", str(tmp_path / "ix")], ["--index-url", url]):
        main(["index", "add", *where, "--checkpoint", str(tiny_ckpt), "--data", str(corpus)])  # 2 gz refused
    lite, shared = DocumentIndex(tmp_path / "ix"), DocumentIndex(url)
    assert lite.count() == shared.count() > 100
    model = SugarModel.from_pretrained(tiny_ckpt)
    rng = random.Random(0)
    texts = []
    for doc_id in rng.sample(sorted(lite.list_ids(0, 100_000)), 200):
        words = " ".join(s["text"] for s in lite.get(doc_id, with_images=False).slices if s["type"] == "text").split()
        if len(words) >= 8 and len(texts) < 60:
            start = rng.randrange(len(words) - 7)
            texts.append(" ".join(words[start:start + 8]))
    same = 0
    from index.embedding import embed_samples

    for text, q in zip(texts, embed_samples(model, [Sample.build([t]) for t in texts]), strict=True):
        a = [h.id for h in lite.search(q, k=5, text=text, mode="hybrid")]
        b = [h.id for h in shared.search(q, k=5, text=text, mode="hybrid")]
        same += a == b
    print(f"hybrid top-5 identical on {same} of {len(texts)} queries")
    assert same / len(texts) >= 0.95


def test_term_evidence_is_the_rarest_held_terms_idf_relative_to_a_one_document_term(location):
    """index.index.term_evidence against a hand computation: the document frequencies each
    backend reports (SQLite's FTS5 vocabulary, PostgreSQL's postings) equal a count over the
    documents' words, and the evidence is BM25's idf of the rarest question term the documents
    hold (terms no document holds left out) over that of a term one document holds."""
    import math

    import numpy as np

    from index import DocumentIndex, DocumentVectors
    from index.index import lexical_terms, term_evidence
    from model.sample import Sample

    texts = ["The banner of House Vyd: blue", "The banner of House Rax: red", "Apache License, Version 2.0",
             "the warranty of the licence", "Café Ünïcode banner"]
    index = DocumentIndex(location, dim=4, embedding_version="v")
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((len(texts), 4)).astype(np.float32)
    index.add([(Sample.build([t], id=f"d{i}"), DocumentVectors(vecs[i : i + 1], vecs[i])) for i, t in enumerate(texts)])
    words = [set(lexical_terms(t)) for t in texts]
    question = "What colour is the banner of House Vyd? cafe"
    terms = lexical_terms(question)
    assert terms == ["what", "colour", "is", "the", "banner", "of", "house", "vyd", "cafe"]
    df = {t: sum(t in w for w in words) for t in terms}
    assert index.document_frequencies(terms) == df

    def by_hand(used: list[str], copies: int = 1) -> float:
        n = copies * len(texts)

        def idf(d: int) -> float:
            return math.log((n - d + 0.5) / (d + 0.5) + 1)

        held = {t for u in used for t in lexical_terms(u)}
        return max((idf(copies * df[t]) for t in terms if df[t] and t in held), default=0.0) / idf(1)

    assert term_evidence(question, [texts[0]], [index]) == pytest.approx(by_hand([texts[0]]), rel=1e-12) == 1.0
    rax = term_evidence(question, [texts[1]], [index])  # another house: only words two documents hold
    assert rax == pytest.approx(by_hand([texts[1]]), rel=1e-12) and 0 < rax < 0.7
    assert term_evidence(question, [texts[4]], [index]) == pytest.approx(1.0)  # "cafe" = "Café", one document
    assert term_evidence(question, [], [index]) == 0.0 and term_evidence("?!", [texts[0]], [index]) is None
    # two collections searched together: their counts add up
    assert term_evidence(question, [texts[1]], [index, index]) == pytest.approx(by_hand([texts[1]], 2), rel=1e-12)
    index.close()
