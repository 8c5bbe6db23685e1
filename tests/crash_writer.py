"""Ingest documents forever, printing each id once its add() returned (the ack).

The crash test kills this process with SIGKILL in the middle of the ingest.
"""

from __future__ import annotations

import sys

import numpy as np

from index import DocumentIndex, DocumentVectors
from model.sample import Sample
from tests.conftest import make_image


def main(path: str) -> None:
    idx = DocumentIndex(path, dim=16, embedding_version="v1", snapshot_every=37)
    rng = np.random.default_rng(0)
    i = 0
    while True:
        v = rng.normal(size=(2, 16)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        g = v.sum(0) / np.linalg.norm(v.sum(0))
        s = Sample.build([f"crash doc {i}", make_image(i % 7)], id=f"c{i}", metadata={"i": i})
        idx.add([(s, DocumentVectors(v, g.astype(np.float32)))], version="v1")
        if i % 10 == 3:
            idx.delete([f"c{i - 1}"])
            print(f"-c{i - 1}", flush=True)
        print(f"+c{i}", flush=True)
        i += 1


if __name__ == "__main__":
    main(sys.argv[1])
