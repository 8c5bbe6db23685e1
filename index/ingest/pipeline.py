"""Ingestion: files and folders -> chunks in the index, kept in sync with their sources.

`Ingestor.sync_paths` walks files and folders (recursively, hidden names
skipped), detects each file's format by content, reads it (`index.ingest.readers`),
chunks it (`index.ingest.chunking`) and syncs it:

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

from ..index import DocumentIndex, DocumentVectors
from ..store import slices_equal
from .chunking import (
    ChunkLimits,
    TokenCounter,
    approx_tokens,
    chunk,
    chunk_id,
    limits_for_model,
    source_hash,
)
from .readers import IMAGE_SUFFIXES, SIDECAR_SUFFIXES, ReadError, ReadOptions, detect, read

logger = logging.getLogger(__name__)

Embed = Callable[[list[Sample]], list[DocumentVectors]]
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


@dataclass
class IngestConfig:
    """How sources become chunks: chunk budgets, reader options, metadata added to every chunk,
    and the embedding batch size."""

    limits: ChunkLimits = field(default_factory=ChunkLimits)
    read: ReadOptions = field(default_factory=ReadOptions)
    count: TokenCounter = approx_tokens
    metadata: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    # decoded pixels all the images of one source may cost (`model.sample.pixel_budget`); 0:
    # no budget of its own (an upload's budget covers all its files: the server opens it)
    pixels_per_source: int = 0

    @classmethod
    def for_model(cls, model, max_slices: int = 64, retrieval_k: int = 3, max_images: int = 4,
                  max_tokens: int | None = None, **kw: Any) -> IngestConfig:
        """Chunk budgets that follow the model's context (`chunking.limits_for_model`) and its
        tokenizer; `max_slices` and `retrieval_k` default to the server's defaults."""
        limits = limits_for_model(model, max_slices, retrieval_k, max_images=max_images)
        if max_tokens:
            limits = dataclasses.replace(limits, max_tokens=max_tokens)
        return cls(limits=limits, count=model.backbone.count_text_tokens, **kw)


@dataclass
class SourcePlan:
    """What one write does: samples to store (embedded by `write` unless `vectors` holds their
    vectors already), ids to delete, metadata to replace, and the source's result (file
    sources) — planned without writing anything."""

    samples: list[Sample] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    result: FileResult | None = None
    vectors: list[DocumentVectors] | None = None
    vectors_only: bool = False  # re-embedding: stored documents get new vectors, nothing else

    @property
    def failed(self) -> bool:
        return self.result is not None and self.result.status == "failed"

    @property
    def writes(self) -> bool:
        return bool(self.samples or self.delete or self.updates)


def write(index: DocumentIndex, plans: Sequence[SourcePlan], embed: Embed | None, version: str,
          upsert: bool = True, batch_size: int = 32,
          progress: Callable[[int], None] | None = None) -> list[str]:
    """The one write path: embed what the plans need (in batches of `batch_size`, with progress),
    then store everything in one transaction — samples, deletions and metadata updates (or, for
    re-embedding plans, the new vectors). Returns the stored ids. KeyError as `DocumentIndex.add`
    (an existing id without `upsert`, an unknown id to delete); nothing is written then."""
    pending = [s for p in plans if p.vectors is None for s in p.samples]  # embedded together, in batches
    fresh = iter(embed_in_batches(pending, embed, batch_size, progress))
    docs: list[tuple[Sample, DocumentVectors]] = []
    for p in plans:
        vecs = p.vectors if p.vectors is not None else [next(fresh) for _ in p.samples]
        docs += zip(p.samples, vecs, strict=True)
    if plans and all(p.vectors_only for p in plans):
        index.replace_vectors(docs, version)
        return [s.id for s, _ in docs]  # type: ignore[misc]
    return index.add(docs, version, upsert=upsert, delete_ids=[i for p in plans for i in p.delete],
                     metadata_updates={k: v for p in plans for k, v in p.updates.items()})


def embed_in_batches(samples: list[Sample], embed: Embed | None, batch_size: int,
                     progress: Callable[[int], None] | None = None) -> list[DocumentVectors]:
    if samples and embed is None:
        raise ValueError("samples to store without vectors and no embedding function")
    out: list[DocumentVectors] = []
    for a in range(0, len(samples), batch_size):
        part = samples[a : a + batch_size]
        out += embed(part)  # type: ignore[misc]
        if progress:
            progress(len(part))
    return out


def reembed(index: DocumentIndex, embed: Embed, version: str, dim: int, batch_size: int = 32,
            progress: Callable[[int, int], None] | None = None) -> int:
    """Re-embed every document from its stored slices with another checkpoint. The index switches
    to `version` first (`DocumentIndex.begin_reembed`); each batch commits through `write`, so an
    interrupted run resumes where it stopped. Returns the number of documents re-embedded."""
    index.begin_reembed(version, dim)
    total, done = index.count(), len(index.fids(version))
    if progress:
        progress(done, total)
    while batch := index.samples_with_version_not(version, batch_size):
        write(index, [SourcePlan(batch, vectors_only=True)], embed, version, batch_size=batch_size)
        done += len(batch)
        if progress:
            progress(done, total)
    index.snapshot()
    return done


@dataclass
class Chunked:
    """One source read and chunked (`SourceReader.chunks`): what planning needs of it."""

    format: str
    samples: list[Sample]
    images: int = 0
    skipped: list[str] = field(default_factory=list)


class SourceReader:
    """Reads and chunks sources: a pure function of a source's bytes and the config, without
    the index, so it can run in another process (the server's ingestion workers)."""

    def __init__(self, config: IngestConfig) -> None:
        self.config = config

    def __call__(self, sources: Sequence[SourceFile]) -> list[Chunked | str]:
        """Each source's chunks, or the reason it cannot be read."""
        from model.sample import pixel_budget

        out: list[Chunked | str] = []
        for f in sources:
            try:
                if self.config.pixels_per_source:
                    with pixel_budget(self.config.pixels_per_source):
                        out.append(self.chunks(f, source_hash(f.data, f.caption)))
                else:
                    out.append(self.chunks(f, source_hash(f.data, f.caption)))
            except (ReadError, SampleError) as e:
                out.append(str(e))
        return out

    def chunks(self, f: SourceFile, digest: str) -> Chunked:
        """One source's chunks; ReadError/SampleError if unreadable."""
        fmt = detect(f.data, f.name)
        if fmt == "jsonl":
            return Chunked(fmt, self._jsonl(f, digest))
        opts = dataclasses.replace(self.config.read, resolve=self._resolver(f))
        caption = f.caption.decode("utf-8-sig", errors="replace") if f.caption else ""
        parsed = read(f.data, f.name, opts, fmt, caption=caption)
        samples = chunk(parsed, f.source, digest, self.config.limits, self.config.count, self.config.metadata)
        if not samples:
            raise ReadError("no text or images found")
        return Chunked(fmt, samples, parsed.n_images, parsed.skipped)

    def _resolver(self, f: SourceFile):
        outer = self.config.read.resolve
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

    def _path_resolver(self, f: SourceFile):
        """Image paths of a JSONL source: relative to its folder; a source without one (an
        upload) reads them only through `ReadOptions.resolve_path` (the server's allow-list)."""
        from model.jsonl import path_resolver

        if f.base_dir is not None:
            return path_resolver(f.base_dir, self.config.read.limits.max_image_bytes)
        if self.config.read.resolve_path is not None:
            return self.config.read.resolve_path

        def refuse(value: str, where: str) -> bytes:
            raise SampleError(where, "local paths are not read from uploads (send the image as base64)")

        return refuse

    def _jsonl(self, f: SourceFile, digest: str) -> list[Sample]:
        from model.jsonl import Document, JsonlError, iter_records

        try:
            text = f.data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ReadError(f"JSONL is not UTF-8 text (byte {e.start})") from None
        # lines end at "\n" only, as a file's lines do (JSON strings may hold U+2028)
        records = list(iter_records(text.split("\n"), self._path_resolver(f), self.config.read.limits))
        errors = [(line, str(r)) for line, r in records if isinstance(r, SampleError)]
        errors += [(line, f"a {r.task!r} record is not a document") for line, r in records
                   if not isinstance(r, (SampleError, Document))]
        if errors:
            raise ReadError(str(JsonlError(Path(f.name), errors)).split("\n", 1)[-1].strip())
        out = []
        for line, rec in records:
            s = rec.sample  # type: ignore[union-attr]
            s.id = s.id or chunk_id(f.source, line)
            s.metadata = {**self.config.metadata, **s.metadata, "source": f.source, "source_hash": digest,
                          "format": "jsonl"}
            out.append(s)
        return out



# reads sources -> their chunks or reasons (`SourceReader`, or one that runs it elsewhere)
ReadSources = Callable[[Sequence[SourceFile]], "list[Chunked | str]"]


class Ingestor:
    """Reads, chunks, plans and writes sources into one index. `read` reads the sources that
    changed (default: `SourceReader` in this process; the server runs it in its workers)."""

    def __init__(self, index: DocumentIndex, embed: Embed, version: str, config: IngestConfig | None = None,
                 read: ReadSources | None = None) -> None:
        self.index, self.embed, self.version = index, embed, version
        self.config = config or IngestConfig()
        self.read = read or SourceReader(self.config)

    # ------------------------------------------------------------ planning
    def plan(self, sources: Iterable[SourceFile], upsert: bool = False) -> list[SourcePlan]:
        """Plan the sources' sync without writing: unchanged sources are not read; the others
        are read in one call of `read`, then diffed against the store."""
        sources = list(sources)
        plans: list[SourcePlan | None] = [self._unchanged(f) for f in sources]
        changed = [f for f, p in zip(sources, plans, strict=True) if p is None]
        chunked = iter(self.read(changed) if changed else [])
        return [p if p is not None else self._plan_read(f, next(chunked), upsert)
                for f, p in zip(sources, plans, strict=True)]

    def plan_source(self, f: SourceFile, upsert: bool = False) -> SourcePlan:
        """Plan one source's sync without writing. A failed or unchanged source plans no write."""
        return self.plan([f], upsert)[0]

    def _unchanged(self, f: SourceFile) -> SourcePlan | None:
        digest = source_hash(f.data, f.caption)
        existing = self.index.source_documents(f.source)
        if existing and all(m.get("source_hash") == digest for _, _, m in existing):
            return SourcePlan(result=FileResult(
                f.source, "unchanged", existing[0][2].get("format"), [i for i, _, _ in existing],
                images=sum(s["type"] == "image" for _, sl, _ in existing for s in sl)))
        return None

    def _plan_read(self, f: SourceFile, read: Chunked | str, upsert: bool) -> SourcePlan:
        if isinstance(read, str):
            return SourcePlan(result=FileResult(f.source, "failed", reason=read))
        fmt, samples, n_images, skipped = read.format, read.samples, read.images, read.skipped
        existing = self.index.source_documents(f.source)
        ids: list[str] = [s.id for s in samples]  # type: ignore[misc]  # chunk() and JSONL set every id
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            return SourcePlan(result=FileResult(f.source, "failed", fmt, reason=f"document id {dup!r} appears twice"))
        stored = {i: (sl, m) for i, sl, m in existing}
        others = self.index.existing_ids([i for i in ids if i not in stored])
        if others:
            # identical content under an existing id is not an error: it stays as it is
            by_id = {s.id: s for s in samples}
            clash = [i for i in others if not self._same(i, by_id[i])]
            if clash and not upsert:
                src = others[clash[0]]
                where = f"from {src}" if src else "(added through the API)"
                return SourcePlan(result=FileResult(f.source, "failed", fmt, reason=f"document id {clash[0]!r} "
                                                    f"exists {where} (use --upsert to replace it)"))
            samples = [s for s in samples if s.id not in others or s.id in clash]
        to_embed, updates = [], {}
        for s in samples:
            old = stored.get(s.id)  # type: ignore[arg-type]
            if old is not None and slices_equal(old[0], s):
                if old[1] != s.metadata:
                    updates[str(s.id)] = s.metadata
            else:
                to_embed.append(s)
        delete = [i for i in stored if i not in set(ids)]
        status = "updated" if existing else "added"
        res = FileResult(f.source, status, fmt, ids, images=n_images, embedded=len(to_embed), removed=len(delete),
                         skipped_images=skipped)
        return SourcePlan(to_embed, delete, updates, res)

    def _same(self, doc_id: str, sample: Sample) -> bool:
        d = self.index.get(doc_id, with_images=False)
        return d is not None and slices_equal(d.slices, sample)

    # ------------------------------------------------------------ syncing
    def sync_file(self, f: SourceFile, upsert: bool = False,
                  progress: Callable[[int], None] | None = None) -> FileResult:
        """Plan, embed and write one source (one transaction)."""
        plan = self.plan_source(f, upsert)
        assert plan.result is not None
        if not plan.writes:
            return plan.result
        try:
            write(self.index, [plan], self.embed, self.version, batch_size=self.config.batch_size, progress=progress)
        except KeyError as e:  # a concurrent writer removed a chunk between plan and write
            return FileResult(f.source, "failed", plan.result.format,
                              reason=f"document {e} changed while syncing; re-run")
        return plan.result

    def sync(self, files: Sequence[SourceFile], failed: Sequence[FileResult] = (), prune: bool = False,
             upsert: bool = False, on_file: Callable[[FileResult], None] | None = None) -> SyncSummary:
        """Sync sources already read (`walk`); `failed` are the paths `walk` could not read."""
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

    def sync_paths(self, paths: Sequence[Path], prune: bool = False, upsert: bool = False,
                   on_file: Callable[[FileResult], None] | None = None) -> SyncSummary:
        files, failed = walk(paths)
        return self.sync(files, failed, prune, upsert, on_file)

    def prune(self, summary: SyncSummary) -> None:
        """Delete the chunks of file sources that no longer exist (uploads are never pruned)."""
        for src, _ in sorted(self.index.sources().items()):
            if src.startswith(UPLOAD_PREFIX) or not os.path.isabs(src) or os.path.exists(src):
                continue
            ids = [i for i, _, _ in self.index.source_documents(src)]
            if ids:
                try:
                    self.index.delete(ids)
                except KeyError:
                    continue
                summary.pruned += len(ids)
                summary.pruned_sources.append(src)
