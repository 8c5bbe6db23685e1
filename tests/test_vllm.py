"""The vLLM tier: a real vLLM OpenAI server (CPU build, its own venv) behind `--engine vllm`.

Opt-in: `pytest -m vllm tests/test_vllm.py`. The venv comes from
`scripts/vllm_venv.sh` (created on first use; SUGAR_VLLM_VENV to reuse one);
the checkpoint is SUGAR_VLLM_CKPT, else the shipped default checkpoint (trained:
its greedy choices are decisive; a checkpoint of a few smoke steps has
near-ties between next tokens that the two engines' fp32 kernels break
differently, as CI saw). Checks: /generate and /v1/chat/completions (stream
and not) work through vLLM; greedy answers equal the in-process engine's; a
vLLM outage turns /ready red and /generate answers 503 quickly; both recover
when vLLM is back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from tests.server_fixtures import free_port, live_server, seed_index, settings_for

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]
MAX_LEN = 1024


@pytest.fixture(scope="module")
def venv() -> Path:
    path = Path(os.environ.get("SUGAR_VLLM_VENV", ROOT / ".vllm-venv"))
    subprocess.run(["bash", str(ROOT / "scripts" / "vllm_venv.sh"), str(path)], check=True, timeout=1800)
    return path


@pytest.fixture(scope="module")
def ckpt() -> Path:
    return Path(os.environ.get("SUGAR_VLLM_CKPT", ROOT / "model" / "default_checkpoint"))


# what every Sugar deployment passes to vLLM (docker/docker-compose.yml too): the image
# processor of the checkpoint's own PIL implementation, as in process (vLLM's default, the
# torchvision one, resamples differently: hidden states 3e-3 apart on a resized image)
VLLM_COMMON = ["--enforce-eager", "--max-model-len", str(MAX_LEN), "--dtype", "float32",
               "--mm-processor-kwargs", '{"use_fast": false}']
# the pooling runner: per-token hidden states of the last layer (server/embedder.py)
VLLM_POOLING = ["--runner", "pooling", "--convert", "embed",
                "--pooler-config", '{"task": "token_embed", "use_activation": false}']


class VLLMServer:
    def __init__(self, venv: Path, ckpt: Path, port: int, log: Path, extra: list[str] | None = None) -> None:
        self.venv, self.ckpt, self.port, self.log = venv, ckpt, port, log
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    def launch(self) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu",
               "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
        env.pop("PYTHONPATH", None)
        cmd = [str(self.venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(self.ckpt / "backbone"), "--served-model-name", "sugar-backbone",
               "--host", "127.0.0.1", "--port", str(self.port), *VLLM_COMMON, *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def start(self, timeout: float = 300) -> float:
        t0 = time.time()
        if self.proc is None or self.proc.poll() is not None:
            self.launch()
        assert self.proc is not None
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited ({self.proc.returncode}); log: {self.log}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return time.time() - t0
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"vLLM not ready after {timeout} s; log: {self.log}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def stack(venv, ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    seed_index(tmp / "ix", ckpt, n=6)
    vllm = VLLMServer(venv, ckpt, free_port(), tmp / "vllm.log")
    startup = vllm.start()
    # the server's default read timeout: the first calls of each kind (the abstention's log-probabilities,
    # a barred token) warm vLLM's CPU sampler up for seconds; an outage is refused at connect, at once
    common = dict(ready_cache_s=0, vllm_timeout_s=60, gen_timeout_s=60)
    v_app = create_app(settings_for(ckpt, tmp / "ix", engine="vllm", vllm_url=f"http://127.0.0.1:{vllm.port}",
                                    vllm_max_model_len=MAX_LEN, **common))
    h_app = create_app(settings_for(ckpt, tmp / "ix", **common))
    with live_server(v_app, free_port()) as v_url, live_server(h_app, free_port()) as h_url:
        yield {"vllm": vllm, "v": v_url, "h": h_url, "startup_s": startup, "ckpt": ckpt}
    vllm.stop()


QUESTIONS = ["What colour is the banner of House H1?", "What shape is on the banner of House H4?",
             "Describe the image.", "a red circle", "How many shapes are there?", "Where is the shape?"]


def _generate(url: str, q: str, **kw) -> dict:
    r = httpx.post(url + "/generate", json={"query": {"slices": [{"type": "text", "text": q}]},
                                            "max_tokens": 12, "retrieval": {"k": 2}, **kw}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_generate_through_vllm_equals_in_process(stack):
    for q in QUESTIONS:
        v, h = _generate(stack["v"], q), _generate(stack["h"], q)
        assert v["documents"] == h["documents"]
        assert v["text"] == h["text"], q


def test_stream_and_chat_through_vllm(stack):
    with httpx.stream("POST", stack["v"] + "/generate", timeout=120, json={
            "query": {"slices": [{"type": "text", "text": QUESTIONS[0]}]}, "max_tokens": 8, "stream": True,
            "retrieval": {"k": 2}}) as r:  # the request `_generate` sends, streamed
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    want = _generate(stack["h"], QUESTIONS[0], max_tokens=8)["text"]
    assert events[-1]["done"] and events[-1]["text"] == want
    import openai

    for base in ("v", "h"):
        client = openai.OpenAI(base_url=stack[base] + "/v1", api_key="x")
        out = client.chat.completions.create(model="sugar", max_tokens=8, temperature=0,
                                             messages=[{"role": "user", "content": QUESTIONS[1]}])
        stream = client.chat.completions.create(model="sugar", max_tokens=8, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": QUESTIONS[1]}])
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed.strip() == out.choices[0].message.content
        stack[f"chat_{base}"] = out.choices[0].message.content
    assert stack["chat_v"] == stack["chat_h"]


def test_outage_turns_ready_red_and_503_then_recovers(stack):
    vllm = stack["vllm"]
    vllm.stop()
    r = httpx.get(stack["v"] + "/ready", timeout=30)
    assert r.status_code == 503 and "vLLM" in r.json()["checks"]["error"]
    t = time.time()
    r = httpx.post(stack["v"] + "/generate", timeout=60,
                   json={"query": {"slices": [{"type": "text", "text": QUESTIONS[0]}]}, "max_tokens": 4})
    assert r.status_code == 503 and r.json()["error"]["type"] == "engine_unavailable"
    assert time.time() - t < 15, "an outage must not hang the request"
    # a question the documents hold no trace of is abstained from without asking the engine
    r = httpx.post(stack["v"] + "/generate", timeout=60,
                   json={"query": {"slices": [{"type": "text", "text": "hi"}]}, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["finish_reason"] == "abstained"
    assert httpx.get(stack["v"] + "/health").status_code == 200
    vllm.start()
    assert httpx.get(stack["v"] + "/ready", timeout=30).status_code == 200
    assert _generate(stack["v"], QUESTIONS[0])["text"] == _generate(stack["h"], QUESTIONS[0])["text"]


# ---------------------------------------------------------------- every model family
# Each registered family (model/families/) as a tiny random checkpoint of its real classes,
# served by vLLM twice — the generate runner for /generate and chat, the pooling runner for
# the embeddings — against the in-process server on the same checkpoint and index.

from model.families import families  # noqa: E402
from tests.server_fixtures import b64_image as b64_png  # noqa: E402

FAMILIES = sorted(families())


@pytest.fixture(scope="module", params=FAMILIES)
def family_stack(request, venv, tmp_path_factory):
    from model.config import SMOKE_TINY, SugarConfig, TinyConfig
    from model.sugar import build_tiny_model

    tmp = tmp_path_factory.mktemp(f"fam-{request.param}")
    ckpt = tmp / "ckpt"
    build_tiny_model(SugarConfig(embed_dim=32), TinyConfig(**{**SMOKE_TINY, "family": request.param})).save_pretrained(
        ckpt, training={"note": "random init, vLLM family tier"})
    seed_index(tmp / "ix", ckpt, n=6)
    gen = VLLMServer(venv, ckpt, free_port(), tmp / "vllm-generate.log")
    pool = VLLMServer(venv, ckpt, free_port(), tmp / "vllm-pooling.log", extra=VLLM_POOLING)
    gen.launch()
    pool.launch()  # both start at once
    try:
        gen.start()
        pool.start()
        common = dict(ready_cache_s=0, vllm_timeout_s=30, gen_timeout_s=60)
        v_app = create_app(settings_for(ckpt, tmp / "ix", engine="vllm", vllm_url=f"http://127.0.0.1:{gen.port}",
                                        vllm_max_model_len=MAX_LEN, embed_engine="vllm",
                                        vllm_embed_url=f"http://127.0.0.1:{pool.port}", **common))
        h_app = create_app(settings_for(ckpt, tmp / "ix", **common))
        with live_server(v_app, free_port()) as v_url, live_server(h_app, free_port()) as h_url:
            yield {"family": request.param, "v": v_url, "h": h_url}
    finally:
        gen.stop()
        pool.stop()


def _image(seed: int, size: tuple[int, int]) -> dict:
    return {"type": "image", "base64": b64_png(seed, size)}


SAMPLES = [
    {"slices": [{"type": "text", "text": "a red circle on a white page"}]},
    {"slices": [{"type": "text", "text": "The banner of House Vyd:"}, _image(1, (40, 30))]},
    {"slices": [_image(2, (64, 64)), {"type": "text", "text": "three images"}, _image(3, (37, 52)),
                {"type": "text", "text": "of different sizes"}, _image(4, (90, 20))]},
]


def test_family_embeddings_through_the_vllm_pooling_runner_equal_in_process(family_stack):
    v = httpx.post(family_stack["v"] + "/embed", json={"samples": SAMPLES}, timeout=120)
    h = httpx.post(family_stack["h"] + "/embed", json={"samples": SAMPLES}, timeout=120)
    assert v.status_code == h.status_code == 200, v.text
    ready = httpx.get(family_stack["v"] + "/ready", timeout=30).json()["checks"]
    assert ready["engine"] == "vllm" and ready["embed_engine"] == "vllm"
    for a, b in zip(v.json()["data"], h.json()["data"], strict=True):
        assert len(a["slices"]) == len(b["slices"])
        diff = max(abs(x - y) for sa, sb in zip(a["slices"], b["slices"], strict=True)
                   for x, y in zip(sa["embedding"], sb["embedding"], strict=True))
        assert diff < 1e-4, (family_stack["family"], diff)
        assert max(abs(x - y) for x, y in zip(a["embedding"], b["embedding"], strict=True)) < 1e-4
    # the query of a retrieval is embedded there too: the same ranking
    q = {"query": SAMPLES[1], "k": 3, "mode": "dense"}
    rv = httpx.post(family_stack["v"] + "/retrieve", json=q, timeout=120).json()["results"]
    rh = httpx.post(family_stack["h"] + "/retrieve", json=q, timeout=120).json()["results"]
    assert [r["id"] for r in rv] == [r["id"] for r in rh]


def test_family_generation_through_vllm_equals_in_process(family_stack):
    for q in QUESTIONS[:3]:
        v, h = _generate(family_stack["v"], q, max_tokens=8), _generate(family_stack["h"], q, max_tokens=8)
        assert [d["id"] for d in v["documents"]] == [d["id"] for d in h["documents"]]  # query embedded by vLLM
        assert [d["score"] for d in v["documents"]] == pytest.approx([d["score"] for d in h["documents"]], abs=1e-4)
        assert v["text"] == h["text"], (family_stack["family"], q)
    chat = {"model": "sugar", "max_tokens": 8, "temperature": 0, "retrieval": {"enabled": False},
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What colour is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64_png(7, (48, 40))}}]}]}
    out = [httpx.post(family_stack[k] + "/v1/chat/completions", json=chat, timeout=120) for k in ("v", "h")]
    assert out[0].status_code == out[1].status_code == 200, out[0].text
    assert out[0].json()["choices"][0]["message"]["content"] == out[1].json()["choices"][0]["message"]["content"]
