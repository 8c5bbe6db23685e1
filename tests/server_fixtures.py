"""Build a served app on a tiny checkpoint and a small index (shared by the server tests)."""

from __future__ import annotations

import base64
import socket
import threading
import time
from contextlib import contextmanager

from tests.conftest import make_image, png_bytes


def b64_image(seed: int = 0, size=(40, 30), fmt="PNG") -> str:
    return base64.b64encode(png_bytes(make_image(seed, size), fmt)).decode()


def seed_index(path, ckpt, n: int = 8) -> None:
    from index.embedding import add_samples, open_for_model
    from model.sample import Sample
    from model.sugar import SugarModel

    model = SugarModel.from_pretrained(ckpt)
    idx = open_for_model(path, model)
    docs = [Sample.build([f"The banner of House H{i}:", make_image(i)], id=f"house-{i}",
                         metadata={"kind": "knowledge", "n": i}) for i in range(n)]
    add_samples(idx, model, docs)
    idx.close()


def settings_for(ckpt, index, **kw):
    from server.settings import Settings

    return Settings(_env_file=None, checkpoint=ckpt, index=index, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app, port: int):
    """uvicorn on 127.0.0.1 in a thread; stops when the block ends."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline or not t.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=30)


def wait_until_up(url: str, proc, path: str = "/ready", seconds: float = 120) -> None:
    """Until `url + path` answers 200; fails when the process exits or time runs out."""
    import httpx

    deadline = time.time() + seconds
    while True:
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.time() < deadline, f"server at {url} did not start"
        time.sleep(0.2)
