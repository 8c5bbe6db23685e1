"""`sugar embed`: embed one interleaved sample and print its vectors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..home import load_model


class _OrderedSlices(argparse.Action):
    """--text/--image append to one list so the slice order is the command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        parts = getattr(namespace, "parts", None) or []
        parts.append((self.dest, values))
        namespace.parts = parts


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="embed one interleaved sample and print its vectors")
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory (default: a random-init tiny model)")
    p.add_argument("--text", action=_OrderedSlices, dest="text", help="a text slice (repeatable)")
    p.add_argument("--image", action=_OrderedSlices, dest="image", type=Path, help="an image slice (repeatable)")
    p.add_argument("--json", action="store_true", help="print the full vectors as JSON")
    p.set_defaults(func=run, parts=[])


def run(args: argparse.Namespace) -> int:
    from model.sample import Sample

    if not args.parts:
        raise SystemExit("sugar embed: give at least one --text or --image")
    parts: list[str | bytes] = []
    for kind, value in args.parts:
        if kind == "text":
            parts.append(value)
        else:
            try:
                parts.append(Path(value).read_bytes())
            except OSError as e:
                raise SystemExit(f"sugar embed: cannot read image {value}: {e.strerror}") from None
    sample = Sample.build(parts)
    model = load_model(args.checkpoint)
    emb = model.embed([sample])
    vecs, summary, mods = emb.item(0)
    if args.json:
        print(json.dumps({
            "embedding_version": model.embedding_version,
            "slices": [{"type": t, "embedding": v.tolist()} for t, v in zip(mods, vecs, strict=True)],
            "embedding": summary.tolist(),
        }))
        return 0
    print(f"{len(mods)} slices, D={vecs.shape[1]}, embedding version {model.embedding_version or '-'}")
    for i, (t, v) in enumerate(zip(mods, vecs, strict=True)):
        head = " ".join(f"{x:+.3f}" for x in v[:8].tolist())
        print(f"  slice {i} [{t:5s}] |e|={float(v.norm()):.3f}  {head} ...")
    head = " ".join(f"{x:+.3f}" for x in summary[:8].tolist())
    print(f"  summary g      |g|={float(summary.norm()):.3f}  {head} ...")
    return 0
