"""Issue #21: one write path. Every way documents enter an index — uploads, POST and PUT
/documents, /embed with store, `sugar index add`, the default-index build, `sugar index
reembed` — writes through `index.ingest.write`: every index write made while it runs
comes from inside that function."""

from __future__ import annotations

import base64
import inspect
import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index import DocumentIndex
from tests.conftest import make_image, png_bytes
from tests.server_fixtures import b64_image, seed_index, settings_for

PIPELINE = str(Path(__file__).parents[1] / "index" / "ingest" / "pipeline.py")


@pytest.fixture()
def writes(monkeypatch):
    """Every DocumentIndex write primitive called: (primitive, whether `ingest.write` called it)."""
    seen: list[tuple[str, bool]] = []

    def watch(name):
        original = getattr(DocumentIndex, name)

        def wrapped(self, *a, **kw):
            inside = any(f.function == "write" and f.filename == PIPELINE for f in inspect.stack(0))
            seen.append((name, inside))
            return original(self, *a, **kw)

        monkeypatch.setattr(DocumentIndex, name, wrapped)

    for name in ("add", "replace_vectors"):
        watch(name)
    return seen


def _through_write(seen: list[tuple[str, bool]]) -> None:
    assert seen, "no index write happened"
    assert all(inside for _, inside in seen), f"index writes outside ingest.write: {seen}"


def test_every_server_writer_goes_through_write(tiny_ckpt, tmp_path, writes):
    from server.app import create_app

    seed_index(tmp_path / "ix", tiny_ckpt, n=2)
    writes.clear()  # seeding is a writer of its own (add_samples), checked below
    text = {"slices": [{"type": "text", "text": "a note about the harbour"}]}
    with TestClient(create_app(settings_for(tiny_ckpt, tmp_path / "ix"))) as c:
        steps = {
            "POST /documents": lambda: c.post("/documents", json={**text, "id": "n1"}),
            "PUT /documents/{id}": lambda: c.put("/documents/n1", json={
                "slices": [{"type": "text", "text": "another"}, {"type": "image", "base64": b64_image(3)}]}),
            "/embed store": lambda: c.post("/embed", json={"samples": [text], "store": True}),
            "upload": lambda: c.post("/documents/upload", files=[
                ("files", ("note.md", b"# Harbour\n\nThe boats come back at dusk.\n", "text/markdown")),
                ("files", ("pic.png", png_bytes(make_image(5)), "image/png")),
                ("files", ("docs.jsonl", (json.dumps({"id": "j1", **text}) + "\n").encode(), "application/jsonl"))]),
        }
        for name, call in steps.items():
            writes.clear()
            r = call()
            assert r.status_code in (200, 201), (name, r.text)
            _through_write(writes)
            assert len(writes) == 1, (name, writes)  # one transaction each
        assert c.get("/documents/j1").status_code == 200


def test_add_samples_and_the_cli_writers_go_through_write(tiny_ckpt, tmp_path, writes, monkeypatch):
    import training.data
    from model.sample import Sample
    from sugar_cli.home import ensure_default
    from sugar_cli.main import main

    seed_index(tmp_path / "ix", tiny_ckpt, n=3)  # index.embedding.add_samples
    _through_write(writes)

    writes.clear()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nSome text about ferries.\n")
    make_image(1).save(tmp_path / "docs" / "b.png")
    assert main(["index", "add", "--index", str(tmp_path / "ix"), "--checkpoint", str(tiny_ckpt),
                 "--data", str(tmp_path / "docs")]) == 0
    _through_write(writes)

    # documents of an older checkpoint: what `reembed` is for
    import sqlite3

    with sqlite3.connect(tmp_path / "ix" / "store.sqlite") as db:
        db.execute("UPDATE docs SET embedding_version = 'older'")
        db.execute("UPDATE meta SET value = 'older' WHERE key = 'embedding_version'")
    writes.clear()
    assert main(["index", "reembed", "--index", str(tmp_path / "ix"), "--checkpoint", str(tiny_ckpt)]) == 0
    _through_write(writes)

    writes.clear()
    few = [Sample.build([f"House {i}", make_image(i)], id=f"h{i}") for i in range(3)]
    monkeypatch.setattr(training.data, "builtin_documents", lambda: few)
    _, index = ensure_default(tmp_path / "home", tiny_ckpt)
    _through_write(writes)
    assert DocumentIndex(index).count() == 3


def test_uploaded_jsonl_reads_no_local_path_and_no_temporary_file(tiny_ckpt, tmp_path, monkeypatch):
    """An uploaded JSONL is parsed from its bytes; an image path inside it is read only within
    SUGAR_ALLOW_PATHS (the JSON API's rule), so nothing outside is read or stored."""
    import tempfile

    from server.app import create_app

    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(make_image(9)))
    seed_index(tmp_path / "ix", tiny_ckpt, n=1)

    def no_temp(*a, **kw):
        raise AssertionError("an upload was written to a temporary file")

    row = {"id": "p1", "slices": [{"type": "image", "path": str(secret)}]}
    with TestClient(create_app(settings_for(tiny_ckpt, tmp_path / "ix"))) as c:
        monkeypatch.setattr(tempfile, "TemporaryDirectory", no_temp)
        r = c.post("/documents/upload", files=[("files", ("d.jsonl", json.dumps(row).encode(), "text/plain"))])
        assert r.status_code == 422, r.text
        assert "local paths are not allowed" in r.text and "d.jsonl" in r.text
        assert c.get("/documents/p1").status_code == 404
        row["slices"] = [{"type": "image", "base64": base64.b64encode(secret.read_bytes()).decode()}]
        r = c.post("/documents/upload", files=[("files", ("d.jsonl", json.dumps(row).encode(), "text/plain"))])
        assert r.status_code == 200, r.text
        assert c.get("/documents/p1").status_code == 200
    with TestClient(create_app(settings_for(tiny_ckpt, tmp_path / "ix", allow_paths=[str(tmp_path)]))) as c:
        row = {"id": "p2", "slices": [{"type": "image", "path": str(secret)}]}
        r = c.post("/documents/upload", files=[("files", ("e.jsonl", json.dumps(row).encode(), "text/plain"))])
        assert r.status_code == 200, r.text
        got = c.get("/documents/p2/images/0")
        assert got.status_code == 200
        from PIL import Image

        assert Image.open(io.BytesIO(got.content)).size == make_image(9).size


def test_each_image_is_encoded_once_per_write(tiny_ckpt, tmp_path, monkeypatch):
    """A new image is PNG-encoded once (hashing and storing share it); a stored one re-written
    (re-embedding) is not encoded again."""
    import model.sample as sample_mod
    from index.embedding import add_samples, embed_samples, open_for_model
    from index.ingest import reembed
    from model.sample import Sample
    from model.sugar import SugarModel

    model = SugarModel.from_pretrained(tiny_ckpt)
    idx = open_for_model(tmp_path / "ix", model)
    calls = []
    real = sample_mod.encode_png
    monkeypatch.setattr(sample_mod, "encode_png", lambda im: calls.append(1) or real(im))
    add_samples(idx, model, [Sample.build(["x", make_image(i)], id=f"d{i}") for i in range(4)])
    assert len(calls) == 4
    calls.clear()
    reembed(idx, lambda s: embed_samples(model, s), "v-next", model.embed_dim)
    assert calls == []
