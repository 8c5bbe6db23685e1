"""The FAISS side of an index: summary vectors under the store's ids (fids).

Index types (inner product on L2-normalised vectors):
    flat   exact; IndexIDMap2(IndexFlatIP); removal supported
    hnsw   IndexIDMap2(IndexHNSWFlat); HNSW cannot remove ids, so a removed id
           becomes a tombstone filtered out of results, and the index is rebuilt
           from the store when tombstones pass a fraction of its size
    ivf    IndexIDMap2(IndexIVFFlat) trained on the vectors present at build time
    auto   flat below `auto_threshold` documents, hnsw above

Snapshots are written atomically (temp file, fsync, rename) with a sha256
checksum and the store's change sequence number they contain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

logger = logging.getLogger(__name__)

SNAPSHOT = "faiss.index"
SNAPSHOT_META = "faiss.meta.json"
TYPES = ("auto", "flat", "hnsw", "ivf")


@dataclass
class VectorSettings:
    type: str = "auto"
    auto_threshold: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 512
    ivf_nlist: int = 0  # 0: 4*sqrt(n)
    ivf_nprobe: int = 16
    tombstone_rebuild_fraction: float = 0.2
    use_gpu: bool = True  # when faiss-gpu is installed and a GPU is present

    def resolve(self, n: int) -> str:
        if self.type not in TYPES:
            raise ValueError(f"index type must be one of {TYPES}, got {self.type!r}")
        if self.type != "auto":
            return self.type
        return "flat" if n < self.auto_threshold else "hnsw"


class RWLock:
    """Many readers or one writer (FAISS searches are safe in parallel, not with adds)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class VectorIndex:
    def __init__(self, dim: int, settings: VectorSettings, kind: str) -> None:
        self.dim, self.settings, self.kind = dim, settings, kind
        self.tombstones: set[int] = set()
        self.lock = RWLock()  # parallel searches, exclusive mutation
        self.index: Any = self._new(kind, np.zeros((0, dim), np.float32))
        self.gpu_index = None

    # ------------------------------------------------------------ construction
    def _new(self, kind: str, train: np.ndarray) -> Any:
        s = self.settings
        base: Any  # faiss's SWIG classes: their stubs lack hnsw, nprobe, id_map
        if kind == "flat":
            base = faiss.IndexFlatIP(self.dim)
        elif kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = s.hnsw_ef_construction
            base.hnsw.efSearch = s.hnsw_ef_search
        elif kind == "ivf":
            n = max(1, len(train))
            nlist = s.ivf_nlist or max(1, min(int(4 * np.sqrt(n)), n // 39 or 1))
            quantizer = faiss.IndexFlatIP(self.dim)
            base = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            if len(train):
                base.train(train)
            base.nprobe = min(s.ivf_nprobe, nlist)
        else:
            raise ValueError(f"unknown index type {kind!r}")
        return faiss.IndexIDMap2(base)

    @classmethod
    def build(cls, dim: int, settings: VectorSettings, fids: np.ndarray, vectors: np.ndarray,
              kind: str | None = None) -> VectorIndex:
        kind = kind or settings.resolve(len(fids))
        vi = cls(dim, settings, kind)
        if kind == "ivf":
            vi.index = vi._new("ivf", vectors)
        if len(fids):
            vi.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), fids.astype(np.int64))
        return vi

    # ------------------------------------------------------------ mutation
    def add(self, fids: np.ndarray, vectors: np.ndarray) -> None:
        if len(fids) == 0:
            return
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vector dimension {vectors.shape[1]} does not match the index ({self.dim})")
        with self.lock.write():
            if not self.index.is_trained:  # an empty IVF: train on what arrives first
                self.index = self._new("ivf", vectors)
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), fids.astype(np.int64))
            self.gpu_index = None

    def remove(self, fids: list[int]) -> None:
        if not fids:
            return
        with self.lock.write():
            if self.kind == "hnsw":
                self.tombstones.update(fids)
            else:
                self.index.remove_ids(np.array(fids, np.int64))
            self.gpu_index = None

    def needs_rebuild(self) -> bool:
        n = max(1, self.index.ntotal)
        return len(self.tombstones) / n > self.settings.tombstone_rebuild_fraction

    # ------------------------------------------------------------ queries
    @property
    def count(self) -> int:
        return int(self.index.ntotal) - len(self.tombstones)

    def ids(self) -> set[int]:
        with self.lock.read():
            n = self.index.ntotal
            ids = faiss.vector_to_array(self.index.id_map) if n else np.zeros(0, np.int64)
        return set(ids.tolist()) - self.tombstones

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [nq, k], fids [nq, k]); -1 fids pad missing results; tombstones dropped."""
        with self.lock.read():
            index = self._searchable()
            tombstones = set(self.tombstones)
            extra = len(tombstones)
            kk = min(max(1, k + extra), max(1, index.ntotal))
            if index.ntotal == 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
            scores, ids = index.search(np.ascontiguousarray(queries, np.float32), kk)
        if tombstones:
            keep = ~np.isin(ids, list(tombstones))
            out_s = np.full((len(queries), k), -np.inf, np.float32)
            out_i = np.full((len(queries), k), -1, np.int64)
            for r in range(len(queries)):
                s, i = scores[r][keep[r]][:k], ids[r][keep[r]][:k]
                out_s[r, : len(s)], out_i[r, : len(i)] = s, i
            return out_s, out_i
        return scores[:, :k], ids[:, :k]

    def _searchable(self):
        if self.settings.use_gpu and self.kind in ("flat", "ivf") and gpu_available():
            if self.gpu_index is None:
                res = faiss.StandardGpuResources()
                self.gpu_index = faiss.index_cpu_to_gpu(res, 0, self.index)
            return self.gpu_index
        return self.index

    # ------------------------------------------------------------ snapshots
    def save(self, directory: Path, seq: int) -> None:
        """Atomic snapshot: temp file, fsync, rename; the metadata (checksum, seq) last."""
        directory.mkdir(parents=True, exist_ok=True)
        with self.lock.read():
            data = faiss.serialize_index(self.index)
            tomb = sorted(self.tombstones)
        blob = np.asarray(data).tobytes()
        meta = {"sha256": hashlib.sha256(blob).hexdigest(), "seq": seq, "kind": self.kind,
                "dim": self.dim, "count": self.count, "tombstones": tomb, "bytes": len(blob)}
        _atomic_write(directory / SNAPSHOT, blob)
        _atomic_write(directory / SNAPSHOT_META, json.dumps(meta).encode())

    @classmethod
    def load(cls, directory: Path, settings: VectorSettings) -> tuple[VectorIndex, int]:
        """(index, seq); raises ValueError naming the problem when the snapshot is bad."""
        meta_f, idx_f = directory / SNAPSHOT_META, directory / SNAPSHOT
        if not meta_f.is_file() or not idx_f.is_file():
            raise FileNotFoundError(f"{idx_f}: no snapshot")
        try:
            meta = json.loads(meta_f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta_f}: corrupt ({e})") from None
        fields = {"bytes": int, "sha256": str, "dim": int, "kind": str, "seq": int}
        if not isinstance(meta, dict) or any(not isinstance(meta.get(k), t) for k, t in fields.items()):
            raise ValueError(f"{meta_f}: not a snapshot description (expected an object with "
                             f"{sorted(fields)})")
        blob = idx_f.read_bytes()
        if len(blob) != meta.get("bytes") or hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            raise ValueError(f"{idx_f}: checksum mismatch ({len(blob)} bytes, expected {meta.get('bytes')})")
        try:
            index = faiss.deserialize_index(np.frombuffer(blob, np.uint8))
        except RuntimeError as e:
            raise ValueError(f"{idx_f}: unreadable ({e})") from None
        vi = cls(int(meta["dim"]), settings, meta["kind"])
        vi.index = index
        vi.tombstones = set(meta.get("tombstones", []))
        if meta["kind"] == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = settings.hnsw_ef_search  # type: ignore[attr-defined]
        if meta["kind"] == "ivf":
            faiss.extract_index_ivf(index).nprobe = settings.ivf_nprobe
        return vi, int(meta["seq"])


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
