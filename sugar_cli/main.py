"""`sugar`: the command line. A thin layer that imports model/, training/, index/ and server/
and orchestrates them; no layer imports it. This module only wires the commands: each lives in
its own module (sugar_cli/commands/, sugar_cli/bench/) and adds its own parser."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import bench
from .commands import embed, eval, index, serve, train

COMMANDS = (embed, train, eval, serve, index, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sugar", description="Sugar: one multimodal checkpoint that embeds, "
                                     "retrieves and generates; train it, evaluate it, index documents, serve it.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx/httpcore: one line per request otherwise (benchmarks, engines); faiss.loader: its
    # probe of the CPU-specific builds logs "Could not load library ..." at INFO, which reads
    # as a failure although the build it then loads is fine
    for noisy in ("httpx", "httpcore", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
