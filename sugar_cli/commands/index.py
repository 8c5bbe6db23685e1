"""`sugar index …`: build, search and maintain a document index from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.search import SEARCH_MODES, SearchParams  # torch-free: `--help` stays fast


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="build, search and maintain a document index")
    isub = p.add_subparsers(dest="index_cmd", required=True)
    _add_sync(isub)
    _add_search(isub)
    _add_maintenance(isub)


def _add_sync(isub) -> None:
    for name, what in (("add", "read, chunk, embed and sync files and folders (Markdown, HTML, PDF, "
                                "images, text, JSONL)"),
                       ("import", "add an exported JSONL (same as add)")):
        a = isub.add_parser(name, help=what, description=what + ". Re-running is idempotent: unchanged "
                            "files are skipped, changed ones replace their chunks atomically.")
        _location(a)
        a.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint that embeds the documents")
        a.add_argument("--data", type=Path, required=True, nargs="+", metavar="PATH",
                       help="files and folders (recursive); formats detected by content")
        a.add_argument("--prune", action="store_true",
                       help="delete the chunks of sources whose file no longer exists")
        a.add_argument("--upsert", action="store_true",
                       help="replace documents whose id exists from another source (JSONL ids)")
        a.add_argument("--metadata", type=json.loads, default=None, metavar="JSON",
                       help="a JSON object added to every chunk's metadata")
        a.add_argument("--pdf-page-images", choices=["auto", "always", "never"], default="auto",
                       help="add each rendered PDF page as an image: auto = pages without a text layer")
        a.add_argument("--max-chunk-tokens", type=int, help="text tokens per chunk (default: from the "
                       "model's context, SUGAR_RETRIEVAL_K chunks per prompt)")
        a.add_argument("--max-chunk-images", type=int, default=4, help="image slices per chunk")
        a.add_argument("--batch-size", type=int, default=32, help="chunks embedded per forward pass")
        a.add_argument("--policy", action="store_true",
                       help="read under the server's input policy (SUGAR_* settings: image limits, "
                       "SUGAR_MAX_REQUEST_PIXELS per file, linked images fetched only under SUGAR_ALLOW_URLS)")
        a.add_argument("--type", default="auto", choices=["auto", "flat", "hnsw", "ivf"],
                       help="vector index type when the index is created")
        a.set_defaults(func=cmd_add)


def _location(parser) -> None:
    """`--index DIR` (the embedded SQLite + FAISS index) or `--index-url postgresql://…` (a shared
    index on PostgreSQL + pgvector; default $SUGAR_INDEX_URL): one of them, both land in `index`."""
    import os

    g = parser.add_mutually_exclusive_group(required="SUGAR_INDEX_URL" not in os.environ)
    g.add_argument("--index", type=Path, help="index directory")
    g.add_argument("--index-url", dest="index", default=os.environ.get("SUGAR_INDEX_URL"),
                   help="a PostgreSQL database with pgvector (postgresql://user@host:port/db; default "
                   "$SUGAR_INDEX_URL): one index shared by every process and replica that opens it")
    parser.add_argument("--collection", default="default",
                        help="the collection (default: 'default', the index itself; `add` creates a missing one)")


def _add_search(isub) -> None:
    s = isub.add_parser("search", help="two-stage search (ANN on g, GA-kernel rerank), fused with BM25 by default")
    _location(s)
    s.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint that embedded the index")
    s.add_argument("--query", required=True, help="query text")
    s.add_argument("--image", type=Path, action="append", default=[], help="query image(s), after the text")
    s.add_argument("-k", type=int, default=5, help="results")
    s.add_argument("--k-prime", type=int, help="ANN candidates to rerank (default 5k)")
    s.add_argument("--mode", choices=SEARCH_MODES, default="hybrid",
                   help="hybrid: dense and BM25 scores fused (default, as the server); "
                        "dense: GA kernel only; lexical: BM25 only")
    s.add_argument("--lexical-weight", type=float, help="hybrid: BM25's share of the fused score (default 0.6)")
    s.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="metadata equality filter (VALUE parsed as JSON when it parses)")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.set_defaults(func=cmd_search)


def _add_maintenance(isub) -> None:
    st = isub.add_parser("stats", help="count, dim, type, size on disk")
    _location(st)
    st.add_argument("--json", action="store_true", help="print the statistics as JSON")
    st.set_defaults(func=cmd_stats)

    v = isub.add_parser("verify", help="exit 0 only when FAISS and the store agree")
    _location(v)
    v.set_defaults(func=cmd_verify)

    d = isub.add_parser("delete", help="delete documents by id")
    _location(d)
    d.add_argument("ids", nargs="+", help="document ids")
    d.set_defaults(func=cmd_delete)

    r = isub.add_parser("rebuild", help="rebuild the vector index and the text index from the store")
    _location(r)
    r.add_argument("--type", choices=["auto", "flat", "hnsw", "ivf"],
                   help="a new vector index type (default: the current one)")
    r.set_defaults(func=cmd_rebuild)

    e = isub.add_parser("export", help="write every document as JSONL (images base64)")
    _location(e)
    e.add_argument("--out", type=Path, required=True, help="the JSONL file to write (documents, images, metadata)")
    e.set_defaults(func=cmd_export)

    re = isub.add_parser("reembed", help="re-embed every document with another checkpoint (resumable)")
    _location(re)
    re.add_argument("--checkpoint", type=Path, required=True, help="the new checkpoint to embed every document with")
    re.add_argument("--batch-size", type=int, default=32, help="documents embedded per forward pass")
    re.set_defaults(func=cmd_reembed)


def _open(args: argparse.Namespace, repair: bool = False, inspect: bool = False):
    from index import IndexRefused
    from index.collections import CollectionNotFound, CollectionRefused, open_collection

    try:
        return open_collection(args.index, args.collection, repair=repair, inspect=inspect)
    except (IndexRefused, CollectionNotFound, CollectionRefused) as e:
        raise SystemExit(f"sugar index: {e}") from None


def _named(args: argparse.Namespace) -> str | None:
    """The named collection of the command (None: the default one, the index itself)."""
    return None if args.collection == "default" else args.collection


def cmd_add(args: argparse.Namespace) -> int:
    """Sync files into the index; exit 1 when any file failed (the others are stored)."""
    from tqdm import tqdm

    from index import IndexRefused, VectorSettings
    from index.collections import CollectionRefused
    from index.embedding import embed_samples, open_for_model
    from index.ingest import IngestConfig, Ingestor, walk
    from index.ingest.readers import ReadOptions
    from model.sugar import SugarModel

    if args.metadata is not None and not isinstance(args.metadata, dict):
        raise SystemExit("sugar index: --metadata must be a JSON object")
    files, unreadable = walk(args.data)  # each file read once, here
    model = SugarModel.from_pretrained(args.checkpoint)
    try:
        idx = open_for_model(args.index, model, collection=_named(args), settings=VectorSettings(type=args.type))
    except (IndexRefused, CollectionRefused) as e:
        raise SystemExit(f"sugar index: {e}") from None
    read, pixels = ReadOptions(pdf_page_images=args.pdf_page_images), 0
    if args.policy:  # the rules the server applies to uploads, each file one "request"
        from server.policy import InputPolicy
        from server.settings import Settings

        policy = InputPolicy.from_settings(Settings())
        read = ReadOptions(limits=policy.limits, resolve=policy.fetch_linked, pdf_page_images=args.pdf_page_images)
        pixels = policy.max_request_pixels
    config = IngestConfig.for_model(model, max_images=args.max_chunk_images, max_tokens=args.max_chunk_tokens,
                                    read=read, metadata=args.metadata or {}, batch_size=args.batch_size,
                                    pixels_per_source=pixels)
    ing = Ingestor(idx, lambda s: embed_samples(model, s, args.batch_size), model.embedding_version, config)
    with idx.bulk_load(), tqdm(total=len(files), desc="indexing", unit="file") as bar:
        def on_file(r) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{r.status}: {Path(r.source).name}"[:60])

        summary = ing.sync(files, unreadable, prune=args.prune, upsert=args.upsert, on_file=on_file)
    idx.close()
    print(summary.text())
    print(f"index now holds {idx.count()} documents")
    return 1 if summary.failed else 0


def cmd_search(args: argparse.Namespace) -> int:
    from index import IndexRefused
    from index.embedding import embed_samples, open_for_model
    from model.sample import Sample
    from model.sugar import SugarModel

    model = SugarModel.from_pretrained(args.checkpoint)
    try:
        idx = open_for_model(args.index, model) if _named(args) is None else _open(args)
    except IndexRefused as e:
        raise SystemExit(f"sugar index: {e}") from None
    parts: list = [args.query]
    for img in args.image:
        parts.append(img.read_bytes())
    query = embed_samples(model, [Sample.build(parts)])[0]
    filters = {}
    for f in args.filter:
        k, _, v = f.partition("=")
        try:
            filters[k] = json.loads(v)
        except json.JSONDecodeError:
            filters[k] = v
    try:
        params = SearchParams(k=args.k, k_prime=args.k_prime, filters=filters or None, mode=args.mode,
                              lexical_weight=args.lexical_weight)
        hits = idx.search(query, params, args.query)
    except (IndexRefused, ValueError) as e:
        raise SystemExit(f"sugar index search: {e}") from None
    if args.json:
        print(json.dumps([h.to_dict() for h in hits]))
    else:
        for rank, h in enumerate(hits, 1):
            print(f"{rank:3d}. {h.id}  score={h.score:+.4f}  ann={h.ann_score:+.4f}  {json.dumps(h.metadata)}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    st = _open(args).stats()
    if args.json:
        print(json.dumps(st))
    else:
        for k, v in st.items():
            print(f"{k:20s} {v}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    ok, problems = _open(args, inspect=True).verify()
    if ok:
        print("ok: FAISS, the text index and the store agree")
        return 0
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1


def cmd_delete(args: argparse.Namespace) -> int:
    idx = _open(args)
    try:
        idx.delete(args.ids)
    except KeyError as e:
        raise SystemExit(f"sugar index: no document {e} (nothing deleted)") from None
    idx.close()
    print(f"deleted {len(args.ids)}")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    idx = _open(args, repair=True)  # the recovery command: rebuilds whatever the snapshot says
    idx.rebuild(args.type)
    idx.rebuild_lexical()
    idx.close()
    print(f"rebuilt: {idx.stats()['type']}, {idx.count()} documents")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    n = _open(args).export(args.out)
    print(f"exported {n} documents to {args.out}")
    return 0


def cmd_reembed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from index.embedding import embed_samples
    from index.ingest import reembed
    from model.sugar import SugarModel

    model = SugarModel.from_pretrained(args.checkpoint)
    idx = _open(args)
    bar = tqdm(total=idx.count(), desc="re-embedding", unit="doc")

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    n = reembed(idx, lambda s: embed_samples(model, s, args.batch_size), model.embedding_version,
                model.embed_dim, args.batch_size, progress)
    bar.close()
    idx.close()
    print(f"re-embedded {n} documents with {model.embedding_version}")
    return 0
