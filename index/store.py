"""The document store: SQLite in WAL mode, the source of truth of an index.

Tables:
    meta     key/value: dim, embedding_version, format_version, index settings
    docs     one row per live document; `fid` (INTEGER PRIMARY KEY) is the id the
             vector index uses; `id` the user's string id; slices as JSON with
             images referenced by content hash; slice vectors [m, D] and the
             summary vector as float32 blobs
    blobs    content-addressed image bytes (PNG), shared between documents
    changes  append-only log (seq, op, fid) of every add/delete: the vector index
             snapshot records the last seq it contains and replays the rest on open
    docs_text  SQLite FTS5 over each document's text slices (rowid = fid), kept in
             step with `docs` by triggers (the same transaction as the write): the
             lexical (BM25) side of hybrid search; built from `docs` when an older
             store without it is opened

A write is one transaction: once `commit()` returns (WAL, synchronous=FULL)
the document survives a crash; that commit is the acknowledgement.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.sample import Sample, Slice, decode_image

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    fid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    metadata TEXT NOT NULL,
    slices TEXT NOT NULL,
    n_slices INTEGER NOT NULL,
    vectors BLOB NOT NULL,
    summary BLOB NOT NULL,
    embedding_version TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_source ON docs (json_extract(metadata, '$.source'));
CREATE TABLE IF NOT EXISTS blobs (hash TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'del')),
    fid INTEGER NOT NULL
);
"""

# a document's searchable text: its text slices, in order, one per line
_DOC_TEXT = ("(SELECT group_concat(json_extract(value, '$.text'), char(10)) FROM json_each({slices})"
             " WHERE json_extract(value, '$.type') = 'text')")
LEXICAL_SCHEMA = (  # statements, in order
    "CREATE VIRTUAL TABLE docs_text USING fts5(text, tokenize = 'unicode61 remove_diacritics 2')",
    "CREATE TRIGGER docs_text_add AFTER INSERT ON docs BEGIN INSERT INTO docs_text (rowid, text)"
    f" VALUES (NEW.fid, {_DOC_TEXT.format(slices='NEW.slices')}); END",
    "CREATE TRIGGER docs_text_del AFTER DELETE ON docs BEGIN DELETE FROM docs_text WHERE rowid = OLD.fid; END",
)
_FILL_TEXT = f"INSERT INTO docs_text (rowid, text) SELECT fid, {_DOC_TEXT.format(slices='slices')} FROM docs"
MAX_QUERY_TERMS = 64
_TERM = re.compile(r"[^\W_]+")  # what FTS5's unicode61 tokenizer keeps: runs of letters and digits


def query_terms(text: str) -> list[str]:
    """The distinct terms of a lexical query, in order (at most MAX_QUERY_TERMS)."""
    out: list[str] = []
    for t in _TERM.findall(text.lower()):
        if t not in out:
            out.append(t)
    return out[:MAX_QUERY_TERMS]


@dataclass
class StoredDocument:
    id: str
    fid: int
    slices: list[dict[str, Any]]  # {"type": "text", "text"} | {"type": "image", "hash"}
    metadata: dict[str, Any]
    vectors: np.ndarray  # [m, D]
    summary: np.ndarray  # [D]
    embedding_version: str
    images: dict[str, bytes] = field(default_factory=dict)

    def to_sample(self) -> Sample:
        return stored_sample(self.id, self.slices, self.metadata, self.images.__getitem__)


def stored_sample(doc_id: str, slices: list[dict[str, Any]], metadata: dict[str, Any],
                  blob: Callable[[str], bytes]) -> Sample:
    """A stored document as a Sample: its images decoded, each keeping its stored PNG bytes
    (so writing it again does not encode it again)."""
    out = []
    for s in slices:
        if s["type"] == "text":
            out.append(Slice.of_text(s["text"]))
        else:
            data = blob(s["hash"])
            out.append(Slice("image", image=decode_image(data, "stored image", charge=False), _png=data))
    return Sample(out, id=doc_id, metadata=metadata)


class IndexRefused(ValueError):
    """A request the index refuses (wrong dimension, other embedding version, bad id, a
    database it cannot use)."""


class StoreUnavailable(RuntimeError):
    """The store's files changed under the process: no write is accepted (the server: 503)."""


def blob_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slice_rows(sample: Sample, put_blob: Callable[[str, bytes], object]) -> list[dict[str, Any]]:
    """A sample's slices as stored: texts inline, images by the hash of their PNG bytes
    (`put_blob(hash, bytes)` stores each, content-addressed). Both backends' rows."""
    rows: list[dict[str, Any]] = []
    for s in sample.slices:
        if s.type == "text":
            rows.append({"type": "text", "text": s.text})
        else:
            data = s.png()
            h = blob_hash(data)
            put_blob(h, data)
            rows.append({"type": "image", "hash": h})
    return rows


def apply_write(docs, replace: bool, delete_ids: Sequence[str], metadata_updates: dict[str, dict[str, Any]] | None,
                delete: Callable[[str], int | None], insert: Callable[[Any], tuple[int, np.ndarray]],
                set_metadata: Callable[[str, dict[str, Any]], bool]) -> tuple[list[tuple[int, np.ndarray]], list[int]]:
    """The body of one write transaction, for both backends: delete `delete_ids` (KeyError for an
    unknown one), insert `docs` (an existing id deleted first with `replace`), then replace the
    metadata of `metadata_updates` (KeyError for an unknown id). Returns (added, deleted)."""
    added: list[tuple[int, np.ndarray]] = []
    deleted: list[int] = []
    for doc_id in delete_ids:
        fid = delete(doc_id)
        if fid is None:
            raise KeyError(doc_id)
        deleted.append(fid)
    for doc in docs:
        old = delete(doc[0]) if replace else None
        if old is not None:
            deleted.append(old)
        added.append(insert(doc))
    for doc_id, meta in (metadata_updates or {}).items():
        if not set_metadata(doc_id, meta):
            raise KeyError(doc_id)
    return added, deleted


def load_images(doc: StoredDocument, blob: Callable[[str], bytes]) -> None:
    """Fill `doc.images` (blobs are content-addressed and outlive their documents)."""
    for s in doc.slices:
        if s["type"] == "image" and s["hash"] not in doc.images:
            doc.images[s["hash"]] = blob(s["hash"])


class ThreadConnections:
    """One database connection per thread (`self._local.conn`), closed by `close`."""

    _local: threading.local

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None


class DocumentStore(ThreadConnections):
    """Thread-safe: writes serialise on a lock; each thread reads on its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.write_lock = threading.RLock()
        with self.write_lock:
            c = self.conn
            c.executescript(SCHEMA)
            c.commit()
            self._ensure_lexical(c)
            self._files = self._identities()

    # ---------------------------------------------------------------- files
    def _identities(self) -> dict[str, tuple[int, int] | None]:
        """(device, inode) of the database and its WAL file, None where absent."""
        out: dict[str, tuple[int, int] | None] = {}
        for f in (self.path, Path(f"{self.path}-wal")):
            try:
                st = os.stat(f)
                out[f.name] = (st.st_dev, st.st_ino)
            except FileNotFoundError:
                out[f.name] = None
        return out

    def check_files(self) -> None:
        """StoreUnavailable when the database or its WAL file was deleted or replaced under
        this process (its writes would go to an unlinked file and be lost at the next open):
        checked before every write and by readiness."""
        now = self._identities()
        for name, ident in self._files.items():
            if ident is not None and now.get(name) != ident:
                what = "deleted" if now.get(name) is None else "replaced"
                raise StoreUnavailable(f"{name} was {what} while the store was open: writes are refused "
                                       "so nothing acknowledged is lost; restart the server (README: "
                                       "durability and backups)")

    def _ensure_lexical(self, c: sqlite3.Connection) -> None:
        """The FTS5 table and its triggers; filled from `docs` when they are new (one
        transaction, so a store opened by an older version gains them whole or not at all)."""
        if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'docs_text_del'").fetchone():
            return
        with _immediate(c):
            if not c.execute("SELECT 1 FROM sqlite_master WHERE name = 'docs_text_del'").fetchone():
                c.execute("DROP TRIGGER IF EXISTS docs_text_add")
                c.execute("DROP TABLE IF EXISTS docs_text")
                for stmt in LEXICAL_SCHEMA:
                    c.execute(stmt)
                c.execute(_FILL_TEXT)

    @property
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA foreign_keys=ON")
            self._local.conn = c
        return c

    # ---------------------------------------------------------------- meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, items: dict[str, Any]) -> None:
        with self.write_lock:
            self.check_files()
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            for k, v in items.items():
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, str(v)))
            c.execute("COMMIT")

    # ---------------------------------------------------------------- writes
    def write(
        self,
        docs: Sequence[tuple[str, Sample, np.ndarray, np.ndarray]],
        version: str,
        replace: bool,
        delete_ids: Sequence[str] = (),
        metadata_updates: dict[str, dict[str, Any]] | None = None,
    ) -> tuple[list[tuple[int, np.ndarray]], list[int]]:
        """One transaction: delete `delete_ids`, then insert `docs` (id, sample, vectors, summary),
        then replace the metadata of existing ids (`metadata_updates`: vectors unchanged).

        With `replace`, an existing id is deleted first (upsert); otherwise an
        existing id raises KeyError and nothing is written. Returns the added
        (fid, summary) and the deleted fids, for the vector index.
        """
        with self.write_lock:
            self.check_files()
            with _immediate(self.conn) as c:
                return apply_write(
                    docs, replace, delete_ids, metadata_updates, lambda i: self._delete(c, i),
                    lambda d: self._insert(c, d[0], d[1], d[2], d[3], version),
                    lambda i, meta: c.execute("UPDATE docs SET metadata = ? WHERE id = ?",
                                              (json.dumps(meta, sort_keys=True), i)).rowcount == 1)

    def _insert(self, c: sqlite3.Connection, doc_id: str, sample: Sample, vectors: np.ndarray,
                summary: np.ndarray, version: str) -> tuple[int, np.ndarray]:
        """One new row (KeyError if the id exists) and its change record; (fid, summary)."""
        slices = self._slice_rows(c, sample)
        try:
            cur = c.execute(
                "INSERT INTO docs (id, metadata, slices, n_slices, vectors, summary,"
                " embedding_version, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (doc_id, json.dumps(sample.metadata, sort_keys=True), json.dumps(slices), len(slices),
                 np.ascontiguousarray(vectors, np.float32).tobytes(),
                 np.ascontiguousarray(summary, np.float32).tobytes(), version, time.time()),
            )
        except sqlite3.IntegrityError:
            raise KeyError(doc_id) from None
        fid = int(cur.lastrowid)  # type: ignore[arg-type]
        c.execute("INSERT INTO changes (op, fid) VALUES ('add', ?)", (fid,))
        return fid, np.asarray(summary, np.float32)

    def _delete(self, c: sqlite3.Connection, doc_id: str) -> int | None:
        row = c.execute("SELECT fid FROM docs WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            return None
        c.execute("DELETE FROM docs WHERE fid = ?", (row[0],))
        c.execute("INSERT INTO changes (op, fid) VALUES ('del', ?)", (row[0],))
        return int(row[0])

    def _slice_rows(self, c: sqlite3.Connection, sample: Sample) -> list[dict[str, Any]]:
        return slice_rows(sample, lambda h, data: c.execute("INSERT OR IGNORE INTO blobs (hash, data) VALUES (?, ?)",
                                                            (h, data)))

    def update_vectors(self, rows: Sequence[tuple[str, np.ndarray, np.ndarray]], version: str
                       ) -> tuple[list[tuple[int, np.ndarray]], list[int]]:
        """Re-embedding: new vectors for existing ids (new fids, one transaction)."""
        added, deleted = [], []
        with self.write_lock:
            self.check_files()
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                for doc_id, vectors, summary in rows:
                    old = c.execute("SELECT fid, id, metadata, slices, n_slices, created FROM docs"
                                    " WHERE id = ?", (doc_id,)).fetchone()
                    if old is None:
                        continue
                    c.execute("DELETE FROM docs WHERE fid = ?", (old[0],))
                    c.execute("INSERT INTO changes (op, fid) VALUES ('del', ?)", (old[0],))
                    cur = c.execute(
                        "INSERT INTO docs (id, metadata, slices, n_slices, vectors, summary,"
                        " embedding_version, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (old[1], old[2], old[3], old[4], np.ascontiguousarray(vectors, np.float32).tobytes(),
                         np.ascontiguousarray(summary, np.float32).tobytes(), version, old[5]),
                    )
                    fid = int(cur.lastrowid)  # type: ignore[arg-type]
                    c.execute("INSERT INTO changes (op, fid) VALUES ('add', ?)", (fid,))
                    added.append((fid, np.asarray(summary, np.float32)))
                    deleted.append(int(old[0]))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return added, deleted

    # ---------------------------------------------------------------- reads
    def _row_to_doc(self, row, dim: int, with_images: bool) -> StoredDocument:
        fid, doc_id, metadata, slices, n, vectors, summary, version = row
        doc = StoredDocument(
            id=doc_id, fid=fid, slices=json.loads(slices), metadata=json.loads(metadata),
            vectors=np.frombuffer(vectors, np.float32).reshape(n, dim),
            summary=np.frombuffer(summary, np.float32), embedding_version=version,
        )
        if with_images:
            self.load_images(doc)
        return doc

    def load_images(self, doc: StoredDocument) -> None:
        load_images(doc, self.blob)

    _COLS = "fid, id, metadata, slices, n_slices, vectors, summary, embedding_version"

    def get(self, doc_id: str, dim: int, with_images: bool = True) -> StoredDocument | None:
        row = self.conn.execute(f"SELECT {self._COLS} FROM docs WHERE id = ?", (doc_id,)).fetchone()
        return self._row_to_doc(row, dim, with_images) if row else None

    def get_by_ids(self, ids: Sequence[str], dim: int) -> dict[str, StoredDocument]:
        """The stored documents of `ids` that exist, by id (one query per 500)."""
        out: dict[str, StoredDocument] = {}
        ids = list(dict.fromkeys(ids))
        for a in range(0, len(ids), 500):
            chunk = ids[a : a + 500]
            rows = self.conn.execute(f"SELECT {self._COLS} FROM docs WHERE id IN ({','.join('?' * len(chunk))})",
                                     chunk).fetchall()
            for r in rows:
                d = self._row_to_doc(r, dim, False)
                out[d.id] = d
        return out

    def get_by_fids(self, fids: Sequence[int], dim: int, with_images: bool = False) -> dict[int, StoredDocument]:
        out: dict[int, StoredDocument] = {}
        fids = list(fids)
        for a in range(0, len(fids), 500):
            chunk = fids[a : a + 500]
            q = f"SELECT {self._COLS} FROM docs WHERE fid IN ({','.join('?' * len(chunk))})"
            for row in self.conn.execute(q, chunk):
                out[row[0]] = self._row_to_doc(row, dim, with_images)
        return out

    def blob(self, h: str) -> bytes:
        row = self.conn.execute("SELECT data FROM blobs WHERE hash = ?", (h,)).fetchone()
        if row is None:
            raise KeyError(f"image blob {h} missing from the store")
        return row[0]

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def fids(self, version: str | None = None) -> set[int]:
        if version is None:
            return {r[0] for r in self.conn.execute("SELECT fid FROM docs")}
        return {r[0] for r in self.conn.execute("SELECT fid FROM docs WHERE embedding_version = ?", (version,))}

    def ids(self, offset: int = 0, limit: int = 100) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT id FROM docs ORDER BY fid LIMIT ? OFFSET ?",
                                                 (limit, offset))]

    def summaries(self, version: str, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(fids [n], summary vectors [n, D]) of every live document of `version`, in chunks."""
        last = -1
        while True:
            rows = self.conn.execute(
                "SELECT fid, summary FROM docs WHERE fid > ? AND embedding_version = ? ORDER BY fid LIMIT ?",
                (last, version, batch)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield (np.array([r[0] for r in rows], np.int64),
                   np.stack([np.frombuffer(r[1], np.float32) for r in rows]))

    def summaries_of(self, fids: Sequence[int], version: str | None = None) -> dict[int, np.ndarray]:
        out = {}
        fids = list(fids)
        for a in range(0, len(fids), 500):
            chunk = fids[a : a + 500]
            q = f"SELECT fid, summary, embedding_version FROM docs WHERE fid IN ({','.join('?' * len(chunk))})"
            out.update({r[0]: np.frombuffer(r[1], np.float32) for r in self.conn.execute(q, chunk)
                        if version is None or r[2] == version})
        return out

    def samples_with_version_not(self, version: str, limit: int) -> list[Sample]:
        """Documents still to re-embed (slices and metadata only), oldest first."""
        rows = self.conn.execute("SELECT id, slices, metadata FROM docs WHERE embedding_version != ?"
                                 " ORDER BY fid LIMIT ?", (version, limit)).fetchall()
        return [stored_sample(doc_id, json.loads(slices), json.loads(metadata), self.blob)
                for doc_id, slices, metadata in rows]

    def lexical_fids(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT rowid FROM docs_text")}

    def rebuild_lexical(self) -> None:
        """Refill the text index from `docs` (one transaction): the recovery command's part."""
        with self.write_lock, _immediate(self.conn) as c:
            c.execute("DELETE FROM docs_text")
            c.execute(_FILL_TEXT)

    def document_frequencies(self, terms: Sequence[str]) -> dict[str, int]:
        """How many documents' text holds each term (FTS5's own vocabulary: a temporary
        fts5vocab table over the text index; terms as `lexical_tokens` makes them)."""
        if not terms:
            return {}
        self.conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.docs_vocab USING fts5vocab(main, docs_text, row)")
        marks = ",".join("?" * len(terms))
        got = dict(self.conn.execute(f"SELECT term, doc FROM temp.docs_vocab WHERE term IN ({marks})", list(terms)))
        return {t: int(got.get(t, 0)) for t in terms}

    def lexical(self, text: str, limit: int, version: str | None = None,
                allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """(fid, BM25 score) of the documents whose text matches any term of `text`, best
        first (FTS5's bm25, negated so that higher is better); only documents of `version`
        and, when given, of `allowed`."""
        terms = query_terms(text)
        if not terms or limit <= 0:
            return []
        match = " OR ".join(f'"{t}"' for t in terms)
        sql = ("SELECT t.rowid, -bm25(docs_text) FROM docs_text t JOIN docs d ON d.fid = t.rowid"
               " WHERE docs_text MATCH ?" + (" AND d.embedding_version = ?" if version is not None else "")
               + " ORDER BY bm25(docs_text)")
        args: list[Any] = [match] + ([version] if version is not None else [])
        if allowed is None:
            return [(int(f), float(s)) for f, s in self.conn.execute(sql + " LIMIT ?", [*args, limit])]
        out = []
        for f, s in self.conn.execute(sql, args):
            if f in allowed:
                out.append((int(f), float(s)))
                if len(out) == limit:
                    break
        return out

    def last_seq(self) -> int:
        row = self.conn.execute("SELECT MAX(seq) FROM changes").fetchone()
        return int(row[0] or 0)

    def changes_after(self, seq: int) -> list[tuple[int, str, int]]:
        return list(self.conn.execute("SELECT seq, op, fid FROM changes WHERE seq > ? ORDER BY seq", (seq,)))

    def matching_fids(self, filters: dict[str, Any]) -> list[int]:
        """fids whose metadata matches `filters` (model/filters.py): compiled into SQL
        (index/filters.py), each row checked with the reference `filter_matches`."""
        where, args = compile_filter(filters)
        out = []
        for fid, meta in self.conn.execute(f"SELECT fid, metadata FROM docs WHERE {where}", args):
            if filter_matches(json.loads(meta), filters):
                out.append(fid)
        return out

    def count_matching(self, filters: dict[str, Any] | None) -> int:
        return len(self.matching_fids(filters)) if filters else self.count()

    # ---------------------------------------------------------------- sources (index.ingest)
    def source_documents(self, source: str) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
        """(id, slices, metadata) of every document whose metadata `source` is `source`."""
        rows = self.conn.execute(
            "SELECT id, slices, metadata FROM docs WHERE json_extract(metadata, '$.source') = ? ORDER BY fid",
            (source,)).fetchall()
        return [(r[0], json.loads(r[1]), json.loads(r[2])) for r in rows]

    def sources(self) -> dict[str, int]:
        """Every `source` in the store with its number of documents."""
        return dict(self.conn.execute(
            "SELECT json_extract(metadata, '$.source') AS s, COUNT(*) FROM docs WHERE s IS NOT NULL"
            " GROUP BY s").fetchall())

    def existing_ids(self, ids: Sequence[str]) -> dict[str, str | None]:
        """Of `ids`, those in the store -> their `source` (None when they have none)."""
        out: dict[str, str | None] = {}
        ids = list(ids)
        for a in range(0, len(ids), 500):
            chunk = ids[a : a + 500]
            q = (f"SELECT id, json_extract(metadata, '$.source') FROM docs"
                 f" WHERE id IN ({','.join('?' * len(chunk))})")
            out.update({r[0]: r[1] for r in self.conn.execute(q, chunk)})
        return out

    def version_counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT embedding_version, COUNT(*) FROM docs GROUP BY 1").fetchall())



@contextmanager
def _immediate(c: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed when the block ends, rolled back when it raises."""
    c.execute("BEGIN IMMEDIATE")
    try:
        yield c
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise


def compile_filter(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """`filters` as a SQLite WHERE clause (index/filters.py)."""
    from model.filters import parse

    from .filters import sqlite

    return sqlite(parse(filters))


def filter_matches(metadata: dict[str, Any], filters: dict[str, Any]) -> bool:
    """The reference evaluation of a filter on a document's metadata (model/filters.py)."""
    from model.filters import matches, parse

    return matches(parse(filters), metadata)


def slices_equal(stored: list[dict[str, Any]], sample: Sample) -> bool:
    """Whether a stored document's slices are the sample's (texts equal, images byte-equal as stored)."""
    if len(stored) != len(sample.slices):
        return False
    for row, s in zip(stored, sample.slices, strict=True):
        if row["type"] != s.type:
            return False
        if s.type == "text" and row["text"] != s.text:
            return False
        if s.type == "image" and row["hash"] != blob_hash(s.png()):
            return False
    return True


