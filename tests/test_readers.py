"""Readers (Markdown, HTML, PDF, images, text), format detection and structure-aware chunking."""

from __future__ import annotations

import pytest

from index.ingest.chunking import ChunkLimits, approx_tokens, chunk, chunk_id
from index.ingest.readers import Block, Parsed, ReadError, ReadOptions, detect, read
from tests.conftest import make_image, png_bytes
from tests.docs_fixtures import data_uri, make_pdf


def kinds(p: Parsed) -> list[tuple[str, str]]:
    return [(b.kind, b.text) for b in p.blocks]


def local(files: dict[str, bytes]) -> ReadOptions:
    def resolve(src: str) -> bytes:
        if src not in files:
            raise ReadError("not found")
        return files[src]

    return ReadOptions(resolve=resolve)


# ------------------------------------------------------------------ Markdown
def test_markdown_keeps_order_headings_lists_tables_code_and_images_in_place():
    md = (f"# Guide\n\nIntro *text*.\n\n## Setup\n\n- one\n- two\n\n![red square]({data_uri(1)})\n\n"
          "| a | b |\n|---|---|\n| 1 | 2 |\n\n```\nrun it\n```\n\n![local](pics/x.png)\n")
    p = read(md.encode(), "g.md", local({"pics/x.png": png_bytes(make_image(2))}))
    assert p.format == "markdown" and p.title == "Guide"
    assert kinds(p) == [("heading", "Guide"), ("text", "Intro text."), ("heading", "Setup"), ("text", "- one"),
                        ("text", "- two"), ("image", "red square"), ("text", "a | b"), ("text", "1 | 2"),
                        ("text", "run it"), ("image", "local")]
    assert [b.level for b in p.blocks if b.kind == "heading"] == [1, 2]
    assert p.blocks[5].image.size == (40, 30) and p.skipped == []


def test_markdown_unresolvable_images_are_skipped_counted_and_keep_their_alt_text():
    p = read(b"Text.\n\n![a map](http://127.0.0.1:9/map.png) and ![](missing.png)\n", "n.md", ReadOptions())
    assert kinds(p) == [("text", "Text."), ("text", "a map"), ("text", "and")]
    assert len(p.skipped) == 2 and all("not read here" in s for s in p.skipped)


def test_markdown_image_inside_a_paragraph_splits_it_in_order():
    p = read(f"before ![x]({data_uri()}) after\n".encode(), "a.md")
    assert kinds(p) == [("text", "before"), ("image", "x"), ("text", "after")]


# ------------------------------------------------------------------ HTML
def test_html_main_text_in_order_scripts_styles_navigation_dropped():
    html = (f"<html><head><title>Harbour</title><style>p{{}}</style></head><body><nav>menu</nav>"
            f"<main><h1>Boats</h1><p>Leave at <b>dawn</b>.</p><script>alert(1)</script>"
            f"<figure><img src='{data_uri(3)}'><figcaption>A boat at dawn</figcaption></figure>"
            f"<table><tr><th>day</th><th>boats</th></tr><tr><td>Mon</td><td>3</td></tr></table>"
            f"<ul><li>one</li><li>two</li></ul></main><footer>(c)</footer></body></html>")
    p = read(html.encode(), "h.html")
    assert p.title == "Harbour"
    assert kinds(p) == [("heading", "Boats"), ("text", "Leave at dawn."), ("image", "A boat at dawn"),
                        ("text", "day | boats"), ("text", "Mon | 3"), ("text", "one"), ("text", "two")]
    assert "alert" not in str(kinds(p)) and "menu" not in str(kinds(p))


def test_html_remote_images_only_through_the_resolver():
    html = b"<p>x</p><img src='http://127.0.0.1:1/a.png' alt='remote'>"
    p = read(html, "h.html")
    assert kinds(p) == [("text", "x"), ("text", "remote")] and len(p.skipped) == 1
    p = read(html, "h.html", ReadOptions(resolve=lambda src: png_bytes(make_image(5))))
    assert [b.kind for b in p.blocks] == ["text", "image"] and p.skipped == []


def test_html_bombs_deep_nesting_is_refused_or_read_and_too_many_elements_is_refused():
    deep = b"<div>" * 50_000 + b"deep text" + b"</div>" * 50_000
    with pytest.raises(ReadError, match="nested deeper than the limit of 1024 elements"):
        read(deep, "d.html")  # before the parse, whose cost grows with the square of the depth
    p = read(deep, "d.html", ReadOptions(max_elements=100_000, max_html_depth=60_000))
    assert ("text", "deep text") in kinds(p)  # the walk itself is iterative: no depth breaks it
    with pytest.raises(ReadError, match="elements exceeds the limit of 1000"):
        read(b"<p>x</p>" * 2000, "w.html", ReadOptions(max_elements=1000))


# ------------------------------------------------------------------ PDF
def test_pdf_text_per_page_with_embedded_images_in_place():
    pdf = make_pdf([["Sales rose in spring.", make_image(3, (80, 60)), "Costs fell."], ["Outlook is calm."]])
    p = read(pdf, "r.pdf")
    assert p.format == "pdf" and p.title == "Quarterly report"
    assert [(b.kind, b.text, b.page) for b in p.blocks] == [
        ("text", "Sales rose in spring.", 1), ("image", "", 1), ("text", "Costs fell.", 1),
        ("text", "Outlook is calm.", 2)]


def test_pdf_page_images_auto_renders_pages_without_text_always_renders_all():
    pdf = make_pdf([[make_image(1, (80, 60))], ["Only text here."]])
    auto = read(pdf, "s.pdf")
    assert [(b.kind, b.text, b.page) for b in auto.blocks] == [("image", "Page 1", 1),
                                                               ("text", "Only text here.", 2)]
    always = read(pdf, "s.pdf", ReadOptions(pdf_page_images="always"))
    assert [(b.kind, b.page) for b in always.blocks] == [("image", 1), ("image", 2), ("text", 2)]
    never = read(pdf, "s.pdf", ReadOptions(pdf_page_images="never"))
    assert [(b.kind, b.page) for b in never.blocks] == [("image", 1), ("text", 2)]


def test_pdf_encrypted_and_corrupt_are_refused_with_the_reason():
    with pytest.raises(ReadError, match="encrypted PDF"):
        read(make_pdf([["secret"]], encrypt=True), "e.pdf")
    good = make_pdf([["text"]])
    with pytest.raises(ReadError, match="not a readable PDF"):
        read(good[: len(good) // 3], "t.pdf")


# ------------------------------------------------------------------ images and text
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_images_with_sidecar_caption(fmt):
    p = read(png_bytes(make_image(1), fmt), f"a.{fmt.lower()}", caption="A caption.\n")
    assert p.format == "image" and p.title == "a" and kinds(p)[1] == ("text", "A caption.")
    assert p.blocks[0].image.mode == "RGB"


def test_truncated_image_is_refused():
    raw = png_bytes(make_image(1, (200, 200)))
    with pytest.raises(ReadError, match="cannot decode image"):
        read(raw[: len(raw) // 2], "t.png")


def test_html_in_a_declared_legacy_charset_reads():
    html = '<?xml version="1.0" encoding="ISO-8859-1"?><html><body><p>Caf\u00e9 cr\u00e8me</p></body></html>'
    assert kinds(read(html.encode("latin-1"), "x.html")) == [("text", "Caf\u00e9 cr\u00e8me")]


def test_text_paragraphs():
    assert kinds(read(b"one\r\n\r\ntwo\n\n\n", "n.txt")) == [("text", "one"), ("text", "two")]


# ------------------------------------------------------------------ detection
@pytest.mark.parametrize(("data", "name", "fmt"), [
    (b"%PDF-1.7\n...", "report.bin", "pdf"),
    (png_bytes(make_image()), "photo.pdf", "image"),  # content wins over the extension
    (b"<!DOCTYPE html><p>x", "page", "html"),
    (b"<div><body>x</body></div>", "frag.txt2", "html"),
    (b'{"id": "a", "slices": []}\n', "docs", "jsonl"),
    (b"plain words", "notes.txt", "text"),
    (b"int main(void) { return 0; }", "prog.c", "text"),
    ("<html><p>caf\u00e9</p>".encode("latin-1"), "old.html", "html"),  # not UTF-8: read as Latin-1
    (b"# Title\n\ntext", "README", "markdown"),
])
def test_detect_by_content(data, name, fmt):
    assert detect(data, name) == fmt


@pytest.mark.parametrize(("data", "reason"), [
    (b"PK\x03\x04rest", "zip archive"), (b"\x1f\x8b\x08rest", "gzip archive"),
    (b"\x00\x01\x02\xff\xfe", "binary file of an unsupported type"), (b"  \n", "empty file"),
])
def test_detect_refuses_archives_and_unknown_binaries(data, reason):
    with pytest.raises(ReadError, match=reason):
        detect(data, "x.md")


# ------------------------------------------------------------------ chunking
def test_chunks_split_at_headings_carry_heading_path_and_stable_ids():
    p = read(b"# A\n\npara a.\n\n## B\n\npara b.\n\n# C\n\npara c.\n", "/n/x.md")
    samples = chunk(p, "/n/x.md", "h1")
    assert [s.metadata["headings"] for s in samples] == [["A"], ["A", "B"], ["C"]]
    assert [s.slices[0].text for s in samples] == ["A\n\npara a.", "A > B\n\npara b.", "C\n\npara c."]
    assert [s.id for s in samples] == [chunk_id("/n/x.md", n) for n in range(3)]
    assert samples[0].id == chunk_id("/n/x.md", 0) and samples[0].id.startswith("x.md-")
    again = chunk(read(b"# A\n\npara a.\n\n## B\n\npara b.\n\n# C\n\npara c.\n", "/n/x.md"), "/n/x.md", "h1")
    assert [s.id for s in again] == [s.id for s in samples]
    m = samples[1].metadata
    assert m == {"source": "/n/x.md", "title": "A", "headings": ["A", "B"], "chunk": 1, "chunks": 3,
                 "source_hash": "h1", "format": "markdown"}


def test_chunks_respect_token_and_image_budgets_and_keep_images_with_their_text():
    blocks = []
    for i in range(6):
        blocks.append(Block("text", f"paragraph {i} " + "word " * 30))
        blocks.append(Block("image", f"figure {i}", image=make_image(i)))
    limits = ChunkLimits(max_tokens=90, max_images=2)
    samples = chunk(Parsed("markdown", "t", blocks), "/t.md", "h", limits)
    for s in samples:
        texts = [x.text for x in s.slices if x.type == "text" and not x.text.startswith("figure")]
        assert sum(approx_tokens(t) for t in texts) <= 90
        assert len(s.images) <= 2
        # every image directly follows the paragraph it belongs to, its alt right after it
        mods = s.modalities
        for k, x in enumerate(s.slices):
            if x.type == "image":
                assert mods[k - 1] == "text" and s.slices[k + 1].text.startswith("figure")
    joined = [x.text for s in samples for x in s.slices if x.type == "text"]
    order = [int(t.split()[1]) for t in joined if t.startswith(("paragraph", "figure"))]
    assert order == sorted(order)  # nothing reordered or lost
    assert sum(len(s.images) for s in samples) == 6


def test_an_over_budget_paragraph_is_split_at_sentences():
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    samples = chunk(Parsed("text", "t", [Block("text", text)]), "/t.txt", "h", ChunkLimits(max_tokens=30))
    parts = [s.slices[0].text for s in samples]
    assert len(parts) > 3 and all(approx_tokens(t) <= 30 for t in parts)
    assert all(t.endswith(".") for t in parts)
    assert " ".join(parts) == text


def _split_reference(text: str, max_tokens: int, count) -> list[str]:
    """The greedy split counted exactly at every word (what the running sum must reproduce)."""
    import re

    out, cur = [], ""
    for piece in re.split(r"(?<=[.!?])\s+", text):
        for w in [piece] if count(piece) <= max_tokens else piece.split(" "):
            cand = f"{cur} {w}".strip()
            if cur and count(cand) > max_tokens:
                out.append(cur)
                cur = w
            else:
                cur = cand
    return out + [cur] if cur else out


def test_over_budget_text_splits_as_the_exact_greedy_reference_in_linear_time(tiny_model):
    import random
    import time

    from index.ingest.chunking import TokenizerCount, _split_text

    count = TokenizerCount.of(tiny_model.backbone)
    rng = random.Random(0)
    words = ["alpha", "beta", "Gamma", "délta", "banner", "House", "colour,", "sea", "3.5", "über", "漢字"]
    for budget in (12, 40, 120):
        text = " ".join(rng.choice(words) + ("." if rng.random() < 0.04 else "") for _ in range(3000))
        assert _split_text(text, budget, count) == _split_reference(text, budget, count)
    # one "word" of 200,000 characters (a bracket storm): cut within the budget, nothing lost,
    # in time that grows linearly (it took 30 s when every cut re-counted the whole remainder)
    t = time.perf_counter()
    parts = _split_text("[" * 200_000, 400, count)
    assert time.perf_counter() - t < 10
    assert "".join(parts) == "[" * 200_000 and all(count(p) <= 400 for p in parts)


def test_pdf_chunks_carry_their_page():
    p = read(make_pdf([["first page text"], ["second page text"]]), "/r.pdf")
    samples = chunk(p, "/r.pdf", "h")
    assert [(s.metadata["page"], s.slices[0].text) for s in samples] == [(1, "first page text"),
                                                                         (2, "second page text")]


def _pdf(objs: dict[int, bytes]) -> bytes:
    """A PDF from numbered objects (1: catalog); offsets and xref written here."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for i in sorted(objs):
        offsets[i] = len(out)
        out += b"%d 0 obj\n" % i + objs[i] + b"\nendobj\n"
    xref, n = len(out), max(objs) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % n + b"".join(b"%010d 00000 n \n" % offsets[i] for i in range(1, n))
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (n, xref)
    return bytes(out)


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def test_a_huge_pdf_page_is_rendered_within_the_pixel_limit():
    """Issue #22: a 600-byte PDF with one 14,400 x 14,400 pt page rendered a 207 M pixel image
    (16-25 s, +3 GB). It is rendered at the scale that fits the pixel limit."""
    import time

    from model.sample import SampleLimits

    data = _pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>", 2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                 3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 14400] /Contents 4 0 R >>",
                 4: _stream(b"")})
    assert len(data) < 600
    limits = SampleLimits(max_image_pixels=1_000_000)
    t0 = time.perf_counter()
    parsed = read(data, "huge.pdf", ReadOptions(limits=limits))
    assert time.perf_counter() - t0 < 10
    [block] = [b for b in parsed.blocks if b.kind == "image"]
    w, h = block.image.size
    assert w * h <= 1_000_000 and w > 900 and h > 900


def test_a_pdf_embedded_image_beyond_the_limit_is_skipped_before_decoding():
    import time
    import zlib

    from model.sample import SampleLimits

    side = 14_400
    pixels = zlib.compress(bytes(side * side // 8), 9)  # 1 bit per pixel, all black: ~25 KB
    image = _stream(pixels, b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
                    b"/BitsPerComponent 1 /Filter /FlateDecode" % (side, side))
    content = b"BT /F1 12 Tf 72 720 Td (A page with a picture.) Tj ET q 400 0 0 400 100 200 cm /Im1 Do Q"
    data = _pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>", 2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                 3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources "
                    b"<< /Font << /F1 6 0 R >> /XObject << /Im1 5 0 R >> >> >>",
                 4: _stream(content), 5: image,
                 6: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"})
    t0 = time.perf_counter()
    parsed = read(data, "pic.pdf", ReadOptions(limits=SampleLimits(max_image_pixels=4096 * 4096)))
    assert time.perf_counter() - t0 < 5
    assert [b.kind for b in parsed.blocks] == ["text"]
    assert any("14400x14400 image beyond the limit" in s for s in parsed.skipped), parsed.skipped
