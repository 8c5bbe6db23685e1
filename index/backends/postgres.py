"""The shared backend: PostgreSQL + pgvector (index/pg.py). The database is the index: every
write is one transaction there, stage 1 is pgvector's HNSW scan, and there is nothing to load,
replay or snapshot in the process; replicas that open the same database see each other's
writes at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ..pg import (
    REGISTRY,
    REGISTRY_LOCK,
    SCHEMA,
    PgStore,
    PgVectors,
    collection_schema,
    redact,
)
from ..store import IndexRefused, ThreadConnections


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
        if not inspect:  # a bulk load killed before it built the HNSW index: build it now
            self.store.ensure_vector_index(dim)

    def bulk_load(self, dim: int) -> AbstractContextManager[bool]:
        return self.store.bulk_load(dim)

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

    def filtered_candidates(self, q: np.ndarray, filters: dict[str, Any], k: int) -> list[tuple[int, float]] | None:
        """Stage 1 with the filter inside pgvector's HNSW scan (iterative: k rows that pass it)."""
        from model.filters import parse

        from ..filters import postgres

        scores, fids = self.vectors.search(q[None, :], k, postgres(parse(filters)))
        return [(int(f), float(s)) for f, s in zip(fids[0], scores[0], strict=True) if f >= 0]

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


class PostgresCatalog(ThreadConnections):
    """The collections of a PostgreSQL index: `default` is the `public` schema's tables (today's
    index, unchanged), every other one a schema of its own (`pg.collection_schema`), listed in
    `public.sugar_collections`. Creating one (the registry row, the schema, its tables, its
    meta, its HNSW index) and deleting one (the row and `DROP SCHEMA ... CASCADE`) are each one
    transaction: after a crash a collection is all there or all gone, and every replica that
    opens the database sees the same collections at once."""

    kind = "postgres"

    def __init__(self, url: str) -> None:
        import psycopg

        self.url, self.where = url, redact(url)
        self._local = threading.local()
        try:
            c = self.conn
        except psycopg.OperationalError as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise IndexRefused(f"cannot connect to PostgreSQL at {self.where}: {reason}") from None
        with c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (REGISTRY_LOCK,))
            c.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")  # its types serve every schema
            c.execute(REGISTRY)

    @property
    def conn(self) -> Any:
        import psycopg

        c = getattr(self._local, "conn", None)
        if c is None or c.closed or c.broken:
            c = psycopg.connect(self.url, autocommit=True, connect_timeout=10, prepare_threshold=None)
            self._local.conn = c
        return c

    def names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM sugar_collections ORDER BY name").fetchall()]

    def exists(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sugar_collections WHERE name = %s", (name,)).fetchone() is not None

    def open(self, name: str | None) -> PostgresBackend:
        if name is None:
            return PostgresBackend(self.url)
        row = self.conn.execute("SELECT schema FROM sugar_collections WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise FileNotFoundError(name)
        return PostgresBackend(self.url, row[0])

    def create(self, name: str, meta: dict[str, Any], dim: int) -> None:
        """One transaction: the registry row, the schema, its tables and meta, the HNSW index."""
        schema = collection_schema(name)
        c = self.conn
        with c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (REGISTRY_LOCK,))
            if c.execute("SELECT 1 FROM sugar_collections WHERE name = %s", (name,)).fetchone():
                raise FileExistsError(name)
            c.execute("INSERT INTO sugar_collections (name, schema, created) VALUES (%s, %s, %s)",
                      (name, schema, time.time()))
            c.execute(f"CREATE SCHEMA {schema}")
            c.execute(f"SET LOCAL search_path = {schema}, public")
            for stmt in SCHEMA:
                c.execute(stmt)
            for k, v in meta.items():
                c.execute("INSERT INTO meta (key, value) VALUES (%s, %s)", (k, str(v)))
            c.execute(f"ALTER TABLE docs ALTER COLUMN summary TYPE vector({int(dim)})")
            c.execute("CREATE INDEX docs_summary_hnsw ON docs USING hnsw (summary vector_ip_ops)"
                      " WITH (m = 16, ef_construction = 64)")

    def delete(self, name: str) -> None:
        c = self.conn
        with c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (REGISTRY_LOCK,))
            row = c.execute("DELETE FROM sugar_collections WHERE name = %s RETURNING schema", (name,)).fetchone()
            if row is None:
                raise FileNotFoundError(name)
            c.execute(f"DROP SCHEMA {row[0]} CASCADE")
