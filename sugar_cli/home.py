"""What the commands share: the Sugar home, the built-in default (checkpoint and indexed
collection), the model of `--checkpoint`, JSON records."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger("sugar")


def sugar_home() -> Path:
    return Path(os.environ.get("SUGAR_HOME", Path.home() / ".sugar")).expanduser()


def teacher_cache(given: Path | None) -> Path:
    """The teacher feature cache: `--cache`, or $SUGAR_HOME/cache/teachers."""
    return given or sugar_home() / "cache" / "teachers"


def ensure_default(home: Path, checkpoint: Path | None = None) -> tuple[Path, Path]:
    """The built-in default: the checkpoint shipped with the package (never trained
    here: a missing or corrupt file is an error naming it and the commands that
    rebuild it) and the built-in collection, indexed once per embedding version."""
    from tqdm import tqdm

    from model.sugar import DEFAULT_CHECKPOINT, CheckpointError, check_checkpoint, rebuild_commands

    ckpt = checkpoint or DEFAULT_CHECKPOINT
    try:
        version = check_checkpoint(ckpt).embedding_version
    except CheckpointError as e:
        rebuild = ("\n    ".join(rebuild_commands()) if ckpt == DEFAULT_CHECKPOINT
                   else f"sugar train --preset shipped --out {ckpt}")
        raise SystemExit(f"sugar: the default checkpoint is unusable: {e}\n"
                         f"  rebuild it with (or git checkout the shipped files):\n    {rebuild}") from None
    index = home / "index" / f"default-{version}"
    if not (index / "store.sqlite").is_file():
        from index.embedding import add_samples, open_for_model
        from model.sugar import SugarModel
        from training.data import builtin_documents

        logger.info("building the default index at %s", index)
        model = SugarModel.from_pretrained(ckpt)
        docs = builtin_documents()
        idx = open_for_model(index, model)
        with tqdm(total=len(docs), desc="indexing", unit="doc") as bar:
            add_samples(idx, model, docs, progress=bar.update)
        idx.close()
    return ckpt, index


def default_pair(checkpoint: Path | None, index: Path | None) -> tuple[Path, Path]:
    """`--checkpoint`/`--index` as given, or both the built-in default's."""
    if checkpoint is None or index is None:
        return ensure_default(sugar_home())
    return checkpoint, index


def load_model(checkpoint: Path | None):
    from model.sugar import SugarModel, build_tiny_model

    if checkpoint is not None:
        return SugarModel.from_pretrained(checkpoint)
    logger.warning("no --checkpoint: using a random-init tiny model (vectors are not meaningful)")
    return build_tiny_model()


def write_json(path: Path | None, records: Any) -> None:
    """`--json PATH`: the records, indented."""
    if path is not None:
        path.write_text(json.dumps(records, indent=2) + "\n")
