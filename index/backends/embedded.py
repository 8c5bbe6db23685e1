"""The embedded backend: a directory with the SQLite store (the source of truth) and a FAISS
snapshot of the summary vectors.

    store.sqlite (+ -wal, -shm)   the document store (index/store.py)
    faiss.index, faiss.meta.json  the latest vector snapshot (checksum, change seq)

On open a valid snapshot is loaded and every change the store committed after it is
replayed; a missing, truncated or corrupt snapshot is rebuilt from the store (logged); a
store *behind* its snapshot (acknowledged writes lost, e.g. a deleted -wal file) is refused
unless a repair was asked for. Writes update FAISS in memory after the commit, under the
store's write lock; the snapshot is written every `snapshot_every` writes and on close.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import numpy as np

from ..store import DocumentStore, IndexRefused
from ..vectors import VectorIndex, VectorSettings

logger = logging.getLogger(__name__)

STORE_FILE = "store.sqlite"
COLLECTIONS_DIR = "collections"  # beside the default collection's files: one directory per other one


class EmbeddedBackend:
    kind = "embedded"

    def __init__(self, path: Path, settings: VectorSettings) -> None:
        self.path, self.settings = Path(path), settings
        self.where = str(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        with self.opening():
            self.store = DocumentStore(self.path / STORE_FILE)
        self.vectors: VectorIndex  # set by open_vectors

    @contextmanager
    def opening(self) -> Iterator[None]:
        """A store SQLite cannot read is refused, naming the file (never rebuilt from FAISS)."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            raise IndexRefused(
                f"{self.path / STORE_FILE}: not a readable SQLite database ({e}); the store is the "
                "source of truth and cannot be rebuilt from FAISS: restore the index directory from "
                "a backup (README: backing up an index)") from None

    def open_vectors(self, dim: int, version: str, repair: bool, inspect: bool) -> None:
        self.vectors = self._load(dim, version, repair, inspect)

    def bulk_load(self, dim: int) -> AbstractContextManager[bool]:
        return nullcontext(False)  # FAISS adds a batch at once already

    def _load(self, dim: int, version: str, repair: bool, inspect: bool) -> VectorIndex:
        try:
            vi, seq = VectorIndex.load(self.path, self.settings)
        except FileNotFoundError:
            return self._rebuild_from_store(dim, version, "no snapshot yet" if self.store.count() else None)
        except ValueError as e:
            return self._rebuild_from_store(dim, version, f"snapshot rejected: {e}")
        last = self.store.last_seq()
        if seq > last:
            # the snapshot has seen commits the store no longer has (e.g. its -wal file was
            # deleted): acknowledged documents are gone, so never come up as if all were well
            if not repair:
                raise IndexRefused(
                    f"{self.path / STORE_FILE}: behind its FAISS snapshot (store change {last} < "
                    f"snapshot change {seq}): the store lost committed writes (a deleted -wal file?). "
                    f"Restore the directory from a backup, or accept the loss with "
                    f"`sugar index rebuild --index {self.path}`")
            return self._rebuild_from_store(dim, version, f"store behind the snapshot ({last} < {seq}), "
                                            "repair requested")
        changes = self.store.changes_after(seq)
        if changes:
            adds = [fid for _, op, fid in changes if op == "add"]
            dels = [fid for _, op, fid in changes if op == "del"]
            live = self.store.summaries_of(adds, version)
            present = vi.ids()
            vi.remove([f for f in dels if f in present or f in live])
            new = [f for f in adds if f in live and f not in present]
            if new:
                vi.add(np.array(new, np.int64), np.stack([live[f] for f in new]))
            logger.info("%s: replayed %d changes committed after the snapshot", self.path, len(changes))
        if not inspect and vi.ids() != self.store.fids(version):
            return self._rebuild_from_store(dim, version, "snapshot and store hold different documents after replay")
        return vi

    def _rebuild_from_store(self, dim: int, version: str, reason: str | None) -> VectorIndex:
        if reason:
            logger.warning("%s: rebuilding the vector index from the store (%s)", self.path, reason)
        fids, vecs = [], []
        for f, v in self.store.summaries(version):
            fids.append(f)
            vecs.append(v)
        fid_a = np.concatenate(fids) if fids else np.zeros(0, np.int64)
        vec_a = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)
        vi = VectorIndex.build(dim, self.settings, fid_a, vec_a)
        vi.save(self.path, self.store.last_seq())
        return vi

    def apply(self, added: list[tuple[int, np.ndarray]], deleted: list[int]) -> None:
        self.vectors.remove(deleted)
        if added:
            self.vectors.add(np.array([f for f, _ in added], np.int64), np.stack([v for _, v in added]))

    def snapshot(self) -> None:
        self.vectors.save(self.path, self.store.last_seq())

    def rebuild(self, dim: int, version: str, index_type: str | None) -> None:
        if index_type:
            self.settings.type = index_type
            self.store.set_meta({"index_type": index_type})
        self.vectors = self._rebuild_from_store(dim, version, None)

    def switch_version(self, dim: int, version: str, current_dim: int) -> None:
        self.vectors = self._rebuild_from_store(dim, version, None)

    def filtered_candidates(self, q: np.ndarray, filters: dict, k: int) -> list[tuple[int, float]] | None:
        return None  # FAISS cannot filter: the index scans the allowed documents (or an ANN loop)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    def problems(self, sample: Sequence[int]) -> list[str]:
        """A flat index holds the vectors themselves: a sample of them equals the store's."""
        if not sample or self.vectors.kind != "flat":
            return []
        stored = self.store.summaries_of(sample)
        for f in sample:
            if not np.allclose(self.vectors.index.reconstruct(int(f)), stored[f], atol=1e-6):
                return [f"vector of fid {f} differs between FAISS and the store"]
        return []

    def summaries(self, version: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.store.summaries(version)

    def close(self) -> None:
        self.store.close()


class EmbeddedCatalog:
    """The collections of an embedded index: `default` is the directory itself (today's index,
    unchanged), every other one a directory under `collections/`. Creating one builds it under
    a hidden name and renames it into place; deleting one renames it away, then removes it:
    a rename is atomic, so after a crash (kill -9) a collection is either all there or all gone
    (the hidden leftovers are swept at the next open)."""

    kind = "embedded"

    def __init__(self, root: Path, settings: VectorSettings) -> None:
        self.root, self.settings = Path(root), settings
        self.dir = self.root / COLLECTIONS_DIR
        self.where = str(self.root)
        if self.dir.is_dir():
            for leftover in self.dir.glob(".*"):  # half-made or half-deleted: never a collection
                shutil.rmtree(leftover, ignore_errors=True)

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(d.name for d in self.dir.iterdir()
                      if d.is_dir() and not d.name.startswith(".") and (d / STORE_FILE).is_file())

    def exists(self, name: str) -> bool:
        return (self.dir / name / STORE_FILE).is_file()

    def open(self, name: str | None) -> EmbeddedBackend:
        """The default collection (None) or a named one's backend."""
        return EmbeddedBackend(self.root if name is None else self.dir / name, self.settings)

    def create(self, name: str, meta: dict[str, object], dim: int) -> None:
        """Build the collection (its store and meta) under a hidden name, then rename it into
        place (FileExistsError when it is there already)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        staging = self.dir / f".new-{name}-{uuid.uuid4().hex}"
        try:
            backend = EmbeddedBackend(staging, self.settings)
            backend.store.set_meta(meta)
            backend.open_vectors(dim, str(meta.get("embedding_version", "")), False, False)  # an empty snapshot
            backend.close()
            if self.exists(name):
                raise FileExistsError(name)
            try:
                os.rename(staging, self.dir / name)
            except OSError:  # made by another request meanwhile (a rename never replaces a full directory)
                raise FileExistsError(name) from None
            _sync_dir(self.dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def delete(self, name: str) -> None:
        """Rename the collection away (atomic), then remove its files (FileNotFoundError: none)."""
        gone = self.dir / f".deleted-{name}-{uuid.uuid4().hex}"
        os.rename(self.dir / name, gone)
        _sync_dir(self.dir)
        shutil.rmtree(gone, ignore_errors=True)


def _sync_dir(path: Path) -> None:
    """The directory's entries (a rename) on disk, not only in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
