"""`sugar bench collections`: a small collection served alone and beside a large one, side by side.

On each backend: a 1,000-document collection in a location of its own ("alone"), and the same
collection in a location that also holds a 100,000-document one ("shared": one embedded
server's directory, or one PostgreSQL database); the same queries alternate between the two:
end-to-end `DocumentIndex.search` p50/p99 (ANN + store fetch + GA rerank over K' = 50), and
stage-1 recall@10 against the exact top 10 of the small collection. With PostgreSQL, also the
design the collections were not built on, for the record: one table for every collection with
a `collection` column, its HNSW index shared, the collection filter pushed into the scan
(pgvector's iterative scan) — against a schema per collection (what `index/collections.py`
does). Prints the ratios; `--json` keeps the records.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..home import write_json
from .index import M_SLICES, VOCAB, _clustered, _pct, _unit


def _docs(rng, summaries: np.ndarray, prefix: str, a: int, b: int):
    from index import DocumentVectors
    from model.sample import Sample, Slice

    rows = []
    for i in range(a, b):
        v = summaries[i] + 0.2 * _unit(rng, M_SLICES, summaries.shape[1])
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        rows.append((Sample([Slice.of_text(f"{prefix} {i} " + " ".join(rng.choice(VOCAB, 8)))] * M_SLICES,
                            id=f"{prefix}{i}"), DocumentVectors(v.astype(np.float32), summaries[i])))
    return rows


def _fill(index, rng, summaries, prefix: str, batch: int = 2000) -> float:
    t = time.perf_counter()
    for a in range(0, len(summaries), batch):
        index.add(_docs(rng, summaries, prefix, a, min(len(summaries), a + batch)), version="bench")
    return len(summaries) / (time.perf_counter() - t)


def _queries(rng, small: np.ndarray, n: int):
    from index import DocumentVectors

    out = []
    for i in rng.integers(0, len(small), n):
        g = small[i] + 0.3 * _unit(rng, 1, small.shape[1])[0]
        g /= np.linalg.norm(g)
        v = g + 0.2 * _unit(rng, M_SLICES, small.shape[1])
        out.append(DocumentVectors((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32),
                                   g.astype(np.float32)))
    return out


def _compare(sides: dict, small: np.ndarray, queries) -> dict:
    """p50/p99 of the same queries alternating between the sides, and stage-1 recall@10."""
    from model.search import SearchParams

    ts: dict[str, list[float]] = {s: [] for s in sides}
    stage1: dict[str, list[float]] = {s: [] for s in sides}
    recall: dict[str, list[float]] = {s: [] for s in sides}
    params = SearchParams(k=10, k_prime=50, mode="dense")
    for q in queries:
        exact = {f"small{j}" for j in np.argsort(-(small @ q.summary))[:10].tolist()}
        for name, idx in sides.items():
            t = time.perf_counter()
            idx.search(q, params)
            ts[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            _, fids = idx.vectors.search(q.summary[None], 10)
            stage1[name].append(time.perf_counter() - t)
            ids = {d.id for d in idx.store.get_by_fids([int(f) for f in fids[0] if f >= 0], small.shape[1]).values()}
            recall[name].append(len(ids & exact) / 10)
    out = {}
    for name in sides:
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = _pct(ts[name], 50), _pct(ts[name], 99)
        out[f"{name}_recall@10"] = float(np.mean(recall[name]))
        out[f"{name}_stage1_p50_ms"] = _pct(stage1[name], 50)
    out["shared/alone_p50"] = out["shared_p50_ms"] / out["alone_p50_ms"]
    return out


def run_backend(kind: str, n_small: int, n_large: int, d: int, nq: int, url: str | None, rng) -> dict:
    from index.collections import Collections

    small, large = _clustered(rng, n_small, d), _clustered(rng, n_large, d)
    queries = _queries(rng, small, nq)
    with ExitStack() as stack:
        if kind == "postgres":
            if url is None:
                from ..postgres import PostgresServer

                server = PostgresServer()
                stack.callback(server.close)
                alone_at, shared_at = server.create_database(), server.create_database()
            else:
                raise SystemExit("sugar bench collections: --index-url is not supported (two databases are made)")
        else:
            alone_at = stack.enter_context(tempfile.TemporaryDirectory())
            shared_at = stack.enter_context(tempfile.TemporaryDirectory())
        out: dict = {"backend": kind, "n_small": n_small, "n_large": n_large, "dim": d}
        alone = Collections(alone_at, dim=d, embedding_version="bench", snapshot_every=10**9)
        shared = Collections(shared_at, dim=d, embedding_version="bench", snapshot_every=10**9)
        stack.callback(alone.close)
        stack.callback(shared.close)
        for cs in (alone, shared):
            cs.create("small")
        shared.create("large")
        out["large_ingest_docs_per_s"] = _fill(shared.get("large"), rng, large, "large")
        _fill(alone.get("small"), rng, small, "small")
        _fill(shared.get("small"), rng, small, "small")
        out.update(_compare({"alone": alone.get("small"), "shared": shared.get("small")}, small, queries))
        if kind == "postgres":
            out["design"] = _column_design(shared_at, small, large, queries)
    return out


def _column_design(url: str, small: np.ndarray, large: np.ndarray, queries) -> dict:
    """The other design, measured: every collection's vectors in one table with a `collection`
    column and one HNSW index; the small collection's top 10 by a filtered scan (iterative)."""
    import psycopg

    from index.pg import ef_search, vector_literal

    d = small.shape[1]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE TABLE coldesign (fid bigserial PRIMARY KEY, collection text NOT NULL, id text NOT NULL,"
                  f" summary vector({d}) NOT NULL)")
        with c.cursor() as cur, cur.copy("COPY coldesign (collection, id, summary) FROM STDIN") as cp:
            for name, arr in (("large", large), ("small", small)):
                for i, v in enumerate(arr):
                    cp.write_row((name, f"{name}{i}", vector_literal(v)))
        c.execute("SET maintenance_work_mem = '1GB'")
        c.execute("CREATE INDEX ON coldesign USING hnsw (summary vector_ip_ops) WITH (m = 16, ef_construction = 64)")
        c.execute("CREATE INDEX ON coldesign (collection)")
        c.execute("ANALYZE coldesign")
        ts, recall = [], []
        for q in queries:
            exact = {f"small{j}" for j in np.argsort(-(small @ q.summary))[:10].tolist()}
            t = time.perf_counter()
            with c.transaction():
                c.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef_search(10)),))
                c.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                rows = c.execute("SELECT id FROM (SELECT id, summary <#> %s::vector AS dist FROM coldesign"
                                 " WHERE collection = 'small' ORDER BY summary <#> %s::vector LIMIT 10) t"
                                 " ORDER BY dist",
                                 (vector_literal(q.summary), vector_literal(q.summary))).fetchall()
            ts.append(time.perf_counter() - t)
            recall.append(len({r[0] for r in rows} & exact) / 10)
    return {"column_stage1_p50_ms": _pct(ts, 50), "column_stage1_p99_ms": _pct(ts, 99),
            "column_recall@10": float(np.mean(recall))}


def run(*, backends: list[str], n_small: int, n_large: int, d: int, nq: int, url: str | None = None) -> dict:
    import torch

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    records = {}
    for kind in backends:
        r = run_backend(kind, n_small, n_large, d, nq, url, rng)
        records[kind] = r
        print(f"\n{kind}: a {n_small}-document collection alone vs beside a {n_large}-document one "
              f"({nq} queries alternating, k=10, K'=50)")
        print(f"{'':>8} | {'p50 ms':>8} {'p99 ms':>8} | {'recall@10':>9}")
        for side in ("alone", "shared"):
            print(f"{side:>8} | {r[f'{side}_p50_ms']:8.2f} {r[f'{side}_p99_ms']:8.2f} | {r[f'{side}_recall@10']:9.3f}")
        print(f"shared / alone p50: {r['shared/alone_p50']:.2f}x;  the large collection ingested at "
              f"{r['large_ingest_docs_per_s']:.0f} documents/s")
        if "design" in r:
            x = r["design"]
            print(f"design, stage 1 (the ANN query) of the small collection beside the large one: a schema per "
                  f"collection (chosen) p50 {r['shared_stage1_p50_ms']:.2f} ms, recall@10 {r['shared_recall@10']:.3f}; "
                  f"one table with a collection column, the filter in the HNSW scan: p50 "
                  f"{x['column_stage1_p50_ms']:.2f} ms, p99 {x['column_stage1_p99_ms']:.2f} ms, recall@10 "
                  f"{x['column_recall@10']:.3f}")
    return records


def add_parser(bsub) -> None:
    co = bsub.add_parser("collections", help="a small collection alone vs beside a large one (p50, recall), "
                         "and on PostgreSQL the collection-column design beside the schema per collection")
    co.add_argument("--backend", nargs="+", choices=["embedded", "postgres"], default=["embedded", "postgres"],
                    help="storage backends, each measured")
    co.add_argument("--small", type=int, default=1000, help="documents of the small collection")
    co.add_argument("--large", type=int, default=100_000, help="documents of the large collection beside it")
    co.add_argument("--dim", type=int, default=128, help="vector dimension")
    co.add_argument("--queries", type=int, default=200, help="queries per side")
    co.add_argument("--json", type=Path, help="also write the records to this file (JSON)")
    co.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    write_json(args.json, run(backends=args.backend, n_small=args.small, n_large=args.large, d=args.dim,
                              nq=args.queries))
    return 0
