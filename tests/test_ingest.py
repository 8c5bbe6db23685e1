"""Ingestion end to end: `sugar index add` over folders (sync, idempotency, prune, kill -9),
`POST /documents/upload`, source filters and citations — on a tiny real checkpoint."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sugar_cli.main import main
from tests.conftest import make_image, png_bytes
from tests.docs_fixtures import make_pdf, write_notes

ROOT = Path(__file__).resolve().parents[1]


def add(ix, ckpt, *paths, extra=()):
    return main(["index", "add", "--index", str(ix), "--checkpoint", str(ckpt), "--data",
                 *[str(p) for p in paths], *extra])


def summary_of(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("files "))


def docs(ix):
    from index import DocumentIndex

    idx = DocumentIndex(ix)
    out = {i: idx.get(i, with_images=False) for i in idx.list_ids(0, 10_000)}
    ok, problems = idx.verify()
    idx.close()
    assert ok, problems
    return out


def test_folder_sync_is_idempotent_and_replaces_only_what_changed(tiny_ckpt, tmp_path, capsys):
    notes = tmp_path / "notes"
    files = write_notes(notes)
    ix = tmp_path / "ix"
    assert add(ix, tiny_ckpt, notes) == 0
    first = summary_of(capsys.readouterr().out)
    # the figure linked from guide.md is also a file of the folder: indexed on its own too
    assert first.startswith("files 7: 7 added, 0 updated, 0 unchanged, 0 failed; chunks 10 (10 embedded), images 5")
    stored = docs(ix)
    by_source: dict[str, list] = {}
    for d in stored.values():
        by_source.setdefault(d.metadata["source"], []).append(d)
    assert set(by_source) == {str(p.absolute()) for p in files.values()} | {str(notes / "img" / "fig1.png")}
    guide = sorted(by_source[str(files["guide.md"].absolute())], key=lambda d: d.metadata["chunk"])
    assert [d.metadata["headings"] for d in guide] == [["Field guide"], ["Field guide", "Rivers"]]
    assert [s["type"] for s in guide[0].slices] == ["text", "image", "text"]  # the figure in place, alt beside
    assert guide[0].slices[2]["text"] == "the north gate"
    cat = by_source[str(files["cat.png"].absolute())][0]
    assert [s.get("text") for s in cat.slices] == [None, "A photo of the harbour cat."]
    pdf = sorted(by_source[str(files["report.pdf"].absolute())], key=lambda d: d.metadata["chunk"])
    assert [d.metadata["page"] for d in pdf] == [1, 2] and pdf[0].metadata["title"] == "Quarterly report"
    assert {"j0", "j1"} <= set(stored)

    # a re-run changes nothing and embeds nothing
    assert add(ix, tiny_ckpt, notes) == 0
    assert summary_of(capsys.readouterr().out).startswith(
        "files 7: 0 added, 0 updated, 7 unchanged, 0 failed; chunks 10 (0 embedded)")
    assert {i: d.fid for i, d in docs(ix).items()} == {i: d.fid for i, d in stored.items()}

    # one section edited: only its chunk is embedded again; the other keeps its vectors
    files["guide.md"].write_text(files["guide.md"].read_text().replace("runs east", "runs west"))
    assert add(ix, tiny_ckpt, notes) == 0
    out = summary_of(capsys.readouterr().out)
    assert "0 added, 1 updated, 6 unchanged" in out and "(1 embedded)" in out
    after = docs(ix)
    assert after[guide[0].id].fid == guide[0].fid and after[guide[1].id].fid != guide[1].fid
    assert "runs west" in after[guide[1].id].slices[0]["text"]

    # a shorter file drops its stale chunks in the same transaction
    files["guide.md"].write_text("# Field guide\n\nOnly this now.\n")
    add(ix, tiny_ckpt, notes)
    out = summary_of(capsys.readouterr().out)
    assert "removed 1" in out
    assert guide[1].id not in docs(ix)

    # a deleted file: kept without --prune, its chunks deleted with it
    files["notes.txt"].unlink()
    add(ix, tiny_ckpt, notes)
    assert any(d.metadata["source"].endswith("notes.txt") for d in docs(ix).values())
    capsys.readouterr()
    assert add(ix, tiny_ckpt, notes, extra=["--prune"]) == 0
    assert "removed 1" in summary_of(capsys.readouterr().out)
    assert not any(d.metadata["source"].endswith("notes.txt") for d in docs(ix).values())


def test_failures_are_reported_per_file_and_the_rest_is_stored(tiny_ckpt, tmp_path, capsys):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "ok.md").write_text("# Fine\n\nA good note.\n")
    (d / "locked.pdf").write_bytes(make_pdf([["secret"]], encrypt=True))
    (d / "bundle.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    raw = png_bytes(make_image(1, (200, 200)))
    (d / "broken.png").write_bytes(raw[: len(raw) // 2])
    (d / "bad.jsonl").write_text('{"task": "vqa", "slices": [{"type":"text","text":"q"}], "answer": "a"}\n')
    assert add(tmp_path / "ix", tiny_ckpt, d, tmp_path / "nope.md") == 1
    out = capsys.readouterr().out
    assert summary_of(out).startswith("files 6: 1 added, 0 updated, 0 unchanged, 5 failed")
    assert f"failed: {d / 'locked.pdf'}: encrypted PDF" in out
    assert f"failed: {d / 'bundle.zip'}: zip archive" in out
    assert f"failed: {d / 'broken.png'}: cannot decode image" in out
    assert "bad.jsonl:1: a 'vqa' record is not a document" in out
    assert f"failed: {tmp_path / 'nope.md'}: no such file or folder" in out
    assert len(docs(tmp_path / "ix")) == 1


def test_index_add_with_policy_applies_the_server_s_pixel_budget_per_file(tiny_ckpt, tmp_path, capsys, monkeypatch):
    from tests.docs_fixtures import data_uri

    d = tmp_path / "pics"
    d.mkdir()
    (d / "two.md").write_text(f"# Two\n\n![a]({data_uri(1)})\n\n![b]({data_uri(2)})\n")  # 2 x 40 x 30
    (d / "one.md").write_text(f"# One\n\n![a]({data_uri(3)})\n")
    monkeypatch.setenv("SUGAR_MAX_REQUEST_PIXELS", str(40 * 30 + 1))
    assert add(tmp_path / "ix", tiny_ckpt, d, extra=["--policy"]) == 1
    out = capsys.readouterr().out
    assert summary_of(out).startswith("files 2: 1 added, 0 updated, 0 unchanged, 1 failed")
    assert f"failed: {d / 'two.md'}: " in out and "budget of 1201 decoded pixels" in out
    assert add(tmp_path / "ix", tiny_ckpt, d) == 0  # without --policy: the CLI's own defaults
    assert summary_of(capsys.readouterr().out).startswith("files 2: 1 added, 0 updated, 1 unchanged, 0 failed")


def test_jsonl_ids_identical_content_is_not_an_error_other_content_needs_upsert(tiny_ckpt, tmp_path, capsys):
    row = {"id": "doc-0", "slices": [{"type": "text", "text": "same words"}]}
    (tmp_path / "a.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(row) + "\n")  # another file, the same document
    ix = tmp_path / "ix"
    assert add(ix, tiny_ckpt, tmp_path / "a.jsonl") == 0
    assert add(ix, tiny_ckpt, tmp_path / "b.jsonl") == 0
    capsys.readouterr()
    (tmp_path / "c.jsonl").write_text(json.dumps({**row, "slices": [{"type": "text", "text": "other"}]}) + "\n")
    assert add(ix, tiny_ckpt, tmp_path / "c.jsonl") == 1
    assert f"document id 'doc-0' exists from {tmp_path / 'a.jsonl'} (use --upsert to replace it)" in \
        capsys.readouterr().out
    assert add(ix, tiny_ckpt, tmp_path / "c.jsonl", extra=["--upsert"]) == 0
    assert docs(ix)["doc-0"].slices == [{"type": "text", "text": "other"}]


def test_killed_run_rerun_finishes_with_nothing_lost_or_duplicated(tiny_ckpt, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(150):
        (src / f"note{i:03d}.md").write_text(f"# Note {i}\n\nBody of note {i}.\n\n## More\n\nSecond part {i}.\n")
    ix = tmp_path / "ix"
    cmd = [sys.executable, "-m", "sugar_cli.main", "index", "add", "--index", str(ix), "--checkpoint",
           str(tiny_ckpt), "--data", str(src), "--batch-size", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline and proc.poll() is None:
        if (ix / "store.sqlite").exists():
            try:
                with sqlite3.connect(ix / "store.sqlite", timeout=1) as c:
                    n = c.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
            except sqlite3.Error:
                n = 0
            if n >= 20:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 20 <= n < 300
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    line = summary_of(done.stdout)
    assert "0 updated" in line and "0 failed" in line
    stored = docs(ix)
    assert len(stored) == 300 == len({(d.metadata["source"], d.metadata["chunk"]) for d in stored.values()})
    assert all(d.metadata["chunks"] == 2 for d in stored.values())


# ------------------------------------------------------------------ server
@pytest.fixture(scope="module")
def upload_client(tiny_ckpt, tmp_path_factory):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from tests.server_fixtures import seed_index, settings_for

    ix = tmp_path_factory.mktemp("up") / "ix"
    seed_index(ix, tiny_ckpt, n=2)
    app = create_app(settings_for(tiny_ckpt, ix, max_upload_files=8, max_upload_file_bytes=200_000,
                                  ready_cache_s=0))
    with TestClient(app) as c:
        yield c


def test_upload_reads_chunks_stores_and_is_idempotent(upload_client, tmp_path):
    files = write_notes(tmp_path)
    parts = [("files", ("guide.md", files["guide.md"].read_bytes(), "text/markdown")),
             ("files", ("img/fig1.png", (tmp_path / "img" / "fig1.png").read_bytes(), "image/png")),
             ("files", ("report.pdf", files["report.pdf"].read_bytes(), "application/pdf")),
             ("files", ("cat.png", files["cat.png"].read_bytes(), "image/png")),
             ("files", ("cat.txt", b"A photo of the harbour cat.", "text/plain"))]
    r = upload_client.post("/documents/upload", files=parts, data={"metadata": json.dumps({"team": "docs"})})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"] == {"files": 4, "chunks": 6, "images": 4, "embedded": 6, "added": 4, "updated": 0,
                               "unchanged": 0, "removed": 0, "skipped_images": 0}
    by_file = {f["file"]: f for f in body["files"]}
    assert by_file["guide.md"]["images"] == 1  # the figure sent beside it, read in place
    assert by_file["guide.md"]["source"] == "upload:guide.md" and by_file["cat.png"]["chunks"] == 1
    d = upload_client.get(f"/documents/{by_file['report.pdf']['ids'][0]}").json()
    assert d["metadata"]["team"] == "docs" and d["metadata"]["page"] == 1
    assert d["metadata"]["source"] == "upload:report.pdf"
    again = upload_client.post("/documents/upload", files=parts).json()
    assert again["summary"]["unchanged"] == 4 and again["summary"]["embedded"] == 0
    assert again["ids"] == body["ids"]


def test_upload_bad_files_are_422_naming_each_and_nothing_is_stored(upload_client):
    before = upload_client.get("/documents").json()["total"]
    raw = png_bytes(make_image(1, (200, 200)))
    parts = [("files", ("fine.md", b"# ok\n\ntext", "text/markdown")),
             ("files", ("locked.pdf", make_pdf([["x"]], encrypt=True), "application/pdf")),
             ("files", ("half.png", raw[: len(raw) // 2], "image/png")),
             ("files", ("a.zip", b"PK\x03\x04" + b"\x00" * 30, "application/zip")),
             ("files", ("bomb.html", b"<p>x</p>" * 300_000, "text/html"))]
    r = upload_client.post("/documents/upload", files=parts[:4])
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "invalid_files" and "nothing was stored" in err["message"]
    reasons = {f["file"]: f["reason"] for f in err["files"]}
    assert set(reasons) == {"locked.pdf", "half.png", "a.zip"}
    assert reasons["locked.pdf"].startswith("encrypted PDF") and "zip archive" in reasons["a.zip"]
    assert upload_client.get("/documents").json()["total"] == before
    r = upload_client.post("/documents/upload", files=[parts[4]])
    assert r.status_code == 422 and "bomb.html: larger than the limit of 200000 bytes" in r.json()["error"]["message"]
    r = upload_client.post("/documents/upload", files=[parts[0]], data={"metadata": "[1]"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "metadata"
    r = upload_client.post("/documents/upload", files=[parts[0], parts[0]])
    assert r.status_code == 422 and "the same file name twice" in r.json()["error"]["message"]
    r = upload_client.post("/documents/upload", files=[parts[0]] * 9)
    assert r.status_code == 422 and "9 files exceed the limit of 8" in r.json()["error"]["message"]
    r = upload_client.post("/documents/upload", data={"metadata": "{}"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "files"
    assert upload_client.get("/health").status_code == 200
    assert upload_client.get("/documents").json()["total"] == before


def test_source_filters_with_prefix_and_citations_in_answers(upload_client):
    md = b"# Ferries\n\nThe ferry to Vell leaves at noon.\n"
    pdf = make_pdf([["Ferry tickets cost two coins."]])
    up = upload_client.post("/documents/upload", files=[("files", ("travel/ferry.md", md, "text/markdown")),
                                                        ("files", ("travel/fares.pdf", pdf, "application/pdf"))])
    assert up.status_code == 200, up.text
    q = {"slices": [{"type": "text", "text": "ferry"}]}
    r = upload_client.post("/retrieve", json={"query": q, "k": 10, "filters": {"source": "upload:travel/ferry.md"}})
    assert [h["metadata"]["source"] for h in r.json()["results"]] == ["upload:travel/ferry.md"]
    travel = {"source": {"$prefix": "upload:travel/"}}
    r = upload_client.post("/retrieve", json={"query": q, "k": 10, "filters": travel})
    assert sorted(h["metadata"]["source"] for h in r.json()["results"]) == ["upload:travel/fares.pdf",
                                                                           "upload:travel/ferry.md"]
    r = upload_client.post("/retrieve", json={"query": q, "filters": {"source": {"$regex": "x"}}})
    assert r.status_code == 422 and "unknown operator '$regex'" in r.json()["error"]["message"]
    g = upload_client.post("/generate", json={"query": q, "max_tokens": 2, "retrieval": {
        "k": 2, "filters": {"source": {"$prefix": "upload:travel/"}}}})
    assert g.status_code == 200, g.text
    cites = {d["source"]: d for d in g.json()["documents"] + g.json()["dropped_documents"]}
    assert cites["upload:travel/fares.pdf"]["page"] == 1 and cites["upload:travel/fares.pdf"]["title"] == \
        "Quarterly report"
    assert cites["upload:travel/ferry.md"]["title"] == "Ferries" and cites["upload:travel/ferry.md"]["page"] is None
    c = upload_client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "ferry"}],
                                                         "max_tokens": 2, "retrieval": {"k": 1, "filters": {
                                                             "source": "upload:travel/ferry.md"}}})
    assert c.json()["retrieved"][0]["source"] == "upload:travel/ferry.md"
    assert set(c.json()["retrieved"][0]) == {"id", "score", "source", "title", "page"}


# ------------------------------------------------------------------ real documents
REAL = {"pdf": Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),  # Debian libtasn1-doc: a PDF manual
        "html": Path("/usr/share/doc/libxslt1-dev/html"),  # Debian libxslt1-dev: an HTML manual, logos
        "md": Path("/usr/share/doc/libjs-underscore/README.md")}  # Debian libjs-underscore


@pytest.mark.skipif(not all(p.exists() for p in REAL.values()),
                    reason="Debian libtasn1-doc, libxslt1-dev, libjs-underscore not installed (.ci/run installs them)")
def test_real_manuals_pdf_html_markdown(tiny_ckpt, tmp_path, capsys):
    import shutil

    import pypdfium2 as pdfium

    corpus = tmp_path / "corpus"
    shutil.copytree(REAL["html"], corpus / "xslt")
    shutil.copy(REAL["pdf"], corpus / "libtasn1.pdf")
    shutil.copy(REAL["md"], corpus / "README.md")
    ix = tmp_path / "ix"
    assert add(ix, tiny_ckpt, corpus) == 1  # the manual ships two gzipped XML sources: refused, named
    out = capsys.readouterr().out
    line = summary_of(out)
    assert " 2 failed" in line
    assert out.count(": gzip archive: archives are not read") == 2
    assert "ISO-8859-1" in (REAL["html"] / "news.html").read_bytes()[:200].decode("latin-1")  # read, not failed
    stored = list(docs(ix).values())
    pdf = [d for d in stored if d.metadata["source"].endswith("libtasn1.pdf")]
    n_pages = len(pdfium.PdfDocument(REAL["pdf"].read_bytes()))
    assert {d.metadata["page"] for d in pdf} == set(range(1, n_pages + 1)) - {
        p for p in range(1, n_pages + 1) if not _page_has_text(REAL["pdf"], p)}
    html = [d for d in stored if d.metadata["format"] == "html"]
    with_images = [d for d in html if any(s["type"] == "image" for s in d.slices)]
    assert with_images, "the manual's logos (GIFs beside the pages) are read in place"
    assert "skipped image in" in out  # logos the package does not ship: skipped and counted
    assert any(d.metadata["title"] for d in html)
    md = [d for d in stored if d.metadata["source"].endswith("README.md")]
    assert md and md[0].metadata["format"] == "markdown"
    assert add(ix, tiny_ckpt, corpus) == 1
    assert " 0 added, 0 updated" in summary_of(capsys.readouterr().out)


def _page_has_text(path: Path, page: int) -> bool:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(path.read_bytes())
    try:
        return bool(doc[page - 1].get_textpage().get_text_range().strip())
    finally:
        doc.close()


def test_thousand_page_pdf_chunks_every_page_in_order():
    from index.ingest.chunking import chunk
    from index.ingest.readers import read
    from sugar_cli.bench.ingest import text_pdf

    p = read(text_pdf(1000, lines=6), "/m.pdf")
    samples = chunk(p, "/m.pdf", "h")
    pages = [s.metadata["page"] for s in samples]
    assert pages == sorted(pages) and set(pages) == set(range(1, 1001))
    assert len({s.id for s in samples}) == len(samples)


def test_bench_ingest_small(tiny_ckpt, capsys):
    from sugar_cli.bench.ingest import run

    rec = run(checkpoint=tiny_ckpt, pages=5, files=5, embed_sample=4)
    assert rec["sync"]["rerun"]["unchanged"] == 6 and rec["sync"]["rerun"]["embedded"] == 0
    assert rec["pdf"]["chunks"] >= 5 and rec["md"]["chunks"] >= 10
    assert "first / re-run:" in capsys.readouterr().out


@pytest.mark.slow  # builds a baseline revision in a worktree: .ci/run runs -m slow
def test_bench_ingest_against_a_baseline_revision(tiny_ckpt, tmp_path, capsys):
    """`--baseline REV`: the same bench at REV (a git worktree) and here, alternating rounds,
    with the best of each side and new/old."""
    from sugar_cli.main import main

    out = tmp_path / "b.json"
    assert main(["bench", "ingest", "--checkpoint", str(tiny_ckpt), "--pages", "3", "--files", "3",
                 "--embed-sample", "4", "--baseline", "HEAD", "--rounds", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["best"]) == {"old HEAD", "new"}
    assert data["best"]["new"]["first sync s"] > 0
    printed = capsys.readouterr().out
    assert "| unchanged re-run s |" in printed and "new/old" in printed


@pytest.mark.parametrize("mode", [
    pytest.param("dense", marks=pytest.mark.xfail(
        strict=True, reason="issues #10, #20: the shipped checkpoint's embeddings do not yet match a caption "
                            "to its chunk (measured again on the staged-recipe checkpoint: the figure's "
                            "chunk is not ranked first)")),
    "hybrid",  # the server's default: the caption's words find it
])
def test_a_question_about_a_figure_caption_retrieves_its_chunk(tmp_path, mode):
    from index.embedding import embed_samples, open_for_model
    from index.ingest import Ingestor
    from model.sample import Sample
    from model.sugar import DEFAULT_CHECKPOINT, SugarModel

    topics = ["The lighthouse at Kell harbour", "A map of the northern ferry routes", "The bakery on Mill street",
              "Winter storms over the bay", "The old stone bridge at Orrin", "Fishing boats returning at dusk"]
    notes = tmp_path / "notes"
    (notes / "img").mkdir(parents=True)
    for i, t in enumerate(topics):
        make_image(i).save(notes / "img" / f"f{i}.png")
        (notes / f"note{i}.md").write_text(f"# Note {i}\n\nGeneral words about the town.\n\n![{t}](img/f{i}.png)\n\n"
                                           f"## Other\n\nUnrelated paragraph {i} about weather and trade.\n")
    model = SugarModel.from_pretrained(DEFAULT_CHECKPOINT)
    idx = open_for_model(tmp_path / "ix", model)
    Ingestor(idx, lambda s: embed_samples(model, s), model.embedding_version).sync_paths([notes])
    for i, t in enumerate(topics):
        question = f"Where is {t.lower()}?"
        [q] = embed_samples(model, [Sample.build([question])])
        top = idx.search(q, k=1, text=question, mode=mode)[0]
        assert (top.metadata["source"], top.metadata["chunk"]) == (str(notes / f"note{i}.md"), 0), t
