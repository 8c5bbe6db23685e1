"""`sugar bench server`: a bounded load generator on loopback, side by side in one run.

It starts its own servers (`sugar serve` subprocesses on 127.0.0.1: one
micro-batching, one with --no-batching) unless given --url, then for each
endpoint and concurrency level sends requests for a bounded time and count:
throughput, p50/p99 latency, errors (a 429 counts as one). It also measures
the model's own batch-32 / batch-1 embedding gain in-process, so the
micro-batching gain at concurrency 32 is reported as a fraction of it, and
optionally a soak at concurrency 64 with the server's RSS before and after,
`/health` latency under load with hostile uploads beside it (`--health`), and
what each request at the limits costs the serving process (`--costs`: CPU
seconds, peak RSS rise; plus a small /embed's wait behind a big one). Servers
it starts get a copy of the index.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..home import default_pair, write_json
from .baseline import env_for, worktree

QUERIES = ["a large red circle on the left", "What colour is the banner of House Vyd?",
           "three small blue squares", "a striped green triangle above a yellow star"]


def _payload(endpoint: str, i: int) -> dict:
    q = {"slices": [{"type": "text", "text": QUERIES[i % len(QUERIES)] + f" #{i}"}]}
    if endpoint == "embed":
        return {"samples": [q]}
    if endpoint == "retrieve":
        return {"query": q, "k": 5}
    return {"query": q, "max_tokens": 8, "retrieval": {"k": 2}}


async def _load(url: str, endpoint: str, concurrency: int, seconds: float, max_requests: int,
                headers: dict) -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    sent = 0
    tokens = 0
    stop_at = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=120.0, headers=headers,
                                 limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        async def worker(w: int) -> None:
            nonlocal errors, sent, tokens
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                t = time.perf_counter()
                try:
                    r = await client.post("/" + endpoint, json=_payload(endpoint, sent))
                    ok = r.status_code == 200
                    if ok and endpoint == "generate":
                        tokens += r.json()["usage"]["completion_tokens"]
                except Exception:  # counted, the run goes on
                    ok = False
                if ok:
                    lat.append(time.perf_counter() - t)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - t0
    arr = np.array(lat) * 1e3 if lat else np.array([np.nan])
    return {"endpoint": endpoint, "concurrency": concurrency, "requests": len(lat), "errors": errors,
            "rps": len(lat) / wall, "tokens_per_s": tokens / wall, "p50_ms": float(np.percentile(arr, 50)),
            "p99_ms": float(np.percentile(arr, 99))}


PROBE = """
import json, sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
out, stop = [], time.perf_counter() + seconds
with httpx.Client(base_url=url, timeout=30.0) as c:
    while time.perf_counter() < stop:
        t = time.perf_counter()
        c.get("/health")
        out.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.05)
print(json.dumps(out))
"""


async def _health_under_load(url: str, concurrency: int, seconds: float, headers: dict, uploads: int = 4) -> dict:
    """/health latency (probed every 50 ms from a process of its own, so the load generator's
    event loop does not delay the probes) while `concurrency` clients embed and retrieve and
    `uploads` clients keep sending hostile uploads (`_hostile_uploads`)."""
    import httpx

    probe = subprocess.Popen([sys.executable, "-c", PROBE, url, str(seconds)], stdout=subprocess.PIPE, text=True)
    stop_at = time.perf_counter() + seconds
    done = {"embed": 0, "retrieve": 0}
    errors = 0
    upload_status: dict[int, int] = {}
    hostile = list(_hostile_uploads().items())
    async with httpx.AsyncClient(base_url=url, timeout=300.0, headers=headers,
                                 limits=httpx.Limits(max_connections=concurrency + uploads + 4)) as client:
        async def worker(w: int) -> None:
            nonlocal errors
            ep = "embed" if w % 2 == 0 else "retrieve"
            i = w
            while time.perf_counter() < stop_at:
                i += concurrency
                r = await client.post("/" + ep, json=_payload(ep, i))
                if r.status_code == 200:
                    done[ep] += 1
                else:
                    errors += 1

        async def uploader(w: int) -> None:
            k = w
            while time.perf_counter() < stop_at:
                name, data = hostile[k % len(hostile)]
                k += 1
                try:  # a new name each time: a new source, read in full (never "unchanged")
                    r = await client.post("/documents/upload", files=[("files", (f"h{w}-{k}-{name}", data))])
                    upload_status[r.status_code] = upload_status.get(r.status_code, 0) + 1
                    if r.status_code == 429:
                        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                except httpx.HTTPError:
                    upload_status[0] = upload_status.get(0, 0) + 1  # no answer at all

        await asyncio.gather(*(worker(w) for w in range(concurrency)), *(uploader(w) for w in range(uploads)))
    import json

    arr = np.array(json.loads(probe.communicate(timeout=seconds + 120)[0]))
    return {"concurrency": concurrency, "uploads": uploads, "seconds": seconds, "embed_ok": done["embed"],
            "retrieve_ok": done["retrieve"], "errors": errors, "upload_status": upload_status,
            "health_probes": len(arr),
            "health_p50_ms": float(np.percentile(arr, 50)), "health_p99_ms": float(np.percentile(arr, 99)),
            "health_max_ms": float(arr.max())}


def _tiny_behind_big(url: str, headers: dict, rounds: int = 3) -> dict:
    """A one-sample /embed sent 0.1 s after a 32-sample /embed at the token limit: its latency."""
    import threading

    import httpx

    big = {"samples": [{"slices": [{"type": "text", "text": f"zq{i} " + "zq " * 560}]} for i in range(32)]}
    tiny = {"samples": [{"slices": [{"type": "text", "text": "a red circle"}]}]}
    rows = []
    for _ in range(rounds):
        out: dict = {}

        def send_big(out=out) -> None:
            t = time.perf_counter()
            out["status"] = httpx.post(url + "/embed", json=big, headers=headers, timeout=300).status_code
            out["s"] = time.perf_counter() - t

        th = threading.Thread(target=send_big)
        th.start()
        time.sleep(0.1)
        t = time.perf_counter()
        r = httpx.post(url + "/embed", json=tiny, headers=headers, timeout=300)
        tiny_s = time.perf_counter() - t
        th.join()
        rows.append({"tiny_s": tiny_s, "tiny_status": r.status_code, "big_s": out["s"], "big_status": out["status"]})
    return {"rounds": rows, "tiny_max_s": max(r["tiny_s"] for r in rows),
            "big_median_s": float(np.median([r["big_s"] for r in rows]))}


def _hostile_uploads() -> dict[str, bytes]:
    """Files at the body limit's reach that cost the most to read (issue #22)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (4096, 4096), 1).save(buf, format="PNG", optimize=True)  # ~2 KB, 16.8 M pixels decoded
    b64 = base64.b64encode(buf.getvalue()).decode()
    md_images = "# Pictures\n\n" + "\n\n".join(f"![p{i}](data:image/png;base64,{b64})" for i in range(32))
    return {
        "deep.html": b"<html><body>" + b"<div>" * 60_000 + b"x",
        "brackets.md": b"[" * 200_000,
        "huge-page.pdf": _huge_pdf_page(),
        "images.md": md_images.encode(),
    }


def _huge_pdf_page() -> bytes:
    """One 14,400 x 14,400 pt page without a text layer (rendered when read)."""
    from fpdf import FPDF

    pdf = FPDF(unit="pt", format=(14_400, 14_400))
    pdf.add_page()
    pdf.set_fill_color(200, 30, 30)
    pdf.rect(100, 100, 14_000, 14_000, style="F")
    return bytes(pdf.output())


def _heavy_requests() -> dict[str, dict]:
    """Requests at (or past) the limits: what one request may cost."""
    import base64
    import io

    from PIL import Image

    def png(w: int, h: int) -> str:
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    def image(b64: str) -> dict:
        return {"samples": [{"slices": [{"type": "image", "base64": b64}]}]}

    return {
        "png 1x16777216": image(png(16_777_216, 1)),
        "png 1x400000": image(png(400_000, 1)),
        "png 4096x4096": image(png(4096, 4096)),
        "text 2x16384 CJK": {"samples": [{"slices": [{"type": "text", "text": "漢" * 16_384}] * 2}]},
        "text past the token limit": {"samples": [{"slices": [{"type": "text", "text": "zq " * 2000}]}]},
        "text near the token limit": {"samples": [{"slices": [{"type": "text", "text": "zq " * 600}]}]},
        "64 slices of text": {"samples": [{"slices": [{"type": "text", "text": "a red circle " * 20}] * 64}]},
    }


def _cost_per_request(url: str, pid: int | None, headers: dict) -> list[dict]:
    """Each heavy request alone: status, seconds, the serving process's CPU seconds (all its
    threads; ingestion workers are other processes), its event loop's (the main thread's: what
    every other request waits on) and its peak RSS rise (sampled every 10 ms)."""
    import threading

    import httpx
    import psutil

    rows = []
    proc = psutil.Process(pid) if pid else None
    requests = [(name, "/embed", {"json": body}) for name, body in _heavy_requests().items()]
    nonce = f"{time.time_ns() % 10**9}"  # a new source each run: read in full, never "unchanged"
    requests += [(f"upload {name}", "/documents/upload", {"files": [("files", (f"cost-{nonce}-{name}", data))]})
                 for name, data in _hostile_uploads().items()]
    for name, path, kw in requests:
        base = proc.memory_info().rss if proc else 0
        cpu0 = sum(proc.cpu_times()[:2]) if proc else 0.0
        loop0 = _main_thread_cpu(proc) if proc else 0.0
        peak = [base]
        stop = threading.Event()

        def sample(stop=stop, peak=peak) -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.01)

        t = threading.Thread(target=sample, daemon=True) if proc else None
        if t:
            t.start()
        t0 = time.perf_counter()
        try:
            r = httpx.post(url + path, headers=headers, timeout=600, **kw)
            status, message = r.status_code, (r.json().get("error", {}).get("message", "")[:80]
                                              if r.status_code >= 400 else "")
        except httpx.HTTPError as e:
            status, message = 0, f"no answer ({type(e).__name__})"
        secs = time.perf_counter() - t0
        stop.set()
        if t:
            t.join()
        rows.append({"request": name, "status": status, "seconds": secs,
                     "cpu_s": sum(proc.cpu_times()[:2]) - cpu0 if proc else float("nan"),
                     "loop_cpu_s": _main_thread_cpu(proc) - loop0 if proc else float("nan"),
                     "rss_rise_mb": (peak[0] - base) / 2**20 if proc else float("nan"), "message": message})
    return rows


def _main_thread_cpu(proc) -> float:
    """CPU seconds of the process's main thread (uvicorn's event loop)."""
    return next((t.user_time + t.system_time for t in proc.threads() if t.id == proc.pid), float("nan"))


def _start_server(checkpoint: Path, index: Path, port: int, extra: list[str],
                  root: Path | None = None) -> subprocess.Popen:
    """`sugar serve` in a process of its own; `root`: the code of another revision (a worktree)."""
    cmd = [sys.executable, "-m", "sugar_cli", "serve", "--checkpoint", str(checkpoint), "--index", str(index),
           "--port", str(port), *extra]
    env = {**(env_for(root) if root else os.environ), "SUGAR_THREADS": os.environ.get("SUGAR_THREADS", "2")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True, cwd=root)
    import httpx

    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready in 180 s")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_idle(variants: list[Variant], limit_s: float = 900.0) -> None:
    """Until every started server (and its children: ingestion workers) uses under 10 % of a
    core over 2 s, or `limit_s` passed."""
    import psutil

    procs = []
    for v in variants:
        if v.proc is not None:
            p = psutil.Process(v.proc.pid)
            procs += [p, *p.children(recursive=True)]
    deadline = time.time() + limit_s
    while time.time() < deadline:
        try:
            before = [sum(p.cpu_times()[:2]) for p in procs]
            time.sleep(2)
            busy = sum(sum(p.cpu_times()[:2]) - b for p, b in zip(procs, before, strict=True)) / 2
        except psutil.NoSuchProcess:
            return
        if busy < 0.1:
            return
    print(f"servers still busy after {limit_s:.0f} s: measuring anyway")


def _rss(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def _model_gain(checkpoint: Path) -> dict:
    from model.sample import Sample
    from model.sugar import SugarModel

    model = SugarModel.from_pretrained(checkpoint)
    samples = [Sample.build([QUERIES[i % 4] + f" #{i}"]) for i in range(64)]
    model.embed(samples[:4], batch_size=4)
    t = time.perf_counter()
    model.embed(samples[:32], batch_size=1)
    t1 = (time.perf_counter() - t) / 32
    t = time.perf_counter()
    for _ in range(2):
        model.embed(samples, batch_size=32)
    t32 = (time.perf_counter() - t) / 128
    return {"batch1_per_s": 1 / t1, "batch32_per_s": 1 / t32, "gain": t1 / t32}


def _print(rows: list[dict], title: str) -> None:
    print(title)
    print(f"{'endpoint':>9} {'conc':>5} | {'req/s':>8} {'tok/s':>8} {'p50 ms':>8} {'p99 ms':>8} | "
          f"{'ok':>6} {'errors':>6}")
    for r in rows:
        tps = f"{r['tokens_per_s']:8.1f}" if r["endpoint"] == "generate" else f"{'-':>8}"
        print(f"{r['endpoint']:>9} {r['concurrency']:>5} | {r['rps']:8.1f} {tps} {r['p50_ms']:8.1f} "
              f"{r['p99_ms']:8.1f} | {r['requests']:>6} {r['errors']:>6}")


@dataclass
class Variant:
    name: str
    flags: list[str]
    root: Path | None = None  # another revision's code (--baseline)
    endpoints: list[str] | None = None  # None: all that were asked for
    extras: bool = False  # health, costs and soak run on it
    proc: subprocess.Popen | None = None
    url: str | None = None


def _variants(extra: list[str], engines: list[str], compare_batching: bool, baseline: str | None,
              embed_engines: list[str] | None = None) -> list[Variant]:
    if embed_engines and len(embed_engines) > 1:  # embedding engines side by side, both up, cells alternating
        flags = [*extra, "--engine", engines[0]] if engines else extra
        return [Variant(f"embed-{e}", [*flags, "--embed-engine", e], endpoints=["embed"]) for e in embed_engines]
    if embed_engines:
        extra = [*extra, "--embed-engine", embed_engines[0]]
    if baseline:  # the same server, old code beside new
        flags = [*extra, "--engine", engines[0]] if engines else extra
        return [Variant(f"old {baseline}", flags, extras=True), Variant("new", flags, extras=True)]
    if len(engines) > 1:  # engines side by side on the same checkpoint and prompts
        return [Variant(f"engine-{e}", [*extra, "--engine", e], extras=i == 0) for i, e in enumerate(engines)]
    flags = [*extra, "--engine", engines[0]] if engines else extra
    out = [Variant("batching", flags, extras=True)]
    if compare_batching:
        out.append(Variant("no-batching", [*flags, "--no-batching"], endpoints=["embed"]))
    return out


def run(*, checkpoint: Path, index: Path, url: str | None, endpoints: list[str], concurrency: list[int],
        seconds: float, max_requests: int, soak: float, api_key: str | None, engines: list[str] | None,
        vllm_url: str | None, compare_batching: bool, health: float = 0.0, costs: bool = False,
        baseline: str | None = None, embed_engines: list[str] | None = None,
        vllm_embed_url: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    extra = (["--api-key", api_key] if api_key else []) + (["--vllm-url", vllm_url] if vllm_url else []) + (
        ["--vllm-embed-url", vllm_embed_url] if vllm_embed_url else [])
    variants = _variants(extra, engines or [], compare_batching and not baseline and len(engines or []) < 2 and not
                         embed_engines, baseline, embed_engines)
    # servers side by side: an old revision beside the new one, or two embedding engines
    together = bool(baseline) or len(embed_engines or []) > 1
    out: dict = {"runs": {}}
    with ExitStack() as stack:
        if baseline:
            variants[0].root = stack.enter_context(worktree(baseline))
        # each server it starts writes (uploads) into a copy of the index, never into the user's
        copies = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sugar-bench-")))
        for v in variants:
            # one server at a time; side by side both stay up and the cells alternate
            scope = stack if together else ExitStack()
            if url is not None and v.name == "batching":
                v.url = url
            else:
                port = _free_port()
                own = copies / f"index-{len(list(copies.iterdir()))}"
                shutil.copytree(index, own)
                v.proc = _start_server(checkpoint, own, port, v.flags, v.root)
                scope.callback(_stop, v.proc)
                v.url = f"http://127.0.0.1:{port}"
            if not together:
                with scope:
                    _measure([v], endpoints, concurrency, seconds, max_requests, headers, out)
                    _extras(v, health, costs, soak, headers, out)
        if together and not baseline:
            _measure(variants, endpoints, concurrency, seconds, max_requests, headers, out)
            _print_ratios(out, variants)
        elif baseline:
            _measure(variants, endpoints, concurrency, seconds, max_requests, headers, out)
            for v in variants:
                _wait_idle(variants)  # what one server still chews on must not load the other's turn
                _extras(v, health, costs, soak, headers, out)
            _print_ratios(out, variants)
    if "no-batching" in out["runs"] and 32 in concurrency:
        _batching_gain(checkpoint, out)
    return out


def _measure(variants: list[Variant], endpoints: list[str], concurrency: list[int], seconds: float,
             max_requests: int, headers: dict, out: dict) -> None:
    """Each (endpoint, concurrency) cell on each variant in turn (alternating when several are up)."""
    cells = [(ep, c) for ep in endpoints for c in concurrency]
    for ep, c in cells:
        for v in variants:
            if v.endpoints is None or ep in v.endpoints:
                out["runs"].setdefault(v.name, []).append(
                    asyncio.run(_load(v.url, ep, c, seconds, max_requests, headers)))  # type: ignore[arg-type]
    for v in variants:
        _print(out["runs"].get(v.name, []), f"server ({v.name}) at {v.url}")


def _extras(v: Variant, health: float, costs: bool, soak: float, headers: dict, out: dict) -> None:
    if not v.extras:
        return
    key = "" if v.name in ("batching",) or v.name.startswith("engine-") else f" ({v.name})"
    if health:
        h = asyncio.run(_health_under_load(v.url, 32, health, headers))  # type: ignore[arg-type]
        out["health_under_load" + key] = h
        print(f"{v.name}: /health while 32 clients embed and retrieve and 4 send hostile uploads for "
              f"{health:.0f} s: p50 {h['health_p50_ms']:.1f} ms, p99 {h['health_p99_ms']:.1f} ms, max "
              f"{h['health_max_ms']:.1f} ms ({h['health_probes']} probes; uploads answered {h['upload_status']}; "
              f"{h['embed_ok']} embeds, {h['retrieve_ok']} retrievals, "
              f"{h['errors']} errors)")
    if costs:
        rows = _cost_per_request(v.url, v.proc.pid if v.proc else None, headers)  # type: ignore[arg-type]
        out["cost_per_request" + key] = rows
        print(f"{'request':>26} | {'status':>6} {'seconds':>8} {'CPU s':>6} {'loop CPU s':>10} "
              f"{'RSS rise MB':>11} | message")
        for c in rows:
            print(f"{c['request']:>26} | {c['status']:>6} {c['seconds']:8.2f} {c['cpu_s']:6.2f} "
                  f"{c['loop_cpu_s']:10.2f} {c['rss_rise_mb']:11.1f} | {c['message']}")
        tb = _tiny_behind_big(v.url, headers)  # type: ignore[arg-type]
        out["tiny_behind_big" + key] = tb
        print(f"{v.name}: a 1-sample /embed sent 0.1 s after a 32-sample one at the token limit: answered "
              f"within {tb['tiny_max_s']:.2f} s (worst of {len(tb['rounds'])}); the big one took "
              f"{tb['big_median_s']:.2f} s")
    if soak:
        rss0 = _rss(v.proc.pid) if v.proc else float("nan")
        r = asyncio.run(_load(v.url, "embed", 64, soak, 10**9, headers))  # type: ignore[arg-type]
        rss1 = _rss(v.proc.pid) if v.proc else float("nan")
        out["soak" + key] = {**r, "seconds": soak, "rss_start_mb": rss0, "rss_end_mb": rss1}
        print(f"soak: /embed at concurrency 64 for {soak:.0f} s: {r['requests']} ok, {r['errors']} errors, "
              f"{r['rps']:.1f} req/s; server RSS {rss0:.0f} -> {rss1:.0f} MB "
              f"({(rss1 / rss0 - 1) * 100:+.1f} %)")


def _print_ratios(out: dict, variants: list[Variant]) -> None:
    """second / first per cell (new / old; vllm / hf): throughput and p50 latency."""
    old, new = (out["runs"][v.name] for v in variants)
    print(f"\n{variants[1].name} / {variants[0].name}")
    print(f"\n{'endpoint':>9} {'conc':>5} | {'req/s new/old':>13} {'p50 new/old':>12}")
    ratios = []
    for a, b in zip(old, new, strict=True):
        row = {"endpoint": a["endpoint"], "concurrency": a["concurrency"], "rps_ratio": b["rps"] / a["rps"],
               "p50_ratio": b["p50_ms"] / a["p50_ms"]}
        ratios.append(row)
        print(f"{row['endpoint']:>9} {row['concurrency']:>5} | {row['rps_ratio']:13.2f} {row['p50_ratio']:12.2f}")
    out["new_over_old"] = ratios


def _batching_gain(checkpoint: Path, out: dict) -> None:
    gain = _model_gain(checkpoint)
    b = next(r for r in out["runs"]["batching"] if r["endpoint"] == "embed" and r["concurrency"] == 32)
    nb = next(r for r in out["runs"]["no-batching"] if r["concurrency"] == 32)
    ratio = b["rps"] / nb["rps"]
    out["batching_gain"] = {"server_c32_batching_vs_not": ratio, "model": gain,
                            "fraction_of_model_gain": ratio / gain["gain"]}
    print(f"micro-batching at concurrency 32: {ratio:.2f}x the --no-batching server; the model's own "
          f"batch-32/batch-1 gain: {gain['gain']:.2f}x ({gain['batch1_per_s']:.0f} -> "
          f"{gain['batch32_per_s']:.0f} samples/s); fraction of the model gain reached: "
          f"{out['batching_gain']['fraction_of_model_gain']:.2f}")


def add_parser(bsub) -> None:
    sv = bsub.add_parser("server", help="load generator on loopback: /embed /retrieve /generate")
    sv.add_argument("--url", help="an already running server (default: start our own)")
    sv.add_argument("--checkpoint", type=Path, help="default: the built-in default checkpoint")
    sv.add_argument("--index", type=Path, help="default: the built-in default index")
    sv.add_argument("--endpoints", nargs="+", default=["embed", "retrieve", "generate"],
                    choices=["embed", "retrieve", "generate"], help="the routes loaded")
    sv.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64], help="clients at once, one cell each")
    sv.add_argument("--seconds", type=float, default=10.0, help="per endpoint and concurrency level")
    sv.add_argument("--max-requests", type=int, default=2000, help="per endpoint and concurrency level")
    sv.add_argument("--soak", type=float, default=0.0, help="seconds of /embed at concurrency 64 (RSS, errors)")
    sv.add_argument("--engine", nargs="+", choices=["hf", "vllm"],
                    help="one engine, or several to compare side by side (e.g. --engine vllm hf)")
    sv.add_argument("--vllm-url", help="the vLLM server (engine vllm)")
    sv.add_argument("--embed-engine", nargs="+", choices=["hf", "vllm"],
                    help="embedding engines side by side (e.g. --embed-engine hf vllm: /embed throughput of each)")
    sv.add_argument("--vllm-embed-url", help="the vLLM pooling server (embed engine vllm)")
    sv.add_argument("--api-key", help="the server's API key, when it has one")
    sv.add_argument("--no-compare", action="store_true", help="skip the --no-batching server")
    sv.add_argument("--health", type=float, default=0.0,
                    help="seconds of /health probing (p50/p99/max) while 32 clients embed and retrieve and 4 "
                    "send hostile uploads (60k-deep HTML, 200k '[', a 14,400 pt PDF page, 32 4096^2 images)")
    sv.add_argument("--costs", action="store_true",
                    help="requests at the limits (the hostile uploads too), one at a time: status, seconds, "
                    "the serving process's CPU seconds and RSS rise; a 1-sample /embed behind a 32-sample one")
    sv.add_argument("--baseline", metavar="REV", help="a server of this git revision beside this checkout's "
                    "(both up, the cells alternate), with the new/old ratios")
    sv.add_argument("--json", type=Path, help="also write the records to this file (JSON)")
    sv.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    checkpoint, index = default_pair(args.checkpoint, args.index)
    write_json(args.json, run(
        checkpoint=checkpoint, index=index, url=args.url, endpoints=args.endpoints, concurrency=args.concurrency,
        seconds=args.seconds, max_requests=args.max_requests, soak=args.soak, api_key=args.api_key,
        engines=args.engine, vllm_url=args.vllm_url, compare_batching=not args.no_compare, health=args.health,
        costs=args.costs, baseline=args.baseline, embed_engines=args.embed_engine,
        vllm_embed_url=args.vllm_embed_url))
    return 0
