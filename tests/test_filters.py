"""Filter operators (model/filters.py) mean the same on both backends: one table of filters,
each with no match, some and all, run against SQLite and PostgreSQL, required to give the
reference's ids (count, scroll, search stage 1); selective filters still return k; and the
routes that use them: /documents/scroll, /documents/count, /documents/delete, and /retrieve's
score_threshold, group_by, batch form and more-like-this."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index import DocumentIndex
from model.filters import matches, parse
from model.sample import Sample
from model.search import SearchParams
from tests.test_index import D, rand_emb

N = 48


def meta(i: int) -> dict:
    m = {"n": i, "half": i * 0.5, "lang": ["fr", "de", "en"][i % 3], "flag": i % 2 == 0,
         "source": f"upload:dir{i % 4}/f{i}.md", "nested": {"a": i % 2}, "tags": ["x", str(i % 5)]}
    if i % 3 == 0:
        m["opt"] = None if i % 6 == 0 else i
    return m


# operator -> (no match, some, all)
TABLE: dict[str, tuple[dict, dict, dict]] = {
    "equality": ({"lang": "es"}, {"lang": "fr"}, {}),
    "$eq": ({"n": {"$eq": -1}}, {"flag": {"$eq": True}}, {"nested": {"$ne": {"a": 7}}}),
    "$eq object": ({"nested": {"a": 3}}, {"nested": {"a": 1}}, {"$or": [{"nested": {"a": 0}}, {"nested": {"a": 1}}]}),
    "$ne": ({"n": {"$ne": 5}, "lang": "es"}, {"lang": {"$ne": "fr"}}, {"lang": {"$ne": "es"}}),
    "$gt": ({"n": {"$gt": 1000}}, {"n": {"$gt": 40}}, {"n": {"$gt": -1}}),
    "$gte float": ({"half": {"$gte": 99.5}}, {"half": {"$gte": 20.5}}, {"half": {"$gte": 0}}),
    "$lt": ({"n": {"$lt": 0}}, {"n": {"$lt": 3}}, {"n": {"$lt": 10**6}}),
    "$lte string": ({"lang": {"$lte": "a"}}, {"lang": {"$lte": "en"}}, {"lang": {"$lte": "zz"}}),
    "range": ({"n": {"$gt": 5, "$lt": 5}}, {"n": {"$gte": 10, "$lt": 20}}, {"n": {"$gte": 0, "$lte": N}}),
    "$in": ({"lang": {"$in": ["es", "it"]}}, {"lang": {"$in": ["fr", "de"]}}, {"lang": {"$in": ["fr", "de", "en"]}}),
    "$in mixed": ({"n": {"$in": ["1", True]}}, {"n": {"$in": [1, 2.0, "3"]}}, {"flag": {"$in": [True, False]}}),
    "$nin": ({"lang": {"$nin": ["fr", "de", "en"]}}, {"lang": {"$nin": ["fr"]}}, {"lang": {"$nin": ["es"]}}),
    "$exists": ({"missing": {"$exists": True}}, {"opt": {"$exists": True}}, {"n": {"$exists": True}}),
    "null": ({"missing": None}, {"opt": None}, {"$or": [{"opt": None}, {"opt": {"$ne": None}}]}),
    "$prefix": ({"source": {"$prefix": "upload:dir9/"}}, {"source": {"$prefix": "upload:dir1/"}},
                {"source": {"$prefix": "upload:"}}),
    "$and": ({"$and": [{"lang": "fr"}, {"lang": "de"}]}, {"$and": [{"lang": "fr"}, {"flag": True}]},
             {"$and": [{"n": {"$gte": 0}}, {"lang": {"$exists": True}}]}),
    "$or": ({"$or": [{"lang": "es"}, {"n": -1}]}, {"$or": [{"lang": "fr"}, {"n": {"$lt": 2}}]},
            {"$or": [{"flag": True}, {"flag": False}]}),
    "nested logic": ({"$or": [{"$and": [{"lang": "fr"}, {"n": 1}]}]},
                     {"$or": [{"$and": [{"lang": "fr"}, {"n": {"$gt": 20}}]}, {"opt": {"$gte": 40}}]},
                     {"$and": [{"$or": [{"flag": True}, {"flag": False}]}, {"n": {"$ne": "0"}}]}),
}
CASES = [(name, which, f) for name, fs in TABLE.items() for which, f in zip(("none", "some", "all"), fs, strict=True)]


def build(location) -> DocumentIndex:
    rng = np.random.default_rng(0)
    ix = DocumentIndex(location, dim=D, embedding_version="v1")
    ix.add([(Sample.build([f"document {i}"], id=f"d{i}", metadata=meta(i)), rand_emb(rng, 1)) for i in range(N)],
           version="v1")
    return ix


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def index(request, tmp_path_factory):
    location = (str(tmp_path_factory.mktemp("filters") / "ix") if request.param == "sqlite"
                else request.getfixturevalue("pg").create_database())
    ix = build(location)
    yield ix
    ix.close()


@pytest.mark.parametrize("name, which, filters", CASES, ids=[f"{n}-{w}" for n, w, _ in CASES])
def test_every_operator_gives_the_reference_ids_on_both_backends(index, name, which, filters):
    node = parse(filters)
    want = sorted(f"d{i}" for i in range(N) if matches(node, meta(i)))
    assert {"none": not want, "some": 0 < len(want) < N, "all": len(want) == N}[which], (filters, len(want))
    assert index.count_matching(filters) == len(want)
    docs, nxt = index.scroll(filters, 0, 1000)
    assert sorted(d.id for d in docs) == want and nxt is None
    q = rand_emb(np.random.default_rng(1), 1)
    hits = index.search(q, SearchParams(k=N, k_prime=N, filters=filters, mode="dense"))
    assert sorted(h.id for h in hits) == want


def test_scroll_pages_in_storage_order(index):
    seen, offset = [], 0
    while offset is not None:
        docs, offset = index.scroll({"flag": True}, offset, 5)
        seen += [d.id for d in docs]
    assert seen == [f"d{i}" for i in range(0, N, 2)]


@pytest.fixture(params=["sqlite", "postgresql"])
def big(request, tmp_path):
    location = str(tmp_path / "ix") if request.param == "sqlite" else request.getfixturevalue("pg").create_database()
    rng = np.random.default_rng(2)
    ix = DocumentIndex(location, dim=D, embedding_version="v1")
    ix.add([(Sample.build([f"doc {i}"], id=f"b{i}", metadata={"bucket": i % 100}), rand_emb(rng, 1))
            for i in range(3000)], version="v1")
    yield ix
    ix.close()


def test_a_one_percent_filter_still_returns_k(big):
    """Stage 1 with the filter pushed down (PostgreSQL: the HNSW iterative scan; embedded: the
    filtered path) still finds k of the 1 % that match, and the best of them."""
    q = rand_emb(np.random.default_rng(3), 1)
    hits = big.search(q, SearchParams(k=10, k_prime=10, filters={"bucket": 7}, mode="dense"), rerank=False)
    assert len(hits) == 10 and all(h.metadata["bucket"] == 7 for h in hits)
    exact = sorted((float(d.summary @ q.summary), d.id) for d in big.scroll({"bucket": 7}, 0, 1000)[0])[::-1]
    assert len({h.id for h in hits} & {i for _, i in exact[:10]}) >= 9  # approximate search, near-exact


# ---------------------------------------------------------------- the routes


@pytest.fixture(scope="module")
def client(tiny_ckpt, tmp_path_factory):
    from server.app import create_app
    from tests.server_fixtures import seed_index, settings_for

    ix = tmp_path_factory.mktemp("filter-routes") / "ix"
    seed_index(ix, tiny_ckpt)
    with TestClient(create_app(settings_for(tiny_ckpt, ix, api_key="k", max_k=20, ready_cache_s=0))) as c:
        c.headers.update({"Authorization": "Bearer k"})
        for i in range(9):
            body = {"slices": [{"type": "text", "text": f"Chapter {i} of book {i % 3}"}],
                    "metadata": {"source": f"upload:book{i % 3}.pdf", "page": i}}
            assert c.put(f"/documents/chunk-{i}", json=body).status_code == 200
        yield c


def text(t: str) -> dict:
    return {"slices": [{"type": "text", "text": t}]}


def test_scroll_count_and_delete_by_filter(client):
    r = client.post("/documents/count", json={"filters": {"source": {"$prefix": "upload:book"}}})
    assert r.status_code == 200 and r.json() == {"count": 9}
    assert client.post("/documents/count", json={}).json()["count"] == 17
    pages, offset = [], 0
    while offset is not None:
        r = client.post("/documents/scroll", json={"filters": {"page": {"$gte": 2}}, "limit": 3, "offset": offset})
        assert r.status_code == 200, r.text
        pages.append([d["id"] for d in r.json()["documents"]])
        offset = r.json().get("next_offset")
    assert pages == [["chunk-2", "chunk-3", "chunk-4"], ["chunk-5", "chunk-6", "chunk-7"], ["chunk-8"]]
    doc = client.post("/documents/scroll", json={"filters": {"page": 0}}).json()["documents"][0]
    assert doc["metadata"]["source"] == "upload:book0.pdf" and doc["slices"][0]["text"] == "Chapter 0 of book 0"
    # delete a whole source, then by ids (unknown ones skipped)
    r = client.post("/documents/delete", json={"filters": {"source": "upload:book1.pdf"}})
    assert r.status_code == 200 and r.json() == {"deleted": 3}
    assert client.get("/documents/chunk-1").status_code == 404
    books = {"filters": {"source": {"$prefix": "upload:book"}}}
    assert client.post("/documents/count", json=books).json()["count"] == 6
    r = client.post("/documents/delete", json={"ids": ["chunk-0", "nope"]})
    assert r.json() == {"deleted": 1}
    assert client.post("/documents/delete", json={"filters": {"source": "none"}}).json() == {"deleted": 0}


@pytest.mark.parametrize("path, body, words", [
    ("/documents/delete", {"filters": {}}, "send 'all': true"),
    ("/documents/delete", {}, "give one of 'filters', 'ids' or 'all'"),
    ("/documents/delete", {"ids": ["a"], "all": True}, "give one of"),
    ("/documents/delete", {"ids": ["bad id"]}, "ids"),
    ("/documents/scroll", {"limit": 0}, "limit"),
    ("/documents/scroll", {"filters": {"a": {"$between": [1, 2]}}}, "unknown operator '$between'"),
    ("/documents/count", {"filters": {"a": {"$in": 3}}}, "'a' $in takes a list"),
])
def test_bad_requests_name_the_problem_and_delete_nothing(client, path, body, words):
    before = client.post("/documents/count", json={}).json()["count"]
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert words in r.text
    assert client.post("/documents/count", json={}).json()["count"] == before
    assert client.get("/health").status_code == 200


def test_retrieve_threshold_group_by_batch_and_more_like_this(client):
    q = text("Chapter of book 2")
    everything = client.post("/retrieve", json={"query": q, "k": 20, "mode": "dense"}).json()["results"]
    cut = everything[len(everything) // 2]["score"]
    dense = {"query": q, "k": 20, "mode": "dense"}
    kept = client.post("/retrieve", json={**dense, "score_threshold": cut}).json()["results"]
    assert [h["id"] for h in kept] == [h["id"] for h in everything if h["score"] >= cut]
    # one chunk per source: the best-ranked of each, in rank order; documents without a source each count
    grouped = client.post("/retrieve", json={**dense, "group_by": "source"}).json()["results"]
    best: dict = {}
    for h in everything:
        best.setdefault(h["metadata"].get("source", h["id"]), h["id"])
    assert [h["id"] for h in grouped] == list(best.values())
    assert len({h["metadata"]["source"] for h in grouped if "source" in h["metadata"]}) == \
        len([h for h in grouped if "source" in h["metadata"]])
    # k groups even when the first candidates are all chunks of a few sources
    two = client.post("/retrieve", json={"query": q, "k": 2, "k_prime": 2, "group_by": "source",
                                         "filters": {"source": {"$exists": True}}}).json()["results"]
    assert len(two) == 2 and two[0]["metadata"]["source"] != two[1]["metadata"]["source"]
    # the batch form: one ranking per query, as each alone
    qs = [text("Chapter 3"), text("The banner of House H1:")]
    batch = client.post("/retrieve", json={"queries": qs, "k": 3}).json()
    assert "results" not in batch
    for query, got in zip(qs, batch["batch"], strict=True):
        alone = client.post("/retrieve", json={"query": query, "k": 3}).json()["results"]
        assert [h["id"] for h in got["results"]] == [h["id"] for h in alone]
    # more like this: a stored document's own vectors and words; itself left out
    like = client.post("/retrieve", json={"query": {"id": "chunk-3"}, "k": 5}).json()["results"]
    assert len(like) == 5 and "chunk-3" not in [h["id"] for h in like]
    stored = client.get("/documents/chunk-3").json()
    same = client.post("/retrieve", json={"query": text(stored["slices"][0]["text"]), "k": 6}).json()["results"]
    assert [h["id"] for h in like] == [h["id"] for h in same if h["id"] != "chunk-3"][:5]
    r = client.post("/retrieve", json={"query": {"id": "nope"}})
    assert r.status_code == 404 and "no document 'nope'" in r.json()["error"]["message"]
    r = client.post("/retrieve", json={"query": q, "queries": [q]})
    assert r.status_code == 422 and "give 'query' or 'queries'" in r.text
    r = client.post("/retrieve", json={"query": q, "group_by": "page"})
    assert r.status_code == 422 and "group_by" in r.text


def test_delete_all_empties_the_collection_and_it_stays_usable(client):
    """(Last in this module: it empties the index the tests above share.)"""
    n = client.post("/documents/count", json={}).json()["count"]
    assert n > 0
    assert client.post("/documents/count", json={"filters": {}}).json()["count"] == n  # {}: every document
    r = client.post("/documents/delete", json={"all": True})
    assert r.status_code == 200 and r.json() == {"deleted": n}
    assert client.post("/documents/count", json={}).json()["count"] == 0
    assert client.post("/retrieve", json={"query": text("anything")}).json()["results"] == []
    assert client.put("/documents/again", json=text("Back again")).status_code == 200
    found = client.post("/retrieve", json={"query": text("Back again")}).json()["results"]
    assert [h["id"] for h in found] == ["again"]
