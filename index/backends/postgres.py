"""The shared backend: PostgreSQL + pgvector (index/pg.py). The database is the index: every
write is one transaction there, stage 1 is pgvector's HNSW scan, and there is nothing to load,
replay or snapshot in the process; replicas that open the same database see each other's
writes at once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np

from ..pg import PgStore, PgVectors
from ..store import IndexRefused


class PostgresBackend:
    kind = "postgres"

    def __init__(self, url: str, schema: str | None = None) -> None:
        self.store = PgStore(url, schema)
        self.where = self.store.where  # the URL without its password
        self.path = Path(".")  # no directory of its own
        self.vectors: PgVectors  # set by open_vectors

    def opening(self) -> AbstractContextManager[None]:
        return nullcontext()  # connection errors are already IndexRefused (PgStore)

    def open_vectors(self, dim: int, version: str, repair: bool, inspect: bool) -> None:
        self._version = version
        self.vectors = PgVectors(self.store, lambda: self._version)

    def apply(self, added: list[tuple[int, np.ndarray]], deleted: list[int]) -> None:
        return None  # the database applied the write itself

    def snapshot(self) -> None:
        return None  # the database is the index: nothing to snapshot

    def rebuild(self, dim: int, version: str, index_type: str | None) -> None:
        self.store.reindex(dim)

    def switch_version(self, dim: int, version: str, current_dim: int) -> None:
        if dim != current_dim and self.store.count():
            raise IndexRefused(f"{self.where}: re-embedding into another dimension ({current_dim} -> {dim}) is not "
                               "supported on PostgreSQL: export, and import into a new database")
        self._version = version

    def size_bytes(self) -> int:
        return self.store.size_bytes()

    def problems(self, sample: Sequence[int]) -> list[str]:
        return self.store.problems()

    def summaries(self, version: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        fids = sorted(self.store.fids(version))
        for a in range(0, len(fids), 10_000):
            got = self.store.summaries_of(fids[a : a + 10_000], version)
            keys = np.array(sorted(got), np.int64)
            yield keys, np.stack([got[int(f)] for f in keys]) if len(keys) else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        self.store.close()
