"""`sugar bench ingest`: reading + chunking against embedding, and a re-run against the first run.

Builds two corpora in a temporary folder — a text PDF of `pages` pages and
`files` Markdown files with headings and paragraphs — and measures, in one
run on the same machine:

1. reading + chunking (the readers, the chunker, the model's tokenizer
   counting the budgets; no embedding) per corpus, in chunks per second;
2. embedding those chunks with the checkpoint (all of them, or an evenly
   spaced sample of `embed_sample` chunks: the rate is per chunk);
3. a first `sync` into a fresh index (read, chunk, embed, write) against a
   second, unchanged one (hash and skip), on a corpus of `sync_pages` pages
   and `sync_files` files (default: the same sizes; the first sync embeds
   every chunk, so smaller sizes keep the benchmark short).

Ratios printed: embedding time / read+chunk time (goal ≥ 20: the model stays
the bottleneck) and first run / unchanged re-run (goal ≥ 50).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ..home import write_json

WORDS = ("harbour ferry tide lantern market bridge storm river orchard mill stone north winter "
         "boat trade weather lighthouse square baker dusk").split()


def _sentence(i: int, n: int = 12) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n)).capitalize() + "."


def text_pdf(pages: int, lines: int = 30) -> bytes:
    """A plain PDF (Helvetica text, `lines` lines per page) written directly: no PDF library."""
    objs: list[bytes] = []
    font_id, pages_id = 3, 2
    kids = []
    body: list[tuple[int, bytes]] = []
    next_id = 4
    for p in range(pages):
        text = "BT /F1 10 Tf 40 760 Td 14 TL " + " ".join(
            f"({_sentence(p * lines + k)}) '" for k in range(lines)) + " ET"
        stream = text.encode()
        content_id, page_id = next_id, next_id + 1
        next_id += 2
        body.append((content_id, b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"))
        body.append((page_id, b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R "
                     b"/Resources << /Font << /F1 3 0 R >> >> >>" % content_id))
        kids.append(page_id)
    objs_by_id = {1: b"<< /Type /Catalog /Pages 2 0 R >>",
                  pages_id: b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids)
                  + b"] /Count %d >>" % len(kids),
                  font_id: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"}
    objs_by_id.update(dict(body))
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for i in sorted(objs_by_id):
        offsets[i] = len(out)
        out += b"%d 0 obj\n" % i + objs_by_id[i] + b"\nendobj\n"
    xref = len(out)
    n = max(objs_by_id) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % n
    for i in range(1, n):
        out += b"%010d 00000 n \n" % offsets[i]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (n, xref)
    del objs
    return bytes(out)


def markdown_files(root: Path, n: int) -> None:
    for i in range(n):
        (root / f"note{i:04d}.md").write_text(
            f"# Note {i}\n\n{_sentence(i)} {_sentence(i + 1)}\n\n## Details\n\n- {_sentence(i + 2)}\n"
            f"- {_sentence(i + 3)}\n\n{_sentence(i + 4)} {_sentence(i + 5)}\n")


def run(*, checkpoint: Path, pages: int = 1000, files: int = 1000, embed_sample: int = 256,
        batch_size: int = 32, sync_pages: int | None = None, sync_files: int | None = None) -> dict:
    from index.embedding import embed_samples, open_for_model
    from index.ingest import IngestConfig, Ingestor
    from model.sugar import SugarModel

    model = SugarModel.from_pretrained(checkpoint)
    records: dict = {"checkpoint": str(checkpoint), "pages": pages, "files": files}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pdf").mkdir()
        (root / "pdf" / "manual.pdf").write_bytes(text_pdf(pages))
        (root / "md").mkdir()
        markdown_files(root / "md", files)
        idx = open_for_model(root / "ix", model)

        def embed(s):
            return embed_samples(model, s, batch_size)

        ing = Ingestor(idx, embed, model.embedding_version, IngestConfig.for_model(model, batch_size=batch_size))
        print(f"{'corpus':10s} {'chunks':>7s} {'read+chunk s':>13s} {'embed s (est.)':>15s} {'embed/read':>11s}")
        for name in ("pdf", "md"):
            records[name] = _read_against_embed(ing, root / name, embed_sample, batch_size)
        # the sync runs embed everything: on a corpus of their own size (default: the same)
        sync = root / "sync"
        (sync / "md").mkdir(parents=True)
        (sync / "manual.pdf").write_bytes(text_pdf(pages if sync_pages is None else sync_pages))
        markdown_files(sync / "md", files if sync_files is None else sync_files)
        records["sync"] = _sync_against_rerun(ing, sync)
        idx.close()
    return records


def _read_against_embed(ing, folder: Path, embed_sample: int, batch_size: int) -> dict:
    from index.ingest import SourceReader, walk
    from index.ingest.pipeline import embed_in_batches

    sources, _ = walk([folder])
    t = time.perf_counter()
    reader = SourceReader(ing.config)
    chunks = [s for f in sources for s in reader.chunks(f, "bench").samples]
    read_s = time.perf_counter() - t
    step = max(1, len(chunks) // max(1, embed_sample))
    sample = chunks[::step][:embed_sample]
    t = time.perf_counter()
    embed_in_batches(sample, ing.embed, batch_size)
    embed_s = (time.perf_counter() - t) / len(sample) * len(chunks)
    print(f"{folder.name:10s} {len(chunks):7d} {read_s:13.2f} {embed_s:15.2f} {embed_s / read_s:10.1f}x")
    return {"chunks": len(chunks), "read_chunk_s": read_s, "embed_s": embed_s, "embedded_for_rate": len(sample),
            "ratio_embed_over_read": embed_s / read_s}


def _sync_against_rerun(ing, folder: Path) -> dict:
    t = time.perf_counter()
    first = ing.sync_paths([folder])
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    again = ing.sync_paths([folder])
    again_s = time.perf_counter() - t
    print(f"first sync   {first_s:8.2f} s   {first.text().splitlines()[0]}")
    print(f"re-run       {again_s:8.2f} s   {again.text().splitlines()[0]}")
    print(f"first / re-run: {first_s / again_s:.0f}x")
    return {"first_s": first_s, "rerun_s": again_s, "ratio": first_s / again_s,
            "first": first.to_dict(), "rerun": again.to_dict()}


# what the old/new table compares (seconds: lower is better)
COMPARED = (("pdf read+chunk s", ("pdf", "read_chunk_s")), ("md read+chunk s", ("md", "read_chunk_s")),
            ("pdf embed s", ("pdf", "embed_s")), ("md embed s", ("md", "embed_s")),
            ("first sync s", ("sync", "first_s")), ("unchanged re-run s", ("sync", "rerun_s")))


def run_against(*, baseline: str, rounds: int, cli_args: list[str]) -> dict:
    """This bench at `baseline` (a worktree) and here, each in a process of its own, alternating
    for `rounds` rounds; prints the best of each side and new/old."""
    import json
    import subprocess
    import sys

    from .baseline import REPO, env_for, worktree

    runs: dict[str, list[dict]] = {f"old {baseline}": [], "new": []}
    with worktree(baseline) as old, tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for (name, acc), root in zip(runs.items(), (old, REPO), strict=True):
                out = Path(tmp) / f"{r}-{len(acc)}-{name.split()[0]}.json"
                proc = subprocess.run([sys.executable, "-m", "sugar_cli", "bench", "ingest", *cli_args,
                                       "--json", str(out)], cwd=root, env=env_for(root), capture_output=True,
                                      text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"bench ingest: the side at {root} failed:\n{proc.stderr[-3000:]}")
                acc.append(json.loads(out.read_text()))
                print(f"round {r + 1} {name}: done", flush=True)
    best = {n: {label: min(rec[a][b] for rec in recs) for label, (a, b) in COMPARED} for n, recs in runs.items()}
    old_best, new_best = best.values()
    print(f"\n| best of {rounds} rounds | {' | '.join(runs)} | new/old |\n|---|---|---|---|")
    for label, _ in COMPARED:
        print(f"| {label} | {old_best[label]:.2f} | {new_best[label]:.2f} | {new_best[label] / old_best[label]:.2f} |")
    return {"runs": runs, "best": best}


def add_parser(bsub) -> None:
    ig = bsub.add_parser("ingest", help="reading + chunking vs embedding; unchanged re-run vs first run")
    ig.add_argument("--checkpoint", type=Path, help="default: the built-in default checkpoint")
    ig.add_argument("--pages", type=int, default=1000, help="pages of the text PDF")
    ig.add_argument("--files", type=int, default=1000, help="Markdown files")
    ig.add_argument("--embed-sample", type=int, default=256,
                    help="chunks embedded to measure the embedding rate (evenly spaced)")
    ig.add_argument("--sync-pages", type=int, help="PDF pages of the sync corpus (default: --pages)")
    ig.add_argument("--sync-files", type=int, help="Markdown files of the sync corpus (default: --files)")
    ig.add_argument("--baseline", metavar="REV",
                    help="a git revision run beside this checkout (alternating rounds), with the ratios")
    ig.add_argument("--rounds", type=int, default=2, help="with --baseline: alternating rounds (default 2)")
    ig.add_argument("--json", type=Path, help="also write the records to this file (JSON)")
    ig.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from model.sugar import DEFAULT_CHECKPOINT

    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    if args.baseline:
        passed = ["--checkpoint", str(checkpoint.resolve()), "--pages", str(args.pages),
                  "--files", str(args.files), "--embed-sample", str(args.embed_sample)]
        passed += ["--sync-pages", str(args.sync_pages)] if args.sync_pages is not None else []
        passed += ["--sync-files", str(args.sync_files)] if args.sync_files is not None else []
        records = run_against(baseline=args.baseline, rounds=args.rounds, cli_args=passed)
    else:
        records = run(checkpoint=checkpoint, pages=args.pages, files=args.files, embed_sample=args.embed_sample,
                      sync_pages=args.sync_pages, sync_files=args.sync_files)
    write_json(args.json, records)
    return 0
