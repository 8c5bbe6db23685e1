"""Shared fixtures: tiny random models and generated images (seconds, CPU only)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import SMOKE_TINY

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

TEST_TINY = dict(SMOKE_TINY)  # the one tiny test model (model/config.py)


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    """Every test starts from the same global random state (Python, NumPy, torch), so a draw a
    test does not seed itself is the same in every run and in any test order."""
    import random

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def make_image(seed: int = 0, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_model():
    from model.config import SugarConfig, TinyConfig
    from model.sugar import build_tiny_model

    return build_tiny_model(SugarConfig(embed_dim=32), TinyConfig(**TEST_TINY))


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    tiny_model.save_pretrained(path, training={"note": "random init, tests"})
    return path


@pytest.fixture(scope="module")
def pg():
    """A throwaway PostgreSQL with pgvector (sugar_cli.postgres); skipped where it cannot start,
    unless SUGAR_REQUIRE_POSTGRES=1 (CI), where that is a failure."""
    from tests.pg_fixtures import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer()
    except PostgresUnavailable as e:
        if os.environ.get("SUGAR_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"PostgreSQL cannot start here: {e}")
    yield server
    server.close()
