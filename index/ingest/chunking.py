"""Chunking that respects structure: blocks of a read document -> samples.

A document is split at headings (and, for PDFs, at page breaks) into
sections; within a section, text blocks are packed into chunks under a token
budget and an image budget. An image is never separated from the text block
it follows (or, at the start of a section, the one it precedes): a text block
and its images are one unit, and units are not split across chunks unless a
single unit is over the budget (then its text is split at sentence, then word
boundaries). Each chunk is one sample: its heading path as the first line,
then text and images in their order, an image's alt text as a text slice right
after it.

Chunk ids are stable: `<stem>-<hash of the source>-<chunk number>`, so the
same file and chunk give the same id on every run. Metadata: `source`,
`title`, `headings`, `page` (PDF), `chunk`, `chunks`, `source_hash`, `format`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from model.sample import Sample, Slice

from .readers.base import Block, Parsed

TokenCounter = Callable[[str], int]
ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
SENTENCE = re.compile(r"(?<=[.!?])\s+")


class TokenizerCount:
    """Tokens of plain text counted by a fast tokenizer's backend (`tokenizers.Tokenizer`):
    the count `Backbone.count_text_tokens` gives, without transformers, and picklable, so the
    server's ingestion workers chunk exactly as the serving process would."""

    def __init__(self, backend) -> None:
        import copy

        self.backend = copy.deepcopy(backend)  # padding/truncation state is the object's own
        self.backend.no_padding()
        self.backend.no_truncation()

    @classmethod
    def of(cls, backbone) -> TokenizerCount:
        with backbone.lock:  # another thread may be mid-call with padding set
            return cls(backbone.tokenizer.backend_tokenizer)

    def __call__(self, text: str) -> int:
        return len(self.backend.encode(text, add_special_tokens=False).ids)


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 4 characters per token); the index uses the model's."""
    return max(1, len(text) // 4)


@dataclass(frozen=True)
class ChunkLimits:
    max_tokens: int = 400  # text tokens per chunk (the model's tokenizer)
    max_images: int = 4  # image slices per chunk
    max_slices: int = 64  # the server's SUGAR_MAX_SLICES
    max_chars: int = 16_384  # one text slice (SampleLimits.max_text_chars)

    def __post_init__(self) -> None:
        if self.max_tokens < 16 or self.max_images < 1 or self.max_slices < 2:
            raise ValueError("chunk limits: max_tokens >= 16, max_images >= 1, max_slices >= 2")


def limits_for_model(model, max_slices: int = 64, retrieval_k: int = 3, reserve_tokens: int = 384,
                     max_images: int = 4) -> ChunkLimits:
    """Budgets that follow the model's context: `retrieval_k` chunks (their images included)
    plus the question and the answer (`reserve_tokens`) fit in `max_positions`."""
    bb = model.backbone
    per_doc = (bb.max_positions - reserve_tokens) // max(1, retrieval_k)
    images = max(1, min(max_images, max_slices // 2))
    text_budget = per_doc - images * bb.image_token_count()
    if text_budget < 64:  # a model with a tiny context: fewer images per chunk
        images = 1
        text_budget = max(64, per_doc - bb.image_token_count())
    return ChunkLimits(max_tokens=text_budget, max_images=images, max_slices=max_slices)


@dataclass
class _Unit:
    texts: list[str] = field(default_factory=list)
    images: list[Block] = field(default_factory=list)  # in order, after the texts
    lead: list[Block] = field(default_factory=list)  # images before the text (section start)
    tokens: int = 0
    page: int | None = None

    @property
    def n_images(self) -> int:
        return len(self.images) + len(self.lead)

    def n_slices(self) -> int:
        alts = sum(bool(b.text) for b in (*self.lead, *self.images))
        return self.n_images + alts + (1 if self.texts else 0)


def source_hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def chunk_id(source: str, n: int) -> str:
    stem = ID_UNSAFE.sub("-", source.rsplit("/", 1)[-1]).strip("-._")[:48] or "doc"
    return f"{stem}-{hashlib.sha256(source.encode()).hexdigest()[:12]}-{n}"


def _split_text(text: str, max_tokens: int, count: TokenCounter) -> list[str]:
    """Split one over-budget text at sentence, then word boundaries. Linear in the text: a
    piece's tokens are kept as a running sum (exact where the tokenizer splits at spaces) and
    counted exactly only near the budget; a word longer than the budget is cut by characters
    within a bounded window."""
    out: list[str] = []
    cur, cur_n = "", 0
    near = max_tokens * 0.9
    for piece in SENTENCE.split(text):
        words = [piece] if len(piece) <= max_tokens * 16 and count(piece) <= max_tokens else piece.split(" ")
        for w in words:
            cand = f"{cur} {w}".strip()
            n = cur_n + count(" " + w) if cur else count(cand)
            if n > near:
                n = count(cand)
            if cur and n > max_tokens:
                out.append(cur)
                cur, cur_n = w, count(w)
            else:
                cur, cur_n = cand, n
    if cur:
        out.append(cur)
    final: list[str] = []
    for t in out:
        final += _cut(t, max_tokens, count)
    return [t for t in final if t.strip()]


def _cut(t: str, max_tokens: int, count: TokenCounter) -> list[str]:
    """`t` in pieces of at most `max_tokens` tokens, cut by characters (a single word longer
    than the budget); each count reads a window of at most 16 characters per token."""
    pieces: list[str] = []
    window = max_tokens * 16
    while t:
        head = t[:window]
        n = count(head)
        if n <= max_tokens:
            pieces.append(head)
            t = t[len(head):]
            continue
        cut = max(1, len(head) * max_tokens // n)
        while cut > 1 and count(head[:cut]) > max_tokens:
            cut = max(1, cut * 9 // 10)
        pieces.append(head[:cut])
        t = t[cut:]
    return pieces


def _sections(blocks: list[Block]) -> list[tuple[list[str], int | None, list[Block]]]:
    """(heading path, page, blocks) per section: a heading or a new page starts one."""
    path: list[tuple[int, str]] = []
    out: list[tuple[list[str], int | None, list[Block]]] = []
    cur: list[Block] = []
    page: int | None = None

    def close() -> None:
        if cur:
            out.append(([t for _, t in path], page, list(cur)))
            cur.clear()

    for b in blocks:
        if b.kind == "heading":
            close()
            path = [(lvl, t) for lvl, t in path if lvl < b.level] + [(b.level, b.text)]
            continue
        if b.page is not None and b.page != page:
            close()
            page = b.page
        cur.append(b)
    close()
    return out


def _units(blocks: list[Block], limits: ChunkLimits, count: TokenCounter) -> list[_Unit]:
    units: list[_Unit] = []
    lead: list[Block] = []
    for b in blocks:
        if b.kind == "image":
            if units and units[-1].n_images < limits.max_images:
                units[-1].images.append(b)
            elif units:
                units.append(_Unit(images=[b], page=b.page))
            else:
                lead.append(b)
            continue
        for piece in (_split_text(b.text, limits.max_tokens, count) if count(b.text) > limits.max_tokens
                      else [b.text]):
            u = _Unit(texts=[piece], tokens=count(piece), page=b.page)
            if lead:
                u.lead, lead = lead[: limits.max_images], lead[limits.max_images:]
            units.append(u)
    while lead:  # a section of images only
        units.append(_Unit(lead=lead[: limits.max_images], page=lead[0].page))
        lead = lead[limits.max_images:]
    return units


def _to_slices(header: str, units: list[_Unit], max_chars: int) -> list[Slice]:
    slices: list[Slice] = []
    pending: list[str] = [header] if header else []

    def flush() -> None:
        text = "\n\n".join(pending)
        pending.clear()
        while text:  # one slice holds at most max_chars (SampleLimits.max_text_chars)
            slices.append(Slice.of_text(text[:max_chars]))
            text = text[max_chars:]

    for u in units:
        for b in u.lead:
            flush()
            slices.append(Slice.of_image(b.image))  # type: ignore[arg-type]
            if b.text:
                slices.append(Slice.of_text(b.text))
        pending.extend(u.texts)
        for b in u.images:
            flush()
            slices.append(Slice.of_image(b.image))  # type: ignore[arg-type]
            if b.text:
                slices.append(Slice.of_text(b.text))
    flush()
    return slices


def chunk(parsed: Parsed, source: str, src_hash: str, limits: ChunkLimits | None = None,
          count: TokenCounter = approx_tokens, metadata: dict | None = None) -> list[Sample]:
    """The samples of one read document (ids, metadata set); [] for a document with no content."""
    limits = limits or ChunkLimits()
    title = parsed.title or source.rsplit("/", 1)[-1]
    groups: list[tuple[list[str], int | None, list[_Unit]]] = []
    for path, page, blocks in _sections(parsed.blocks):
        units = _units(blocks, limits, count)
        cur: list[_Unit] = []
        tokens = images = slices = 0
        header_tokens = count(" > ".join(path)) if path else 0
        for u in units:
            if cur and (header_tokens + tokens + u.tokens > limits.max_tokens
                        or images + u.n_images > limits.max_images
                        or slices + u.n_slices() + 1 > limits.max_slices):
                groups.append((path, page, cur))
                cur, tokens, images, slices = [], 0, 0, 0
            cur.append(u)
            tokens += u.tokens
            images += u.n_images
            slices += u.n_slices()
        if cur:
            groups.append((path, page, cur))
    samples: list[Sample] = []
    for n, (path, page, units) in enumerate(groups):
        header = " > ".join(path)
        meta = {**(metadata or {}), "source": source, "title": title, "headings": path,
                "chunk": n, "chunks": len(groups), "source_hash": src_hash, "format": parsed.format}
        first_page = next((u.page for u in units if u.page is not None), page)
        if first_page is not None:
            meta["page"] = first_page
        samples.append(Sample(_to_slices(header, units, limits.max_chars), id=chunk_id(source, n), metadata=meta))
    return samples
