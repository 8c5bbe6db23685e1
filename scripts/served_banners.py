"""The served check of issue #20: ask the server the README's question for the built-in houses.

Starts the app in-process (FastAPI's TestClient) on a checkpoint and the built-in
collection indexed with it (in a temporary home), and sends, for each of the first N
built-in houses, the README's `/generate` request with the house's name in it: the
default hybrid retrieval, k = 3, greedy decoding. Prints how many banner colours are
answered right, where the asked house was retrieved, and the README's own House Vyd
answer.

    python scripts/served_banners.py [--checkpoint model/default_checkpoint] [--houses 40]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "model" / "default_checkpoint")
    p.add_argument("--houses", type=int, default=40)
    p.add_argument("--context-order", choices=["ranked", "best_last"],
                   help="serve a copy of the checkpoint with this prompts.context_order (a what-if)")
    a = p.parse_args(argv)

    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings
    from sugar_cli.home import ensure_default
    from tests.test_first_session import asked_house, first_session_requests
    from training.data import builtin_houses

    _, (_, readme) = first_session_requests()
    readme_house = asked_house(readme)
    houses = builtin_houses()
    asked = houses[: a.houses]
    if readme_house not in {h.name for h in asked}:
        asked.append(next(h for h in houses if h.name == readme_house))
    t0 = time.time()
    with tempfile.TemporaryDirectory() as home:
        checkpoint = a.checkpoint.resolve()
        if a.context_order:
            checkpoint = Path(home) / "checkpoint"
            shutil.copytree(a.checkpoint, checkpoint)
            cfg = json.loads((checkpoint / "sugar_config.json").read_text())
            cfg.setdefault("prompts", {})["context_order"] = a.context_order
            (checkpoint / "sugar_config.json").write_text(json.dumps(cfg, indent=2))
        ckpt, index = ensure_default(Path(home), checkpoint)
        settings = Settings(_env_file=None, checkpoint=ckpt, index=index, ready_cache_s=0)
        with TestClient(create_app(settings)) as client:
            rows = []
            for h in asked:
                body = copy.deepcopy(readme)
                body["query"]["slices"][0]["text"] = readme["query"]["slices"][0]["text"].replace(
                    readme_house, h.name)
                r = client.post("/generate", json=body)
                r.raise_for_status()
                out = r.json()
                ids = [d["id"] for d in out["documents"]]
                answer = out["text"].strip().strip(".").lower()
                rows.append({"house": h.name, "colour": h.banner.color, "answer": answer,
                             "right": answer == h.banner.color,
                             "rank": ids.index(f"house-{h.name.lower()}") + 1
                             if f"house-{h.name.lower()}" in ids else None})
    first = rows[: a.houses]
    by_rank: dict[str, list[bool]] = {}
    for r in first:
        by_rank.setdefault(str(r["rank"]), []).append(r["right"])
    vyd = next(r for r in rows if r["house"] == readme_house)
    result = {"checkpoint": str(a.checkpoint), "context_order": a.context_order or "as saved",
              "right": sum(r["right"] for r in first), "of": len(first),
              "by_rank_of_the_asked_house": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_rank.items())},
              "readme": {"house": readme_house, "colour": vyd["colour"], "answer": vyd["answer"]},
              "seconds": round(time.time() - t0, 1)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
