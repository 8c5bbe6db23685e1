"""index/: store + FAISS agreement, two-stage search, filters, durability, concurrency."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from index import DocumentIndex, DocumentVectors, IndexRefused, VectorSettings
from index.ingest import reembed
from model.sample import Sample
from tests.conftest import make_image

D = 16


def rand_emb(rng, m=2):
    v = rng.normal(size=(m, D)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    g = v.sum(0)
    return DocumentVectors(v, (g / np.linalg.norm(g)).astype(np.float32))


def docs(n, seed=0, with_image=False, meta=None):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        parts = [f"document {seed}-{i}"] + ([make_image(i)] if with_image else [])
        s = Sample.build(parts, id=f"d{seed}-{i}", metadata=(meta(i) if meta else {"i": i}))
        out.append((s, rand_emb(rng, len(parts))))
    return out


def check_contract(idx: DocumentIndex) -> None:
    """The index contract every backend keeps (here and tests/test_pg.py): add, get (vectors as
    written), a refused duplicate writes nothing, delete, list, upsert, verify, search."""
    batch = docs(50, with_image=True)
    assert idx.add(batch, version="v1") == [s.id for s, _ in batch]
    assert idx.stats()["count"] == 50 and idx.count() == 50
    got = idx.get("d0-3")
    assert got.metadata == {"i": 3} and got.to_sample().slices[1].image.size == (40, 30)
    np.testing.assert_array_equal(got.vectors, batch[3][1].vectors)
    np.testing.assert_array_equal(got.summary, batch[3][1].summary)
    with pytest.raises(KeyError):
        idx.add(docs(1), version="v1")  # d0-0 exists: nothing written
    assert idx.count() == 50
    idx.delete(["d0-1", "d0-2"])
    assert idx.get("d0-1") is None and idx.count() == 48
    assert idx.list_ids(0, 3) == ["d0-0", "d0-3", "d0-4"]
    new = docs(1, seed=9)[0]
    idx.add([(Sample(new[0].slices, id="d0-5", metadata={"i": "updated"}), new[1])], version="v1", upsert=True)
    assert idx.get("d0-5").metadata == {"i": "updated"} and idx.count() == 48
    ok, problems = idx.verify()
    assert ok, problems
    assert idx.search(new[1], k=3)[0].id == "d0-5"
    with pytest.raises(KeyError):
        idx.delete(["nope"])


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_add_get_delete_upsert_and_verify(tmp_path, kind):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1", settings=VectorSettings(type=kind))
    check_contract(idx)
    assert idx.stats()["type"] == kind
    idx.close()


def test_generated_ids_and_reopen_replays_after_snapshot(tmp_path):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1", snapshot_every=10_000)
    s = Sample.build(["no id given"])
    [gen_id] = idx.add([(s, rand_emb(np.random.default_rng(0), 1))])
    assert len(gen_id) == 32
    idx.snapshot()
    idx.add(docs(5), version="v1")
    idx.delete(["d0-0"])
    idx.store.close()  # no close(): the snapshot is stale, the store is not
    again = DocumentIndex(tmp_path / "ix")
    assert again.count() == 5 and again.vectors.count == 5
    assert again.verify()[0]


def test_corrupt_snapshot_is_rebuilt_from_the_store(tmp_path, caplog):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1")
    idx.add(docs(20), version="v1")
    idx.close()
    snap = tmp_path / "ix" / "faiss.index"
    snap.write_bytes(snap.read_bytes()[:100])
    caplog.set_level(logging.WARNING, logger="index.index")
    again = DocumentIndex(tmp_path / "ix")
    assert "rebuilding the vector index from the store" in caplog.text
    assert "checksum mismatch" in caplog.text
    assert again.vectors.count == 20 and again.verify()[0]


def test_refuses_wrong_dimension_and_version(tmp_path):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1")
    bad = DocumentVectors(np.zeros((1, 8), np.float32), np.zeros(8, np.float32))
    with pytest.raises(IndexRefused, match="dimension 8 does not match the index \\(16\\)"):
        idx.add([(Sample.build(["x"]), bad)], version="v1")
    with pytest.raises(IndexRefused, match="embedding version v2 does not match"):
        idx.add(docs(1), version="v2")
    idx.close()
    with pytest.raises(IndexRefused, match="built with embedding version v1, not v2"):
        DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v2")
    with pytest.raises(IndexRefused, match="index dimension 16 does not match 32"):
        DocumentIndex(tmp_path / "ix", dim=32)
    with pytest.raises(IndexRefused, match="no index here"):
        DocumentIndex(tmp_path / "empty")


def test_search_reranks_by_ga_kernel_and_reports_both_scores(tmp_path):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1")
    batch = docs(40)
    idx.add(batch, version="v1")
    q = batch[7][1]
    hits = idx.search(q, k=5, k_prime=20)
    assert hits[0].id == "d0-7" and hits[0].score == pytest.approx(0.0, abs=1e-5)
    assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
    # the rerank score is the GA similarity, computed independently here
    import torch

    from model.kernels import sugar_similarity

    d = idx.get(hits[1].id)
    want = sugar_similarity(torch.from_numpy(q.vectors[None].copy()), torch.from_numpy(d.vectors[None].copy()))
    assert hits[1].score == pytest.approx(float(want), rel=1e-5)
    assert hits[1].ann_score == pytest.approx(float(q.summary @ d.summary), rel=1e-5)
    plain = idx.search(q, k=5, rerank=False)
    assert all(h.score == h.ann_score for h in plain)


def test_filters_exact_even_when_most_candidates_are_removed(tmp_path):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1")
    batch = docs(300, meta=lambda i: {"lang": "fr" if i % 50 == 0 else "en", "i": i})
    idx.add(batch, version="v1")
    q = batch[1][1]  # an English document
    hits = idx.search(q, k=10, filters={"lang": "fr"})
    assert sorted(h.id for h in hits) == sorted(f"d0-{i}" for i in range(0, 300, 50))
    assert idx.search(q, k=3, filters={"lang": "de"}) == []
    # the ANN path with oversampling gives the same set
    hits2 = idx.search(q, k=10, filters={"lang": "fr"}, exact_filter_limit=0)
    assert {h.id for h in hits2} == {h.id for h in hits}


# ------------------------------------------------------------ lexical and hybrid search
WORDS = ["red", "blue", "house", "banner", "Vyd", "Kos", "cat", "the", "of", "Ünïcode", "page", "figure"]


def word_docs(n, seed=1):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        parts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))]
        if i % 3 == 0:
            parts += [make_image(i), " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))]
        rows.append(Sample.build(parts, id=f"w{i}", metadata={"i": i, "odd": i % 2 == 1}))
    return rows


def bm25_reference(texts: dict[int, str], query: str, k1=1.2, b=0.75) -> dict[int, float]:
    """Okapi BM25 as FTS5 computes it (idf = ln((N - n + .5) / (n + .5)), floored at 1e-6), over
    lower-cased, accent-folded runs of letters and digits; a slow, independent reference."""
    import math
    import re
    import unicodedata

    def tokens(t):
        t = "".join(c for c in unicodedata.normalize("NFD", t.lower()) if not unicodedata.combining(c))
        return re.findall(r"[^\W_]+", t)

    toks = {f: tokens(t) for f, t in texts.items()}
    n_docs, avgdl = len(toks), sum(map(len, toks.values())) / len(toks)
    out = {}
    for term in dict.fromkeys(tokens(query)):
        n = sum(term in ts for ts in toks.values())
        if n == 0:
            continue
        idf = max(math.log((n_docs - n + 0.5) / (n + 0.5)), 1e-6)
        for f, ts in toks.items():
            tf = ts.count(term)
            if tf:
                out[f] = out.get(f, 0.0) + idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(ts) / avgdl))
    return out


def test_lexical_scores_are_bm25_and_follow_every_write(tmp_path):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1")
    rng = np.random.default_rng(0)
    samples = word_docs(60)
    idx.add([(s, rand_emb(rng, len(s.slices))) for s in samples], version="v1")

    def check(query):
        texts = {f: "\n".join(sl["text"] for sl in d.slices if sl["type"] == "text")
                 for f, d in idx.store.get_by_fids(sorted(idx.store.fids()), D).items()}
        want = bm25_reference(texts, query)
        got = dict(idx.store.lexical(query, 1000, "v1"))
        assert got.keys() == want.keys()
        for f in want:
            assert got[f] == pytest.approx(want[f], rel=1e-6, abs=1e-9)
        ranked = [f for f, _ in idx.store.lexical(query, 5, "v1")]
        assert [got[f] for f in ranked] == sorted(got.values(), reverse=True)[:5]

    check("What colour is the banner of House Vyd?")
    check("UNICODE page, figure: cat")  # case and accents folded
    assert idx.store.lexical("¿¡ ... !!", 5, "v1") == [] and idx.store.lexical("zebra", 5, "v1") == []
    # every kind of write keeps the text index in step, in the same transaction
    idx.delete(["w0", "w1"])
    idx.add([(Sample.build(["Vyd Vyd zebra"], id="w2"), rand_emb(rng, 1))], version="v1", upsert=True)
    with pytest.raises(KeyError):  # a failed batch writes nothing, text included
        idx.add([(Sample.build(["okapi"], id="new"), rand_emb(rng, 1)),
                 (Sample.build(["okapi"], id="w3"), rand_emb(rng, 1))], version="v1")
    assert idx.store.lexical("okapi", 5, "v1") == []
    check("zebra Vyd house")
    assert [idx.store.get_by_fids([f], D)[f].id for f, _ in idx.store.lexical("zebra", 5, "v1")] == ["w2"]
    # re-embedding moves documents to new fids: the text follows, and searches see one version
    reembed(idx, lambda batch: [rand_emb(rng, len(s.slices)) for s in batch], "v2", D, batch_size=25)
    assert idx.store.lexical("zebra", 5, "v1") == []
    assert [idx.store.get_by_fids([f], D)[f].id for f, _ in idx.store.lexical("zebra", 5, "v2")] == ["w2"]
    n_text = idx.store.conn.execute("SELECT COUNT(*) FROM docs_text").fetchone()[0]
    assert n_text == idx.count() == 58


def test_a_store_without_the_text_index_gains_it_on_open(tmp_path):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1")
    rng = np.random.default_rng(0)
    idx.add([(s, rand_emb(rng, len(s.slices))) for s in word_docs(20)], version="v1")
    before = idx.store.lexical("banner Kos", 20, "v1")
    c = idx.store.conn
    for stmt in ("DROP TRIGGER docs_text_add", "DROP TRIGGER docs_text_del", "DROP TABLE docs_text"):
        c.execute(stmt)  # as a store written before hybrid search
    idx.close()
    again = DocumentIndex(tmp_path / "ix")
    assert again.store.lexical("banner Kos", 20, "v1") == before and before
    again.add([(Sample.build(["Kos"], id="late"), rand_emb(rng, 1))], version="v1")
    assert "late" in {h.id for h in again.search(rand_emb(rng, 1), k=3, text="Kos", mode="lexical")}


def test_hybrid_fuses_dense_and_bm25_scores(tmp_path):
    from index.index import LEXICAL_WEIGHT

    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1")
    rng = np.random.default_rng(3)
    samples = word_docs(80)
    embs = [rand_emb(rng, len(s.slices)) for s in samples]
    idx.add(list(zip(samples, embs, strict=True)), version="v1")
    rare = Sample.build(["the banner of House Zyx"], id="rare")
    idx.add([(rare, rand_emb(rng, 1))], version="v1")
    q, text = embs[4], "banner of house zyx"
    dense = idx.search(q, k=81, k_prime=81)
    assert "rare" not in [h.id for h in idx.search(q, k=5)]  # the vector alone misses it
    hybrid = idx.search(q, k=5, text=text, mode="hybrid")
    assert hybrid[0].id == "rare"  # its rare word finds it, among many sharing the common ones
    # reference: the union of the ANN top-25 and the lexical top-25, the dense scores min-max
    # scaled over it, BM25 over its best, mixed
    lex = dict(idx.store.lexical(text, 25, "v1"))
    cand = {h.fid for h in sorted(dense, key=lambda h: -h.ann_score)[:25]} | set(lex)
    by_dense = [h for h in dense if h.fid in cand]  # dense scores do not depend on the candidate set
    lo, hi, best = by_dense[-1].score, by_dense[0].score, max(lex.values())
    fused = {h.fid: (1 - LEXICAL_WEIGHT) * (h.score - lo) / (hi - lo) + LEXICAL_WEIGHT * lex.get(h.fid, 0) / best
             for h in by_dense}
    want = sorted(fused, key=lambda f: -fused[f])[:5]
    assert [h.fid for h in hybrid] == want
    assert [h.score for h in hybrid] == pytest.approx([fused[f] for f in want], rel=1e-5)
    dense_by_fid = {h.fid: h.score for h in dense}
    assert all(h.dense_score == pytest.approx(dense_by_fid[h.fid], rel=1e-5) for h in hybrid)
    assert all(h.lexical_score == pytest.approx(lex.get(h.fid)) if h.fid in lex else h.lexical_score is None
               for h in hybrid)
    assert all(h.ann_score == pytest.approx(float(q.summary @ idx.get(h.id).summary), rel=1e-5) for h in hybrid)
    # lexical alone: BM25 order; filters hold on both sides; no text: the dense order
    lexical = idx.search(q, k=3, text=text, mode="lexical")
    assert [h.score for h in lexical] == sorted(lex.values(), reverse=True)[:3]
    assert all(h.score == h.lexical_score and h.dense_score is None for h in lexical)
    odd = idx.search(q, k=10, text=text, mode="hybrid", filters={"odd": True})
    assert odd and all(h.metadata["odd"] is True for h in odd)
    assert [h.id for h in idx.search(q, k=5, mode="hybrid")] == [h.id for h in dense[:5]]
    assert set(hybrid[0].to_dict()) == {"id", "score", "ann_score", "metadata", "dense_score", "lexical_score"}
    with pytest.raises(IndexRefused, match="search mode must be one of dense, hybrid, lexical, got 'bm25'"):
        idx.search(q, k=3, text=text, mode="bm25")
    # the weight: 0 keeps the dense order of the candidates, 1 the BM25 order of the matched ones
    all_dense = idx.search(q, k=5, k_prime=25, text=text, mode="hybrid", lexical_weight=0.0)
    assert [h.dense_score for h in all_dense] == pytest.approx([h.score for h in by_dense[:5]], rel=1e-5)
    all_words = idx.search(q, k=5, k_prime=25, text=text, mode="hybrid", lexical_weight=1.0)
    assert [h.lexical_score for h in all_words] == pytest.approx(sorted(lex.values(), reverse=True)[:5])
    with pytest.raises(IndexRefused, match=r"lexical_weight must lie in \[0, 1\], got 1.5"):
        idx.search(q, k=3, text=text, mode="hybrid", lexical_weight=1.5)


def test_hnsw_tombstones_filter_and_trigger_rebuild(tmp_path):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1", settings=VectorSettings(type="hnsw"))
    batch = docs(40)
    idx.add(batch, version="v1")
    idx.delete(["d0-3"])
    assert all(h.id != "d0-3" for h in idx.search(batch[3][1], k=5))
    idx.delete([f"d0-{i}" for i in range(4, 14)])  # > 20 % tombstones: rebuilt
    assert len(idx.vectors.tombstones) == 0 and idx.vectors.count == 29
    assert idx.verify()[0]


def test_export_import_round_trip(tmp_path):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1")
    idx.add(docs(5, with_image=True), version="v1")
    n = idx.export(tmp_path / "out.jsonl")
    assert n == 5
    from model.jsonl import read_jsonl

    recs = read_jsonl(tmp_path / "out.jsonl")
    assert [r.id for r in recs] == [f"d0-{i}" for i in range(5)]
    assert recs[0].sample.slices[1].image.size == (40, 30)
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["metadata"] == {"i": 0}


def test_reembed_switches_version_and_resumes(tmp_path):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1")
    idx.add(docs(10), version="v1")
    rng = np.random.default_rng(5)
    calls = []

    def embed(samples):
        calls.append(len(samples))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return [rand_emb(rng, len(s.slices)) for s in samples]

    with pytest.raises(RuntimeError):
        reembed(idx, embed, "v2", D, batch_size=4)
    assert idx.store.version_counts() == {"v2": 4, "v1": 6}
    assert idx.vectors.count == 4  # searches see only re-embedded documents
    assert not idx.verify()[0]
    calls.clear()
    calls.append(0)  # let the next calls succeed
    done = reembed(idx, lambda s: [rand_emb(rng, len(x.slices)) for x in s], "v2", D, batch_size=4)
    assert done == 10 and idx.store.version_counts() == {"v2": 10}
    assert idx.verify()[0] and idx.embedding_version == "v2"


def test_concurrent_searches_and_writes_stay_consistent(tmp_path):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1", snapshot_every=7)
    base = docs(50)
    idx.add(base, version="v1")
    errors = []
    stop = threading.Event()

    def searcher():
        rng = np.random.default_rng(threading.get_ident() % 1000)
        while not stop.is_set():
            try:
                k = int(rng.integers(0, 50))
                hits = idx.search(base[k][1], k=3)
                assert hits and hits[0].id == f"d0-{k}", hits
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    def writer(seed):
        for j in range(20):
            batch = docs(3, seed=100 + seed * 100 + j)
            idx.add(batch, version="v1")
            idx.delete([batch[0][0].id])

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert idx.count() == 50 + 2 * 20 * 2
    assert idx.verify()[0]


def test_sigkill_mid_ingest_loses_nothing_acknowledged(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    path = tmp_path / "crash"
    proc = subprocess.Popen([sys.executable, str(root / "tests" / "crash_writer.py"), str(path)],
                            stdout=subprocess.PIPE, text=True, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    live: set[str] = set()
    deleted: set[str] = set()
    assert proc.stdout is not None
    for line in proc.stdout:
        op, doc = line[0], line[1:].strip()
        (live.add if op == "+" else live.discard)(doc)
        if op == "-":
            deleted.add(doc)
        if len(live) >= 150:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    idx = DocumentIndex(path)
    ok, problems = idx.verify()
    assert ok, problems
    ids = set(idx.list_ids(0, 10_000))
    assert live <= ids, f"acknowledged but lost: {sorted(live - ids)[:5]}"
    assert not (deleted & ids), "acknowledged deletes came back"
    # at most the one document in flight when killed is beyond the acks, and it is whole
    assert len(ids - live) <= 1
    for doc_id in ids:
        d = idx.get(doc_id)
        assert d is not None and len(d.vectors) == len(d.slices) == 2
        assert d.to_sample().slices[1].image.size == (40, 30)
    for doc_id in sorted(live)[:20]:
        d = idx.get(doc_id)
        hits = idx.search(DocumentVectors(d.vectors.copy(), d.summary.copy()), k=1)
        assert hits[0].id == doc_id


@pytest.mark.parametrize("round_", range(3))
def test_writers_racing_on_the_same_ids_keep_faiss_and_store_equal(tmp_path, monkeypatch, round_):
    """Issue #14: upserts and deletes of the same ids from 8 threads, with periodic
    snapshots; the FAISS update is slowed down (1 ms) to widen any gap between a
    store commit and its vector change. Afterwards, and after a reopen without
    close (what a crash leaves: the last periodic snapshot plus the store), FAISS
    holds exactly the store's documents and every one of them is searchable."""
    import time

    from index.vectors import VectorIndex

    slow_add, slow_remove = VectorIndex.add, VectorIndex.remove

    def add(self, *a, **kw):
        time.sleep(0.001)
        return slow_add(self, *a, **kw)

    def remove(self, *a, **kw):
        time.sleep(0.001)
        return slow_remove(self, *a, **kw)

    monkeypatch.setattr(VectorIndex, "add", add)
    monkeypatch.setattr(VectorIndex, "remove", remove)
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1", snapshot_every=7)
    ids = ["a", "b", "c"]
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(40):
                doc_id = ids[int(rng.integers(3))]
                if rng.random() < 0.7:
                    s = Sample.build([f"text {seed}"], id=doc_id, metadata={"w": seed})
                    idx.add([(s, rand_emb(rng, 1))], version="v1", upsert=True)
                else:
                    try:
                        idx.delete([doc_id])
                    except KeyError:
                        pass
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(round_ * 100 + i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    ok, problems = idx.verify()
    assert ok, problems
    reopened = DocumentIndex(tmp_path / "ix")  # no close: the state a SIGKILL leaves
    ok, problems = reopened.verify()
    assert ok, problems
    for doc_id in reopened.list_ids(0, 10):
        d = reopened.get(doc_id)
        hits = reopened.search(DocumentVectors(d.vectors, d.summary), k=3)
        assert doc_id in [h.id for h in hits]


@pytest.mark.parametrize("meta", ["[]", "{}", '{"bytes": "x", "sha256": 1}', "\x00\xff"])
def test_damaged_snapshot_description_is_rebuilt_not_a_crash(tmp_path, caplog, meta):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1")
    idx.add(docs(12), version="v1")
    idx.close()
    (tmp_path / "ix" / "faiss.meta.json").write_text(meta, errors="surrogateescape")
    caplog.set_level(logging.WARNING, logger="index.index")
    again = DocumentIndex(tmp_path / "ix")
    assert "rebuilding the vector index from the store" in caplog.text
    assert again.vectors.count == 12 and again.verify()[0]


def test_truncated_store_is_refused_naming_the_file(tmp_path):
    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1")
    idx.add(docs(200, with_image=True), version="v1")
    idx.close()
    store = tmp_path / "ix" / "store.sqlite"
    store.write_bytes(store.read_bytes()[: 4096 * 3])
    with pytest.raises(IndexRefused, match="store.sqlite: not a readable SQLite database.*backup"):
        DocumentIndex(tmp_path / "ix")


def test_store_behind_its_snapshot_is_refused_then_repaired_on_request(tmp_path):
    """What deleting the -wal file of a running server leaves: a snapshot that has seen
    commits the store no longer holds. Never opened as if nothing happened."""
    import shutil

    idx = DocumentIndex(tmp_path / "ix", dim=D, embedding_version="v1", snapshot_every=5)
    idx.add(docs(20), version="v1")
    idx.add(docs(20, seed=1), version="v1")
    for _ in range(4):
        idx.add(docs(1, seed=_ + 2), version="v1")  # 5 writes: a snapshot at the latest change
    lost = tmp_path / "lost"
    lost.mkdir()
    for name in ("store.sqlite", "faiss.index", "faiss.meta.json"):  # no -wal, no -shm
        shutil.copy(tmp_path / "ix" / name, lost / name)
    with pytest.raises(IndexRefused, match="behind its FAISS snapshot.*sugar index rebuild"):
        DocumentIndex(lost, dim=D, embedding_version="v1")
    repaired = DocumentIndex(lost, dim=D, embedding_version="v1", repair=True)
    assert repaired.verify()[0] and repaired.vectors.count == repaired.count()


@pytest.mark.parametrize("round_", [0, *(pytest.param(r, marks=pytest.mark.slow) for r in (1, 2))])  # 1, 2: slow
def test_server_sigkilled_while_clients_race_put_and_delete_keeps_the_index_whole(tiny_ckpt, tmp_path, round_):
    """Issue #14's reproduction through the public interface: 8 clients PUT and DELETE the
    same 3 ids on a running `sugar serve` (snapshots every 5 writes), the server is killed
    with SIGKILL mid-traffic, then `sugar index verify` must pass and every document the
    store holds must be found by a search for its own vector."""
    import threading

    import httpx

    from sugar_cli.main import main
    from tests.server_fixtures import free_port, wait_until_up

    root = Path(__file__).resolve().parents[1]
    ix = tmp_path / "ix"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root), "SUGAR_SNAPSHOT_EVERY": "5"}
    proc = subprocess.Popen([sys.executable, "-m", "sugar_cli.main", "serve", "--checkpoint", str(tiny_ckpt),
                             "--index", str(ix), "--port", str(port)], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc, "/health")
        deadline = time.time() + 120
        acks = [0]
        stop = threading.Event()

        def client(k: int) -> None:
            rng = random.Random(k * 100 + round_)
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    doc = f"race-{rng.randrange(3)}"
                    try:
                        if rng.random() < 0.6:
                            r = c.put(f"/documents/{doc}", json={"slices": [
                                {"type": "text", "text": f"client {k} writes {rng.random()}"}]})
                        else:
                            r = c.delete(f"/documents/{doc}")
                        if r.status_code in (200, 404):
                            acks[0] += 1
                    except httpx.HTTPError:
                        return  # the server is gone

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        while acks[0] < 40 + 20 * round_ and time.time() < deadline + 60:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert acks[0] >= 40
    assert main(["index", "verify", "--index", str(ix)]) == 0
    idx = DocumentIndex(ix)
    ids = idx.list_ids(0, 100)
    assert len(ids) <= 3
    for doc_id in ids:
        d = idx.get(doc_id)
        hits = idx.search(DocumentVectors(d.vectors, d.summary), k=3, rerank=False)
        assert doc_id in [h.id for h in hits]
