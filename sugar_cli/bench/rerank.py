"""`sugar bench rerank`: /v1/rerank against its goals, side by side in one run.

It starts one `sugar serve` on loopback (on a copy of the index) unless given --url, then, the
cells alternating round by round so that the machine's noise falls on all of them alike:

- `/v1/rerank` of N stored documents by id (their stored slice vectors: nothing embedded but
  the query) — its p50 against the goal (10 ms for 50);
- `/v1/rerank` of N new text documents, and `/embed` of the same N texts — the ratio of their
  p50s against the goal (at most 1.2: reranking costs the embedding plus the kernel);
- one kernel, one answer: for each query, /retrieve's hybrid top-N reranked by id must come back
  in the order of /retrieve's own second stage (`dense_score`), with relevance = exp(dense_score).
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..home import default_pair, write_json
from .server import QUERIES, _free_port, _start_server, _stop

ID_GOAL_MS = 10.0
NEW_GOAL_RATIO = 1.2


def _p50(xs: list[float]) -> float:
    return float(np.percentile(np.array(xs) * 1e3, 50))


def _time(client, path: str, body: dict) -> float:
    t = time.perf_counter()
    r = client.post(path, json=body)
    dt = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
    return dt


def _agreement(client, n: int, queries: list[str]) -> dict:
    """/retrieve's hybrid top-n, reranked by id: the same order as its dense scores?"""
    same, worst = 0, 0.0
    for q in queries:
        hits = client.post("/retrieve", json={"query": {"slices": [{"type": "text", "text": q}]}, "k": n,
                                              "k_prime": n, "mode": "hybrid"}).json()["results"]
        r = client.post("/v1/rerank", json={"query": q, "documents": [{"id": h["id"]} for h in hits],
                                            "return_documents": False}).json()["results"]
        by_dense = [h["id"] for h in sorted(hits, key=lambda h: -h["dense_score"])]
        same += [hits[x["index"]]["id"] for x in r] == by_dense
        worst = max([worst, *(abs(x["relevance_score"] - math.exp(hits[x["index"]]["dense_score"])) for x in r)])
    return {"queries": len(queries), "same_order": same, "max_score_gap": worst}


def run(*, checkpoint: Path, index: Path, url: str | None = None, n: int = 50, rounds: int = 40,
        api_key: str | None = None) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with ExitStack() as stack:
        if url is None:
            copy = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sugar-bench-"))) / "index"
            shutil.copytree(index, copy)
            port = _free_port()
            proc = _start_server(checkpoint, copy, port, ["--api-key", api_key] if api_key else [])
            stack.callback(_stop, proc)
            url = f"http://127.0.0.1:{port}"
        client = stack.enter_context(httpx.Client(base_url=url, headers=headers, timeout=120.0))
        stored = client.post("/documents/scroll", json={"limit": n}).json()["documents"]
        if len(stored) < n:
            raise RuntimeError(f"the index holds {len(stored)} documents; the bench needs {n}")
        ids = [{"id": d["id"]} for d in stored]
        texts = [f"{QUERIES[i % len(QUERIES)]}, a new document number {i}" for i in range(n)]
        cells: dict[str, list[float]] = {"rerank_ids": [], "rerank_new": [], "embed_new": []}
        for r in range(rounds + 3):  # three rounds of warm-up, not counted
            q = f"{QUERIES[r % len(QUERIES)]} (round {r})"  # a new query each time: nothing cached
            times = {
                "rerank_ids": _time(client, "/v1/rerank", {"query": q, "documents": ids, "return_documents": False}),
                "embed_new": _time(client, "/embed", {"samples": [{"slices": [{"type": "text", "text": t}]}
                                                                  for t in texts]}),
                "rerank_new": _time(client, "/v1/rerank", {"query": q, "documents": texts, "return_documents": False}),
            }
            if r >= 3:
                for k, v in times.items():
                    cells[k].append(v)
        agree = _agreement(client, n, QUERIES + ["What colour is the banner of House Vyd?",
                                                 "What shape is on the banner of House Rax?"])
    out = {"n": n, "rounds": rounds, **{f"{k}_p50_ms": _p50(v) for k, v in cells.items()}, "agreement": agree}
    out["rerank_new_over_embed"] = out["rerank_new_p50_ms"] / out["embed_new_p50_ms"]
    print(f"{'cell':<34}{'p50 ms':>10}{'goal':>16}")
    goal = f"<= {ID_GOAL_MS} ms"
    print(f"{'rerank ' + str(n) + ' stored ids':<34}{out['rerank_ids_p50_ms']:>10.2f}{goal:>16}"
          f"  {'met' if out['rerank_ids_p50_ms'] <= ID_GOAL_MS else 'missed'}")
    print(f"{'embed ' + str(n) + ' new texts':<34}{out['embed_new_p50_ms']:>10.2f}")
    print(f"{'rerank ' + str(n) + ' new texts':<34}{out['rerank_new_p50_ms']:>10.2f}"
          f"{'<= 1.2x embed':>16}  ratio {out['rerank_new_over_embed']:.3f} "
          f"{'met' if out['rerank_new_over_embed'] <= NEW_GOAL_RATIO else 'missed'}")
    print(f"hybrid top-{n} reranked by id, same order as /retrieve's second stage: "
          f"{agree['same_order']}/{agree['queries']} queries (largest |relevance - exp(dense_score)| "
          f"{agree['max_score_gap']:.2e})")
    return out


__all__ = ["run"]


def add_parser(bsub) -> None:
    rr = bsub.add_parser("rerank", help="/v1/rerank: 50 stored ids (p50), 50 new texts against /embed of them, "
                         "and the same order as /retrieve's second stage")
    rr.add_argument("--url", help="an already running server (default: start our own)")
    rr.add_argument("--checkpoint", type=Path, help="default: the built-in default checkpoint")
    rr.add_argument("--index", type=Path, help="default: the built-in default index")
    rr.add_argument("--documents", type=int, default=50, help="documents per rerank request")
    rr.add_argument("--rounds", type=int, default=40, help="measured rounds (the cells alternate)")
    rr.add_argument("--api-key", help="the server's API key, when it has one")
    rr.add_argument("--json", type=Path, help="also write the records to this file (JSON)")
    rr.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    checkpoint, index = default_pair(args.checkpoint, args.index)
    write_json(args.json, run(checkpoint=checkpoint, index=index, url=args.url, n=args.documents,
                              rounds=args.rounds, api_key=args.api_key))
    return 0
