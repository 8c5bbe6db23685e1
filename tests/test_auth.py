"""Scoped API keys (server/auth.py): every route x {no key, wrong key, read key reading, read key
writing, rw key on another collection, admin} — and keys never in logs or error bodies, the keys
file re-read when it changes, a keys file that does not parse refused at start-up."""

from __future__ import annotations

import hashlib
import json
import logging
import time

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.server_fixtures import b64_image, seed_index, settings_for

ADMIN = "admin-key-Z9"
READ = "read-key-alpha-Q7"  # r on "alpha"
RW_OTHER = "rw-key-beta-X3"  # rw on "beta*"
SECRETS = (ADMIN, READ, RW_OTHER)


def sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


def keys_file(path, grants):
    path.write_text(json.dumps(grants))
    return path


@pytest.fixture(scope="module")
def app(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    seed_index(tmp / "ix", tiny_ckpt, n=3)
    kf = keys_file(tmp / "keys.json", [
        {"key_sha256": sha(READ), "collections": ["alpha"], "access": "r"},
        {"key_sha256": sha(RW_OTHER), "collections": ["beta*"], "access": "rw"}])
    application = create_app(settings_for(tiny_ckpt, tmp / "ix", api_key=ADMIN, api_keys_file=kf,
                                          max_tokens_limit=8, default_max_tokens=2))
    with TestClient(application) as c:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for name in ("alpha", "beta1", "gamma"):
            assert c.put(f"/collections/{name}", headers=admin).status_code == 201
        for doc_id in ("a1", "victim"):
            r = c.post("/documents?collection=alpha", headers=admin, json={"id": doc_id, "slices": [
                {"type": "text", "text": "The banner of House Alpha:"}, {"type": "image", "base64": b64_image(1)}]})
            assert r.status_code == 201, r.text
        yield c, kf


TEXT = {"slices": [{"type": "text", "text": "What colour is the banner of House Alpha?"}]}
DOC = {"slices": [{"type": "text", "text": "a new document"}]}
UPLOAD = {"files": ("note.md", b"# A note\n\nSome words about House Alpha.", "text/markdown")}

# (method, path, json body or None, what it needs): "open", "any" (any valid key), "r", "rw", "admin"
ROUTES = [
    ("get", "/health", None, "open"),
    ("get", "/ready", None, "open"),
    ("get", "/openapi.json", None, "any"),
    ("get", "/v1/models", None, "any"),
    ("post", "/embed", {"samples": [TEXT]}, "any"),
    ("post", "/v1/embeddings", {"model": "sugar", "input": ["a red circle"]}, "any"),
    ("get", "/collections", None, "any"),
    ("post", "/embed", {"samples": [DOC], "store": True, "collection": "alpha"}, "rw"),
    ("post", "/retrieve", {"query": TEXT, "k": 1, "collection": "alpha"}, "r"),
    ("post", "/retrieve", {"query": TEXT, "k": 1, "collections": ["alpha", "default"]}, "r+default"),
    ("post", "/generate", {"query": TEXT, "retrieval": {"collection": "alpha", "k": 1}}, "r"),
    ("post", "/v1/chat/completions", {"model": "sugar@alpha", "max_tokens": 2,
                                      "messages": [{"role": "user", "content": "hello"}]}, "r"),
    ("post", "/documents?collection=alpha", {"id": "new-doc", **DOC}, "rw"),
    ("put", "/documents/new-doc-2?collection=alpha", DOC, "rw"),
    ("get", "/documents?collection=alpha", None, "r"),
    ("get", "/documents/a1?collection=alpha", None, "r"),
    ("get", "/documents/a1/images/1?collection=alpha", None, "r"),
    ("post", "/documents/upload?collection=alpha", "upload", "rw"),
    ("get", "/index/stats?collection=alpha", None, "r"),
    ("get", "/collections/alpha", None, "r"),
    ("post", "/v1/rerank", {"query": "x", "documents": ["a red circle", "a blue square"]}, "any"),
    ("post", "/v1/rerank", {"query": "x", "documents": [{"id": "a1"}], "collection": "alpha"}, "r"),
    ("post", "/rerank", {"query": "x", "texts": ["a red circle"]}, "any"),
    ("post", "/v2/rerank", {"query": "x", "documents": [{"id": "a1"}], "collection": "alpha"}, "r"),
    ("post", "/score", {"text_1": "x", "text_2": [{"id": "a1"}], "collection": "alpha"}, "r"),
    ("post", "/retrieve", {"query": {"id": "a1"}, "k": 1, "collection": "alpha"}, "r"),
    ("post", "/retrieve", {"queries": [TEXT, {"id": "a1"}], "k": 1, "collection": "alpha"}, "r"),
    ("post", "/documents/scroll?collection=alpha", {"filters": {"n": {"$exists": False}}}, "r"),
    ("post", "/documents/count?collection=alpha", {}, "r"),
    ("post", "/documents/delete?collection=alpha", {"ids": ["not-there"]}, "rw"),
    ("delete", "/documents/victim?collection=alpha", None, "rw"),
    ("put", "/collections/alpha2", None, "admin"),
    ("delete", "/collections/gamma", None, "admin"),
    ("get", "/metrics", None, "admin"),
]
PRINCIPALS = ["no key", "wrong key", "read key", "rw key on another collection", "admin"]


def expected(principal: str, need: str) -> int | None:
    """The status family a principal gets: 2 (2xx), 401 or 403."""
    if need == "open":
        return 2
    if principal in ("no key", "wrong key"):
        return 401
    if principal == "admin" or need == "any":
        return 2
    if principal == "read key":
        return 2 if need == "r" else 403
    return 403  # rw on beta*: nothing of alpha's


def call(c, method, path, body, principal):
    headers = {"no key": {}, "wrong key": {"Authorization": "Bearer nope"},
               "read key": {"Authorization": f"Bearer {READ}"},
               "rw key on another collection": {"Authorization": f"Bearer {RW_OTHER}"},
               "admin": {"Authorization": f"Bearer {ADMIN}"}}[principal]
    if body == "upload":
        return c.post(path, headers=headers, files=[("files", UPLOAD["files"])])
    return getattr(c, method)(path, headers=headers, **({"json": body} if body is not None else {}))


@pytest.mark.parametrize("principal", PRINCIPALS)  # in this order: the admin's writes come last
def test_every_route_for_every_kind_of_key(app, principal, caplog):
    c, _ = app
    caplog.set_level(logging.DEBUG)
    seen = []
    for method, path, body, need in ROUTES:
        r = call(c, method, path, body, principal)
        want = expected(principal, need)
        got = 2 if 200 <= r.status_code < 300 else r.status_code
        seen.append((method, path, r.status_code))
        assert got == want, (principal, method, path, r.status_code, r.text[:300])
        if r.status_code == 403 and "collection" in (r.json()["error"].get("field") or ""):
            named = r.json()["error"]["message"].split("collection ")[-1].split(" ")[0].strip("'")
            assert named in path + json.dumps(body)  # 403 names the collection refused
        for secret in SECRETS:
            assert secret not in r.text and sha(secret) not in r.text
    for secret in SECRETS:  # never in the logs
        assert secret not in caplog.text and sha(secret) not in caplog.text
    assert len(seen) == len(ROUTES)


def test_the_matrix_covers_every_route(app):
    """A new route cannot land without its row above (what each kind of key gets)."""
    c, _ = app
    served = {(m.lower(), r.path) for r in c.app.routes if hasattr(r, "methods")
              for m in r.methods - {"HEAD"} if not r.path.startswith(("/ui", "/docs", "/redoc"))}
    covered = {(m, p.split("?")[0]) for m, p, _, _ in ROUTES}
    templated = {(m, p) for m, p in served if "{" in p}
    assert served - templated <= covered | {("get", "/")}, sorted(served - templated - covered)
    for m, p in templated:  # a path template is covered by a row of that shape
        head = p.split("{")[0]
        assert any(cm == m and cp.startswith(head) and cp.count("/") == p.count("/") for cm, cp in covered), (m, p)


def test_listings_show_only_what_a_key_may_read(app):
    c, _ = app
    read = {"Authorization": f"Bearer {READ}"}
    assert [x["name"] for x in c.get("/collections", headers=read).json()["collections"]] == ["alpha"]
    assert [m["id"] for m in c.get("/v1/models", headers=read).json()["data"]] == ["sugar", "sugar@alpha"]
    admin = {"Authorization": f"Bearer {ADMIN}"}
    names = [x["name"] for x in c.get("/collections", headers=admin).json()["collections"]]
    assert names[0] == "default" and {"alpha", "beta1"} <= set(names)
    other = {"Authorization": f"Bearer {RW_OTHER}"}
    assert [x["name"] for x in c.get("/collections", headers=other).json()["collections"]] == ["beta1"]
    # the rw key writes its own collections
    r = c.post("/documents?collection=beta1", headers=other, json={"id": "b1", **DOC})
    assert r.status_code == 201


def test_the_keys_file_is_read_again_when_it_changes(app):
    c, kf = app
    new = "new-key-after-reload-K1"
    headers = {"Authorization": f"Bearer {new}"}
    assert c.get("/collections/alpha", headers=headers).status_code == 401
    grants = json.loads(kf.read_text()) + [{"key_sha256": sha(new), "collections": ["alpha"], "access": "r"}]
    time.sleep(1.1)  # the file is looked at once a second at most
    keys_file(kf, grants)
    assert c.get("/collections/alpha", headers=headers).status_code == 200
    time.sleep(1.1)
    kf.write_text("[not json")  # a broken file keeps the keys in force
    assert c.get("/collections/alpha", headers=headers).status_code == 200


def test_a_keys_file_that_does_not_parse_stops_the_start(tiny_ckpt, tmp_path):
    from server.auth import KeysFileError

    bad = keys_file(tmp_path / "k.json", [{"key_sha256": "xyz", "collections": ["a"], "access": "r"}])
    with pytest.raises(KeysFileError, match="k.json: entry 0: key_sha256 must be 64 hexadecimal digits"):
        create_app(settings_for(tiny_ckpt, tmp_path / "ix", api_keys_file=bad))
    bad.write_text(json.dumps([{"key_sha256": sha("k"), "collections": ["a"], "access": "write"}]))
    with pytest.raises(KeysFileError, match="access must be one of r, rw, admin"):
        create_app(settings_for(tiny_ckpt, tmp_path / "ix", api_keys_file=bad))
