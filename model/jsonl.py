"""The JSONL format for users' own data (one object per line, by "task").

    document (no task):  {"id": str, "slices": [...], "metadata"?: {...}}
    caption / vqa:       {"task": "caption"|"vqa", "slices": [...], "answer": str}
                         (vqa: the question is the last text slice)
    pair:                {"task": "pair", "query": sample, "positive": sample,
                          "negatives"?: [sample, ...]}
    rag:                 {"task": "rag", "context": [sample, ...], "query": sample, "answer": str}

A sample is {"slices": [...]} with slices {"type": "text", "text": ...} or
{"type": "image", "path"|"base64": ...}; image paths are relative to the
JSONL file (an uploaded file has no folder: its paths go through the
server's allow-list). Every bad line is reported with its line number (`JsonlError`
lists them all); none is skipped silently.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sample import DEFAULT_LIMITS, DOCUMENT_ID, Sample, SampleError, SampleLimits

TASKS = ("caption", "vqa", "pair", "rag")


@dataclass
class Document:
    id: str
    sample: Sample
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerativeRecord:
    task: str  # "caption" | "vqa"
    sample: Sample
    answer: str


@dataclass
class PairRecord:
    query: Sample
    positive: Sample
    negatives: list[Sample] = field(default_factory=list)
    task: str = "pair"


@dataclass
class RagRecord:
    context: list[Sample]
    query: Sample
    answer: str
    task: str = "rag"


Record = Document | GenerativeRecord | PairRecord | RagRecord


class JsonlError(ValueError):
    def __init__(self, path: Path, errors: list[tuple[int, str]]) -> None:
        self.path, self.errors = path, errors
        shown = "\n".join(f"  {path}:{line}: {msg}" for line, msg in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{path}: {len(errors)} bad line(s)\n{shown}{more}")


def path_resolver(base: Path, max_bytes: int = DEFAULT_LIMITS.max_image_bytes):
    """Image paths relative to `base` (a JSONL file's folder); only regular files within
    `max_bytes` are read (never a device or a pipe)."""

    def resolve(value: str, where: str) -> bytes:
        import stat

        p = Path(value)
        p = p if p.is_absolute() else base / p
        try:
            st = p.stat()
            if not stat.S_ISREG(st.st_mode):
                raise SampleError(where, f"{value!r} is not a regular file")
            if st.st_size > max_bytes:
                raise SampleError(where, f"{value!r}: {st.st_size} bytes exceed the limit of {max_bytes}")
            return p.read_bytes()
        except OSError as e:
            raise SampleError(where, f"cannot read image {value!r} ({e.strerror or e})") from None

    return resolve


PathResolver = Callable[[str, str], bytes]


class _Line:
    """One JSON object's fields, read with errors that name them."""

    def __init__(self, obj: dict, resolve: PathResolver, limits: SampleLimits) -> None:
        self.obj, self.resolve, self.limits = obj, resolve, limits

    def sample(self, value: Any, where: str) -> Sample:
        return Sample.from_dict(value, limits=self.limits, resolve_path=self.resolve, where=where)

    def need(self, key: str, kind: type, what: str) -> Any:
        if key not in self.obj:
            raise SampleError(key, "missing")
        if not isinstance(self.obj[key], kind):
            raise SampleError(key, f"must be {what}")
        return self.obj[key]

    def only(self, *keys: str) -> None:
        unknown = sorted(set(self.obj) - set(keys))
        if unknown:
            raise SampleError("line", f"unknown fields {unknown}")


def _document(r: _Line) -> Document:
    r.only("id", "slices", "metadata")
    doc_id = r.need("id", str, "a string")
    if not re.fullmatch(DOCUMENT_ID, doc_id):
        raise SampleError("id", f"{doc_id[:80]!r} is not a document id (letters, digits, _ first, then "
                          "also . : @ + -; at most 256 characters)")
    s = r.sample({k: r.obj[k] for k in ("slices", "metadata") if k in r.obj}, "document")
    return Document(id=doc_id, sample=Sample(s.slices, id=doc_id, metadata=s.metadata), metadata=s.metadata)


def _generative(r: _Line, task: str) -> GenerativeRecord:
    r.only("task", "slices", "answer", "id", "metadata")
    answer = r.need("answer", str, "a string")
    s = r.sample({"slices": r.obj.get("slices")}, "sample")
    if task == "vqa" and s.slices[-1].type != "text":
        raise SampleError("slices", "a vqa sample ends with its question (a text slice)")
    return GenerativeRecord(task=task, sample=s, answer=answer)


def _pair(r: _Line) -> PairRecord:
    r.only("task", "query", "positive", "negatives")
    negs = r.obj.get("negatives", [])
    if not isinstance(negs, list):
        raise SampleError("negatives", "must be a list")
    return PairRecord(query=r.sample(r.obj.get("query"), "query"),
                      positive=r.sample(r.obj.get("positive"), "positive"),
                      negatives=[r.sample(n, f"negatives[{i}]") for i, n in enumerate(negs)])


def _rag(r: _Line) -> RagRecord:
    r.only("task", "context", "query", "answer")
    ctx = r.need("context", list, "a list of samples")
    return RagRecord(context=[r.sample(c, f"context[{i}]") for i, c in enumerate(ctx)],
                     query=r.sample(r.obj.get("query"), "query"), answer=r.need("answer", str, "a string"))


def parse_record(obj: Any, resolve: PathResolver, limits: SampleLimits = DEFAULT_LIMITS) -> Record:
    """One record; `resolve(path, where)` reads the image paths it names (or refuses them)."""
    if not isinstance(obj, dict):
        raise SampleError("line", "must be a JSON object")
    r = _Line(obj, resolve, limits)
    task = obj.get("task")
    if task is None:
        return _document(r)
    if task in ("caption", "vqa"):
        return _generative(r, task)
    if task == "pair":
        return _pair(r)
    if task == "rag":
        return _rag(r)
    raise SampleError("task", f"unknown task {task!r} (expected one of {list(TASKS)} or none)")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text} is beyond the double range")
    return v


def iter_records(lines: Iterable[str], resolve: PathResolver, limits: SampleLimits = DEFAULT_LIMITS
                 ) -> Iterator[tuple[int, Record | SampleError]]:
    """(line number, record or the error of that line) for every non-blank line."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_constant=_not_json, parse_float=_finite)
        except json.JSONDecodeError as e:
            yield lineno, SampleError("line", f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        except (ValueError, RecursionError) as e:
            why = e if isinstance(e, ValueError) else "nested too deeply"
            yield lineno, SampleError("line", f"invalid JSON ({why})")
            continue
        try:
            yield lineno, parse_record(obj, resolve, limits)
        except SampleError as e:
            yield lineno, e


def iter_jsonl(
    path: str | Path, limits: SampleLimits = DEFAULT_LIMITS
) -> Iterator[tuple[int, Record | SampleError]]:
    """The records of a file; image paths are relative to the file."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        yield from iter_records(fh, path_resolver(path.parent, limits.max_image_bytes), limits)


def read_jsonl(path: str | Path, limits: SampleLimits = DEFAULT_LIMITS) -> list[Record]:
    """All records; raises `JsonlError` listing every bad line (none skipped)."""
    records: list[Record] = []
    errors: list[tuple[int, str]] = []
    for lineno, item in iter_jsonl(path, limits):
        if isinstance(item, SampleError):
            errors.append((lineno, str(item)))
        else:
            records.append(item)
    if errors:
        raise JsonlError(Path(path), errors)
    return records
