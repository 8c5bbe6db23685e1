"""Documents as users have them, built here: Markdown with figures, HTML, PDFs (fpdf2), images."""

from __future__ import annotations

import base64
import io

from tests.conftest import make_image, png_bytes


def data_uri(seed: int = 0) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(make_image(seed))).decode()


def make_pdf(pages: list[list], encrypt: bool = False) -> bytes:
    """pages: lists of str (a line of text) or PIL images, top to bottom."""
    from fpdf import FPDF

    pdf = FPDF(unit="pt", format=(400, 400))
    pdf.set_font("helvetica", size=12)
    pdf.set_title("Quarterly report")
    if encrypt:
        pdf.set_encryption(owner_password="owner", user_password="user")
    for items in pages:
        pdf.add_page()
        y = 30.0
        for it in items:
            if isinstance(it, str):
                pdf.set_xy(30, y)
                pdf.cell(300, 14, it)
                y += 24
            else:
                buf = io.BytesIO()
                it.save(buf, format="PNG")
                buf.seek(0)
                pdf.image(buf, x=30, y=y, w=80, h=60)
                y += 72
    return bytes(pdf.output())


def write_notes(root) -> dict:
    """A small folder of notes: Markdown with a relative figure, HTML, a PDF, an image with a
    sidecar caption, plain text and JSONL. Returns {name: path}."""
    import json

    (root / "img").mkdir(parents=True, exist_ok=True)
    make_image(1).save(root / "img" / "fig1.png")
    files = {}
    files["guide.md"] = root / "guide.md"
    files["guide.md"].write_text(
        "# Field guide\n\nThe red banner marks the north gate.\n\n![the north gate](img/fig1.png)\n\n"
        "## Rivers\n\nThe river Vell runs east.\n\n- first ford\n- second ford\n")
    files["page.html"] = root / "page.html"
    files["page.html"].write_text(
        "<html><head><title>Harbour</title><script>evil()</script></head><body><nav>home</nav>"
        f"<h1>Harbour</h1><p>Boats leave at dawn.</p><img src='{data_uri(2)}' alt='a boat'></body></html>")
    files["report.pdf"] = root / "report.pdf"
    files["report.pdf"].write_bytes(make_pdf([["Sales rose in spring.", make_image(3), "Costs fell."],
                                              ["Outlook is calm."]]))
    make_image(4).save(root / "cat.png")
    (root / "cat.txt").write_text("A photo of the harbour cat.")
    files["cat.png"] = root / "cat.png"
    files["notes.txt"] = root / "notes.txt"
    files["notes.txt"].write_text("Plain note one.\n\nPlain note two.")
    files["docs.jsonl"] = root / "docs.jsonl"
    files["docs.jsonl"].write_text("\n".join(json.dumps(
        {"id": f"j{i}", "slices": [{"type": "text", "text": f"json document {i}"}]}) for i in range(2)) + "\n")
    return files
