"""What every reader returns: a document as ordered blocks (headings, text, images).

A reader takes the file's bytes and its name (plus, for formats that link to
other files, a way to resolve those links) and returns a `Parsed` document:
the blocks in reading order, a title, and the images it had to skip with the
reason for each. The chunker (`index.ingest.chunking`) turns blocks into samples.
Readers raise `ReadError` with a reason a person can act on; they never
return a half-read document silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from model.sample import DEFAULT_LIMITS, BudgetExceeded, SampleError, SampleLimits, decode_image

BlockKind = Literal["heading", "text", "image"]


class ReadError(ValueError):
    """A file that cannot be read as a document (the message says why)."""


@dataclass
class Block:
    kind: BlockKind
    text: str = ""  # heading / text; for an image: its alt text or caption ("" if none)
    level: int = 0  # heading level 1-6
    image: Image.Image | None = None
    page: int | None = None  # 1-based page (PDF)


@dataclass
class Parsed:
    format: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # images left out, each with its reason

    @property
    def n_images(self) -> int:
        return sum(b.kind == "image" for b in self.blocks)


# An image reference inside a document (Markdown/HTML `src`) -> its bytes; raises
# ReadError (the reference is skipped and counted) when it is not allowed or unreadable.
Resolver = Callable[[str], bytes]


@dataclass
class ReadOptions:
    limits: SampleLimits = DEFAULT_LIMITS
    resolve: Resolver | None = None  # None: every linked image is skipped (counted)
    # image paths named by a JSONL document in a source without a folder (an upload):
    # (path, where) -> bytes, or SampleError; None: such paths are refused
    resolve_path: Callable[[str, str], bytes] | None = None
    pdf_page_images: str = "auto"  # "auto" (pages without a text layer) | "always" | "never"
    pdf_render_scale: float = 1.0  # 72 dpi x scale
    max_elements: int = 200_000  # HTML: more elements than this is refused (a "bomb")
    max_html_depth: int = 1024  # HTML: elements nested deeper are refused before the parse


_CHARSET = re.compile(rb"""(?:charset|encoding)\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.I)


def decode_text(data: bytes) -> str:
    """Text of a file: UTF-8 (BOM dropped), else the charset the file declares (HTML
    `<meta charset>`, an XML declaration), else Windows-1252 (a superset of Latin-1 for
    printable text). Raises UnicodeDecodeError only when none of these applies."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as first:
        m = _CHARSET.search(data[:4096])
        for enc in ([m.group(1).decode("ascii")] if m else []) + ["cp1252"]:
            try:
                return data.decode(enc)
            except (LookupError, UnicodeDecodeError):
                continue
        raise first


def load_image(raw: bytes, where: str, limits: SampleLimits) -> Image.Image:
    """Bytes -> RGB image under the sample limits (GIF/WebP: first frame)."""
    try:
        return decode_image(raw, where, limits)
    except BudgetExceeded:
        raise  # the whole request is over its budget: not one image to skip
    except SampleError as e:
        raise ReadError(e.message) from None


def data_uri(src: str) -> bytes:
    """Decode a `data:[mime][;base64],payload` URI."""
    import base64
    import binascii
    from urllib.parse import unquote_to_bytes

    head, sep, payload = src[5:].partition(",")
    if not sep:
        raise ReadError("malformed data: URI (no comma)")
    if head.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as e:
            raise ReadError(f"data: URI is not valid base64 ({e})") from None
    return unquote_to_bytes(payload)


def resolve_image(src: str, opts: ReadOptions, where: str, parsed: Parsed) -> Image.Image | None:
    """An image reference -> image, or None with the reason recorded in `parsed.skipped`."""
    try:
        if src.startswith("data:"):
            raw = data_uri(src)
        elif opts.resolve is None:
            raise ReadError("linked images are not read here")
        else:
            raw = opts.resolve(src)
        return load_image(raw, where, opts.limits)
    except ReadError as e:
        shown = src if len(src) <= 80 else src[:77] + "..."
        parsed.skipped.append(f"{shown}: {e}")
        return None
