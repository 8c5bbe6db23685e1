"""PDF (pypdfium2, PDFium's bindings; Apache-2.0/BSD) -> blocks per page.

Per page: the text layer's lines in PDFium's reading order, with the page's
embedded images placed before the first line below their top edge. With
`pdf_page_images="always"` the rendered page is added as an image slice at
the top of each page; `"auto"` (the default) renders only pages without a
text layer (scans, slides exported as images); `"never"` renders none. A page
is rendered at a scale that keeps it within the pixel limit, and an embedded
image beyond it is skipped (with the reason) before its pixels are decoded;
rendered pages and embedded images are charged to the request's pixel budget
(`model.sample.pixel_budget`).
Encrypted, corrupt and empty PDFs raise `ReadError` with the reason.
"""

from __future__ import annotations

from model.sample import BudgetExceeded, charge_pixels

from .base import Block, Parsed, ReadError, ReadOptions

MAX_PAGES = 2000


def read_pdf(data: bytes, name: str, opts: ReadOptions) -> Parsed:
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        msg = str(e)
        if "password" in msg.lower():
            raise ReadError("encrypted PDF (a password is needed to read it)") from None
        raise ReadError(f"not a readable PDF ({msg})") from None
    try:
        n = len(doc)
        if n == 0:
            raise ReadError("PDF has no pages")
        if n > MAX_PAGES:
            raise ReadError(f"PDF of {n} pages exceeds the limit of {MAX_PAGES}")
        title = ""
        try:
            title = (doc.get_metadata_dict().get("Title") or "").strip()
        except Exception:  # noqa: BLE001 - metadata is optional
            title = ""
        parsed = Parsed(format="pdf", title=title)
        for p in range(n):
            page = doc[p]
            try:
                _read_page(page, p + 1, opts, parsed, raw)
            finally:
                page.close()
        return parsed
    finally:
        doc.close()


def _read_page(page, number: int, opts: ReadOptions, parsed: Parsed, raw) -> None:
    tp = page.get_textpage()
    try:
        lines: list[tuple[float, str]] = []  # (top y, text), PDF y grows upwards
        for i in range(tp.count_rects()):
            left, bottom, right, top = tp.get_rect(i)
            t = tp.get_text_bounded(left, bottom, right, top).strip()
            if t:
                lines.append((top, " ".join(t.split())))
    finally:
        tp.close()
    images: list[tuple[float, object]] = []
    limit = opts.limits.max_image_pixels
    for obj in page.get_objects(filter=[raw.FPDF_PAGEOBJ_IMAGE], max_depth=3):
        try:
            _, _, _, top = obj.get_bounds()
            pw, ph = obj.get_px_size()  # from the image's header: checked before any pixel is decoded
            if pw * ph > limit:
                parsed.skipped.append(f"page {number}: embedded {pw}x{ph} image beyond the limit of {limit} pixels")
                continue
            charge_pixels(pw * ph, f"page {number}: embedded {pw}x{ph} image")
            img = obj.get_bitmap(render=True).to_pil()
        except BudgetExceeded:
            raise
        except Exception as e:  # noqa: BLE001 - one unreadable image does not lose the page
            parsed.skipped.append(f"page {number}: embedded image ({type(e).__name__}: {e})")
            continue
        w, h = img.size
        if w < 8 or h < 8:
            continue  # rules, bullets and spacers
        if max(w, h) / min(w, h) > opts.limits.max_image_aspect:
            parsed.skipped.append(f"page {number}: {w}x{h} image beyond the aspect-ratio limit")
            continue
        images.append((top, img.convert("RGB")))
    render = opts.pdf_page_images == "always" or (opts.pdf_page_images == "auto" and not lines)
    if render:
        scale = _page_scale(page, opts)
        w, h = page.get_size()
        charge_pixels(round(w * scale) * round(h * scale), f"page {number} rendered")
        bitmap = page.render(scale=scale)
        parsed.blocks.append(Block("image", f"Page {number}", image=bitmap.to_pil().convert("RGB"),
                                   page=number))
        if not lines:
            images = []  # the rendered page shows them
    images.sort(key=lambda t: -t[0])
    k = 0
    for top, text in lines:
        while k < len(images) and images[k][0] >= top:
            parsed.blocks.append(Block("image", "", image=images[k][1], page=number))  # type: ignore[arg-type]
            k += 1
        parsed.blocks.append(Block("text", text, page=number))
    for _, img in images[k:]:
        parsed.blocks.append(Block("image", "", image=img, page=number))  # type: ignore[arg-type]


def _page_scale(page, opts: ReadOptions) -> float:
    """`pdf_render_scale`, lowered so that the rendered page stays within the pixel limit (a
    14,400 pt page at scale 1 would be 207 M pixels: it is rendered at 4096 x 4096 instead)."""
    w, h = page.get_size()
    scale = opts.pdf_render_scale
    if w * h * scale * scale > opts.limits.max_image_pixels:
        scale = (opts.limits.max_image_pixels / (w * h)) ** 0.5 * 0.999
    return scale

