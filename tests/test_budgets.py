"""Every request within a budget (issue #22): the pixel budget across a request's images,
uploads read in worker processes (time limit, 429 beyond the queue), HTML nesting refused
before the parse, and micro-batches that let a small /embed pass a big one."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.server_fixtures import b64_image, free_port, live_server, seed_index, settings_for

PIXELS = 40 * 30  # b64_image's size


def image_slice(seed: int = 0) -> dict:
    return {"type": "image", "base64": b64_image(seed)}


def assert_422(r, field_part: str, message_part: str) -> dict:
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert field_part in str(err.get("field", "")) + err["message"], err
    assert message_part in err["message"], err
    return err


@pytest.fixture(scope="module")
def ix(tiny_ckpt, tmp_path_factory):
    path = tmp_path_factory.mktemp("budgets") / "ix"
    seed_index(path, tiny_ckpt, n=2)
    return path


@pytest.fixture(scope="module")
def client(tiny_ckpt, ix):
    """A request may decode 3 images of 40 x 30 pixels, and no more."""
    with TestClient(create_app(settings_for(tiny_ckpt, ix, max_request_pixels=3 * PIXELS))) as c:
        yield c


# ------------------------------------------------------------------ the pixel budget
@pytest.mark.parametrize("route,body,field", [
    ("/embed", lambda n: {"samples": [{"slices": [image_slice(i)]} for i in range(n)]}, "samples[3]"),
    ("/embed", lambda n: {"samples": [{"slices": [image_slice(i) for i in range(n)]}]}, "slices[3]"),
    ("/retrieve", lambda n: {"query": {"slices": [image_slice(i) for i in range(n)]}}, "query.slices[3]"),
    ("/v1/chat/completions", lambda n: {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64_image(i)}} for i in range(n)]}],
        "max_tokens": 2}, "messages"),
])
def test_a_request_s_images_share_one_pixel_budget(client, route, body, field):
    assert client.post(route, json=body(3)).status_code == 200
    err = assert_422(client.post(route, json=body(4)), field, f"request's budget of {3 * PIXELS} decoded pixels")
    assert f"{2 * PIXELS} used" not in err["message"]  # the fourth image: three were used
    assert client.post(route, json=body(3)).status_code == 200  # the next request has its own budget
    assert client.get("/health").status_code == 200


def test_an_upload_s_images_share_the_budget_across_files_and_nothing_is_stored(client):
    def md(seeds):
        return "# Doc\n\n" + "\n\n".join(f"![im {i}](data:image/png;base64,{b64_image(i)})" for i in seeds)

    before = client.get("/index/stats").json()["count"]
    files = [("files", ("a.md", md([0, 1]).encode(), "text/markdown")),
             ("files", ("b.md", md([2, 3]).encode(), "text/markdown"))]
    r = client.post("/documents/upload", files=files)
    err = assert_422(r, "files", f"budget of {3 * PIXELS} decoded pixels")
    assert [f["file"] for f in err["files"]] == ["b.md"]  # a.md fit; b.md's second image did not
    assert client.get("/index/stats").json()["count"] == before
    r = client.post("/documents/upload", files=files[:1])
    assert r.status_code == 200, r.text
    assert r.json()["summary"]["images"] == 2


@pytest.mark.parametrize("pages,budget,message", [
    ([["Sales rose.", "IMAGE"]], 4000, "page 1: embedded 80x60 image"),  # 4,800 pixels
    ([["IMAGE"]], 100_000, "page 1 rendered"),  # a page without text is rendered: 400 x 400 pt
])
def test_pdf_pages_and_embedded_images_are_charged(tiny_ckpt, ix, pages, budget, message):
    from tests.conftest import make_image
    from tests.docs_fixtures import make_pdf

    data = make_pdf([[make_image(1, (80, 60)) if it == "IMAGE" else it for it in page] for page in pages])
    upload = [("files", ("scan.pdf", data, "application/pdf"))]
    with TestClient(create_app(settings_for(tiny_ckpt, ix, max_request_pixels=budget))) as c:
        err = assert_422(c.post("/documents/upload", files=upload), "scan.pdf", f"budget of {budget} decoded pixels")
        assert message in err["message"]
    with TestClient(create_app(settings_for(tiny_ckpt, ix, max_request_pixels=10**7))) as c:
        assert c.post("/documents/upload", files=upload).status_code == 200


def test_stored_images_do_not_count_against_a_generation_s_budget(tiny_ckpt, tmp_path):
    """The budget is the request's own images: documents retrieved for /generate were checked
    when they were stored and never turn a question into an error."""
    seed_index(tmp_path / "ix", tiny_ckpt, n=4)
    with TestClient(create_app(settings_for(tiny_ckpt, tmp_path / "ix", max_request_pixels=PIXELS))) as c:
        r = c.post("/generate", json={"query": {"slices": [{"type": "text", "text": "banner"}]},
                                      "max_tokens": 2, "retrieval": {"k": 4}})
        assert r.status_code == 200, r.text
        assert len(r.json()["documents"]) + len(r.json()["dropped_documents"]) == 4
        assert r.json()["documents"]  # used in the context, not left out


# ------------------------------------------------------------------ uploads in worker processes
def test_uploads_are_read_in_a_worker_process_with_the_same_chunks(tiny_ckpt, tmp_path):
    """The worker (a process of its own) chunks exactly as the serving process does (ingest_workers=0)."""
    seed_index(tmp_path / "a", tiny_ckpt, n=1)
    seed_index(tmp_path / "b", tiny_ckpt, n=1)
    text = "# Guide\n\n" + "\n\n".join(f"Paragraph {i}: " + "word " * (40 + i) for i in range(30))
    text += f"\n\n![a figure](data:image/png;base64,{b64_image(3)})\n\nThe end."
    files = [("files", ("guide.md", text.encode(), "text/markdown"))]
    docs = {}
    for name, workers in (("a", 1), ("b", 0)):
        app = create_app(settings_for(tiny_ckpt, tmp_path / name, ingest_workers=workers))
        with TestClient(app) as c:
            r = c.post("/documents/upload", files=files)
            assert r.status_code == 200, r.text
            pool = app.state.service.ingest_pool
            if workers:
                assert pool.pids and os.getpid() not in pool.pids
            else:
                assert pool is None
            docs[name] = [c.get(f"/documents/{i}").json() for i in r.json()["ids"]]
    assert len(docs["a"]) > 1 and docs["a"] == docs["b"]


def test_token_count_in_workers_equals_the_backbone_s(tiny_model):
    import pickle

    from index.ingest.chunking import TokenizerCount

    bb = tiny_model.backbone
    count = pickle.loads(pickle.dumps(TokenizerCount.of(bb)))
    for text in ["hello world", "What colour is the banner of House Vyd?", "漢字 テスト \n\n x",
                 "<s> </s> [INST] ok", "   spaced   out\ttabs", "".join(chr(i) for i in range(32, 700))]:
        assert count(text) == bb.count_text_tokens(text), text


def slow_markdown(paragraphs: int = 6000) -> bytes:
    return "\n\n".join(f"Paragraph {i} with [a link](#x{i}) and *some* words." for i in range(paragraphs)).encode()


def test_an_upload_past_the_time_limit_is_refused_and_its_worker_replaced(tiny_ckpt, ix):
    app = create_app(settings_for(tiny_ckpt, ix, ingest_timeout_s=0.2))
    with TestClient(app) as c:
        assert c.post("/documents/upload", files=[("files", ("warm.md", b"# warm\n\nup", "text/markdown"))]
                      ).status_code == 200
        pid = app.state.service.ingest_pool.pids[0]
        t0 = time.perf_counter()
        r = c.post("/documents/upload", files=[("files", ("slow.md", slow_markdown(), "text/markdown"))])
        assert time.perf_counter() - t0 < 5
        err = assert_422(r, "files", "longer than the limit of 0.2 s")
        assert err["files"] == [{"file": "slow.md", "reason": "reading took longer than the limit of 0.2 s"}]
        with pytest.raises(ProcessLookupError):  # killed
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
        r = c.post("/documents/upload", files=[("files", ("after.md", b"# after\n\nfine", "text/markdown"))])
        assert r.status_code == 200, r.text
        assert app.state.service.ingest_pool.pids[0] != pid
        assert c.get("/health").status_code == 200


def test_uploads_beyond_the_workers_and_queue_get_429_with_retry_after(tiny_ckpt, ix):
    app = create_app(settings_for(tiny_ckpt, ix, ingest_workers=1, ingest_queue=0, ingest_timeout_s=30))
    port = free_port()
    import httpx

    with live_server(app, port) as url:
        httpx.post(url + "/documents/upload", files=[("files", ("w.md", b"# w\n\nwarm", "text/markdown"))],
                   timeout=60).raise_for_status()
        slow: dict = {}

        def send_slow() -> None:
            slow["r"] = httpx.post(url + "/documents/upload", timeout=60,
                                   files=[("files", ("slow.md", slow_markdown(20000), "text/markdown"))])

        t = threading.Thread(target=send_slow)
        t.start()
        deadline = time.time() + 20
        while app.state.service.ingest_pool.active == 0 and time.time() < deadline:
            time.sleep(0.01)
        r = httpx.post(url + "/documents/upload", files=[("files", ("b.md", b"# b\n\nbusy", "text/markdown"))])
        t.join()
        assert r.status_code == 429, r.text
        assert r.json()["error"]["type"] == "overloaded" and "ingestion busy" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1
        assert slow["r"].status_code == 200, slow["r"].text
        assert httpx.get(url + "/health").status_code == 200


# ------------------------------------------------------------------ parsers bounded before the parse
def test_deeply_nested_html_is_refused_before_the_parse(client):
    t0 = time.perf_counter()
    r = client.post("/documents/upload", files=[("files", ("bomb.html", b"<div>" * 60000, "text/html"))])
    assert time.perf_counter() - t0 < 2
    err = assert_422(r, "files", "nested deeper than the limit of 1024")
    assert err["files"][0]["file"] == "bomb.html"


def test_nesting_depth_counts_what_the_parser_nests():
    from index.ingest.readers.html import nesting_depth

    assert nesting_depth("<div><p>a<p>b<br><img src=x /><div class='a'><span>x</span></div></div>", 99) == 3
    assert nesting_depth("<ul>" + "<li>item" * 5000 + "</ul>", 99) == 1  # <li> closes the one before
    assert nesting_depth("<b>" * 50, 10) == 11  # stops counting past the limit


# ------------------------------------------------------------------ fair micro-batches
def run_batcher(jobs: list[list[str]], max_batch=8, max_cost=40, delay=0.02):
    from server.batching import EmbeddingBatcher

    batches: list[list[str]] = []
    done: list[int] = []

    def embed(samples):
        time.sleep(delay)
        batches.append(list(samples))
        return [s.upper() for s in samples]

    async def run():
        b = EmbeddingBatcher(embed, max_batch=max_batch, max_wait_ms=5, cost=len, max_cost=max_cost)
        b.start()

        async def one(k, samples):
            out = await b.submit(samples)
            done.append(k)
            return out

        tasks = []
        for k, samples in enumerate(jobs):
            tasks.append(asyncio.create_task(one(k, samples)))
            await asyncio.sleep(0.005)
        out = await asyncio.gather(*tasks)
        await b.stop()
        return out

    return asyncio.run(run()), batches, done


def test_a_small_embed_rides_in_the_next_micro_batch_behind_a_big_one():
    big = [f"{'x' * 10}{i:02d}" for i in range(32)]
    out, batches, done = run_batcher([big, ["y"]])
    assert out == [[s.upper() for s in big], ["Y"]]  # the reference: each sample alone, in order
    first_with_y = next(k for k, b in enumerate(batches) if "y" in b)
    assert first_with_y <= 1 and done[0] == 1  # answered before the big one, not after it
    for b in batches:  # every micro-batch within the cost budget (longest x size)
        assert max(map(len, b)) * len(b) <= 40 or len(b) == 1


def test_micro_batches_take_one_sample_of_each_request_in_turn():
    out, batches, _ = run_batcher([["a1", "a2", "a3"], ["b1", "b2", "b3"], ["c1"]], max_batch=2, max_cost=0,
                                  delay=0.05)
    assert out == [["A1", "A2", "A3"], ["B1", "B2", "B3"], ["C1"]]
    assert all(len(b) <= 2 for b in batches)
    assert sorted(x for b in batches for x in b) == ["a1", "a2", "a3", "b1", "b2", "b3", "c1"]
    at = {x: k for k, b in enumerate(batches) for x in b}
    assert at["c1"] < at["b3"] and at["c1"] <= at["b2"]  # c waits for one round, not for all of b


def test_a_lone_client_is_not_held_for_company_a_burst_is():
    """One request at a time, further apart than max_wait: embedded at once (the wait for company
    would only add latency: /v1/rerank of stored ids embeds just the query). A burst: waited for."""
    from server.batching import EmbeddingBatcher

    async def run():
        b = EmbeddingBatcher(lambda s: [x.upper() for x in s], max_batch=16, max_wait_ms=20)
        b.start()
        try:
            for i in range(6):
                assert await b.submit([f"q{i}"]) == [f"Q{i}"]
                await asyncio.sleep(0.05)
            lone = b.waited
            out = await asyncio.gather(*(b.submit([f"s{i}"]) for i in range(8)))
            return lone, b.waited - lone, out
        finally:
            await b.stop()

    lone, burst, out = asyncio.run(run())
    assert lone <= 2  # the first two, before the gaps tell
    assert burst == 1 and out == [[f"S{i}"] for i in range(8)]


def test_a_sample_over_the_cost_budget_is_embedded_alone():
    out, batches, _ = run_batcher([["z" * 100, "a"]], max_cost=40)
    assert out == [["Z" * 100, "A"]]
    assert batches == [["z" * 100], ["a"]]


def test_sigterm_stops_serve_cleanly_with_its_ingestion_worker(tiny_ckpt, ix, tmp_path):
    """SIGTERM after an upload (a worker up): a graceful stop (uvicorn exits by the signal it was
    sent, after the shutdown), no traceback, no leaked semaphores from the ingestion worker."""
    import shutil
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    from tests.server_fixtures import wait_until_up

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(ix, tmp_path / "ix")
    port = free_port()
    sugar = Path(sys.executable).parent / "sugar"  # the console script users run (make run)
    if not sugar.exists():
        pytest.skip("no `sugar` console script beside this Python (pip install -e .)")
    proc = subprocess.Popen([str(sugar), "serve", "--checkpoint", str(tiny_ckpt),
                             "--index", str(tmp_path / "ix"), "--port", str(port)], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, proc)
        r = httpx.post(url + "/documents/upload", files=[("files", ("a.md", b"# A\n\nworker up", "text/markdown"))],
                       timeout=60)
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, -signal.SIGTERM), err[-2000:]
    assert "Application shutdown complete" in err
    assert "Traceback" not in err and "leaked semaphore" not in err, err[-2000:]
