"""The served check (issues #20, #30): ask the running app about the built-in houses.

Starts the app in-process (FastAPI's TestClient) on a checkpoint and the built-in collection
indexed with it (in a temporary home), and sends `/generate` requests as a user would (the
default hybrid retrieval, k = 3, greedy decoding):

- the README's question for each of the first N built-in houses (`--attributes color`, the
  default), or one question per house and attribute (`--attributes color shape size count
  position texture`), canonical phrasing: right answers per attribute, where the asked house was
  retrieved, the README's own House Vyd answer;
- `--families`: each phrasing family (training/phrasing.py; `punctuation` and `extra` are never
  trained on) over the same houses, one attribute drawn per house: right per family;
- `--abstention`: out-of-world questions, which should get the checkpoint's "not in the
  documents" (`finish_reason: abstained`): real text (Apache-2.0 and GPL-3 uploaded as documents,
  then questions about them), houses that are not in the collection, and questions the banner
  documents cannot answer (a house's motto); and the false-abstention rate on the in-world
  questions above.

    python scripts/served_banners.py [--checkpoint model/default_checkpoint] [--houses 40]
    python scripts/served_banners.py --houses 200 --attributes color shape size count position texture \\
        --families --abstention --json runs/served.json
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _ask(client, readme: dict, text: str) -> dict:
    body = copy.deepcopy(readme)
    body["query"]["slices"][0]["text"] = text
    r = client.post("/generate", json=body)
    r.raise_for_status()
    return r.json()


def _answer(out: dict) -> str:
    return out["text"].strip().strip(".").lower()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "model" / "default_checkpoint")
    p.add_argument("--houses", type=int, default=40)
    p.add_argument("--attributes", nargs="+", default=["color"],
                   choices=["color", "shape", "size", "count", "position", "texture"])
    p.add_argument("--families", action="store_true", help="every phrasing family, one attribute per house")
    p.add_argument("--abstention", action="store_true", help="out-of-world questions and false abstention")
    p.add_argument("--context-order", choices=["ranked", "best_last"],
                   help="serve a copy of the checkpoint with this prompts.context_order (a what-if)")
    p.add_argument("--json", type=Path, help="also write the result here")
    a = p.parse_args(argv)

    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings
    from sugar_cli.home import ensure_default
    from tests.test_first_session import asked_house, first_session_requests
    from training.data import BUILTIN_HOUSES, BUILTIN_SEED, EVAL_LICENCES, LICENCE_DIR, builtin_houses, knowledge_base
    from training.phrasing import (
        FAMILIES,
        HELD_OUT,
        TEXT_HELD_OUT,
        TEXT_TRAINED,
        UNKNOWN_HELD_OUT,
        UNKNOWN_TRAINED,
        banner_question,
    )
    from training.world import WorldSplit, answer_of

    _, (_, readme) = first_session_requests()
    readme_house = asked_house(readme)
    houses = builtin_houses()
    asked = houses[: a.houses]
    if readme_house not in {h.name for h in asked}:
        asked.append(next(h for h in houses if h.name == readme_house))
    t0 = time.time()
    result: dict = {"checkpoint": str(a.checkpoint), "context_order": a.context_order or "as saved"}
    in_world: list[bool] = []  # each in-world answer: abstained?
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
                for attribute in a.attributes:
                    question = banner_question(attribute, h.name, "canonical", random.Random(0))
                    if attribute == "color":  # the README's own words
                        question = readme["query"]["slices"][0]["text"].replace(readme_house, h.name)
                    out = _ask(client, readme, question)
                    ids = [d["id"] for d in out["documents"]]
                    want = answer_of(h.banner, attribute)
                    doc = f"house-{h.name.lower()}"
                    rows.append({"house": h.name, "attribute": attribute, "want": want, "answer": _answer(out),
                                 "right": _answer(out) == want, "abstained": out.get("abstained", False),
                                 "rank": ids.index(doc) + 1 if doc in ids else None})
                    in_world.append(rows[-1]["abstained"])
            first = [r for r in rows if r["house"] in {h.name for h in asked[: a.houses]}]
            result["attributes"] = {att: f"{sum(r['right'] for r in first if r['attribute'] == att)}/"
                                         f"{sum(1 for r in first if r['attribute'] == att)}" for att in a.attributes}
            by_rank: dict[str, list[bool]] = {}
            for r in first:
                by_rank.setdefault(str(r["rank"]), []).append(r["right"])
            result["by_rank_of_the_asked_house"] = {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_rank.items())}
            vyd = next(r for r in rows if r["house"] == readme_house and r["attribute"] == a.attributes[0])
            result["readme"] = {"house": readme_house, "want": vyd["want"], "answer": vyd["answer"]}
            if a.families:
                fam: dict[str, list[bool]] = {}
                for family in FAMILIES:
                    rng = random.Random(f"families-{family}")
                    for h in asked[: a.houses]:
                        attribute, question, want = h.question(rng, family, tuple(a.attributes))
                        out = _ask(client, readme, question)
                        fam.setdefault(family, []).append(_answer(out) == want)
                        in_world.append(out.get("abstained", False))
                result["families"] = {f: f"{sum(v)}/{len(v)}" + (" (held out)" if f in HELD_OUT else "")
                                      for f, v in fam.items()}
            if a.abstention:
                known = {h.name for h in houses}
                # the built-in houses' name distribution, past the names the collection holds
                absent = [h for h in knowledge_base(WorldSplit("test", BUILTIN_SEED), 80, BUILTIN_HOUSES)
                          if h.name not in known][:40]
                result["abstention"] = _abstention(client, readme, asked[: a.houses], LICENCE_DIR, EVAL_LICENCES,
                                                   TEXT_TRAINED + TEXT_HELD_OUT, UNKNOWN_TRAINED + UNKNOWN_HELD_OUT,
                                                   absent)
                result["false_abstention"] = f"{sum(in_world)}/{len(in_world)}"
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps({**result, "rows": rows}, indent=1) + "\n")
    return result


def _abstention(client, readme: dict, houses, licence_dir: Path, licences, text_questions, unknown, absent) -> dict:
    """Out-of-world questions: the fraction answered "not in the documents", per kind."""
    out: dict[str, str] = {}
    files = [("files", (f"{name}.txt", (licence_dir / name).read_bytes(), "text/plain"))
             for name in licences if (licence_dir / name).is_file()]
    if files:
        r = client.post("/documents/upload", files=files)
        r.raise_for_status()
        got = [_ask(client, readme, q)["abstained"] for q in text_questions]
        out["real_text"] = f"{sum(got)}/{len(got)}"
    got = [_ask(client, readme, f"What colour is the banner of House {h.name}?")["abstained"] for h in absent]
    out["absent_houses"] = f"{sum(got)}/{len(got)}"
    rng = random.Random(0)
    got = [_ask(client, readme, rng.choice(unknown).format(n=h.name))["abstained"] for h in houses[:40]]
    out["unanswerable_about_present_houses"] = f"{sum(got)}/{len(got)}"
    return out


if __name__ == "__main__":
    main()
