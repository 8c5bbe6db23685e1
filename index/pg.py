"""PostgreSQL + pgvector: the shared index backend (`DocumentIndex("postgresql://…")`).

API replicas that open the same database serve one durable collection: every
write is one PostgreSQL transaction (the document, its slice vectors, its
summary vector, its text postings for BM25, its metadata as JSONB) and is
acknowledged only after the commit; every read asks the database, so a
document written through one replica is found by the next request to any
other.

`PgStore` has the `DocumentStore` interface (index/store.py), `PgVectors` the
part of `VectorIndex` that search uses: `DocumentIndex` keeps one search path
for both backends (stage 1 candidates, the GA-kernel rerank over the top K',
BM25, the hybrid fusion), so the two rank the same collection the same way
within the ANN's recall.

Tables: `meta` (dim, embedding version, kernel), `docs` (`fid` bigserial, `id`
unique, `metadata` JSONB, `slices` JSONB with images by content hash, slice
vectors as float32 bytes, `summary` as a pgvector `vector(D)` with an HNSW
index for inner product plus its float32 bytes, `embedding_version`,
`n_tokens`), `blobs` (content-addressed PNG bytes), `postings` (term, fid,
term frequency). Lexical scoring is FTS5's BM25 written in SQL (k1 1.2, b 0.75,
IDF log((N - n + 0.5) / (n + 0.5)) floored at 1e-6, document lengths in
tokens), with FTS5's `unicode61 remove_diacritics 2` tokenisation done in
Python. Writers serialise on one transaction-scoped advisory lock, as SQLite
writers do on its write lock: the same id written by two replicas at once
ends as one of the two documents, whole.

Needs PostgreSQL with pgvector ≥ 0.8 (iterative index scans keep a filtered
ANN query from coming back short).
"""

from __future__ import annotations

import json
import re
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from model.filters import parse as parse_filter
from model.sample import Sample

from .filters import postgres as pg_filter
from .store import (
    IndexRefused,
    StoredDocument,
    StoreUnavailable,
    ThreadConnections,
    filter_matches,
    load_images,
    query_terms,
    slice_rows,
    stored_sample,
)

MIN_PGVECTOR = (0, 8)


def ef_search(k: int) -> int:
    """HNSW's candidate list for a top-k query: twice k, at least 100, at most 1,000."""
    return max(100, min(1000, 2 * k))
WRITE_LOCK = 0x5347_5241  # pg_advisory_xact_lock key of every writer ("SGRA")
_TOKEN = re.compile(r"[^\W_]+")
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE IF NOT EXISTS docs (
        fid bigserial PRIMARY KEY,
        id text NOT NULL UNIQUE,
        metadata jsonb NOT NULL,
        slices jsonb NOT NULL,
        n_slices integer NOT NULL,
        vectors bytea NOT NULL,
        summary vector NOT NULL,
        summary_raw bytea NOT NULL,
        embedding_version text NOT NULL,
        n_tokens integer,
        created double precision NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS docs_source ON docs ((metadata ->> 'source'))",
    "CREATE INDEX IF NOT EXISTS docs_version ON docs (embedding_version)",
    "CREATE TABLE IF NOT EXISTS blobs (hash text PRIMARY KEY, data bytea NOT NULL)",
    """CREATE TABLE IF NOT EXISTS postings (
        term text NOT NULL, fid bigint NOT NULL REFERENCES docs (fid) ON DELETE CASCADE, tf integer NOT NULL,
        PRIMARY KEY (term, fid))""",
    "CREATE INDEX IF NOT EXISTS postings_fid ON postings (fid)",
]
BM25 = """
WITH q AS (SELECT unnest(%(terms)s::text[]) AS term),
stats AS (SELECT count(*)::float8 AS n, coalesce(avg(n_tokens), 0)::float8 AS avgdl
          FROM docs WHERE n_tokens IS NOT NULL),
df AS (SELECT p.term, count(*)::float8 AS df FROM postings p JOIN q USING (term) GROUP BY p.term)
SELECT p.fid, sum(greatest(ln((s.n - df.df + 0.5) / (df.df + 0.5)), 1e-6)
                  * p.tf * 2.2 / (p.tf + 1.2 * (0.25 + 0.75 * d.n_tokens / s.avgdl))) AS score
FROM postings p JOIN df USING (term) JOIN docs d ON d.fid = p.fid CROSS JOIN stats s
WHERE %(any_version)s OR d.embedding_version = %(version)s
GROUP BY p.fid ORDER BY score DESC, p.fid
"""


def is_database_url(location: Any) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password (for messages and stats)."""
    u = urlsplit(url)
    if u.password is None:
        return url
    netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
    return urlunsplit(u._replace(netloc=netloc))


def lexical_tokens(text: str) -> list[str]:
    """FTS5's `unicode61 remove_diacritics 2`: case-folded runs of letters and digits, with
    diacritics removed. ASCII text has no diacritics to remove (NFD leaves it as it is, and no
    ASCII character is a combining mark): it skips the per-character walk."""
    if text.isascii():
        return _TOKEN.findall(text.lower())
    folded = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    return _TOKEN.findall(folded)


def lexical_terms(text: str) -> list[str]:
    """The distinct terms of a lexical query as the text index tokenises them, in order."""
    return list(dict.fromkeys(t for q in query_terms(text) for t in lexical_tokens(q)))


def vector_literal(v: np.ndarray) -> str:
    """pgvector's text form, "[0.5, -1.25, …]" (Python's list repr: each float32 as the double
    it is, exactly; pgvector skips the spaces)."""
    return str(np.asarray(v, np.float32).tolist())


class _Rows(list):
    """Rows already fetched, read like a cursor's."""

    def fetchone(self) -> Any:
        return self[0] if self else None

    def fetchall(self) -> list:
        return list(self)


# the collections other than the default (index/collections.py): each in a schema of its own
REGISTRY = """CREATE TABLE IF NOT EXISTS sugar_collections (
    name text PRIMARY KEY, schema text NOT NULL UNIQUE, created double precision NOT NULL)"""
REGISTRY_LOCK = 0x5347_5243  # the registry's writers ("SGRC")


def collection_schema(name: str) -> str:
    """The PostgreSQL schema of a collection: a fixed prefix and a hash of its name (a safe
    identifier whatever the name, and never a name another collection has)."""
    import hashlib

    return "sugar_c_" + hashlib.sha256(name.encode()).hexdigest()[:24]


def write_lock_key(schema: str | None) -> int:
    """The advisory lock of a collection's writers: WRITE_LOCK for the default (public) tables,
    a key derived from the schema's name for the others (collections write in parallel)."""
    if schema is None:
        return WRITE_LOCK
    import hashlib

    return int.from_bytes(hashlib.sha256(schema.encode()).digest()[:7], "big")


class PgStore(ThreadConnections):
    """The `DocumentStore` interface on PostgreSQL; one connection per thread. `schema`: the
    PostgreSQL schema of a collection's tables (index/collections.py; None: the default
    collection's, in `public`), set as each connection's search path."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        import psycopg

        self.url, self.where, self.schema = url, redact(url), schema
        if schema is not None:
            self.where = f"{self.where} (schema {schema})"
        self.lock_key = write_lock_key(schema)
        self._local = threading.local()
        self.write_lock = threading.RLock()  # this process's writers; replicas: the advisory lock
        self.path = self.where
        try:
            c = self.conn
        except psycopg.OperationalError as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise IndexRefused(f"cannot connect to PostgreSQL at {self.where}: {reason}") from None
        self._check_pgvector(c)
        with c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
            if schema is None:
                c.execute("CREATE EXTENSION IF NOT EXISTS vector")
            for stmt in SCHEMA:
                c.execute(stmt)

    def _check_pgvector(self, c) -> None:
        row = c.execute("SELECT default_version, installed_version FROM pg_available_extensions"
                        " WHERE name = 'vector'").fetchone()
        if row is None:
            raise IndexRefused(f"{self.where}: the pgvector extension is not available in this PostgreSQL "
                               "(install pgvector ≥ 0.8, e.g. the pgvector/pgvector image)")
        version = row[1] or row[0]
        if tuple(int(x) for x in re.findall(r"\d+", version)[:2]) < MIN_PGVECTOR:
            raise IndexRefused(f"{self.where}: pgvector {version} is too old (≥ 0.8 needed for iterative "
                               "index scans; ALTER EXTENSION vector UPDATE)")

    @property
    def conn(self):
        import psycopg

        c = getattr(self._local, "conn", None)
        if c is None or c.closed or c.broken:
            # a collection's tables first, pgvector's types from public
            options = {} if self.schema is None else {"options": f"-c search_path={self.schema},public"}
            c = psycopg.connect(self.url, autocommit=True, connect_timeout=10, prepare_threshold=None, **options)
            self._local.conn = c
        return c

    def _read(self, sql: str, args: Any = None) -> _Rows:
        """Run a read and fetch its rows; a connection that broke since its last use (the server
        restarted) is replaced and the read run once more: replicas recover by themselves."""
        import psycopg

        for attempt in (0, 1):
            try:
                cur = self.conn.execute(sql, args)
                return _Rows(cur.fetchall() if cur.description else [])
            except psycopg.OperationalError:
                c = getattr(self._local, "conn", None)
                if attempt or c is None or not (c.broken or c.closed):
                    raise
                self._local.conn = None
        raise AssertionError("unreachable")

    def check_files(self) -> None:
        """The database answers (readiness, and before writes): StoreUnavailable otherwise."""
        import psycopg

        try:
            self._read("SELECT 1")
        except psycopg.Error as e:
            raise StoreUnavailable(f"PostgreSQL at {self.where} is unavailable ({type(e).__name__})") from None

    # ---------------------------------------------------------------- meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._read("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, items: dict[str, Any]) -> None:
        with self.write_lock, self.conn.transaction():
            c = self.conn
            c.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
            for k, v in items.items():
                c.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE"
                          " SET value = EXCLUDED.value", (k, str(v)))
            if "dim" in items:
                self._prepare_vectors(int(items["dim"]))

    def _prepare_vectors(self, dim: int, c=None) -> None:  # noqa: ANN001 - a connection
        """The summary column typed to `dim` and its HNSW index (inner product)."""
        c = c or self.conn
        typed = c.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'docs'::regclass"
                          " AND attname = 'summary'").fetchone()[0]
        if typed != f"vector({dim})":
            c.execute("DROP INDEX IF EXISTS docs_summary_hnsw")
            c.execute(f"ALTER TABLE docs ALTER COLUMN summary TYPE vector({dim})")
        c.execute("CREATE INDEX IF NOT EXISTS docs_summary_hnsw ON docs USING hnsw (summary vector_ip_ops)"
                  " WITH (m = 16, ef_construction = 64)")

    # ---------------------------------------------------------------- writes
    def write(self, docs: Sequence[tuple[str, Sample, np.ndarray, np.ndarray]], version: str, replace: bool,
              delete_ids: Sequence[str] = (), metadata_updates: dict[str, dict[str, Any]] | None = None,
              ) -> tuple[list[tuple[int, np.ndarray]], list[int]]:
        """One transaction, as `DocumentStore.write` (the same semantics as `store.apply_write`),
        in bulk: one DELETE for the ids that go, the new rows' fids drawn from the sequence at
        once, the documents and their BM25 postings sent with COPY."""
        import psycopg

        with self.write_lock:
            self.check_files()  # a connection broken by a restart is replaced before the transaction
            c = self.conn
            try:
                with c.transaction():
                    c.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
                    return self._write_bulk(c, docs, version, replace, delete_ids, metadata_updates)
            except psycopg.OperationalError as e:
                raise StoreUnavailable(f"PostgreSQL at {self.where}: {type(e).__name__}; nothing was written") from None

    def _write_bulk(self, c, docs, version: str, replace: bool, delete_ids: Sequence[str],
                    metadata_updates: dict[str, dict[str, Any]] | None
                    ) -> tuple[list[tuple[int, np.ndarray]], list[int]]:
        deleted: list[int] = []
        if delete_ids:
            gone = dict(c.execute("DELETE FROM docs WHERE id = ANY(%s) RETURNING id, fid",
                                  (list(delete_ids),)).fetchall())
            for doc_id in delete_ids:  # the first unknown id, as apply_write names it
                if doc_id not in gone:
                    raise KeyError(doc_id)
            deleted += [int(gone[i]) for i in dict.fromkeys(delete_ids)]
        ids = [d[0] for d in docs]
        if ids and replace:
            deleted += [int(r[0]) for r in c.execute("DELETE FROM docs WHERE id = ANY(%s) RETURNING fid", (ids,))]
        elif ids:
            taken = {r[0] for r in c.execute("SELECT id FROM docs WHERE id = ANY(%s)", (ids,))}
            for doc_id in ids:
                if doc_id in taken:
                    raise KeyError(doc_id)
        added: list[tuple[int, np.ndarray]] = []
        if docs:
            fids = [int(r[0]) for r in c.execute("SELECT nextval(pg_get_serial_sequence('docs', 'fid'))"
                                                 " FROM generate_series(1, %s)", (len(docs),))]
            blobs: dict[str, bytes] = {}
            rows, postings, now = [], [], time.time()
            for fid, (doc_id, sample, vectors, summary) in zip(fids, docs, strict=True):
                slices = slice_rows(sample, blobs.__setitem__)
                tokens = lexical_tokens("\n".join(s["text"] for s in slices if s["type"] == "text"))
                summary = np.asarray(summary, np.float32)
                rows.append((fid, doc_id, json.dumps(sample.metadata, sort_keys=True), json.dumps(slices), len(slices),
                             np.ascontiguousarray(vectors, np.float32).tobytes(), vector_literal(summary),
                             summary.tobytes(), version, len(tokens), now))
                postings += [(t, fid, n) for t, n in Counter(tokens).items()]
                added.append((fid, summary))
            if blobs:
                with c.cursor() as cur:
                    cur.executemany("INSERT INTO blobs (hash, data) VALUES (%s, %s) ON CONFLICT (hash) DO NOTHING",
                                    list(blobs.items()))
            with c.cursor() as cur:
                with cur.copy("COPY docs (fid, id, metadata, slices, n_slices, vectors, summary, summary_raw,"
                              " embedding_version, n_tokens, created) FROM STDIN") as cp:
                    for row in rows:
                        cp.write_row(row)
                if postings:
                    with cur.copy("COPY postings (term, fid, tf) FROM STDIN") as cp:
                        for posting in postings:
                            cp.write_row(posting)
        for doc_id, meta in (metadata_updates or {}).items():
            if c.execute("UPDATE docs SET metadata = %s::jsonb WHERE id = %s",
                         (json.dumps(meta, sort_keys=True), doc_id)).rowcount != 1:
                raise KeyError(doc_id)
        return added, deleted

    def _insert(self, c, doc_id: str, sample: Sample, vectors: np.ndarray, summary: np.ndarray,
                version: str, created: float | None = None, slices: list | None = None,
                metadata: str | None = None) -> tuple[int, np.ndarray]:
        import psycopg

        slices = slices if slices is not None else self._slice_rows(c, sample)
        text = "\n".join(s["text"] for s in slices if s["type"] == "text")
        tokens = lexical_tokens(text)
        summary = np.asarray(summary, np.float32)
        try:
            with c.transaction():  # a savepoint: the unique violation becomes a KeyError
                fid = c.execute(
                    "INSERT INTO docs (id, metadata, slices, n_slices, vectors, summary, summary_raw,"
                    " embedding_version, n_tokens, created) VALUES (%s, %s::jsonb, %s::jsonb, %s, %s, %s::vector,"
                    " %s, %s, %s, %s) RETURNING fid",
                    (doc_id, metadata if metadata is not None else json.dumps(sample.metadata, sort_keys=True),
                     json.dumps(slices), len(slices), np.ascontiguousarray(vectors, np.float32).tobytes(),
                     vector_literal(summary), summary.tobytes(), version, len(tokens),
                     created if created is not None else time.time())).fetchone()[0]
        except psycopg.errors.UniqueViolation:
            raise KeyError(doc_id) from None
        tf = Counter(tokens)
        if tf:
            with c.cursor() as cur:
                cur.executemany("INSERT INTO postings (term, fid, tf) VALUES (%s, %s, %s)",
                                [(t, fid, n) for t, n in tf.items()])
        return int(fid), summary

    def _delete(self, c, doc_id: str) -> int | None:
        row = c.execute("DELETE FROM docs WHERE id = %s RETURNING fid", (doc_id,)).fetchone()
        return int(row[0]) if row else None

    def _slice_rows(self, c, sample: Sample) -> list[dict[str, Any]]:
        return slice_rows(sample, lambda h, data: c.execute(
            "INSERT INTO blobs (hash, data) VALUES (%s, %s) ON CONFLICT (hash) DO NOTHING", (h, data)))

    def update_vectors(self, rows: Sequence[tuple[str, np.ndarray, np.ndarray]], version: str
                       ) -> tuple[list[tuple[int, np.ndarray]], list[int]]:
        """Re-embedding: new vectors for existing ids (new fids, one transaction)."""
        added, deleted = [], []
        with self.write_lock:
            c = self.conn
            with c.transaction():
                c.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
                for doc_id, vectors, summary in rows:
                    old = c.execute("DELETE FROM docs WHERE id = %s RETURNING fid, metadata::text, slices, created",
                                    (doc_id,)).fetchone()
                    if old is None:
                        continue
                    fid, _ = self._insert(c, doc_id, Sample([]), vectors, summary, version, created=old[3],
                                          slices=old[2], metadata=old[1])
                    added.append((fid, np.asarray(summary, np.float32)))
                    deleted.append(int(old[0]))
        return added, deleted

    # ---------------------------------------------------------------- reads
    _COLS = "fid, id, metadata, slices, n_slices, vectors, summary_raw, embedding_version"

    def _row_to_doc(self, row, dim: int, with_images: bool) -> StoredDocument:
        fid, doc_id, metadata, slices, n, vectors, summary, version = row
        doc = StoredDocument(id=doc_id, fid=int(fid), slices=slices, metadata=metadata,
                             vectors=np.frombuffer(vectors, np.float32).reshape(n, dim),
                             summary=np.frombuffer(summary, np.float32), embedding_version=version)
        if with_images:
            self.load_images(doc)
        return doc

    def load_images(self, doc: StoredDocument) -> None:
        load_images(doc, self.blob)

    def get(self, doc_id: str, dim: int, with_images: bool = True) -> StoredDocument | None:
        row = self._read(f"SELECT {self._COLS} FROM docs WHERE id = %s", (doc_id,)).fetchone()
        return self._row_to_doc(row, dim, with_images) if row else None

    def get_by_ids(self, ids: Sequence[str], dim: int) -> dict[str, StoredDocument]:
        rows = self._read(f"SELECT {self._COLS} FROM docs WHERE id = ANY(%s)", (list(dict.fromkeys(ids)),))
        return {r[1]: self._row_to_doc(r, dim, False) for r in rows}

    def get_by_fids(self, fids: Sequence[int], dim: int, with_images: bool = False) -> dict[int, StoredDocument]:
        rows = self._read(f"SELECT {self._COLS} FROM docs WHERE fid = ANY(%s)", (list(map(int, fids)),))
        return {int(r[0]): self._row_to_doc(r, dim, with_images) for r in rows}

    def blob(self, h: str) -> bytes:
        row = self._read("SELECT data FROM blobs WHERE hash = %s", (h,)).fetchone()
        if row is None:
            raise KeyError(f"image blob {h} missing from the store")
        return bytes(row[0])

    def count(self) -> int:
        return int(self._read("SELECT count(*) FROM docs").fetchone()[0])

    def fids(self, version: str | None = None) -> set[int]:
        if version is None:
            return {int(r[0]) for r in self._read("SELECT fid FROM docs")}
        return {int(r[0]) for r in self._read("SELECT fid FROM docs WHERE embedding_version = %s", (version,))}

    def ids(self, offset: int = 0, limit: int = 100) -> list[str]:
        return [r[0] for r in self._read("SELECT id FROM docs ORDER BY fid LIMIT %s OFFSET %s",
                                                 (limit, offset))]

    def summaries_of(self, fids: Sequence[int], version: str | None = None) -> dict[int, np.ndarray]:
        rows = self._read("SELECT fid, summary_raw, embedding_version FROM docs WHERE fid = ANY(%s)",
                                 (list(map(int, fids)),))
        return {int(r[0]): np.frombuffer(r[1], np.float32) for r in rows if version is None or r[2] == version}

    def samples_with_version_not(self, version: str, limit: int) -> list[Sample]:
        rows = self._read("SELECT id, slices, metadata FROM docs WHERE embedding_version <> %s"
                                 " ORDER BY fid LIMIT %s", (version, limit)).fetchall()
        return [stored_sample(doc_id, slices, metadata, self.blob) for doc_id, slices, metadata in rows]

    def lexical_fids(self) -> set[int]:
        return {int(r[0]) for r in self._read("SELECT fid FROM docs WHERE n_tokens IS NOT NULL")}

    def rebuild_lexical(self) -> None:
        """Recompute every document's postings from its slices (one transaction)."""
        with self.write_lock, self.conn.transaction():
            c = self.conn
            c.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
            c.execute("DELETE FROM postings")
            for fid, slices in c.execute("SELECT fid, slices FROM docs").fetchall():
                tokens = lexical_tokens("\n".join(s["text"] for s in slices if s["type"] == "text"))
                c.execute("UPDATE docs SET n_tokens = %s WHERE fid = %s", (len(tokens), fid))
                with c.cursor() as cur:
                    cur.executemany("INSERT INTO postings (term, fid, tf) VALUES (%s, %s, %s)",
                                    [(t, fid, n) for t, n in Counter(tokens).items()])

    def document_frequencies(self, terms: Sequence[str]) -> dict[str, int]:
        """How many documents' text holds each term (the BM25 postings)."""
        if not terms:
            return {}
        got = dict(self._read("SELECT term, count(*) FROM postings WHERE term = ANY(%s) GROUP BY term",
                              (list(terms),)).fetchall())
        return {t: int(got.get(t, 0)) for t in terms}

    def lexical(self, text: str, limit: int, version: str | None = None,
                allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """(fid, BM25) best first, as `DocumentStore.lexical` (the same formula, in SQL)."""
        terms = lexical_terms(text)
        if not terms or limit <= 0:
            return []
        rows = self._read(BM25 + ("" if allowed is not None else " LIMIT %(limit)s"),
                                 {"terms": terms, "version": version or "", "any_version": version is None,
                                  "limit": limit})
        out = []
        for f, s in rows:
            if allowed is None or f in allowed:
                out.append((int(f), float(s)))
                if len(out) == limit:
                    break
        return out

    def matching_fids(self, filters: dict[str, Any]) -> list[int]:
        """fids whose metadata matches `filters` (model/filters.py): compiled into SQL
        (index/filters.py), each row checked with the reference `filter_matches`."""
        where, args = pg_filter(parse_filter(filters))
        return [int(f) for f, meta in self._read(f"SELECT fid, metadata FROM docs WHERE {where}", args)
                if filter_matches(meta, filters)]

    def count_matching(self, filters: dict[str, Any] | None) -> int:
        return len(self.matching_fids(filters)) if filters else self.count()

    def source_documents(self, source: str) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
        rows = self._read("SELECT id, slices, metadata FROM docs WHERE metadata ->> 'source' = %s"
                                 " ORDER BY fid", (source,)).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def sources(self) -> dict[str, int]:
        return dict(self._read("SELECT metadata ->> 'source' AS s, count(*) FROM docs"
                                      " WHERE metadata ? 'source' AND jsonb_typeof(metadata -> 'source') = 'string'"
                                      " GROUP BY s").fetchall())

    def existing_ids(self, ids: Sequence[str]) -> dict[str, str | None]:
        rows = self._read("SELECT id, metadata ->> 'source' FROM docs WHERE id = ANY(%s)", (list(ids),))
        return {r[0]: r[1] for r in rows}

    def version_counts(self) -> dict[str, int]:
        return dict(self._read("SELECT embedding_version, count(*) FROM docs GROUP BY 1").fetchall())

    # ---------------------------------------------------------------- bulk loads
    def _vector_index_valid(self) -> bool | None:
        """Whether the collection's HNSW index is valid; None: there is none."""
        row = self._read("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                         " WHERE c.relname = 'docs_summary_hnsw' AND c.relnamespace = current_schema()::regnamespace"
                         ).fetchone()
        return None if row is None else bool(row[0])

    def _has_vector_index(self) -> bool:
        return self._vector_index_valid() is not None

    @contextmanager
    def _bulk_session(self) -> Iterator[bool]:
        """A connection of its own holding the collection's bulk-load lock (a session advisory
        lock: released when the connection ends, a killed process included) while the block
        runs; yields False, holding nothing, where another process's load holds it."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as lock:
            key = write_lock_key(f"{self.schema}#bulk-load")
            row = lock.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            held = bool(row and row[0])
            try:
                yield held
            finally:
                if held:
                    lock.execute("SELECT pg_advisory_unlock(%s)", (key,))

    @contextmanager
    def bulk_load(self, dim: int) -> Iterator[bool]:
        """Around a large ingest into an empty collection: the HNSW index is dropped first and
        built once at the end (pgvector's CREATE INDEX, in memory, with parallel workers) rather
        than one graph insert per row, which is most of a row's cost. Searches meanwhile scan
        exactly (right answers, slower). A process that opens the collection during the load
        leaves the index to it; one that opens it after the loader died builds it
        (`ensure_vector_index`). Yields whether the build was deferred: False where the
        collection already holds documents or another load is running (rows go in one by one)."""
        with self._bulk_session() as held:
            deferred = False
            if held:
                with self.write_lock, self.conn.transaction():
                    self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
                    if self.conn.execute("SELECT NOT EXISTS (SELECT 1 FROM docs)").fetchone()[0]:
                        self.conn.execute("DROP INDEX IF EXISTS docs_summary_hnsw")
                        deferred = True
            try:
                yield deferred
            finally:
                if deferred:
                    self._build_vector_index(dim)

    def _build_vector_index(self, dim: int, again: bool = False) -> None:
        """The HNSW index built in one transaction under the writers' lock; `again`: the one
        there dropped first."""
        with self.write_lock, self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
            self.conn.execute("SET LOCAL maintenance_work_mem = '1GB'")  # the graph in memory: no spill
            if again:
                self.conn.execute("DROP INDEX IF EXISTS docs_summary_hnsw")
            self._prepare_vectors(dim)

    def ensure_vector_index(self, dim: int) -> bool:
        """The HNSW index built where a bulk load died before building it (none running now);
        True when it was missing and is built."""
        if self._has_vector_index():
            return False
        with self._bulk_session() as held:
            if not held:  # a live load builds it at its end
                return False
            self._build_vector_index(dim)
            return True

    def reindex(self, dim: int) -> None:
        """The HNSW index built again (the recovery command's part)."""
        self._build_vector_index(dim, again=True)

    def problems(self) -> list[str]:
        """What `verify` checks on the database beyond the shared checks: the HNSW index is
        there and valid, and every document's postings add up to its token count."""
        out = []
        if not self._vector_index_valid():
            with self._bulk_session() as idle:
                out.append("the HNSW index on the summary vectors is missing or invalid (sugar index rebuild)" if idle
                           else "the HNSW index on the summary vectors is being built by a bulk load in progress")
        bad = self._read("SELECT count(*) FROM docs d WHERE d.n_tokens IS DISTINCT FROM"
                         " (SELECT coalesce(sum(tf), 0) FROM postings p WHERE p.fid = d.fid)").fetchone()[0]
        if bad:
            out.append(f"text postings disagree with {bad} documents (sugar index rebuild refills them)")
        return out

    def size_bytes(self) -> int:
        return int(self._read(
            "SELECT sum(pg_total_relation_size(t::regclass)) FROM unnest(ARRAY['docs', 'blobs', 'postings', 'meta']) t"
        ).fetchone()[0] or 0)


class PgVectors:
    """Stage 1 on the database: the HNSW index over the summaries of the current embedding version."""

    kind = "hnsw (pgvector)"
    tombstones: set[int] = set()

    def __init__(self, store: PgStore, version) -> None:
        self.store, self.version = store, version  # version(): the index's current embedding version

    @property
    def count(self) -> int:
        return int(self.store._read("SELECT count(*) FROM docs WHERE embedding_version = %s",
                                           (self.version(),)).fetchone()[0])

    def ids(self) -> set[int]:
        return self.store.fids(self.version())

    def search(self, queries: np.ndarray, k: int, where: tuple[str, list[Any]] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """([1, k] inner products, [1, k] fids; -1 where fewer), like FAISS. `where`: a metadata
        filter's SQL (index/filters.py) inside the HNSW scan, which pgvector's iterative scan
        keeps going until k rows pass it."""
        self.store.check_files()  # a connection broken by a restart is replaced first
        c = self.store.conn
        clause, args = where if where is not None else ("true", [])
        with c.transaction():
            # the candidate list: recall@10 0.934 at 100k clustered vectors with 40, ≥ 0.95 wanted
            c.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef_search(k)),))
            c.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            rows = c.execute(
                "SELECT fid, ip FROM (SELECT fid, -(summary <#> %s::vector) AS ip FROM docs"
                f" WHERE embedding_version = %s AND {clause} ORDER BY summary <#> %s::vector LIMIT %s) t"
                " ORDER BY ip DESC",
                (vector_literal(queries[0]), self.version(), *args, vector_literal(queries[0]), k)).fetchall()
        scores = np.full((1, k), -np.inf, np.float32)
        fids = np.full((1, k), -1, np.int64)
        for i, (f, s) in enumerate(rows):
            fids[0, i], scores[0, i] = f, s
        return scores, fids

    # the database applies writes itself: nothing to mirror, snapshot or rebuild
    def add(self, fids: np.ndarray, vectors: np.ndarray) -> None:
        pass

    def remove(self, fids: list[int]) -> None:
        pass

    def needs_rebuild(self) -> bool:
        return False

    def save(self, directory, seq: int) -> None:
        pass
