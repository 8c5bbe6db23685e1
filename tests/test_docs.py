"""The docs match the code and their commands run.

- docs/SETTINGS.md, the reference of docs/CLI.md and the rebuild recipe of docs/TRAINING.md are
  what `python -m sugar_cli.docs` writes from the code (a drift fails here);
- the README stays short, and every repository path a doc names exists;
- every command in a `bash` block of the README and docs/ runs: `make …` by `.ci/run` (checked
  here), the others by `test_every_doc_command_runs` (marker `docs`, run by `.ci/run`): `curl`
  against a live server on the shipped checkpoint, `sugar serve …` until its /ready answers 200,
  everything else to exit status 0, in a scratch directory; `python` blocks likewise.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


def commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in body.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        try:
            shlex.split(current)
        except ValueError:  # a quoted argument (a JSON body) goes on to the next line
            current += "\n"
            continue
        out.append(re.sub(r"\s+#\s.*$", "", current).strip())  # a trailing "  # comment"
        current = ""
    return out


def doc_commands() -> list[tuple[str, str]]:
    return [(p.name, c) for p in DOCS for lang, body in blocks(p) if lang == "bash" for c in commands(body)]


def test_generated_docs_match_the_code():
    from sugar_cli import docs

    assert (ROOT / "docs" / "SETTINGS.md").read_text() == docs.settings_markdown(), \
        "docs/SETTINGS.md drifted from server/settings.py: run python -m sugar_cli.docs"
    assert docs.cli_reference((ROOT / "docs" / "CLI.md").read_text()) == docs.cli_markdown(), \
        "docs/CLI.md drifted from the parsers: run python -m sugar_cli.docs"
    assert docs.recipe_section((ROOT / "docs" / "TRAINING.md").read_text()) == docs.recipe_markdown(), \
        "docs/TRAINING.md's rebuild recipe is not the shipped checkpoint's history: run python -m sugar_cli.docs"


def test_every_setting_and_flag_is_described():
    from server.settings import Settings

    assert not [n for n, f in Settings.model_fields.items() if not f.description]
    assert "| `SUGAR_MAX_REQUEST_PIXELS` | `67108864` |" in (ROOT / "docs" / "SETTINGS.md").read_text()
    assert "### `sugar bench rerank`" in (ROOT / "docs" / "CLI.md").read_text()


def test_the_readme_is_short_and_names_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for doc in ("API", "ARCHITECTURE", "TRAINING", "DEPLOYMENT", "CLI", "SETTINGS", "METHOD", "EXPERIMENTS"):
        assert f"docs/{doc}.md" in text and (ROOT / "docs" / f"{doc}.md").is_file()


def test_every_repository_path_a_doc_names_exists():
    """`model/filters.py`, `server/routes/`, `tests/test_vllm.py`…: what a reader is sent to is there."""
    tops = {p.name for p in ROOT.iterdir()}
    missing = []
    for path in DOCS:
        for ref in re.findall(r"`([A-Za-z0-9_./-]+)`", path.read_text()):
            ref = ref.split("::")[0]
            top = ref.split("/")[0]
            if "/" not in ref or top not in tops or top in ("runs", "build") or "*" in ref or ref.endswith("."):
                continue
            if not (ROOT / ref).exists():
                missing.append(f"{path.name}: {ref}")
    assert not missing, missing


def test_make_commands_are_run_by_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    makes = [c for _, c in doc_commands() if c.startswith("make ")]
    assert {"make run", "make test"} <= set(makes)
    for c in makes:
        assert re.search(rf"^\s*(timeout \S+ )?{re.escape(c)}\b", ci, re.M), f"{c!r} is not run by .ci/run"


def test_the_doc_commands_parse_as_the_cli_has_them():
    """Every `sugar` command of a doc is one the parser accepts (flags that exist, values it
    takes): a renamed flag fails here in the default run, before the `docs` tier runs it."""
    from sugar_cli.main import build_parser

    parser = build_parser()
    seen = 0
    for name, c in doc_commands():
        if c.startswith("sugar "):
            seen += 1
            try:
                parser.parse_args(shlex.split(c)[1:])
            except SystemExit:
                pytest.fail(f"{name}: {c!r} does not parse")
    assert seen >= 10


# ------------------------------------------------------------------------- the docs tier

CURL = r"""curl() {
  local out code
  out=$(command curl -sS -w '\n%{http_code}' "$@") || return $?
  code=${out##*$'\n'}; printf '%s\n' "${out%$'\n'*}"
  if [ "$code" -ge 400 ]; then echo "HTTP $code" >&2; return 22; fi
}
"""


def _scratch(tmp: Path) -> Path:
    """A directory that looks like the repository (its top-level entries linked) where the
    commands' own outputs (runs/…) land apart from it."""
    work = tmp / "work"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", ".git", ".venv", ".vllm-venv", "build"):
            (work / entry.name).symlink_to(entry)
    return work


def _wait_ready(url: str, proc: subprocess.Popen, limit_s: float = 600) -> None:
    import httpx

    deadline = time.time() + limit_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} not ready in {limit_s} s")


@pytest.mark.docs
def test_every_doc_command_runs(tmp_path):
    from server.app import create_app
    from sugar_cli.home import ensure_default
    from tests.server_fixtures import free_port, live_server, settings_for

    work = _scratch(tmp_path)
    home = tmp_path / "home"
    env = {**os.environ, "SUGAR_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ckpt, index = ensure_default(home)
    app = create_app(settings_for(ckpt, index, ready_cache_s=0))
    ran = []
    with live_server(app, free_port()) as url:
        for path in DOCS:
            for lang, body in blocks(path):
                if lang == "python":
                    code = body.replace("http://127.0.0.1:8000", url)
                    r = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True,
                                       text=True, timeout=600)
                    assert r.returncode == 0, f"{path.name} python block:\n{r.stderr[-2000:]}"
                    ran.append(f"{path.name}: python block")
                if lang != "bash":
                    continue
                for c in commands(body):
                    if c.startswith("make "):
                        continue  # run by .ci/run (test_make_commands_are_run_by_ci)
                    if c.startswith("sugar serve"):
                        port = re.search(r"--port (\d+)", c)
                        assert port, f"{path.name}: {c!r}: a served command in a doc names its --port"
                        proc = subprocess.Popen(shlex.split(c), cwd=work, env=env, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL, start_new_session=True)
                        try:
                            _wait_ready(f"http://127.0.0.1:{port.group(1)}", proc)
                        finally:
                            proc.terminate()
                            proc.wait(timeout=60)
                        ran.append(f"{path.name}: {c}")
                        continue
                    script = CURL + re.sub(r"(localhost|127\.0\.0\.1):8000", url.removeprefix("http://"), c)
                    r = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                                       timeout=900)
                    assert r.returncode == 0, f"{path.name}: {c!r} exited {r.returncode}:\n{r.stdout[-1500:]}\n" \
                                              f"{r.stderr[-1500:]}"
                    ran.append(f"{path.name}: {c}")
    assert len(ran) >= 20, ran
