"""Storage backends behind one interface: the embedded one (SQLite + FAISS, a directory) and
the shared one (PostgreSQL + pgvector, a database URL).

`DocumentIndex` (index/index.py) holds one `Backend` and calls only this interface: the
document store (`Store`: the source of truth — documents, slices, vectors, BM25 postings,
metadata filters, the change log) and the stage-1 vector search (`Vectors`), plus the few
things the two do differently (`Backend`: opening and rebuilding the vector side, snapshots,
size on disk, backend-specific verification). mypy checks that both backends conform
(`_conforms` below, type-checked with `server/` and `index/`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from model.sample import Sample

if TYPE_CHECKING:
    from ..store import StoredDocument

Written = tuple[list[tuple[int, np.ndarray]], list[int]]  # (added (fid, summary), deleted fids)


class Store(Protocol):
    """The document store: every write one transaction, acknowledged after its commit."""

    @property
    def write_lock(self) -> Any: ...  # a re-entrant lock: this process's writers, in commit order

    def check_files(self) -> None: ...
    def get_meta(self, key: str, default: str | None = None) -> str | None: ...
    def set_meta(self, items: dict[str, Any]) -> None: ...
    def write(self, docs: Sequence[tuple[str, Sample, np.ndarray, np.ndarray]], version: str, replace: bool,
              delete_ids: Sequence[str] = (), metadata_updates: dict[str, dict[str, Any]] | None = None
              ) -> Written: ...
    def update_vectors(self, rows: Sequence[tuple[str, np.ndarray, np.ndarray]], version: str) -> Written: ...
    def get(self, doc_id: str, dim: int, with_images: bool = True) -> StoredDocument | None: ...
    def get_by_fids(self, fids: Sequence[int], dim: int, with_images: bool = False) -> dict[int, StoredDocument]: ...
    def get_by_ids(self, ids: Sequence[str], dim: int) -> dict[str, StoredDocument]: ...
    def load_images(self, doc: StoredDocument) -> None: ...
    def blob(self, h: str) -> bytes: ...
    def count(self) -> int: ...
    def fids(self, version: str | None = None) -> set[int]: ...
    def ids(self, offset: int = 0, limit: int = 100) -> list[str]: ...
    def summaries_of(self, fids: Sequence[int], version: str | None = None) -> dict[int, np.ndarray]: ...
    def samples_with_version_not(self, version: str, limit: int) -> list[Sample]: ...
    def lexical_fids(self) -> set[int]: ...
    def rebuild_lexical(self) -> None: ...
    def document_frequencies(self, terms: Sequence[str]) -> dict[str, int]: ...
    def lexical(self, text: str, limit: int, version: str | None = None,
                allowed: set[int] | None = None) -> list[tuple[int, float]]: ...
    def matching_fids(self, filters: dict[str, Any]) -> list[int]: ...
    def count_matching(self, filters: dict[str, Any] | None) -> int: ...
    def source_documents(self, source: str) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]: ...
    def sources(self) -> dict[str, int]: ...
    def existing_ids(self, ids: Sequence[str]) -> dict[str, str | None]: ...
    def version_counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class Vectors(Protocol):
    """Stage 1: the summary vectors' nearest neighbours by inner product."""

    @property
    def kind(self) -> str: ...
    @property
    def tombstones(self) -> set[int]: ...
    @property
    def count(self) -> int: ...
    def ids(self) -> set[int]: ...
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def add(self, fids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, fids: list[int]) -> None: ...
    def needs_rebuild(self) -> bool: ...


class Backend(Protocol):
    """A store and its vector search, and what the two backends do differently."""

    @property
    def kind(self) -> str: ...  # "embedded" | "postgres"
    @property
    def where(self) -> str: ...  # for messages: the directory, or the URL without its password
    @property
    def path(self) -> Path: ...  # the index directory (embedded), else "."
    @property
    def store(self) -> Store: ...
    @property
    def vectors(self) -> Vectors: ...

    def opening(self) -> AbstractContextManager[None]:
        """Around opening: the backend's errors for an unreadable store become IndexRefused."""

    def open_vectors(self, dim: int, version: str, repair: bool, inspect: bool) -> None:
        """The vector side in step with the store (load, replay, or rebuild)."""

    def bulk_load(self, dim: int) -> AbstractContextManager[bool]:
        """Around a large ingest: where the collection is empty, the backend may build its ANN
        graph once at the end instead of row by row; yields whether it does."""

    def apply(self, added: list[tuple[int, np.ndarray]], deleted: list[int]) -> None:
        """Mirror a committed write in the vector side (the store lock held)."""

    def snapshot(self) -> None:
        """Persist the vector side (the store lock held)."""

    def rebuild(self, dim: int, version: str, index_type: str | None) -> None:
        """The vector side rebuilt from the store (the recovery command's part)."""

    def switch_version(self, dim: int, version: str, current_dim: int) -> None:
        """Before re-embedding into `version`: refuse what the backend cannot, then rebuild."""

    def filtered_candidates(self, q: np.ndarray, filters: dict[str, Any], k: int) -> list[tuple[int, float]] | None:
        """Stage 1 with the metadata filter pushed into the backend's ANN scan; None: the backend
        cannot, and the index filters the candidates itself."""

    def size_bytes(self) -> int: ...

    def problems(self, sample: Sequence[int]) -> list[str]:
        """Backend-specific verification (`sample`: fids in both the store and the vectors)."""

    def summaries(self, version: str) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def close(self) -> None: ...


class Catalog(Protocol):
    """The collections of one location beside its default one (index/collections.py): listing,
    opening, and creating and deleting each atomically (kill -9 safe)."""

    @property
    def kind(self) -> str: ...
    def names(self) -> list[str]: ...  # the named collections (the default one is implicit)
    def exists(self, name: str) -> bool: ...
    def open(self, name: str | None) -> Backend: ...  # None: the default collection
    def create(self, name: str, meta: dict[str, Any], dim: int) -> None: ...  # FileExistsError
    def delete(self, name: str) -> None: ...  # FileNotFoundError


def open_catalog(location: str | Path, settings: Any) -> Catalog:
    """The collections catalog of `location` (a `postgresql://` URL or an index directory)."""
    from ..pg import is_database_url

    if is_database_url(location):
        from .postgres import PostgresCatalog

        return PostgresCatalog(str(location))
    from .embedded import EmbeddedCatalog

    return EmbeddedCatalog(Path(location), settings)


def open_backend(location: str | Path, settings: Any) -> Backend:
    """The backend of `location`: a `postgresql://` URL or an index directory."""
    from ..pg import is_database_url

    if is_database_url(location):
        from .postgres import PostgresBackend

        return PostgresBackend(str(location))
    from .embedded import EmbeddedBackend

    return EmbeddedBackend(Path(location), settings)


def _conforms(embedded: Any, postgres: Any, catalogs: Any
              ) -> tuple[Backend, Backend, Store, Store, Vectors, Vectors, Catalog, Catalog]:
    """mypy's check that both backends, their stores, their vector sides and their catalogs
    have the interface."""
    from ..pg import PgStore, PgVectors
    from ..store import DocumentStore
    from ..vectors import VectorIndex
    from .embedded import EmbeddedBackend, EmbeddedCatalog
    from .postgres import PostgresBackend, PostgresCatalog

    e: EmbeddedBackend = embedded
    p: PostgresBackend = postgres
    s1: DocumentStore = e.store
    s2: PgStore = p.store
    v1: VectorIndex = e.vectors
    v2: PgVectors = p.vectors
    c1: EmbeddedCatalog = catalogs[0]
    c2: PostgresCatalog = catalogs[1]
    return e, p, s1, s2, v1, v2, c1, c2


__all__ = ["Backend", "Catalog", "Store", "Vectors", "Written", "open_backend", "open_catalog"]
