"""Configuration dataclasses of the Sugar model.

`SugarConfig` is saved as `sugar_config.json` beside the backbone directory
(see ARCHITECTURE.md). `TinyConfig` describes the random-init tiny LLaVA that
`build_tiny` creates. Both are plain dataclasses: JSON in, JSON out, unknown
keys rejected so that a typo in a config file is an error, not a default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .kernels import KernelSettings

FORMAT_VERSION = 1
# sugar_config.json keys earlier versions wrote and nothing reads (ignored when loading):
# `abstain_lexical_threshold` was a BM25 score, which means something else in every collection
# (replaced by `abstain_evidence_threshold`, index.index.term_evidence)
RETIRED = frozenset({"backbone_family", "abstain_lexical_threshold"})

T = TypeVar("T")


def _from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{what}: unknown keys {unknown}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        ftype = known[name].type
        if isinstance(value, dict) and isinstance(ftype, str) and ftype in _NESTED:
            value = _from_dict(_NESTED[ftype], value, f"{what}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


CONTEXT_ORDERS = ("ranked", "best_last")


@dataclass
class PromptFormat:
    """The prompt formats shared by training, the server and vLLM.

    Every text that reaches the backbone is built from these strings by
    `model.prompts`; the tokenizer's chat template renders the same strings,
    so a vLLM server fed chat messages sees the identical prompt.
    """

    user_prefix: str = "USER: "
    assistant_prefix: str = " ASSISTANT:"
    slice_separator: str = "\n"
    image_placeholder: str = "<image>"
    # RAG context: documents numbered by rank from 1, then the question
    context_header: str = "Context:"
    document_prefix: str = "[{i}] "
    question_header: str = "Question: "
    # where the ranking's documents go: "ranked" ([1] first) or "best_last" ([k] first, the
    # best-ranked [1] nearest the question). Generation only: not in the embedding version.
    context_order: str = "ranked"

    def __post_init__(self) -> None:
        if self.context_order not in CONTEXT_ORDERS:
            raise ValueError(f"prompts.context_order must be one of {CONTEXT_ORDERS}, not {self.context_order!r}")

    def embedding_fields(self) -> dict[str, str]:
        """The fields that shape embedding prompts (the embedding version hashes these)."""
        return {k: v for k, v in self.__dict__.items() if k != "context_order"}


@dataclass
class SugarConfig:
    """Everything beside the backbone that decides what vectors come out."""

    # embedding
    embed_dim: int = 128
    pooling: str = "mean"  # "mean" | "last"
    hidden_layer: int = -1  # index into hidden_states (-1: last layer)
    head_norm: str = "batch"  # "batch" | "layer" | "none" (normalisation before the heads)
    # alignment kernel (§4)
    kernel_sigma: float = 1.0
    kernel_gamma: float = 1.0
    length_normalization: str = "mean_length"  # "mean_length" | "none"
    # prompts
    prompts: PromptFormat = field(default_factory=PromptFormat)
    # abstention (issue #30): with retrieved documents, the answer is `model.prompts.ABSTAIN_ANSWER`
    # when the first answer token's margin for it (its log-probability minus the best other
    # token's) is at least `abstain_threshold`, or when the documents used hold none of the
    # question's rarer words: index.index.term_evidence (the idf of the rarest question term they
    # hold relative to a one-document term, 0..1) below `abstain_evidence_threshold` (hybrid and
    # lexical retrieval); calibrated together on the evaluation split (`sugar eval --calibrate`).
    # None: no abstention of that kind.
    # Generation only: not in the embedding version.
    abstain_threshold: float | None = None
    abstain_evidence_threshold: float | None = None
    # bookkeeping
    format_version: int = FORMAT_VERSION
    embedding_version: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "last"):
            raise ValueError(f"sugar_config.pooling must be 'mean' or 'last', got {self.pooling!r}")
        if self.head_norm not in ("batch", "layer", "none"):
            raise ValueError(f"sugar_config.head_norm: unknown {self.head_norm!r}")
        if self.length_normalization not in ("mean_length", "none"):
            raise ValueError(
                f"sugar_config.length_normalization: unknown {self.length_normalization!r}"
            )
        if self.kernel_sigma <= 0:
            raise ValueError("sugar_config.kernel_sigma must be > 0")
        if self.kernel_gamma < 0:
            raise ValueError("sugar_config.kernel_gamma must be >= 0")
        if self.embed_dim <= 0:
            raise ValueError("sugar_config.embed_dim must be > 0")

    @property
    def kernel(self) -> KernelSettings:
        """The ranking kernel these fields configure (one type: model, objective, index)."""
        from .kernels import KernelSettings

        return KernelSettings(self.kernel_sigma, self.kernel_gamma, self.length_normalization)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("abstain_threshold", "abstain_evidence_threshold"):
            if out[key] is None:  # unset: a file older code reads too
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SugarConfig:
        data = {k: v for k, v in data.items() if k not in RETIRED}
        cfg = _from_dict(cls, data, "sugar_config")
        if cfg.format_version > FORMAT_VERSION:
            raise ValueError(
                f"sugar_config: format_version {cfg.format_version} is newer than this code "
                f"supports ({FORMAT_VERSION})"
            )
        return cfg

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> SugarConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class TinyConfig:
    """A random-init tiny backbone: a small vision tower + a small LM, of any registered family
    (model/families/: "llava" — CLIP + Llama —, "qwen2_vl", "idefics3"), mapped onto the
    family's own config classes."""

    family: str = "llava"
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 4
    vocab_size: int = 2048
    max_positions: int = 2048
    seed: int = 0
    # Preprocessing and init of the random vision tower (see model/tiny.py and
    # the README's training section): the processor's per-channel mean (None:
    # CLIP's; 0.94 maps the near-white scene background to ~0, so empty patches
    # carry little but their position) and the patch-embedding init ("random":
    # CLIP's; "dct": low-frequency 2-D DCT filters per colour channel, so a
    # patch's colour reads the same wherever an object edge falls).
    image_mean: float | None = None
    patch_init: str = "random"
    # standardise the projector's input and output per feature during training
    # (model/projector.py), folded into a plain LLaVA projector at save time.
    # Off by default: measured on the tiny preset (300 steps, seen split), it collapses
    # the embedding side (minimal pairs 0.67 -> 0.00, retrieval R@1 0.225 -> 0.025) and
    # did not lift VQA (0.45 -> 0.37); issue #10's closing note has the runs
    projector_norm: bool = False

    def __post_init__(self) -> None:
        if self.patch_init not in ("dct", "random"):
            raise ValueError(f"tiny_config.patch_init must be 'dct' or 'random', got {self.patch_init!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TinyConfig:
        return _from_dict(cls, dict(data), "tiny_config")


# The smallest useful tiny LLaVA (seconds per step): the `smoke` training preset and the
# test suite build this one, so there is one definition of "a tiny test model".
SMOKE_TINY: dict[str, Any] = {
    "image_size": 32, "patch_size": 8, "vision_hidden": 32, "vision_layers": 1, "vision_heads": 2,
    "text_hidden": 64, "text_layers": 2, "text_heads": 2, "text_kv_heads": 2, "vocab_size": 512,
    "max_positions": 1024,
}

_NESTED: dict[str, type] = {"PromptFormat": PromptFormat}
