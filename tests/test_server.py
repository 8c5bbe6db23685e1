"""The server through HTTP: native routes, documents, OpenAI API, limits, auth, metrics."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from tests.conftest import make_image, png_bytes
from tests.server_fixtures import b64_image, free_port, live_server, seed_index, settings_for

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def text_sample(t, **kw):
    return {"slices": [{"type": "text", "text": t}], **kw}


@pytest.fixture(scope="module")
def app_and_client(tiny_ckpt, tmp_path_factory):
    ix = tmp_path_factory.mktemp("srv") / "ix"
    seed_index(ix, tiny_ckpt)
    app = create_app(settings_for(tiny_ckpt, ix, api_key=KEY, max_body_bytes=2_000_000,
                                  max_image_pixels=1_000_000, max_slices=16, max_k=20,
                                  max_tokens_limit=1100, ready_cache_s=0))
    with TestClient(app) as c:
        c.headers.update(AUTH)
        yield app, c


@pytest.fixture()
def client(app_and_client):
    return app_and_client[1]


def test_probes_open_everything_else_needs_the_key(client):
    bare = {"Authorization": ""}
    assert client.get("/health", headers=bare).json()["status"] == "ok"
    r = client.get("/ready", headers=bare)
    assert r.status_code == 200 and r.json()["checks"]["index_documents"] >= 8
    for method, path in (("post", "/embed"), ("get", "/metrics"), ("get", "/documents"), ("get", "/v1/models")):
        r = getattr(client, method)(path, headers=bare, **({"json": {}} if method == "post" else {}))
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    r = client.get("/documents", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_embed_shapes_and_modalities(client):
    r = client.post("/embed", json={"samples": [
        {"slices": [{"type": "text", "text": "a caption"}, {"type": "image", "base64": b64_image(1)}]},
        text_sample("just text")]})
    assert r.status_code == 200, r.text
    data = r.json()
    assert [s["type"] for s in data["data"][0]["slices"]] == ["text", "image"]
    v = np.array(data["data"][0]["embedding"])
    assert v.shape == (32,) and abs(np.linalg.norm(v) - 1) < 1e-4
    assert data["embedding_version"]


def test_retrieve_two_stage_with_filters_and_image_urls(client):
    r = client.post("/retrieve", json={"query": text_sample("The banner of House H3:"), "k": 3})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 3 and {"id", "score", "ann_score", "metadata", "slices"} <= res[0].keys()
    url = res[0]["slices"][1]["url"]
    img = client.get(url)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    r = client.post("/retrieve", json={"query": text_sample("x"), "k": 5, "filters": {"n": 2}})
    assert [d["id"] for d in r.json()["results"]] == ["house-2"]
    r = client.post("/retrieve", json={"query": text_sample("x"), "k": 1, "images": "base64"})
    assert base64.b64decode(r.json()["results"][0]["slices"][1]["base64"])[:4] == b"\x89PNG"


def test_retrieve_modes_hybrid_by_default_lexical_dense_and_a_bad_mode(client):
    q = text_sample("The banner of House H5:")
    hybrid = client.post("/retrieve", json={"query": q, "k": 3}).json()["results"]
    # the tiny random checkpoint cannot tell the houses apart; the name's word can
    assert hybrid[0]["id"] == "house-5" and hybrid[0]["lexical_score"] > 0
    assert {"dense_score", "lexical_score"} <= hybrid[0].keys()
    assert hybrid == client.post("/retrieve", json={"query": q, "k": 3, "mode": "hybrid"}).json()["results"]
    lexical = client.post("/retrieve", json={"query": q, "k": 3, "mode": "lexical"}).json()["results"]
    assert lexical[0]["id"] == "house-5" and lexical[0]["score"] == lexical[0]["lexical_score"]
    assert [d["score"] for d in lexical] == sorted((d["score"] for d in lexical), reverse=True)
    dense = client.post("/retrieve", json={"query": q, "k": 3, "mode": "dense"}).json()["results"]
    assert "dense_score" not in dense[0] and "lexical_score" not in dense[0]
    r = client.post("/retrieve", json={"query": q, "mode": "bm25"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "mode"
    assert "'dense', 'hybrid' or 'lexical'" in r.json()["error"]["message"]
    words_only = client.post("/retrieve", json={"query": q, "k": 3, "lexical_weight": 1.0}).json()["results"]
    assert words_only[0]["id"] == "house-5" and words_only[0]["score"] == pytest.approx(1.0)
    r = client.post("/retrieve", json={"query": q, "lexical_weight": 1.5})
    assert r.status_code == 422 and r.json()["error"]["field"] == "lexical_weight"
    assert "less than or equal to 1" in r.json()["error"]["message"]
    r = client.post("/generate", json={"query": q, "retrieval": {"lexical_weight": True}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "retrieval.lexical_weight"
    g = client.post("/generate", json={"query": text_sample("What colour is the banner of House H6?"),
                                       "max_tokens": 2, "retrieval": {"k": 1, "mode": "lexical"}}).json()
    assert [d["id"] for d in g["documents"]] == ["house-6"]
    r = client.post("/v1/chat/completions", json={
        "model": "sugar", "max_tokens": 2, "retrieval": {"k": 1, "mode": "lexical"},
        "messages": [{"role": "user", "content": "What colour is the banner of House H2?"}]})
    assert r.status_code == 200 and [d["id"] for d in r.json()["retrieved"]] == ["house-2"]
    assert client.post("/retrieve", json={"query": q, "k": 1}).status_code == 200


def test_generate_with_retrieval_usage_timings(client):
    r = client.post("/generate", json={"query": text_sample("What colour is the banner of House H1?"),
                                       "max_tokens": 4, "retrieval": {"k": 2}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["documents"]) == 2 and body["usage"]["completion_tokens"] <= 4
    assert {"retrieval_ms", "generation_ms", "total_ms"} <= body["timings"].keys()
    r = client.post("/generate", json={"query": text_sample("hi"), "max_tokens": 3,
                                       "retrieval": {"enabled": False}})
    assert r.json()["documents"] == []


def test_generate_stream_sse(client):
    with client.stream("POST", "/generate", json={"query": text_sample("hello"), "max_tokens": 5,
                                                   "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    final = events[-1]
    assert final["done"] and final["usage"]["completion_tokens"] >= 1
    assert "".join(e.get("delta", "") for e in events[:-1]).strip() == final["text"]


def test_stream_equals_non_stream_greedy(client):
    body = {"query": text_sample("a red circle"), "max_tokens": 6, "retrieval": {"enabled": False}}
    plain = client.post("/generate", json=body).json()["text"]
    with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["text"] == plain


def test_documents_crud(client):
    doc = {"id": "new-doc", "slices": [{"type": "text", "text": "fresh"}, {"type": "image", "base64": b64_image(3)}],
           "metadata": {"lang": "en"}}
    assert client.post("/documents", json=doc).status_code == 201
    r = client.post("/documents", json=doc)
    assert r.status_code == 409 and r.json()["error"]["field"] == "id"
    got = client.get("/documents/new-doc").json()
    assert got["metadata"] == {"lang": "en"} and got["slices"][0]["text"] == "fresh"
    r = client.put("/documents/new-doc", json={"slices": [{"type": "text", "text": "replaced"}]})
    assert r.json()["status"] == "updated"
    assert client.get("/documents/new-doc").json()["slices"] == [{"type": "text", "text": "replaced"}]
    page = client.get("/documents", params={"offset": 0, "limit": 3}).json()
    assert len(page["ids"]) == 3 and page["total"] >= 9
    assert client.get("/documents", params={"offset": 10**6}).json()["ids"] == []
    r = client.get("/documents", params={"offset": 2**63})  # past SQLite's INTEGER (found by schemathesis)
    assert r.status_code == 422 and r.json()["error"]["field"] == "query.offset"
    # the bound is 2**53 - 1, which a JSON double holds exactly (a generator reading the schema's
    # maximum as a float once sent 2**63 as 9.223372036854776e18, one past the bound)
    assert client.get("/documents", params={"offset": 2**53 - 1}).json()["ids"] == []
    assert client.get("/documents", params={"offset": 2**53}).status_code == 422
    r = client.post("/documents/scroll", json={"offset": 2**53})
    assert r.status_code == 422 and r.json()["error"]["field"] == "offset"
    assert client.post("/documents/scroll", json={"offset": 2**53 - 1}).json()["documents"] == []
    assert client.get("/documents", params={"offset": 0, "limit": 1}).status_code == 200
    assert client.delete("/documents/new-doc").json()["status"] == "deleted"
    assert client.get("/documents/new-doc").status_code == 404
    assert client.delete("/documents/new-doc").status_code == 404
    r = client.put("/documents/a", json={"id": "b", "slices": [{"type": "text", "text": "x"}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "id"


def _image_corpus():
    bomb = png_bytes(Image.new("L", (5000, 5000)), optimize=True)
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    png = png_bytes(make_image(2))
    return {
        "truncated": (base64.b64encode(png[: len(png) // 2]).decode(), 422),
        "bomb": (base64.b64encode(bomb).decode(), 422),
        "invalid_b64": ("@@@not-base64@@@", 422),
        "cmyk": (base64.b64encode(png_bytes(make_image(1).convert("CMYK"), "JPEG")).decode(), 200),
        "palette": (base64.b64encode(png_bytes(make_image(1).convert("P"))).decode(), 200),
        "16bit": (base64.b64encode(png_bytes(Image.new("I;16", (8, 8)))).decode(), 200),
        "animated_gif": (base64.b64encode(gif.getvalue()).decode(), 200),
    }


@pytest.mark.parametrize("name", list(_image_corpus()))
def test_image_corpus_then_server_stays_healthy(client, name):
    data, status = _image_corpus()[name]
    r = client.post("/embed", json={"samples": [{"slices": [{"type": "image", "base64": data}]}]})
    assert r.status_code == status, (name, r.text)
    if status != 200:
        err = r.json()["error"]
        assert err["field"] == "samples[0].slices[0].base64" and err["message"]
    assert client.post("/embed", json={"samples": [text_sample("still fine")]}).status_code == 200


@pytest.mark.parametrize("body,status,field,needle", [
    ({"samples": [{"slices": []}]}, 422, "samples[0].slices", "at least 1 item"),
    ({"samples": []}, 422, "samples", "at least 1 item"),
    ({"samples": [text_sample("a\x00b")]}, 422, "samples[0].slices[0].text", "NUL"),
    ({"samples": [{"slices": [{"type": "text", "text": "x"}] * 10_000}]}, 422, "samples[0].slices",
     "10000 slices exceed the limit of 16"),
    ({"samples": [text_sample("x" * 2_100_000)]}, 413, "body", "exceeds the limit"),
    ({"samples": [{"slices": [{"type": "text", "text": "x"}] * 17}]}, 422, "samples[0].slices", "limit of 16"),
    ({"samples": [text_sample("x")], "bogus": 1}, 422, "bogus", "unknown field"),
    ({"samples": [{"slices": [{"type": "text", "text": "x", "extra": 2}]}]}, 422, "samples[0].slices[0].extra",
     "unknown field"),
    ({"samples": [{"slices": [{"type": "image", "path": "../../etc/passwd"}]}]}, 422,
     "samples[0].slices[0].path", "not allowed"),
    ({"samples": [{"slices": [{"type": "image", "url": "file:///etc/passwd"}]}]}, 422,
     "samples[0].slices[0].url", "not allowed"),
    ({"samples": [{"slices": [{"type": "image", "url": "http://169.254.169.254/latest"}]}]}, 422,
     "samples[0].slices[0].url", "not allowed"),
])
def test_bad_inputs_are_4xx_naming_the_field(client, body, status, field, needle):
    r = client.post("/embed", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and needle in err["message"]
    assert client.post("/embed", json={"samples": [text_sample("ok after")]}).status_code == 200


def test_limits_on_k_and_max_tokens_and_malformed_json(client):
    r = client.post("/retrieve", json={"query": text_sample("x"), "k": 21})
    assert r.status_code == 422 and r.json()["error"]["field"] == "k"
    r = client.post("/generate", json={"query": text_sample("x"), "max_tokens": 1101})
    assert r.status_code == 422 and r.json()["error"]["field"] == "max_tokens"
    r = client.post("/embed", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert client.get("/health").status_code == 200


def test_context_budget_drops_documents_from_the_end(client, app_and_client):
    service = app_and_client[0].state.service
    ctx = service.engine.max_context()
    q = text_sample("What colour is the banner of House H2?")
    full = client.post("/generate", json={"query": q, "max_tokens": 1, "retrieval": {"k": 5}}).json()
    assert len(full["documents"]) == 5 and full["dropped_documents"] == []
    need = full["usage"]["prompt_tokens"]
    # leave room for the prompt minus about one document: the last-ranked ones go
    tight = client.post("/generate", json={"query": q, "max_tokens": ctx - need + 10,
                                           "retrieval": {"k": 5}}).json()
    kept, dropped = tight["documents"], tight["dropped_documents"]
    assert dropped and [d["id"] for d in kept + dropped] == [d["id"] for d in full["documents"]]
    assert tight["usage"]["prompt_tokens"] + ctx - need + 10 <= ctx


@pytest.mark.parametrize("stream", [False, True])
def test_the_rag_prompt_is_tokenised_once_and_decoded_as_measured(client, app_and_client, monkeypatch, stream):
    """The prompt measured against the context budget is the one the engine decodes: one
    generation-side tokenisation per request (the query's embedding is another path)."""
    bb = app_and_client[0].state.service.model.backbone
    calls = []
    real, real_encode = type(bb).tokenize, type(bb).encode

    def counting(self, prompt):
        calls.append(1)
        return real(self, prompt)

    def encode(self, prompts, padding_side="right"):
        assert padding_side != "left", "the engine tokenised the prompt again"
        return real_encode(self, prompts, padding_side)

    monkeypatch.setattr(type(bb), "tokenize", counting)
    monkeypatch.setattr(type(bb), "encode", encode)
    body = {"query": text_sample("What colour is the banner of House H3?"), "max_tokens": 2,
            "retrieval": {"k": 3}, "stream": stream}
    if stream:
        with client.stream("POST", "/generate", json=body) as r:
            final = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")][-1]
    else:
        final = client.post("/generate", json=body).json()
    assert calls == [1]
    assert len(final["documents"]) == 3 and final["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("tight", [False, True])
def test_generate_tokenises_the_query_once_and_each_document_once(client, app_and_client, monkeypatch, tight):
    """Issue #21: fitting the documents into the context tokenises the prompt once — the query
    and each retrieved document once, kept or dropped (before: the whole prompt again for every
    document dropped, and once more for the engine). The query's embedding prompt is the other
    tokenisation (its retrieval embedding; the input-limit check of a short query needs none)."""
    service = app_and_client[0].state.service
    tok_cls = type(service.model.backbone.tokenizer)
    texts: list[str] = []
    real = tok_cls.__call__

    def counting(self, text, *a, **kw):
        texts.extend([text] if isinstance(text, str) else list(text))
        return real(self, text, *a, **kw)

    q = text_sample("What colour is the banner of House H2?")
    ctx = service.engine.max_context()
    full = client.post("/generate", json={"query": q, "max_tokens": 1, "retrieval": {"k": 5}}).json()
    max_tokens = ctx - full["usage"]["prompt_tokens"] + 10 if tight else 1
    monkeypatch.setattr(tok_cls, "__call__", counting)
    r = client.post("/generate", json={"query": q, "max_tokens": max_tokens, "retrieval": {"k": 5}}).json()
    monkeypatch.undo()
    assert bool(r["dropped_documents"]) == tight
    for d in r["documents"] + r["dropped_documents"]:
        name = d["id"].removeprefix("house-")
        assert sum(f"The banner of House H{name}:" in t for t in texts) == 1, d["id"]
    query_text = q["slices"][0]["text"]
    assert sum(query_text in t and "The banner of House" in t.replace(query_text, "") for t in texts) == 1
    # the retrieval embedding and the prompt: a short query's input-limit check needs no tokenizer
    assert sum(query_text in t for t in texts) == 2


@pytest.mark.parametrize("order", ["ranked", "best_last"])
def test_cut_ids_equal_the_shorter_prompt_tokenised(app_and_client, order):
    """The fast path against the slow reference: the ids cut from the longest prompt's one
    tokenisation equal the shorter prompt's own tokenisation (images included), and the cut
    takes the right images — in both context orders (best_last: the lowest-ranked documents
    are the first of the context)."""
    import dataclasses

    from model.prompts import chat_prompt, rag_parts
    from model.sample import Sample
    from server.service import cut_prompt
    from tests.conftest import make_image

    model = app_and_client[0].state.service.model
    bb, fmt = model.backbone, dataclasses.replace(model.config.prompts, context_order=order)
    docs = [Sample.build([f"Document text number {i}.", make_image(i)]) for i in range(4)]
    query = Sample.build(["What is shown?", make_image(9)])
    render = lambda n: chat_prompt([("user", rag_parts(docs[:n], query, fmt))], fmt, eos=bb.eos_token)  # noqa: E731
    full = render(4)
    tokenized = bb.tokenize(full)
    assert tokenized[0] == bb.encode([full]).input_ids[0].tolist()
    for n in range(4):  # n = 0: no document left, the span starts mid-line (tokenised itself)
        short = render(n)
        ids, images = cut_prompt(full, tokenized, short, bb)
        assert ids == bb.encode([short]).input_ids[0].tolist(), n
        assert images == short.images


def test_backpressure_429(tiny_ckpt, tmp_path):
    seed_index(tmp_path / "ix", tiny_ckpt, n=2)
    app = create_app(settings_for(tiny_ckpt, tmp_path / "ix", embed_queue_size=1, gen_queue_size=0))
    with TestClient(app) as c:
        r = c.post("/embed", json={"samples": [text_sample("a"), text_sample("b")]})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        r = c.post("/generate", json={"query": text_sample("a"), "retrieval": {"enabled": False}})
        assert r.status_code == 429 and "generation queue full" in r.json()["error"]["message"]
        # streams are admitted before the response starts: a full queue is a 429 for them too
        for path, body in (("/generate", {"query": text_sample("a"), "stream": True,
                                          "retrieval": {"enabled": False}}),
                           ("/v1/chat/completions", {"model": "sugar", "stream": True,
                                                     "messages": [{"role": "user", "content": "a"}],
                                                     "retrieval": {"enabled": False}})):
            r = c.post(path, json=body)
            assert r.status_code == 429 and r.headers["retry-after"] == "1", (path, r.text)
            assert "generation queue full" in r.json()["error"]["message"]
        assert c.post("/embed", json={"samples": [text_sample("a")]}).status_code == 200


def test_stream_releases_its_generation_slot(tiny_ckpt, tmp_path):
    """One slot: two streams in a row both get 200 (the first released its slot)."""
    seed_index(tmp_path / "ix", tiny_ckpt, n=2)
    app = create_app(settings_for(tiny_ckpt, tmp_path / "ix", gen_queue_size=1))
    with TestClient(app) as c:
        for _ in range(2):
            r = c.post("/generate", json={"query": text_sample("a"), "stream": True, "max_tokens": 2,
                                          "retrieval": {"enabled": False}})
            assert r.status_code == 200 and '"done": true' in r.text
        assert app.state.service.generations.active == 0


def test_poisoned_engine_turns_ready_red_and_generate_503(client, app_and_client):
    engine = app_and_client[0].state.service.engine
    engine.poisoned = "engine poisoned by the test"
    try:
        r = client.get("/ready")
        assert r.status_code == 503 and "poisoned" in r.json()["checks"]["error"]
        r = client.post("/generate", json={"query": text_sample("x"), "retrieval": {"enabled": False}})
        assert r.status_code == 503 and r.json()["error"]["type"] == "engine_unavailable"
    finally:
        engine.poisoned = None
    assert client.get("/ready").status_code == 200


def test_metrics_prometheus(client):
    client.post("/embed", json={"samples": [text_sample("m")]})
    text = client.get("/metrics").text
    for name in ("sugar_requests_total", "sugar_request_seconds", "sugar_embed_batch_size",
                 "sugar_queue_depth", "sugar_generated_tokens_total", "sugar_index_documents"):
        assert name in text
    assert 'sugar_requests_total{route="/embed",status="200"}' in text


def test_concurrent_embeds_are_micro_batched(tiny_ckpt, tmp_path):
    import concurrent.futures

    seed_index(tmp_path / "ix", tiny_ckpt, n=2)
    app = create_app(settings_for(tiny_ckpt, tmp_path / "ix", embed_max_wait_ms=100))
    with TestClient(app) as c:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: c.post("/embed", json={"samples": [text_sample(f"s{i}")]}).status_code,
                                  range(16)))
        assert codes == [200] * 16
        hist = app.state.metrics.batch_size
        count = sum(s.value for s in hist.collect()[0].samples if s.name.endswith("_count"))
        total = sum(s.value for s in hist.collect()[0].samples if s.name.endswith("_sum"))
    assert total >= 16 and count < 16, (count, total)


def test_openai_client_unchanged(app_and_client):
    import openai

    app = create_app(app_and_client[0].state.settings)  # its own lifespan, same checkpoint and index
    with live_server(app, free_port()) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY)
        models = client.models.list()
        assert models.data[0].id == "sugar"
        emb = client.embeddings.create(model="sugar", input=["a red circle", "a blue square"])  # base64
        assert len(emb.data) == 2 and len(emb.data[0].embedding) == 32
        fl = client.embeddings.create(model="sugar", input="a red circle", encoding_format="float")
        assert np.allclose(fl.data[0].embedding, emb.data[0].embedding, atol=1e-6)
        img = "data:image/png;base64," + b64_image(4)
        messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                 {"type": "image_url", "image_url": {"url": img}}]}]
        out = client.chat.completions.create(model="sugar", messages=messages, max_tokens=4,
                                             temperature=0, extra_body={"retrieval": {"k": 2}})
        assert out.choices[0].message.content is not None and out.usage.completion_tokens <= 4
        assert len(out.model_extra["retrieved"]) == 2
        stream = client.chat.completions.create(model="sugar", messages=messages, max_tokens=4, temperature=0,
                                                stream=True, extra_body={"retrieval": {"k": 2}},
                                                stream_options={"include_usage": True})
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text.strip() == out.choices[0].message.content
        # multi-turn: the retrieval query is the last user message
        multi = client.chat.completions.create(model="sugar", max_tokens=2, messages=[
            {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "The banner of House H5:"}], extra_body={"retrieval": {"k": 1}},
            presence_penalty=0.5)  # an unused OpenAI field is accepted
        import httpx

        direct = httpx.post(url + "/retrieve", headers=AUTH, json={
            "query": text_sample("The banner of House H5:"), "k": 1}).json()["results"]
        assert multi.model_extra["retrieved"][0]["id"] == direct[0]["id"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong").models.list()


def test_stream_cancellation_stops_decoding(app_and_client):
    import asyncio

    engine = app_and_client[0].state.service.engine

    from server.engine import GenerationResult

    async def run():
        gen = engine.stream([("user", ["count to a hundred"])], 200, 0.0)
        first = None
        async for item in gen:
            first = item
            break
        await gen.aclose()  # what a disconnect does to the response generator
        await asyncio.sleep(0.5)
        return first

    # a delta came, then the stream closed: no final result, decoding stopped
    assert isinstance(asyncio.run(run()), str)

    async def whole():
        return [item async for item in engine.stream([("user", ["hi"])], 3, 0.0)]

    items = asyncio.run(whole())  # the stream ends with its final result (no out-parameter)
    assert isinstance(items[-1], GenerationResult) and all(isinstance(x, str) for x in items[:-1])


def test_startup_refuses_mismatch(tiny_ckpt, tmp_path):
    from index import DocumentIndex
    from server.app import load_service
    from server.metrics import Metrics
    from server.settings import StartupError

    DocumentIndex(tmp_path / "other", dim=32, embedding_version="not-this-model").close()
    with pytest.raises(StartupError, match="built with embedding version not-this-model"):
        load_service(settings_for(tiny_ckpt, tmp_path / "other"), Metrics())
    DocumentIndex(tmp_path / "dim", dim=8).close()
    with pytest.raises(StartupError, match="dimension 8 does not match 32"):
        load_service(settings_for(tiny_ckpt, tmp_path / "dim"), Metrics())
    with pytest.raises(StartupError, match="not a Sugar checkpoint"):
        load_service(settings_for(tmp_path / "none", tmp_path / "dim"), Metrics())


def test_settings_from_environment(monkeypatch, tmp_path):
    from server.settings import Settings

    monkeypatch.setenv("SUGAR_API_KEY", "envkey")
    monkeypatch.setenv("SUGAR_PORT", "9123")
    monkeypatch.setenv("SUGAR_ENGINE", "vllm")
    s = Settings(_env_file=None)
    assert (s.api_key, s.port, s.engine) == ("envkey", 9123, "vllm")
    (tmp_path / ".env").write_text("SUGAR_MAX_K=7\n")
    assert Settings(_env_file=tmp_path / ".env").max_k == 7
    monkeypatch.setenv("SUGAR_ENGINE", "tgi")
    with pytest.raises(ValueError, match="engine must be"):
        Settings(_env_file=None)


def _bench_server(ckpt, tmp_path, *flags: str) -> dict:
    from sugar_cli.main import main

    seed_index(tmp_path / "ix", ckpt, n=4)
    out = tmp_path / "bench.json"
    assert main(["bench", "server", "--checkpoint", str(ckpt), "--index", str(tmp_path / "ix"), *flags,
                 "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_bench_server_small(tiny_ckpt, tmp_path, capsys):
    data = _bench_server(tiny_ckpt, tmp_path, "--endpoints", "embed", "retrieve", "--concurrency", "1", "32",
                         "--seconds", "2", "--max-requests", "64")
    rows = data["runs"]["batching"]
    assert {r["endpoint"] for r in rows} == {"embed", "retrieve"}
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in rows)
    assert data["batching_gain"]["model"]["gain"] > 0
    assert "micro-batching at concurrency 32" in capsys.readouterr().out


@pytest.mark.slow  # builds a baseline revision in a worktree: .ci/run runs -m slow
def test_bench_server_against_a_baseline_revision_alternates_and_prints_ratios(tiny_ckpt, tmp_path, capsys):
    """`--baseline REV`: a server of REV's code (a git worktree) beside this checkout's, both up,
    the cells alternating; new/old ratios per cell (issue #21's "no route slower")."""
    data = _bench_server(tiny_ckpt, tmp_path, "--endpoints", "embed", "--concurrency", "1", "--seconds", "1",
                         "--max-requests", "8", "--baseline", "HEAD")
    assert set(data["runs"]) == {"old HEAD", "new"}
    assert all(r["errors"] == 0 and r["requests"] > 0 for rows in data["runs"].values() for r in rows)
    [ratio] = data["new_over_old"]
    assert ratio["endpoint"] == "embed" and ratio["rps_ratio"] > 0
    assert "req/s new/old" in capsys.readouterr().out


def test_device_setting_is_shown_in_ready_and_refused_when_absent(tiny_ckpt, tmp_path):
    import torch

    from server.settings import StartupError

    seed_index(tmp_path / "ix", tiny_ckpt, n=2)
    app = create_app(settings_for(tiny_ckpt, tmp_path / "ix", device="cpu", dtype="bfloat16", ready_cache_s=0))
    with TestClient(app) as c:
        checks = c.get("/ready").json()["checks"]
        assert checks["device"] == "cpu" and checks["dtype"] == "bfloat16"
        r = c.post("/generate", json={"query": text_sample("x"), "max_tokens": 2, "retrieval": {"k": 1}})
        assert r.status_code == 200
    if not torch.cuda.is_available():
        with pytest.raises(StartupError, match="CUDA is not available"):
            with TestClient(create_app(settings_for(tiny_ckpt, tmp_path / "ix", device="cuda"))):
                pass
    with pytest.raises(StartupError, match="float16 is for GPUs"):
        with TestClient(create_app(settings_for(tiny_ckpt, tmp_path / "ix", device="cpu", dtype="float16"))):
            pass
