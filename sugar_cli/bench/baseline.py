"""An older revision beside this checkout, for benchmarks that print old and new side by side:
a git worktree of REV (removed afterwards) whose code runs in processes of its own
(`PYTHONPATH` = the worktree), with this checkout's installed dependencies."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # sugar_cli/bench/baseline.py -> the repository


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(root), rev], cwd=REPO, check=True)
        try:
            yield root
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(root)], cwd=REPO, check=False)


def env_for(root: Path) -> dict[str, str]:
    """The environment of a process running the code at `root`."""
    return {**os.environ, "PYTHONPATH": str(root)}
