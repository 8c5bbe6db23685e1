"""`sugar bench …`: benchmarks that print ratios measured side by side in one run. One module
per benchmark, each adding its own parser and a keyword-only `run`."""

from __future__ import annotations

from . import collections, index, ingest, kernels, rerank, server, train

BENCHES = (kernels, index, ingest, server, collections, train, rerank)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (ratios measured side by side in one run)")
    bsub = p.add_subparsers(dest="bench", required=True)
    for bench in BENCHES:
        bench.add_parser(bsub)
