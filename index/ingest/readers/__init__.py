"""Readers: files as users have them -> ordered interleaved blocks.

One interface for every format: `read(data, name, opts)` -> `Parsed`
(see `base`). `detect(data, name)` picks the format from the content first
(magic bytes, markup), the extension second; archives and unknown binary
files are refused with the reason. JSONL files of documents are not read
here: they already are samples (`model.jsonl`), and `index.ingest` adds them
as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePath

from .base import Block, Parsed, ReadError, ReadOptions, decode_text
from .html import read_html
from .markdown import read_markdown
from .pdf import read_pdf
from .plain import read_image, read_text

__all__ = ["Block", "Parsed", "ReadError", "ReadOptions", "detect", "read", "READERS", "SIDECAR_SUFFIXES",
           "IMAGE_SUFFIXES"]

READERS: dict[str, Callable[[bytes, str, ReadOptions], Parsed]] = {
    "markdown": read_markdown, "html": read_html, "pdf": read_pdf, "image": read_image, "text": read_text,
}
FORMATS = (*READERS, "jsonl")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}
SIDECAR_SUFFIXES = (".txt", ".md")
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}

_ARCHIVES = [
    (b"PK\x03\x04", "zip archive"), (b"PK\x05\x06", "zip archive"), (b"\x1f\x8b", "gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "7z archive"), (b"Rar!\x1a\x07", "rar archive"), (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ\x00", "xz archive"), (b"\x28\xb5\x2f\xfd", "zstd archive"),
]


def _image_magic(head: bytes) -> bool:
    return (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff")
            or head[:6] in (b"GIF87a", b"GIF89a") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"))


def detect(data: bytes, name: str) -> str:
    """The format of a file: one of FORMATS, or ReadError naming what it is instead."""
    head = data[:1024]
    suffix = PurePath(name).suffix.lower()
    if b"%PDF-" in head:
        return "pdf"
    if _image_magic(head):
        return "image"
    for magic, what in _ARCHIVES:
        if head.startswith(magic):
            raise ReadError(f"{what}: archives are not read (unpack it and add the files)")
    if len(data) > 262 and data[257:262] == b"ustar":
        raise ReadError("tar archive: archives are not read (unpack it and add the files)")
    if not data.strip():
        raise ReadError("empty file")
    controls = sum(b < 32 and b not in (9, 10, 12, 13) for b in head)
    if b"\x00" in head or controls > len(head) // 10:
        if suffix in IMAGE_SUFFIXES:
            raise ReadError(f"not a readable image (the content is not {suffix[1:].upper()})")
        raise ReadError("binary file of an unsupported type (supported: Markdown, HTML, PDF, "
                        "PNG/JPEG/WebP/GIF images, text, JSONL)")
    try:
        text = decode_text(data)
    except UnicodeDecodeError:
        raise ReadError("binary file of an unsupported type (supported: Markdown, HTML, PDF, "
                        "PNG/JPEG/WebP/GIF images, text, JSONL)") from None
    if "\x00" in text:
        raise ReadError("binary file of an unsupported type (NUL bytes in text)")
    start = text.lstrip()[:512].lower()
    if suffix in HTML_SUFFIXES or start.startswith(("<!doctype html", "<html")) or (
            suffix not in MARKDOWN_SUFFIXES and start.startswith("<") and "<body" in text[:4096].lower()):
        return "html"
    if suffix == ".jsonl" or (suffix not in MARKDOWN_SUFFIXES | {".txt"} and start.startswith("{")
                              and '"slices"' in text[:4096]):
        return "jsonl"
    if suffix in MARKDOWN_SUFFIXES or suffix == "":
        return "markdown"
    return "text"  # .txt, source code, logs...: paragraphs as they are


def read(data: bytes, name: str, opts: ReadOptions | None = None, fmt: str | None = None,
         caption: str = "") -> Parsed:
    opts = opts or ReadOptions()
    fmt = fmt or detect(data, name)
    if fmt == "jsonl":
        raise ReadError("JSONL documents are added as they are (index.ingest), not read as blocks")
    if fmt == "image":
        return read_image(data, name, opts, caption)
    try:
        return READERS[fmt](data, name, opts)
    except UnicodeDecodeError:
        raise ReadError("not valid UTF-8 text") from None
    except RecursionError:
        raise ReadError("document nested too deeply to read") from None
