"""`DocumentIndex`: a durable index of interleaved documents, two-stage retrieval, on one
storage backend (index/backends/: the embedded SQLite + FAISS directory, or PostgreSQL +
pgvector); the index itself has no backend branches.

Layout of an embedded index directory (index/backends/embedded.py):
    store.sqlite (+ -wal, -shm)   the document store: the source of truth
    faiss.index, faiss.meta.json  the latest vector snapshot (checksum, change seq)

Invariants:
- a write returns only after the store committed it (durable); the vector
  index is updated in memory after the commit, and snapshotted every
  `snapshot_every` writes and on close — never rewritten per add;
- on open, a valid snapshot is loaded and every change the store committed
  after it is replayed; a missing, truncated or corrupt snapshot is rebuilt
  from the store (logged);
- one id space: FAISS ids are the store's `fid`s; an index records its
  dimension and embedding version and refuses vectors of another;
- writes are serialised (store lock) and each holds that lock from the store
  commit through the FAISS update and any snapshot it triggers, so FAISS
  applies changes in commit order and a snapshot's sequence number never
  covers a change FAISS has not applied; searches run in parallel.

Search: stage 1 FAISS top-K' on the summary vectors g; stage 2 rerank of the
K' candidates by the GA-kernel similarity over slice vectors (model.kernels),
with metadata filters (equality, or `{"$prefix": ...}` on strings) applied exactly (an exact scan over the
matching documents when the filter is selective).

Modes (`search(mode=...)`): "dense" is the above; "lexical" ranks by BM25 over the documents'
text slices (the store's FTS5 table); "hybrid" takes the union of the dense top-K' and the
lexical top-K', scores every candidate both ways (GA kernel and BM25) and fuses the scores
(relative score fusion, `_fuse`): exact names, ids and rare words that a dense embedding blurs
are found, and the dense side still ranks what words cannot.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.kernels import KernelSettings, pad_sequences
from model.sample import Sample
from model.search import LEXICAL_WEIGHT, SEARCH_MODES, SearchParams

from .backends import Backend, Store, Vectors, open_backend
from .pg import lexical_terms
from .store import IndexRefused, StoredDocument
from .vectors import VectorSettings

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# group_by looks deeper (4x the candidates each time) until k groups are found, up to this many
MAX_GROUP_CANDIDATES = 4096


@dataclass
class Hit:
    """A search result with the stored document it was scored on (read once, in the
    search itself: callers never re-read it, and a document deleted after the search
    is still the one that was ranked)."""

    id: str
    score: float  # what the hits are ranked by: the mode's score
    ann_score: float  # summary-vector inner product (stage 1)
    metadata: dict[str, Any]
    fid: int
    document: StoredDocument | None = field(default=None, repr=False, compare=False)
    # hybrid and lexical modes: the two sides' own scores (None: not scored / no term matched)
    dense_score: float | None = None
    lexical_score: float | None = None
    collection: str | None = None  # the collection it was found in (a search of several)
    explanation: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # /retrieve explain

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "score": self.score, "ann_score": self.ann_score, "metadata": self.metadata}
        for key in ("dense_score", "lexical_score"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class DocumentVectors:
    """One document's vectors: slices [m, D], summary [D]."""

    vectors: np.ndarray
    summary: np.ndarray


class DocumentIndex:
    def __init__(
        self,
        path: str | Path | None,
        dim: int | None = None,
        embedding_version: str | None = None,
        settings: VectorSettings | None = None,
        kernel: KernelSettings | None = None,
        snapshot_every: int = 1000,
        repair: bool = False,
        inspect: bool = False,
        backend: Backend | None = None,
    ) -> None:
        """`path`: an index directory (SQLite + FAISS), or a `postgresql://` URL (index/pg.py:
        one collection shared by every process that opens it).
        `repair`: accept a store behind its snapshot and rebuild (the recovery command).
        `inspect`: open as found, without rebuilding a snapshot that disagrees with the
        store, so `verify` can report it (the server and writers rebuild instead).
        `backend`: an opened backend instead of `path`'s (a collection: index/collections.py)."""
        self.settings = settings or VectorSettings()
        self.snapshot_every = snapshot_every
        self._writes_since_snapshot = 0
        self._maintenance = threading.Lock()
        if backend is None:
            if path is None:
                raise IndexRefused("an index needs a directory, a database URL or a backend")
            backend = open_backend(path, self.settings)
        self.backend: Backend = backend
        self.where, self.path = self.backend.where, self.backend.path
        with self.backend.opening():
            self._init_meta(dim, embedding_version, kernel)
            self.backend.open_vectors(self.dim, self.embedding_version, repair, inspect)

    @property
    def store(self) -> Store:
        return self.backend.store

    @property
    def vectors(self) -> Vectors:
        return self.backend.vectors

    # ------------------------------------------------------------ open
    @staticmethod
    def initial_meta(dim: int, version: str | None, kernel: KernelSettings | None,
                     settings: VectorSettings) -> dict[str, Any]:
        """What a new index records about itself (a new collection is created with it)."""
        k = kernel or KernelSettings()
        return {"dim": dim, "embedding_version": version or "", "format_version": FORMAT_VERSION,
                "index_type": settings.type, "kernel": json.dumps(k.__dict__)}

    def _init_meta(self, dim: int | None, version: str | None, kernel: KernelSettings | None) -> None:
        s = self.store
        stored_dim = s.get_meta("dim")
        if stored_dim is None:
            if dim is None:
                raise IndexRefused(f"{self.where}: no index here (give a dimension to create one)")
            s.set_meta(self.initial_meta(dim, version, kernel, self.settings))
        else:
            if dim is not None and int(stored_dim) != dim:
                raise IndexRefused(f"{self.where}: index dimension {stored_dim} does not match {dim}")
            stored_version = s.get_meta("embedding_version") or ""
            if version and stored_version and version != stored_version:
                raise IndexRefused(
                    f"{self.where}: built with embedding version {stored_version}, not {version}"
                    " (re-embed it: sugar index reembed)")
            if version and not stored_version:
                s.set_meta({"embedding_version": version})
            if int(s.get_meta("format_version") or 1) > FORMAT_VERSION:
                raise IndexRefused(f"{self.where}: written by a newer version of this software")
        self.dim = int(s.get_meta("dim"))  # type: ignore[arg-type]
        self.embedding_version = s.get_meta("embedding_version") or ""
        self.kernel = KernelSettings(**json.loads(s.get_meta("kernel") or "{}"))
        if kernel is not None:
            self.kernel = kernel

    # ------------------------------------------------------------ writes
    def _check(self, emb: DocumentVectors, version: str | None) -> None:
        if emb.vectors.ndim != 2 or emb.vectors.shape[1] != self.dim or emb.summary.shape != (self.dim,):
            raise IndexRefused(
                f"vector dimension {emb.summary.shape[-1]} does not match the index ({self.dim})")
        if version is not None and self.embedding_version and version != self.embedding_version:
            raise IndexRefused(f"embedding version {version} does not match the index "
                              f"({self.embedding_version}); re-embed or use the matching checkpoint")

    def add(self, docs: Sequence[tuple[Sample, DocumentVectors]], version: str | None = None,
            upsert: bool = False, delete_ids: Sequence[str] = (),
            metadata_updates: dict[str, dict[str, Any]] | None = None) -> list[str]:
        """Store documents (one transaction) and index them; returns their ids.

        A document without an id gets a generated one. Without `upsert`, an
        existing id raises KeyError and nothing of the batch is written. In the
        same transaction, `delete_ids` are deleted and `metadata_updates` replace the
        metadata of existing documents (a source re-synced: `index.ingest`).
        """
        rows = []
        for sample, emb in docs:
            self._check(emb, version)
            if len(emb.vectors) != len(sample.slices):
                raise IndexRefused(f"{len(emb.vectors)} slice vectors for {len(sample.slices)} slices")
            doc_id = sample.id or uuid.uuid4().hex
            rows.append((doc_id, sample, emb.vectors, emb.summary))
        ids = [r[0] for r in rows]
        if len(set(ids)) != len(ids):
            raise IndexRefused("duplicate ids in one batch")
        # one critical section: the store commit and the FAISS update (and any snapshot
        # it triggers) happen together, so two writers of the same id cannot apply their
        # vector changes in another order than they committed (issue #14)
        with self.store.write_lock:
            added, deleted = self.store.write(rows, version or self.embedding_version, replace=upsert,
                                              delete_ids=delete_ids, metadata_updates=metadata_updates)
            self._apply(added, deleted)
        return ids

    def delete(self, ids: Sequence[str]) -> None:
        """Delete documents; KeyError (nothing deleted) if any id is unknown."""
        with self.store.write_lock:
            added, deleted = self.store.write([], self.embedding_version, replace=False, delete_ids=ids)
            self._apply(added, deleted)

    def _apply(self, added: list[tuple[int, np.ndarray]], deleted: list[int]) -> None:
        self.backend.apply(added, deleted)
        self._writes_since_snapshot += 1
        if self._writes_since_snapshot >= self.snapshot_every:
            self.snapshot()
        if self.vectors.needs_rebuild():
            self.rebuild()

    def snapshot(self) -> None:
        # lock order everywhere: the store's write lock, then maintenance
        with self.store.write_lock, self._maintenance:
            self.backend.snapshot()
            self._writes_since_snapshot = 0

    def rebuild(self, index_type: str | None = None) -> None:
        """Rebuild the vector index from the store (drops tombstones; can change type)."""
        with self.store.write_lock:
            self.backend.rebuild(self.dim, self.embedding_version, index_type)

    def bulk_load(self) -> AbstractContextManager[bool]:
        """Around a large ingest (`sugar index add`): into an empty PostgreSQL collection the
        HNSW graph is built once at the end instead of row by row; yields whether it is."""
        return self.backend.bulk_load(self.dim)

    def close(self) -> None:
        self.snapshot()
        self.backend.close()

    def __enter__(self) -> DocumentIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ reads
    def get(self, doc_id: str, with_images: bool = True) -> StoredDocument | None:
        return self.store.get(doc_id, self.dim, with_images)

    def list_ids(self, offset: int = 0, limit: int = 100) -> list[str]:
        return self.store.ids(offset, limit)

    def get_many(self, ids: Sequence[str]) -> dict[str, StoredDocument]:
        """The stored documents of `ids` that exist (vectors and slices, no image bytes)."""
        return self.store.get_by_ids(ids, self.dim)

    def scroll(self, filters: dict[str, Any] | None, offset: int, limit: int,
               with_images: bool = False) -> tuple[list[StoredDocument], int | None]:
        """The documents that match `filters` (all without), in the order they were stored:
        `limit` from `offset`, and the offset of the next page (None: none left)."""
        fids = sorted(self.store.matching_fids(filters)) if filters else sorted(self.store.fids())
        page = fids[offset : offset + limit]
        docs = self.store.get_by_fids(page, self.dim, with_images)
        out = [docs[f] for f in page if f in docs]
        return out, (offset + limit if offset + limit < len(fids) else None)

    def count_matching(self, filters: dict[str, Any] | None) -> int:
        return self.store.count_matching(filters)

    def delete_matching(self, filters: dict[str, Any] | None = None, ids: Sequence[str] | None = None) -> int:
        """Delete the documents that match `filters`, or of `ids` (unknown ones skipped), in one
        transaction; returns how many went."""
        for attempt in range(3):  # a replica may delete one of them between the read and the write
            with self.store.write_lock:
                if ids is not None:
                    targets = list(self.store.get_by_ids(list(ids), self.dim))
                else:
                    fids = self.store.matching_fids(filters) if filters else sorted(self.store.fids())
                    targets = [d.id for d in self.store.get_by_fids(fids, self.dim).values()]
                if not targets:
                    return 0
                try:
                    added, deleted = self.store.write([], self.embedding_version, replace=False, delete_ids=targets)
                except KeyError:
                    if attempt == 2:
                        raise
                    continue
                self._apply(added, deleted)
                return len(targets)
        return 0

    def count(self) -> int:
        return self.store.count()

    def document_frequencies(self, terms: Sequence[str]) -> dict[str, int]:
        """How many documents' text holds each term (terms as `lexical_terms` makes them)."""
        return self.store.document_frequencies(terms)

    # what ingestion asks (index.ingest), never reaching into the store itself
    def fids(self, version: str | None = None) -> set[int]:
        return self.store.fids(version)

    def samples_with_version_not(self, version: str, limit: int) -> list[Sample]:
        return self.store.samples_with_version_not(version, limit)

    def source_documents(self, source: str) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
        return self.store.source_documents(source)

    def sources(self) -> dict[str, int]:
        return self.store.sources()

    def existing_ids(self, ids: Sequence[str]) -> dict[str, str | None]:
        return self.store.existing_ids(ids)

    def check_available(self) -> None:
        """StoreUnavailable when the store cannot take writes now (readiness, before writes)."""
        self.store.check_files()

    def rebuild_lexical(self) -> None:
        self.store.rebuild_lexical()

    def search(self, query: DocumentVectors, params: SearchParams | None = None, text: str = "", *,
               rerank: bool = True, exact_filter_limit: int = 20_000, **options: Any) -> list[Hit]:
        """Top `params.k` documents: ANN on g, then GA rerank over slice vectors (`rerank`); with
        mode "lexical" or "hybrid", BM25 over `text` (the query's words) alone or fused with the
        dense ranking (see the module docstring). `options` (k, k_prime, filters, mode,
        lexical_weight, with_images) build the SearchParams of a call that names them; an unset
        mode here is "dense", the unset hybrid weight LEXICAL_WEIGHT.

        Each hit carries its StoredDocument (`with_images`: image bytes loaded for the
        top k only); candidates deleted between the ANN step and the read are skipped."""
        try:
            params = (params or SearchParams()).replace(**options) if options else (params or SearchParams())
        except (TypeError, ValueError) as e:
            raise IndexRefused(str(e)) from None
        mode = params.mode or "dense"
        weight = self._check_query(query, mode, params.lexical_weight)
        if params.k <= 0:
            return []
        k_prime = params.candidates + len(params.exclude_ids)
        while True:
            ranked = self._ranked(query, params, text, mode, weight, k_prime, rerank, exact_filter_limit)
            hits = [h for h in ranked if h.id not in params.exclude_ids]
            if params.group_by is not None:
                hits = one_per_group(hits, params.group_by)
            # grouping may leave fewer than k: look deeper while there is more to see
            if len(hits) >= params.k or len(ranked) < k_prime or k_prime >= MAX_GROUP_CANDIDATES:
                break
            k_prime = min(4 * k_prime, MAX_GROUP_CANDIDATES)
        hits = [h for h in hits[: params.k] if params.score_threshold is None or h.score >= params.score_threshold]
        if params.with_images:
            for h in hits:
                self.store.load_images(h.document)  # type: ignore[arg-type]
        return hits

    def _ranked(self, query: DocumentVectors, params: SearchParams, text: str, mode: str, weight: float,
                k_prime: int, rerank: bool, exact_filter_limit: int) -> list[Hit]:
        """Every candidate of the two stages, ranked (`k_prime` of each side)."""
        allowed: set[int] | None = None
        if params.filters:
            allowed = set(self.store.matching_fids(params.filters))
            if not allowed:
                return []
        ann: dict[int, float] = {}
        if mode != "lexical":
            pushed = (self.backend.filtered_candidates(query.summary, params.filters, k_prime)
                      if params.filters else None)
            ann = dict(pushed if pushed is not None else
                       self._dense_candidates(query.summary, allowed, k_prime, exact_filter_limit))
        lexical: dict[int, float] = {}
        if mode != "dense":
            lexical = dict(self.store.lexical(text, k_prime, self.embedding_version, allowed))
        candidates = list(ann) + [f for f in lexical if f not in ann]
        docs = self.store.get_by_fids(candidates, self.dim)
        fids = [f for f in candidates if f in docs]  # deleted since the ANN step
        if not fids:
            return []
        for f in fids:
            if f not in ann:  # found by its words only
                ann[f] = float(docs[f].summary @ query.summary)
        hits = self._scored(query, fids, docs, ann, lexical, mode, rerank, weight)
        # equal fused scores keep the dense order (lexical hits carry no dense score)
        hits.sort(key=lambda h: (-h.score, -(h.dense_score or 0.0)))
        return hits

    def _scored(self, query: DocumentVectors, fids: list[int], docs: dict[int, StoredDocument], ann: dict[int, float],
                lexical: dict[int, float], mode: str, rerank: bool, weight: float) -> list[Hit]:
        """Stage 2: the candidates scored the mode's way (BM25; GA-kernel rerank; both fused)."""
        if mode == "lexical":
            return [Hit(docs[f].id, lexical[f], ann[f], docs[f].metadata, f, docs[f], None, lexical[f])
                    for f in fids]
        dense_scores = self.rerank(query, [docs[f] for f in fids]) if rerank else [ann[f] for f in fids]
        if mode == "dense":
            return [Hit(docs[f].id, float(sc), ann[f], docs[f].metadata, f, docs[f])
                    for f, sc in zip(fids, dense_scores, strict=True)]
        return _fuse([Hit(docs[f].id, 0.0, ann[f], docs[f].metadata, f, docs[f], float(sc), lexical.get(f))
                      for f, sc in zip(fids, dense_scores, strict=True)], weight)

    def _check_query(self, query: DocumentVectors, mode: str, lexical_weight: float | None) -> float:
        """IndexRefused for a query the index cannot answer; the hybrid weight to use."""
        if query.summary.shape != (self.dim,) or query.vectors.shape[1] != self.dim:
            raise IndexRefused(f"query dimension {query.summary.shape[-1]} does not match the index ({self.dim})")
        if mode not in SEARCH_MODES:
            raise IndexRefused(f"search mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
        weight = LEXICAL_WEIGHT if lexical_weight is None else lexical_weight
        if not 0.0 <= weight <= 1.0:
            raise IndexRefused(f"lexical_weight must lie in [0, 1], got {weight}")
        return weight

    def _dense_candidates(self, q: np.ndarray, allowed: set[int] | None, k_prime: int,
                          exact_filter_limit: int) -> list[tuple[int, float]]:
        """Stage 1: (fid, g·g_q) of the top K' by the summary vectors — ANN, or an exact scan of
        the documents a selective filter allows."""
        if allowed is None:
            scores, fids = self.vectors.search(q[None, :], k_prime)
            return [(int(f), float(s)) for f, s in zip(fids[0], scores[0], strict=True) if f >= 0]
        if len(allowed) <= exact_filter_limit:
            return self._exact(q, sorted(allowed), k_prime)
        return self._ann_filtered(q, allowed, k_prime)

    def _exact(self, q: np.ndarray, fids: list[int], k: int) -> list[tuple[int, float]]:
        vecs = self.store.summaries_of(fids)
        f = np.array(list(vecs), np.int64)
        s = np.stack([vecs[i] for i in f]) @ q
        order = np.argsort(-s)[:k]
        return [(int(f[i]), float(s[i])) for i in order]

    def _ann_filtered(self, q: np.ndarray, allowed: set[int], k: int) -> list[tuple[int, float]]:
        want = k * 4
        while True:
            scores, fids = self.vectors.search(q[None, :], want)
            out = [(int(f), float(s)) for f, s in zip(fids[0], scores[0], strict=True) if f in allowed]
            if len(out) >= k or want >= self.vectors.count:
                return out[:k]
            want *= 4

    def rerank(self, query: DocumentVectors, docs: Sequence[StoredDocument | DocumentVectors]) -> list[float]:
        """s̄(q, d) for each candidate (batched GA kernel): stored documents, or vectors just
        embedded (/v1/rerank, /score)."""
        cand, mask = pad_sequences([torch.tensor(d.vectors) for d in docs])
        with torch.no_grad():
            s = self.kernel.similarity(torch.from_numpy(query.vectors[None].astype(np.float32)), cand, None, mask)
        return s[0].tolist()

    # ------------------------------------------------------------ maintenance
    def stats(self) -> dict[str, Any]:
        return {
            "count": self.store.count(),
            "dim": self.dim,
            "type": self.vectors.kind,
            "vectors": self.vectors.count,
            "tombstones": len(self.vectors.tombstones),
            "embedding_version": self.embedding_version,
            "embedding_versions": self.store.version_counts(),
            "size_bytes": self.backend.size_bytes(),
            "path": self.where,
            "backend": self.backend.kind,
        }

    def verify(self) -> tuple[bool, list[str]]:
        """FAISS and the store agree: same ids, same count, same vectors (sampled)."""
        problems = []
        store_ids, faiss_ids = self.store.fids(self.embedding_version), self.vectors.ids()
        if store_ids != faiss_ids:
            problems.append(f"ids differ: {len(store_ids - faiss_ids)} only in the store, "
                            f"{len(faiss_ids - store_ids)} only in FAISS")
        if self.vectors.count != len(store_ids):
            problems.append(f"count differs: store {len(store_ids)}, FAISS {self.vectors.count}")
        sample = sorted(store_ids & faiss_ids)[:: max(1, len(store_ids) // 200)]
        problems += self.backend.problems(sample)
        text_ids, all_ids = self.store.lexical_fids(), self.store.fids()
        if text_ids != all_ids:
            problems.append(f"text index differs from the store: {len(all_ids - text_ids)} documents missing, "
                            f"{len(text_ids - all_ids)} extra (sugar index rebuild refills it)")
        versions = self.store.version_counts()
        if len(versions) > 1:
            problems.append(f"mixed embedding versions (an unfinished re-embedding?): {versions}")
        return not problems, problems

    def export(self, path: str | Path) -> int:
        """JSONL of every document (slices with base64 images, metadata); returns the count."""
        import base64

        n = 0
        with open(path, "w") as f:
            offset = 0
            while ids := self.store.ids(offset, 500):
                for doc_id in ids:
                    d = self.get(doc_id)
                    assert d is not None
                    slices = [s if s["type"] == "text" else
                              {"type": "image", "base64": base64.b64encode(d.images[s["hash"]]).decode()}
                              for s in d.slices]
                    f.write(json.dumps({"id": d.id, "slices": slices, "metadata": d.metadata}) + "\n")
                    n += 1
                offset += len(ids)
        return n

    def begin_reembed(self, version: str, dim: int) -> None:
        """Switch the index to `version` (and `dim`) before re-embedding, so searches never mix
        versions: the vector index then holds only documents already re-embedded."""
        with self.store.write_lock:
            self.backend.switch_version(dim, version, self.dim)
            self.store.set_meta({"embedding_version": version, "dim": dim})
            self.embedding_version, self.dim = version, dim

    def replace_vectors(self, docs: Sequence[tuple[Sample, DocumentVectors]], version: str) -> None:
        """New vectors for stored documents (their slices and metadata unchanged), one transaction."""
        for _, e in docs:
            self._check(e, None)
        with self.store.write_lock:
            added, _ = self.store.update_vectors(
                [(s.id, e.vectors, e.summary) for s, e in docs], version)  # type: ignore[misc]
            self._apply(added, [])


def one_per_group(hits: list[Hit], key: str) -> list[Hit]:
    """The best-ranked hit of each value of metadata `key` (a hit without it is its own group),
    in rank order; groups are per collection."""
    seen: set[Any] = set()
    out = []
    for h in hits:
        value = h.metadata.get(key)
        group = ((h.collection, "value", json.dumps(value, sort_keys=True)) if value is not None
                 else ("id", h.collection, h.id))
        if group not in seen:
            seen.add(group)
            out.append(h)
    return out


def term_evidence(question: str, used: Sequence[str], indexes: Sequence[DocumentIndex]) -> float | None:
    """How specifically the documents `used` (their text) answer to a question's words: the
    BM25 idf of the rarest question term they hold, over the collections searched (`indexes`),
    relative to that of a term only one document holds — 1.0 when they hold a word as rare as a
    name, near 0 when they share only words most documents have. Terms no document holds are
    left out (a phrasing's words outside the collection say nothing either way). Relative to the
    collection's own rarest, it means the same in ten documents or ten million, which a BM25
    score does not (the served abstention's evidence, `SugarConfig.abstain_evidence_threshold`).
    None: the question has no terms."""
    terms = lexical_terms(question)
    if not terms:
        return None
    df = {t: 0 for t in terms}
    n = 0
    for index in indexes:
        n += index.count()
        for t, c in index.document_frequencies(terms).items():
            df[t] += c
    held = {t for text in used for t in lexical_terms(text)}

    def idf(d: int) -> float:
        return math.log((n - d + 0.5) / (d + 0.5) + 1.0)

    best = max((idf(df[t]) for t in terms if df[t] and t in held), default=0.0)
    return best / idf(1) if n else 0.0


def merge_hits(ranked: list[list[Hit]], k: int, mode: str, weight: float) -> list[Hit]:
    """One ranking of several collections' hits (each ranked on its own): the dense and lexical
    rankings merge by score (the GA kernel's s̄ and BM25 mean the same in every collection); the
    hybrid scores, fused over each collection's own candidates, are fused again over all of them."""
    hits = [h for hs in ranked for h in hs]
    if mode == "hybrid" and hits:
        hits = _fuse(hits, weight)
    hits.sort(key=lambda h: (-h.score, -(h.dense_score or 0.0)))
    return hits[:k]


def _fuse(hits: list[Hit], weight: float) -> list[Hit]:
    """Relative score fusion of the dense and the lexical scores of the same candidates:
    the dense scores min-max scaled over the candidates, BM25 divided by the best one (0 where
    no word matched), mixed with `weight` for BM25. Unlike reciprocal-rank fusion it keeps the
    gaps: a document whose rare word matched stays ahead of many that share only common words."""
    dense = np.array([h.dense_score for h in hits], np.float64)
    lex = np.array([h.lexical_score or 0.0 for h in hits], np.float64)
    span = dense.max() - dense.min()
    dense_n = (dense - dense.min()) / span if span > 0 else np.ones_like(dense)
    lex_n = lex / lex.max() if lex.max() > 0 else lex
    for h, d, w in zip(hits, dense_n, lex_n, strict=True):
        h.score = float((1 - weight) * d + weight * w)
    return hits
