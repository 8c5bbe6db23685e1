"""/v1/rerank (/rerank, /v2/rerank), /score, `explain`, and the embeddings forms of vLLM and
Infinity: request bodies written as those projects document them, scores checked against the
alignment kernel applied by hand to /embed's vectors."""

from __future__ import annotations

import math

import pytest
import torch
from fastapi.testclient import TestClient

from server.app import create_app
from tests.server_fixtures import b64_image, seed_index, settings_for

KEY = "rerank-key"

# https://docs.vllm.ai (serving, "Re-rank API"): the body as its curl example sends it
VLLM_RERANK = {
    "model": "BAAI/bge-reranker-base",
    "query": "What is the capital of France?",
    "documents": [
        "The capital of Brazil is Brasilia.",
        "The capital of France is Paris.",
        "Horses and cows are both animals",
    ],
}
# https://docs.cohere.com/reference/rerank: the body of its example request
COHERE_RERANK = {
    "model": "rerank-v3.5",
    "query": "What is the capital of the United States?",
    "top_n": 3,
    "documents": [
        "Carson City is the capital city of the American state of Nevada.",
        "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific Ocean. "
        "Its capital is Saipan.",
        "Washington, D.C. (also known as simply Washington or DC, and officially as the District of "
        "Columbia) is the capital of the United States. It is a federal district.",
        "Capitalization or capitalisation in English grammar is the use of a capital letter at the start of "
        "a word. English usage varies from capitalization in other contexts.",
        "Capital punishment has existed in the United States since beforethe United States was a country. "
        "As of 2017, capital punishment is legal in 30 of the 50 states.",
    ],
}
# vLLM's "Score API" example
VLLM_SCORE = {
    "model": "BAAI/bge-reranker-v2-m3",
    "text_1": "What is the capital of France?",
    "text_2": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."],
}


def text(t: str) -> dict:
    return {"slices": [{"type": "text", "text": t}]}


@pytest.fixture(scope="module")
def app_and_client(tiny_ckpt, tmp_path_factory):
    ix = tmp_path_factory.mktemp("rerank") / "ix"
    seed_index(ix, tiny_ckpt)
    app = create_app(settings_for(tiny_ckpt, ix, api_key=KEY, max_k=20, max_samples_per_request=64,
                                  ready_cache_s=0))
    with TestClient(app) as c:
        c.headers.update({"Authorization": f"Bearer {KEY}"})
        yield app, c


@pytest.fixture()
def client(app_and_client):
    return app_and_client[1]


def reference_scores(client, app, query: dict, docs: list[dict]) -> list[float]:
    """exp(s̄) computed by hand: /embed's slice vectors through the checkpoint's kernel."""
    r = client.post("/embed", json={"samples": [query, *docs]})
    assert r.status_code == 200, r.text
    vecs = [torch.tensor([s["embedding"] for s in item["slices"]]) for item in r.json()["data"]]
    kernel = app.state.service.model.config.kernel
    return [math.exp(float(kernel.similarity(vecs[0][None], d[None])[0, 0])) for d in vecs[1:]]


def test_vllm_rerank_body_works_unchanged_and_scores_are_the_kernels(client, app_and_client):
    r = client.post("/v1/rerank", json=VLLM_RERANK)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("rerank-") and body["usage"]["total_tokens"] > 0
    results = body["results"]
    assert sorted(x["index"] for x in results) == [0, 1, 2]
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    for x in results:
        assert x["document"]["text"] == VLLM_RERANK["documents"][x["index"]]
    ref = reference_scores(client, app_and_client[0], text(VLLM_RERANK["query"]),
                           [text(d) for d in VLLM_RERANK["documents"]])
    for x in results:
        assert x["relevance_score"] == pytest.approx(ref[x["index"]], rel=1e-4)


def test_cohere_body_top_n_and_the_aliases_agree(client):
    r = client.post("/v1/rerank", json=COHERE_RERANK)
    assert r.status_code == 200, r.text
    first = [(x["index"], x["relevance_score"]) for x in r.json()["results"]]
    assert len(first) == 3
    for path in ("/rerank", "/v2/rerank"):
        again = client.post(path, json=COHERE_RERANK).json()["results"]
        assert [x["index"] for x in again] == [i for i, _ in first]
        assert [x["relevance_score"] for x in again] == pytest.approx([s for _, s in first])
    # Cohere's document objects and TEI's `texts`, with return_documents false
    objects = {**COHERE_RERANK, "documents": [{"text": d, "title": "t"} for d in COHERE_RERANK["documents"]]}
    assert [x["index"] for x in client.post("/v1/rerank", json=objects).json()["results"]] == [i for i, _ in first]
    tei = {"query": COHERE_RERANK["query"], "texts": COHERE_RERANK["documents"], "return_documents": False}
    got = client.post("/rerank", json=tei).json()["results"]
    assert [x["index"] for x in got[:3]] == [i for i, _ in first] and all(x.get("document") is None for x in got)


def test_rerank_of_stored_ids_equals_rerank_of_their_content(client):
    ids = [f"house-{i}" for i in range(6)]
    stored = client.post("/v1/rerank", json={"query": "The banner of House H3:", "documents": [{"id": i} for i in ids]})
    assert stored.status_code == 200, stored.text
    docs = [client.get(f"/documents/{i}", params={"images": "base64"}).json() for i in ids]
    content = [{"slices": [{"type": s["type"], **({"text": s["text"]} if s["type"] == "text"
                                                   else {"base64": s["base64"]})} for s in d["slices"]]}
               for d in docs]
    fresh = client.post("/v1/rerank", json={"query": "The banner of House H3:", "documents": content})
    a = {x["index"]: x["relevance_score"] for x in stored.json()["results"]}
    b = {x["index"]: x["relevance_score"] for x in fresh.json()["results"]}
    assert a == pytest.approx(b, rel=1e-4)
    assert stored.json()["results"][0]["document"] == {"id": stored.json()["results"][0]["document"]["id"]}
    r = client.post("/v1/rerank", json={"query": "x", "documents": [{"id": "house-1"}, {"id": "nope"}]})
    assert r.status_code == 404 and "no document 'nope'" in r.json()["error"]["message"]
    assert "documents[1]" in r.json()["error"]["message"]


def test_rerank_gives_retrieves_own_second_stage_order(client):
    """One kernel, one answer: the dense top-k of /retrieve, reranked by id, keeps its order and
    its scores are exp of /retrieve's."""
    q = text("The banner of House H5:")
    got = client.post("/retrieve", json={"query": q, "k": 8, "k_prime": 8, "mode": "dense"}).json()["results"]
    ids = [h["id"] for h in got]
    r = client.post("/v1/rerank", json={"query": q, "documents": [{"id": i} for i in ids]}).json()["results"]
    assert [ids[x["index"]] for x in r] == ids
    assert [x["relevance_score"] for x in r] == pytest.approx([math.exp(h["score"]) for h in got], rel=1e-5)
    # hybrid: the second stage is the dense side (`dense_score`), fused with BM25 afterwards
    hyb = client.post("/retrieve", json={"query": q, "k": 8, "k_prime": 8, "mode": "hybrid"}).json()["results"]
    by_dense = sorted(hyb, key=lambda h: -h["dense_score"])
    r = client.post("/v1/rerank", json={"query": q, "documents": [{"id": h["id"]} for h in hyb]}).json()["results"]
    assert [hyb[x["index"]]["id"] for x in r] == [h["id"] for h in by_dense]


def test_explain_names_aligned_slices(client):
    query = {"slices": [{"type": "text", "text": "The banner of House H2:"}, {"type": "image", "base64": b64_image(2)}]}
    r = client.post("/v1/rerank", json={"query": query, "documents": [{"id": "house-2"}, "plain words"],
                                        "explain": True})
    assert r.status_code == 200, r.text
    for x in r.json()["results"]:
        e = x["explanation"]
        assert e["score"] == pytest.approx(math.log(x["relevance_score"]), abs=1e-5)
        assert [a["query_slice"] for a in e["alignment"]] == [0, 1]
        n_doc = 2 if x["index"] == 0 else 1
        assert all(0 <= a["document_slice"] < n_doc and 0 < a["weight"] <= 1 + 1e-6
                   and -1 - 1e-5 <= a["similarity"] <= 1 + 1e-5 for a in e["alignment"])
    house = next(x for x in r.json()["results"] if x["index"] == 0)["explanation"]["alignment"]
    assert [a["document_slice"] for a in house] == [0, 1]  # text to text, image to image
    # the same on /retrieve
    got = client.post("/retrieve", json={"query": query, "k": 2, "explain": True}).json()["results"]
    assert all(len(h["explanation"]["alignment"]) == 2 for h in got)
    plain = client.post("/retrieve", json={"query": query, "k": 2}).json()["results"]
    assert all("explanation" not in h for h in plain)


def test_score_vllm_body_and_pairwise(client, app_and_client):
    r = client.post("/score", json=VLLM_SCORE)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1] and all(d["object"] == "score" for d in data)
    ref = reference_scores(client, app_and_client[0], text(VLLM_SCORE["text_1"]),
                           [text(t) for t in VLLM_SCORE["text_2"]])
    assert [d["score"] for d in data] == pytest.approx(ref, rel=1e-4)
    pair = client.post("/score", json={"queries": ["a cat", "a dog"], "documents": ["a dog", "a cat"]})
    assert pair.status_code == 200, pair.text
    one = client.post("/score", json={"text_1": "a dog", "text_2": "a cat"}).json()["data"][0]["score"]
    assert pair.json()["data"][1]["score"] == pytest.approx(one, rel=1e-5)
    bad = client.post("/score", json={"queries": ["a", "b"], "documents": ["a", "b", "c"]})
    assert bad.status_code == 422 and "2 queries and 3 documents" in bad.json()["error"]["message"]


@pytest.mark.parametrize("body, status, words", [
    ({"query": "q", "documents": ["a"], "texts": ["b"]}, 422, "give 'documents'"),
    ({"query": "q"}, 422, "give 'documents'"),
    ({"query": "q", "documents": []}, 422, "at least 1"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, 422, "greater than or equal to 1"),
    ({"query": "  ", "documents": ["a"]}, 422, "query"),
    ({"query": "q", "documents": ["d"] * 65}, 422, "65 documents exceed the limit of 64"),
    ({"query": "q", "documents": [{"id": "house-1"}], "collection": "nowhere"}, 404, "nowhere"),
    ({"text_1": "q"}, 422, "give 'text_1' and 'text_2'"),
])
def test_bad_rerank_and_score_requests_are_named(client, body, status, words):
    path = "/score" if "text_1" in body else "/v1/rerank"
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert words in r.text
    assert client.get("/health").status_code == 200


def test_embeddings_in_vllm_messages_and_infinity_image_forms(client):
    img = "data:image/png;base64," + b64_image(3)
    # vLLM's multimodal embeddings request: chat messages with an image_url and a text part
    vllm = {"model": "TIGER-Lab/VLM2Vec-Full", "encoding_format": "float", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": img}},
                                     {"type": "text", "text": "Represent the given image."}]}]}
    r = client.post("/v1/embeddings", json=vllm)
    assert r.status_code == 200, r.text
    [got] = r.json()["data"]
    both = [{"type": "image", "base64": img}, {"type": "text", "text": "Represent the given image."}]
    same = client.post("/embed", json={"samples": [{"slices": both}]})
    assert got["embedding"] == pytest.approx(same.json()["data"][0]["embedding"], abs=1e-5)
    # Infinity's image modality: each input string an image
    inf = client.post("/v1/embeddings", json={"model": "m", "input": [img], "modality": "image"})
    assert inf.status_code == 200, inf.text
    alone = client.post("/embed", json={"samples": [{"slices": [{"type": "image", "base64": img}]}]})
    assert inf.json()["data"][0]["embedding"] == pytest.approx(alone.json()["data"][0]["embedding"], abs=1e-5)
    # dimensions: the checkpoint's own is fine, any other is refused with the reason
    dim = len(got["embedding"])
    assert client.post("/v1/embeddings", json={"input": "x", "dimensions": dim}).status_code == 200
    r = client.post("/v1/embeddings", json={"input": "x", "dimensions": dim // 2})
    assert r.status_code == 422 and "not trained for truncated" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", json={"input": "x", "messages": vllm["messages"]})
    assert r.status_code == 422 and "give 'input' or 'messages'" in r.text
    r = client.post("/v1/embeddings", json={"input": ["not an image"], "modality": "image"})
    assert r.status_code == 422 and "input[0]" in r.text


@pytest.mark.parametrize("schema_name, path, bodies", [
    ("RetrieveRequest", "/retrieve", [
        {"query": text("q")}, {"queries": [text("q")]}, {"query": text("q"), "queries": [text("q")]}, {},
        {"query": text("q"), "queries": None}, {"query": None, "queries": [text("q")]}, {"query": None},
        {"query": {"id": "house-1"}}, {"query": text("q"), "collection": "default", "collections": ["default"]},
        {"query": text("q"), "collection": None, "collections": ["default"]},
        {"query": text("q"), "group_by": "page"}]),
    ("RerankRequest", "/v1/rerank", [
        {"query": "q", "documents": ["a"]}, {"query": "q", "texts": ["a"]},
        {"query": "q", "documents": ["a"], "texts": ["b"]}, {"query": "q"},
        {"query": "q", "documents": None, "texts": ["a"]}, {"query": "q", "documents": [{"text": "a", "x": 1}]}]),
    ("ScoreRequest", "/score", [
        {"text_1": "q", "text_2": ["a"]}, {"queries": "q", "documents": "a"}, {"text_1": "q", "documents": ["a"]},
        {"text_1": "q", "text_2": "a", "queries": "q", "documents": "a"}, {"text_1": "q"},
        {"text_1": "q", "text_2": "a", "queries": None}]),
    ("DeleteRequest", "/documents/delete", [
        {"ids": ["not-there"]}, {"filters": {"n": 99}}, {"filters": {}}, {}, {"all": False},
        {"ids": ["x"], "all": False},
        {"ids": ["x"], "all": True}, {"filters": None, "ids": ["x"]}, {"filters": {"n": 99}, "ids": ["x"]}]),
    ("EmbeddingsRequest", "/v1/embeddings", [
        {"input": "x"}, {"messages": [{"role": "user", "content": "x"}]},
        {"input": "x", "messages": [{"role": "user", "content": "x"}]}, {},
        {"input": None, "messages": [{"role": "user", "content": "x"}]}, {"input": [text("q")], "modality": "image"},
        {"input": "x", "modality": "image"}, {"input": "data:image/png;base64," + b64_image(1), "modality": "image"},
        {"messages": [{"role": "user", "content": "x"}], "modality": "image"}]),  # found by schemathesis, seed 1
])
def test_the_published_schema_admits_what_the_server_accepts(client, schema_name, path, bodies):
    """The 'exactly one of' rules the validators enforce are in the OpenAPI document too (a
    null reads as left out on both sides): each body is valid for a JSON Schema validator
    exactly when the server takes it."""
    import jsonschema_rs

    spec = client.get("/openapi.json").json()
    schema = {**spec["components"]["schemas"][schema_name], "components": spec["components"]}
    for body in bodies:
        r = client.post(path, json=body)
        assert r.status_code != 500, r.text
        taken = r.status_code == 200
        assert jsonschema_rs.Draft202012Validator(schema).is_valid(body) == taken, (body, r.status_code, r.text[:200])
