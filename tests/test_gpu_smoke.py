"""scripts/gpu_smoke.py: runs as is; without a GPU it says so and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs its checks")
def test_gpu_smoke_skips_with_a_message_without_a_gpu():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_smoke.py")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "skipped, no CUDA device" in r.stdout


def test_gpu_smoke_faiss_check_says_why_it_skips():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_smoke
    finally:
        sys.path.pop(0)
    from index.vectors import gpu_available

    if not gpu_available():
        assert gpu_smoke.faiss_gpu().startswith("skipped: faiss-gpu is not installed")
