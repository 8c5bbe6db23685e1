"""Collections (issue #31) on both backends: create, list, get, delete (atomic, kill -9 safe),
names and limits, isolation under racing writers, replicas on one PostgreSQL, and the HTTP
routes (PUT/GET/DELETE /collections, `collection` on the data routes, several at once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index import DocumentVectors
from index.collections import CollectionNotFound, CollectionRefused, Collections, open_collection
from model.sample import Sample
from model.search import SearchParams
from tests.test_index import D, rand_emb

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "ix")
    return request.getfixturevalue("pg").create_database()


def docs(prefix: str, n: int, seed: int = 0) -> list[tuple[Sample, DocumentVectors]]:
    rng = np.random.default_rng(seed)
    return [(Sample.build([f"{prefix} document number {i}"], id=f"d{i}", metadata={"owner": prefix}),
             rand_emb(rng, 1)) for i in range(n)]


def test_create_list_get_delete(location):
    cs = Collections(location, dim=D, embedding_version="v1", max_collections=4)
    assert cs.names() == ["default"]
    assert cs.create("alpha") is True and cs.create("alpha") is False  # PUT is idempotent
    assert cs.create("team-a.b_c:1@x+y") is True
    assert cs.names() == ["default", "alpha", "team-a.b_c:1@x+y"]
    cs.get("alpha").add(docs("alpha", 5), version="v1")
    info = cs.info("alpha")
    assert info["count"] == 5 and info["embedding_version"] == "v1" and info["dim"] == D
    assert info["backend"] == ("postgres" if location.startswith("postgres") else "embedded")
    assert cs.info("default")["count"] == 0  # collections do not share documents
    for bad in ("", ".hidden", "../up", "a/b", "x" * 300, "sp ace"):
        with pytest.raises(CollectionRefused, match="is not allowed"):
            cs.create(bad)
    cs.create("third")
    with pytest.raises(CollectionRefused, match="exceed the limit of 4 collections"):
        cs.create("fourth")
    with pytest.raises(CollectionRefused, match="default collection cannot be deleted"):
        cs.delete("default")
    cs.delete("alpha")
    with pytest.raises(CollectionNotFound, match="no collection 'alpha'"):
        cs.get("alpha")
    with pytest.raises(CollectionNotFound):
        cs.delete("alpha")
    assert "alpha" not in cs.names()
    assert cs.create("alpha") is True and cs.get("alpha").count() == 0  # a new one, empty
    cs.close()
    again = Collections(location, dim=D, embedding_version="v1")  # a restart: all still there
    assert again.names() == ["default", "alpha", "team-a.b_c:1@x+y", "third"]
    again.close()


def test_isolation_under_writers_racing_on_the_same_ids(location):
    """Three collections, a writer per collection per round writing the same ids into each: no
    document ever shows in another collection's listings or results; verify clean in each."""
    cs = Collections(location, dim=D, embedding_version="v1")
    names = ["c1", "c2", "c3"]
    for n in names:
        cs.create(n)
    errors: list[BaseException] = []

    def writer(name: str, seed: int) -> None:
        try:
            for r in range(4):
                cs.get(name).add(docs(name, 12, seed * 10 + r), version="v1", upsert=True)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n, i)) for i, n in enumerate(names) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rng = np.random.default_rng(9)
    for n in names:
        idx = cs.get(n)
        assert idx.count() == 12 and sorted(idx.list_ids(0, 100)) == sorted(f"d{i}" for i in range(12))
        for mode in ("dense", "hybrid", "lexical"):
            hits = idx.search(rand_emb(rng, 1), SearchParams(k=20, mode=mode), "document number")
            assert hits and {h.metadata["owner"] for h in hits} == {n}
        ok, problems = idx.verify()
        assert ok, problems
    cs.close()


_DELETE_THEN_DIE = """
import os, sys
from index.collections import Collections
where = sys.argv[1]
cs = Collections(where, dim={dim}, embedding_version="v1")
cat = cs.catalog
if sys.argv[2] == "embedded":
    import shutil
    shutil.rmtree = lambda *a, **k: os._exit(9)  # killed after the rename, before the files go
    cs.delete("doomed")
else:
    real = cat.conn.execute
    def execute(sql, *a, **k):
        if sql.startswith("DROP SCHEMA"):
            os._exit(9)  # killed inside the transaction: after the registry row went, before the drop
        return real(sql, *a, **k)
    cat.conn.execute = execute
    cs.delete("doomed")
"""


def test_a_deletion_killed_midway_leaves_it_all_there_or_all_gone(location):
    cs = Collections(location, dim=D, embedding_version="v1")
    cs.create("doomed")
    cs.get("doomed").add(docs("doomed", 6), version="v1")
    cs.close()
    kind = "postgres" if location.startswith("postgres") else "embedded"
    script = _DELETE_THEN_DIE.format(dim=D)
    r = subprocess.run([sys.executable, "-c", script, location, kind], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 9
    again = Collections(location, dim=D, embedding_version="v1")
    if kind == "embedded":  # renamed away before the kill: gone, and its leftovers swept
        assert "doomed" not in again.names()
        assert not [p for p in (Path(location) / "collections").iterdir() if p.name.startswith(".")]
    else:  # the transaction never committed: all there, every document
        assert "doomed" in again.names() and again.get("doomed").count() == 6
        assert again.get("doomed").verify()[0]
    again.close()


def test_replicas_on_one_database_see_each_others_collections(pg):
    url = pg.create_database()
    a = Collections(url, dim=D, embedding_version="v1")
    b = Collections(url, dim=D, embedding_version="v1")
    a.create("shared")
    a.get("shared").add(docs("shared", 3), version="v1")
    assert "shared" in b.names() and b.get("shared").count() == 3
    a.delete("shared")
    with pytest.raises(CollectionNotFound):
        b.get("shared")  # the replica that did not delete it answers 404 at once
    a.close()
    b.close()


def test_the_cli_commands_take_a_collection(location):
    idx = open_collection(location, "cli", dim=D, embedding_version="v1", create=True)
    idx.add(docs("cli", 2), version="v1")
    idx.close()
    assert open_collection(location, "cli").count() == 2
    with pytest.raises(CollectionNotFound):
        open_collection(location, "missing")


# ---------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def client(tiny_ckpt, tmp_path_factory):
    from server.app import create_app
    from tests.server_fixtures import seed_index, settings_for

    ix = tmp_path_factory.mktemp("coll") / "ix"
    seed_index(ix, tiny_ckpt, n=3)
    with TestClient(create_app(settings_for(tiny_ckpt, ix, max_collections=3, max_tokens_limit=8,
                                            default_max_tokens=2))) as c:
        yield c


def test_collections_over_http(client):
    from tests.server_fixtures import b64_image

    c = client
    assert c.put("/collections/manuals").status_code == 201
    assert c.put("/collections/manuals").json() == {"name": "manuals", "status": "exists"}
    assert c.put("/collections/manuals").status_code == 200
    doc = {"id": "m1", "slices": [{"type": "text", "text": "The manual of House Manual:"},
                                  {"type": "image", "base64": b64_image(3)}], "metadata": {"kind": "manual"}}
    assert c.post("/documents?collection=manuals", json=doc).status_code == 201
    assert c.get("/documents/m1").status_code == 404  # not in the default collection
    got = c.get("/documents/m1?collection=manuals").json()
    assert got["slices"][1]["url"] == "/documents/m1/images/1?collection=manuals"
    assert c.get(got["slices"][1]["url"]).headers["content-type"] == "image/png"
    stats = c.get("/index/stats?collection=manuals").json()
    assert stats["count"] == 1 and stats["collection"] == "manuals"
    listed = {x["name"]: x for x in c.get("/collections").json()["collections"]}
    assert listed["manuals"]["count"] == 1 and listed["default"]["count"] == 3
    assert c.get("/collections/manuals").json()["backend"] == "embedded"
    q = {"slices": [{"type": "text", "text": "The manual of House Manual"}]}
    one = c.post("/retrieve", json={"query": q, "k": 2, "collection": "manuals"}).json()["results"]
    assert [h["id"] for h in one] == ["m1"]
    both = c.post("/retrieve", json={"query": q, "k": 4, "collections": ["manuals", "default"]}).json()["results"]
    assert {h["collection"] for h in both} == {"manuals", "default"} and both[0]["id"] == "m1"
    r = c.post("/generate", json={"query": q, "retrieval": {"collection": "manuals", "k": 1}}).json()
    assert [d["id"] for d in r["documents"]] == ["m1"]
    r = c.post("/v1/chat/completions", json={"model": "sugar@manuals", "max_tokens": 2,
                                             "messages": [{"role": "user", "content": "The manual of House Manual"}]})
    assert [d["id"] for d in r.json()["retrieved"]] == ["m1"]
    assert "sugar@manuals" in [m["id"] for m in c.get("/v1/models").json()["data"]]
    up = c.post("/documents/upload?collection=manuals",
                files=[("files", ("a.md", b"# A\n\nwords about manuals", "text/markdown"))])
    assert up.status_code == 200 and c.get("/index/stats?collection=manuals").json()["count"] == 2
    stored = c.post("/embed", json={"samples": [q], "store": True, "collection": "manuals"}).json()["stored"]
    assert len(stored) == 1 and c.get(f"/documents/{stored[0]}?collection=manuals").status_code == 200
    assert c.delete("/documents/m1?collection=manuals").status_code == 200


def test_collection_errors_over_http(client):
    c = client
    r = c.get("/documents?collection=nope")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no collection 'nope'"
    r = c.post("/retrieve", json={"query": {"slices": [{"type": "text", "text": "x"}]},
                                  "collections": ["default", "nope"]})
    assert r.status_code == 404 and "'nope'" in r.json()["error"]["message"]
    assert c.put("/collections/.hidden").status_code == 422
    assert c.get("/documents?collection=a%2Fb").status_code == 422
    r = c.post("/retrieve", json={"query": {"slices": [{"type": "text", "text": "x"}]}, "collection": "a",
                                  "collections": ["b"]})
    assert r.status_code == 422 and "either 'collection' or 'collections'" in r.text
    r = c.delete("/collections/default")
    assert r.status_code == 409 and r.json()["error"]["field"] == "name"
    assert c.put("/collections/extra-1").status_code == 201
    r = c.put("/collections/extra-2")
    assert r.status_code == 422 and "limit of 3 collections" in r.json()["error"]["message"]
    assert c.delete("/collections/extra-1").json() == {"name": "extra-1", "status": "deleted"}
    assert c.get("/collections/extra-1").status_code == 404
    assert c.get("/health").status_code == 200


def test_sugar_index_cli_collection_flag(tiny_ckpt, tmp_path, capsys):
    from sugar_cli.main import main

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.md").write_text("# Title\n\nHouse Cli flies a banner.")
    ix = str(tmp_path / "ix")
    assert main(["index", "add", "--index", ix, "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path / "d"),
                 "--collection", "notes"]) == 0
    assert main(["index", "stats", "--index", ix, "--collection", "notes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 1
    with pytest.raises(SystemExit, match="no collection 'other'"):
        main(["index", "stats", "--index", ix, "--collection", "other"])
    assert main(["index", "search", "--index", ix, "--checkpoint", str(tiny_ckpt), "--query", "banner",
                 "--collection", "notes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])[0]["metadata"]["source"].endswith("a.md")
