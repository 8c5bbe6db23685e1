"""Collections: many indexes behind one server, each its own `DocumentIndex` on the same
backend (index/backends/: `Catalog`), all embedded by the same checkpoint.

The collection `default` is the index the server was given (`--index DIR` or
`--index-url`), unchanged: today's paths and data keep working as they are. Others are
created and deleted through `Collections` (`PUT`/`DELETE /collections/{name}`, `sugar index
... --collection NAME`): in an embedded index one directory each under `DIR/collections/`, on
PostgreSQL one schema each (the design chosen by measurement: docs/… and the closing note of
issue #31). Names follow the document id grammar; their number is bounded; creating and
deleting are atomic on both backends. A collection another replica deleted is gone here at
the next request that names it (404), whichever replica deleted it.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

from model.kernels import KernelSettings
from model.sample import DOCUMENT_ID
from model.search import DEFAULT_COLLECTION

from .backends import open_catalog
from .index import DocumentIndex
from .vectors import VectorSettings

logger = logging.getLogger(__name__)

COLLECTION_NAME = re.compile(DOCUMENT_ID)
MAX_COLLECTIONS = 100


class CollectionNotFound(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no collection {self.name!r}"


class CollectionExists(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"collection {self.name!r} exists already"


class CollectionRefused(ValueError):
    """A name outside the grammar, one collection too many, or the default one deleted."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.match(name):
        raise CollectionRefused(f"collection name {str(name)[:80]!r} is not allowed (letters, digits and . _ : @ + -, "
                                "starting with a letter, a digit or _, at most 256 characters)")
    return name


class Collections:
    def __init__(self, location: str | Path, *, dim: int, embedding_version: str,
                 kernel: KernelSettings | None = None, snapshot_every: int = 1000,
                 max_collections: int = MAX_COLLECTIONS, settings: VectorSettings | None = None) -> None:
        self.location, self.dim, self.embedding_version, self.kernel = location, dim, embedding_version, kernel
        self.snapshot_every, self.max_collections = snapshot_every, max_collections
        self.settings = settings or VectorSettings()
        self.default = DocumentIndex(location, dim=dim, embedding_version=embedding_version, kernel=kernel,
                                     snapshot_every=snapshot_every, settings=self.settings)
        self.catalog = open_catalog(location, VectorSettings(**self.settings.__dict__))
        self.kind = self.catalog.kind
        self._open: dict[str, DocumentIndex] = {}
        self._retired: list[DocumentIndex] = []  # deleted while maybe in use: closed at the end
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return [DEFAULT_COLLECTION, *self.catalog.names()]

    def get(self, name: str) -> DocumentIndex:
        """The collection's index (opened on first use); CollectionNotFound naming it."""
        if name == DEFAULT_COLLECTION:
            return self.default
        check_name(name)
        if not self.catalog.exists(name):  # asked every time: another replica may have deleted it
            with self._lock:
                gone = self._open.pop(name, None)
                if gone is not None:
                    self._retired.append(gone)
            raise CollectionNotFound(name)
        with self._lock:
            index = self._open.get(name)
            if index is None:
                try:
                    backend = self.catalog.open(name)
                except FileNotFoundError:
                    raise CollectionNotFound(name) from None
                index = DocumentIndex(None, dim=self.dim, embedding_version=self.embedding_version,
                                      kernel=self.kernel, snapshot_every=self.snapshot_every,
                                      settings=VectorSettings(**self.settings.__dict__), backend=backend)
                self._open[name] = index
            return index

    def exists(self, name: str) -> bool:
        return name == DEFAULT_COLLECTION or (bool(COLLECTION_NAME.match(name)) and self.catalog.exists(name))

    def create(self, name: str) -> bool:
        """Create the collection (False: it existed already, nothing changed)."""
        check_name(name)
        if self.exists(name):
            return False
        if len(self.catalog.names()) + 1 >= self.max_collections:
            raise CollectionRefused(f"collection {name!r} would exceed the limit of {self.max_collections} "
                                    "collections (SUGAR_MAX_COLLECTIONS)")
        meta = DocumentIndex.initial_meta(self.dim, self.embedding_version, self.kernel, self.settings)
        try:
            self.catalog.create(name, meta, self.dim)
        except FileExistsError:
            return False
        logger.info("collection %r created", name)
        return True

    def delete(self, name: str) -> None:
        if name == DEFAULT_COLLECTION:
            raise CollectionRefused("the default collection cannot be deleted (delete its documents instead)")
        check_name(name)
        with self._lock:
            try:
                self.catalog.delete(name)
            except FileNotFoundError:
                raise CollectionNotFound(name) from None
            gone = self._open.pop(name, None)
            if gone is not None:
                self._retired.append(gone)
        logger.info("collection %r deleted", name)

    def info(self, name: str) -> dict[str, Any]:
        s = self.get(name).stats()
        return {"name": name, "count": s["count"], "embedding_version": s["embedding_version"],
                "backend": self.kind, "size_bytes": s["size_bytes"], "dim": s["dim"]}

    def close(self) -> None:
        self.default.close()
        with self._lock:
            for index in self._open.values():
                index.close()
            for index in self._retired:  # their files are gone: close the connections, no snapshot
                try:
                    index.backend.close()
                except Exception:  # noqa: BLE001 - best effort at shutdown
                    logger.debug("closing a deleted collection's index failed", exc_info=True)
            self._open.clear()
            self._retired.clear()


def open_collection(location: str | Path, name: str = DEFAULT_COLLECTION, *, dim: int | None = None,
                    embedding_version: str | None = None, kernel: KernelSettings | None = None,
                    create: bool = False, settings: VectorSettings | None = None, **kw: Any) -> DocumentIndex:
    """One collection of `location` on its own (the CLI): the default one is the location
    itself; a named one must exist unless `create` (which needs `dim`). `kw`: DocumentIndex's
    (repair, inspect, snapshot_every)."""
    settings = settings or VectorSettings()
    if name == DEFAULT_COLLECTION:
        return DocumentIndex(location, dim=dim, embedding_version=embedding_version, kernel=kernel,
                             settings=settings, **kw)
    check_name(name)
    catalog = open_catalog(location, VectorSettings(**settings.__dict__))
    if not catalog.exists(name):
        if not create or dim is None:
            raise CollectionNotFound(name)
        try:
            catalog.create(name, DocumentIndex.initial_meta(dim, embedding_version, kernel, settings), dim)
        except FileExistsError:
            pass  # made meanwhile
    try:
        backend = catalog.open(name)
    except FileNotFoundError:
        raise CollectionNotFound(name) from None
    return DocumentIndex(None, dim=dim, embedding_version=embedding_version, kernel=kernel, settings=settings,
                         backend=backend, **kw)


__all__ = ["MAX_COLLECTIONS", "CollectionExists", "CollectionNotFound", "CollectionRefused", "Collections",
           "check_name", "open_collection"]
