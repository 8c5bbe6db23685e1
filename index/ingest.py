"""Ingestion: files and folders -> chunks in the index, kept in sync with their sources.

`Ingestor.sync_paths` walks files and folders (recursively, hidden names
skipped), detects each file's format by content, reads it (`index.readers`),
chunks it (`index.chunking`) and syncs it:

- a source whose stored chunks carry its current content hash is unchanged
  and skipped without reading or embedding;
- a changed source is re-read; chunks whose content is identical to the
  stored one keep their vectors (only their metadata is rewritten), new or
  changed chunks are embedded, chunks that no longer exist are deleted — all
  of one source in one transaction, so a reader never sees half a file and a
  killed run re-run with the same command finishes the job (each source is
  either fully replaced or untouched; nothing is duplicated: ids are stable);
- with `prune`, chunks whose source file no longer exists are deleted.

A source is the file's absolute path (`upload:<name>` for files sent to
`POST /documents/upload`). An image's sidecar caption (`name.txt`/`name.md`
beside `name.png`) is read with the image and part of its content hash.
JSONL files of documents keep their own ids; an id that exists from another
source (or from the API) is replaced only with `upsert`, except when the
stored content is identical (then it is left as it is: not an error).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.sample import Sample, SampleError

from .chunking import ChunkLimits, TokenCounter, approx_tokens, chunk, chunk_id, source_hash
from .index import DocumentIndex, Embedded
from .readers import IMAGE_SUFFIXES, SIDECAR_SUFFIXES, ReadError, ReadOptions, detect, read
from .store import slices_equal

logger = logging.getLogger(__name__)

Embed = Callable[[list[Sample]], list[Embedded]]
UPLOAD_PREFIX = "upload:"


@dataclass
class FileResult:
    source: str
    status: str  # "added" | "updated" | "unchanged" | "failed"
    format: str | None = None
    ids: list[str] = field(default_factory=list)
    images: int = 0
    embedded: int = 0  # chunks (re-)embedded; the rest kept their vectors
    removed: int = 0  # stale chunks of this source deleted
    reason: str | None = None
    skipped_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {"source": self.source, "status": self.status, "format": self.format, "chunks": len(self.ids),
             "ids": self.ids, "images": self.images, "embedded": self.embedded, "removed": self.removed,
             "skipped_images": self.skipped_images}
        if self.reason is not None:
            d["reason"] = self.reason
        return d


@dataclass
class SyncSummary:
    results: list[FileResult] = field(default_factory=list)
    pruned: int = 0  # chunks deleted because their source disappeared
    pruned_sources: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        ok = [r for r in self.results if r.status != "failed"]
        return {
            "files": len(self.results), "chunks": sum(len(r.ids) for r in ok),
            "images": sum(r.images for r in ok), "embedded": sum(r.embedded for r in ok),
            "added": self.count("added"), "unchanged": self.count("unchanged"),
            "updated": self.count("updated"), "removed": sum(r.removed for r in ok) + self.pruned,
            "pruned_sources": self.pruned_sources,
            "skipped_images": sum(len(r.skipped_images) for r in ok),
            "failed": [{"file": r.source, "reason": r.reason} for r in self.failed],
        }

    def text(self) -> str:
        d = self.to_dict()
        lines = [f"files {d['files']}: {d['added']} added, {d['updated']} updated, {d['unchanged']} unchanged, "
                 f"{len(d['failed'])} failed; chunks {d['chunks']} ({d['embedded']} embedded), images "
                 f"{d['images']}, removed {d['removed']}, images skipped {d['skipped_images']}"]
        for r in self.results:
            for s in r.skipped_images:
                lines.append(f"  skipped image in {r.source}: {s}")
        for f in d["failed"]:
            lines.append(f"  failed: {f['file']}: {f['reason']}")
        return "\n".join(lines)


@dataclass
class SourceFile:
    """One source: its bytes, a name for messages and detection, an optional sidecar caption."""

    source: str
    name: str
    data: bytes
    caption: bytes = b""
    base_dir: Path | None = None  # where relative image links resolve (None: `assets` only)
    assets: dict[str, bytes] = field(default_factory=dict)  # uploads: the batch's files by name


def walk(paths: Iterable[Path]) -> tuple[list[SourceFile], list[FileResult]]:
    """Files under `paths` (folders recursively, sorted, hidden names skipped), sidecar captions
    paired with their images; unreadable paths come back as failed results."""
    files: list[Path] = []
    failed: list[FileResult] = []
    for p in paths:
        if p.is_dir():
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
        elif p.is_file():
            files.append(p)
        else:
            failed.append(FileResult(str(p.absolute()), "failed", reason="no such file or folder"))
    absolute = [f.absolute() for f in files]
    images = {f.with_suffix("") for f in absolute if f.suffix.lower() in IMAGE_SUFFIXES}
    out: list[SourceFile] = []
    seen: set[Path] = set()
    for f in absolute:
        if f in seen:
            continue
        seen.add(f)
        if f.suffix.lower() in SIDECAR_SUFFIXES and f.with_suffix("") in images:
            continue  # read with its image
        try:
            data = f.read_bytes()
            caption = b""
            if f.suffix.lower() in IMAGE_SUFFIXES:
                for s in SIDECAR_SUFFIXES:
                    side = f.with_suffix(s)
                    if side.is_file():
                        caption = side.read_bytes()
                        break
        except OSError as e:
            failed.append(FileResult(str(f), "failed", reason=f"cannot read ({e.strerror or e})"))
            continue
        out.append(SourceFile(str(f), f.name, data, caption, f.parent))
    return out, failed


def pair_uploads(files: Sequence[tuple[str, bytes]]) -> list[SourceFile]:
    """Uploaded (name, bytes) -> sources `upload:<name>`; a `name.txt`/`name.md` sent with
    `name.png` is its caption; Markdown/HTML image links resolve to files of the same upload."""
    by_stem = {Path(n).with_suffix("").as_posix(): n for n, _ in files if Path(n).suffix.lower() in IMAGE_SUFFIXES}
    caption_of: dict[str, bytes] = {}
    sidecars: set[str] = set()
    for n, data in files:
        stem = Path(n).with_suffix("").as_posix()
        if Path(n).suffix.lower() in SIDECAR_SUFFIXES and stem in by_stem:
            caption_of[by_stem[stem]] = data
            sidecars.add(n)
    assets = dict(files)
    return [SourceFile(UPLOAD_PREFIX + n, n, data, caption_of.get(n, b""), assets=assets)
            for n, data in files if n not in sidecars]


class Ingestor:
    """Reads, chunks, embeds and syncs sources into one index."""

    def __init__(self, index: DocumentIndex, embed: Embed, version: str, limits: ChunkLimits | None = None,
                 count: TokenCounter = approx_tokens, options: ReadOptions | None = None,
                 metadata: dict[str, Any] | None = None, batch_size: int = 32) -> None:
        self.index, self.embed, self.version = index, embed, version
        self.limits = limits or ChunkLimits()
        self.count = count
        self.options = options or ReadOptions()
        self.metadata = metadata or {}
        self.batch_size = batch_size

    # ------------------------------------------------------------ reading
    def chunks(self, f: SourceFile, digest: str) -> tuple[str, list[Sample], int, list[str]]:
        """(format, samples, images, skipped images) of one source; ReadError/SampleError if unreadable."""
        fmt = detect(f.data, f.name)
        if fmt == "jsonl":
            return fmt, self._jsonl(f, digest), 0, []
        opts = dataclasses.replace(self.options, resolve=self._resolver(f))
        caption = f.caption.decode("utf-8-sig", errors="replace") if f.caption else ""
        parsed = read(f.data, f.name, opts, fmt, caption=caption)
        samples = chunk(parsed, f.source, digest, self.limits, self.count, self.metadata)
        if not samples:
            raise ReadError("no text or images found")
        return fmt, samples, parsed.n_images, parsed.skipped

    def _resolver(self, f: SourceFile):
        outer = self.options.resolve
        base = f.base_dir

        def resolve(src: str) -> bytes:
            if "://" in src or src.startswith("//"):
                if outer is None:
                    raise ReadError("remote images are not fetched (not allow-listed)")
                return outer(src)
            from urllib.parse import unquote

            if base is None:
                name = unquote(src.split("#")[0].split("?")[0]).removeprefix("./")
                if name in f.assets:
                    return f.assets[name]
                raise ReadError("linked file not in this upload")

            p = (base / unquote(src.split("#")[0].split("?")[0])).resolve()
            try:
                return p.read_bytes()
            except OSError as e:
                raise ReadError(f"cannot read {p} ({e.strerror or e})") from None

        return resolve

    def _jsonl(self, f: SourceFile, digest: str) -> list[Sample]:
        import tempfile

        from model.jsonl import Document, JsonlError, iter_jsonl

        # image paths in JSONL are relative to the file: read from where it lives
        if f.base_dir is not None:
            path = Path(f.source)
            records = list(iter_jsonl(path))
        else:  # an upload: paths are refused (base64 only)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "upload.jsonl"
                path.write_bytes(f.data)
                records = list(iter_jsonl(path))
        errors = [(line, str(r)) for line, r in records if isinstance(r, SampleError)]
        errors += [(line, f"a {r.task!r} record is not a document") for line, r in records
                   if not isinstance(r, (SampleError, Document))]
        if errors:
            raise ReadError(str(JsonlError(Path(f.name), errors)).split("\n", 1)[-1].strip())
        out = []
        for line, rec in records:
            s = rec.sample
            s.id = s.id or chunk_id(f.source, line)
            s.metadata = {**self.metadata, **s.metadata, "source": f.source, "source_hash": digest,
                          "format": "jsonl"}
            out.append(s)
        return out

    # ------------------------------------------------------------ syncing
    def read_source(self, f: SourceFile, upsert: bool = False) -> tuple[FileResult, list[Sample], list[str],
                                                                         dict[str, dict]]:
        """Plan one source's sync without writing: (result, samples to embed, ids to delete,
        metadata updates). A failed or unchanged result plans nothing."""
        digest = source_hash(f.data, f.caption)
        existing = self.index.store.source_documents(f.source)
        if existing and all(m.get("source_hash") == digest for _, _, m in existing):
            return FileResult(f.source, "unchanged", existing[0][2].get("format"), [i for i, _, _ in existing],
                              images=sum(s["type"] == "image" for _, sl, _ in existing for s in sl)), [], [], {}
        try:
            fmt, samples, n_images, skipped = self.chunks(f, digest)
        except (ReadError, SampleError) as e:
            return FileResult(f.source, "failed", reason=str(e)), [], [], {}
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            return FileResult(f.source, "failed", fmt, reason=f"document id {dup!r} appears twice"), [], [], {}
        stored = {i: (sl, m) for i, sl, m in existing}
        others = self.index.store.existing_ids([i for i in ids if i not in stored])  # type: ignore[misc]
        if others:
            # identical content under an existing id is not an error: it stays as it is
            by_id = {s.id: s for s in samples}
            clash = [i for i in others if not self._same(i, by_id[i])]
            if clash and not upsert:
                src = others[clash[0]]
                where = f"from {src}" if src else "(added through the API)"
                return FileResult(f.source, "failed", fmt, reason=f"document id {clash[0]!r} exists {where} "
                                  "(use --upsert to replace it)"), [], [], {}
            samples = [s for s in samples if s.id not in others or s.id in clash]
        to_embed, updates = [], {}
        for s in samples:
            old = stored.get(s.id)  # type: ignore[arg-type]
            if old is not None and slices_equal(old[0], s):
                if old[1] != s.metadata:
                    updates[s.id] = s.metadata
            else:
                to_embed.append(s)
        delete = [i for i in stored if i not in set(ids)]
        status = "updated" if existing else "added"
        res = FileResult(f.source, status, fmt, ids, images=n_images, embedded=len(to_embed), removed=len(delete),
                         skipped_images=skipped)
        return res, to_embed, delete, updates

    def _same(self, doc_id: str, sample: Sample) -> bool:
        d = self.index.get(doc_id, with_images=False)
        return d is not None and slices_equal(d.slices, sample)

    def embed_all(self, samples: list[Sample], progress: Callable[[int], None] | None = None) -> list[Embedded]:
        out: list[Embedded] = []
        for a in range(0, len(samples), self.batch_size):
            part = samples[a : a + self.batch_size]
            out += self.embed(part)
            if progress:
                progress(len(part))
        return out

    def sync_file(self, f: SourceFile, upsert: bool = False,
                  progress: Callable[[int], None] | None = None) -> FileResult:
        """Read, embed and write one source (one transaction)."""
        res, to_embed, delete, updates = self.read_source(f, upsert)
        if res.status in ("failed", "unchanged"):
            return res
        embs = self.embed_all(to_embed, progress)
        try:
            self.index.add(list(zip(to_embed, embs, strict=True)), self.version, upsert=True,
                           delete_ids=delete, metadata_updates=updates)
        except KeyError as e:  # a concurrent writer removed a chunk between plan and write
            return FileResult(f.source, "failed", res.format, reason=f"document {e} changed while syncing; re-run")
        return res

    def sync_paths(self, paths: Sequence[Path], prune: bool = False, upsert: bool = False,
                   on_file: Callable[[FileResult], None] | None = None) -> SyncSummary:
        files, failed = walk(paths)
        summary = SyncSummary(results=list(failed))
        for f in files:
            r = self.sync_file(f, upsert)
            summary.results.append(r)
            if r.status == "failed":
                logger.warning("ingest: %s: %s", r.source, r.reason)
            if on_file:
                on_file(r)
        if prune:
            self.prune(summary)
        return summary

    def prune(self, summary: SyncSummary) -> None:
        """Delete the chunks of file sources that no longer exist (uploads are never pruned)."""
        for src, _ in sorted(self.index.store.sources().items()):
            if src.startswith(UPLOAD_PREFIX) or not os.path.isabs(src) or os.path.exists(src):
                continue
            ids = [i for i, _, _ in self.index.store.source_documents(src)]
            if ids:
                try:
                    self.index.delete(ids)
                except KeyError:
                    continue
                summary.pruned += len(ids)
                summary.pruned_sources.append(src)
