"""Training configuration: one dataclass, presets, JSON recipes.

`sugar train --preset tiny` uses the `tiny` preset (the default checkpoint);
`--config FILE.json` loads a recipe (see training/recipes/) whose keys are
the fields below, `--set key=value` overrides single fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.config import CONTEXT_ORDERS, SMOKE_TINY, SugarConfig, TinyConfig

from .phrasing import FAMILIES, TRAIN_ONLY, TRAINED
from .world import SEEN_NAME_OFFSET

ABLATIONS = ("joint", "gen_only", "disc_only", "no_ga", "no_triple", "last_token")


@dataclass
class TrainConfig:
    # model
    # "tiny" (random init, built locally; its family: `tiny.family`, also `--set family=...`) or a
    # Hugging Face directory / hub id of any registered family (`sugar train --base DIR`)
    backbone: str = "tiny"
    # a Sugar checkpoint whose weights start the run (a warm start: fresh optimiser and schedule,
    # no vision stage: its projector is already standardised), e.g. a continuation with another
    # data mix; None: `backbone` from scratch
    init: str | None = None
    # the tiny backbone's and the Sugar heads' settings; JSON recipes and `--set` give them as
    # (partial) objects, merged onto the defaults (`--set` merges onto the current values)
    tiny: TinyConfig = field(default_factory=TinyConfig)
    sugar: SugarConfig = field(default_factory=SugarConfig)
    lora_rank: int = 0  # > 0: LoRA (peft) on the language model; 0: full training
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ()  # LoRA's modules; empty: the family's (its attention projections)
    # optimisation
    steps: int = 400
    seed: int = 0
    gen_batch: int = 16
    pair_batch: int = 32
    grad_accum: int = 1
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    bf16: bool = False
    threads: int = 0  # CPU threads of torch and numba (model.kernels.set_threads); 0: their defaults
    # Sugar losses (docs/METHOD.md §6)
    ablation: str = "joint"
    lam: float = 1.0  # λ, weight of the discriminative loss
    lam_warmup: int = 0  # λ ramps linearly from 0 to `lam` over the first N steps
    beta: float = 0.1  # β, weight of the structure loss
    temperature: float = 0.05
    learn_temperature: bool = False
    teacher_temperature: float = 0.1
    hard_negatives: float = 0.5  # fraction of caption pairs with a minimal-pair twin
    # ρ, weight of the image-token regulariser (LLaVA backbones; docs/EXPERIMENTS.md §9): keeps
    # the projector's image tokens centred and at the scale of text embeddings
    image_reg: float = 0.0
    # stage 1 (LLaVA's feature alignment): for the first `align_steps` steps the
    # generative half of each batch holds only `align_kinds` (captions: one fixed
    # instruction, so the LM learns to read the image tokens before it learns to
    # route many question types); the discriminative half is unchanged.
    align_steps: int = 0
    align_kinds: dict[str, float] = field(default_factory=lambda: {"caption": 1.0})
    # the staged recipe (issue #20; training/vision.py, docs/EXPERIMENTS.md §11). Stage 0
    # (`vision_steps`, before step 0): the vision tower and projector learn to predict their
    # caption's words from every image token, the LM untouched; `standardize_projector`
    # ("global" | "feature" | "none") then folds a centring and scaling of the image tokens to
    # `image_scale` x the text embeddings' RMS into the projector. Stage 1 (the first
    # `read_steps` steps): the generative loss alone, vision side frozen (with `align_steps`
    # the first of them captions only). Then the joint phase, the vision side at
    # `vision_lr_scale` x the schedule (0: frozen throughout).
    vision_steps: int = 0
    vision_lr: float = 2e-3
    vision_batch: int = 32
    standardize_projector: str = "none"
    image_scale: float = 1.0
    read_steps: int = 0
    vision_lr_scale: float = 1.0
    # RAG examples: the probability that the gold document is ranked first (where the server's
    # retrieval puts the asked document), else at any rank; and the prompts' document order
    # (model.config.PromptFormat.context_order, saved with the checkpoint; None: the model's
    # own — `sugar.prompts` for a new model, as saved for a warm start)
    rag_gold_first: float = 0.0
    # the probability that a knowledge pair (a banner question -> its house's document) carries a
    # passage of real text (a Debian licence, never the evaluation's) as its hard negative; 0 draws
    # nothing, so the earlier recipes' data streams are unchanged
    knowledge_text_negatives: float = 0.0
    # the probability that a RAG example's distractor documents include 1..k-1 real-text passages
    # (Debian's licences, never the evaluation's) beside the asked house's document: the answer is
    # still the banner's, so that text beside a house does not read as "not in the documents";
    # 0 draws nothing
    rag_text_distractors: float = 0.0
    context_order: str | None = None
    # the question phrasing families training draws from (training/phrasing.py: canonical 40 %,
    # else one of these); the evaluation also asks the held-out ones
    phrasings: tuple[str, ...] = TRAINED
    # the abstention examples' unanswerable questions about a present house: "base" (four
    # questions), "wide" (training/phrasing.py's UNKNOWN_WIDE, in the trained surface families) or
    # "swapped" (half the four, half banner questions about a thing the documents do not show:
    # phrasing.swapped_unknown_question) or "words" (a third the four, else questions about any word
    # of the training licences that is not the world's: phrasing.word_unknown_question); "base" keeps
    # the earlier recipes' data streams
    unknown_questions: str = "base"
    # the abstention examples: real text 3 in 10, an unanswerable question about a present house
    # this share, the rest about a house that is absent (served, the evidence rule catches those)
    abstain_unknown_share: float = 0.3
    # the probability that such an unanswerable question about a present house has real-text
    # passages among its distractor documents, as `rag_text_distractors` gives answerable ones: with
    # those alone the model learned "a house beside real text -> answer" (docs/EXPERIMENTS.md §12.9)
    unknown_text_distractors: float = 0.0
    # words the tokenizer keeps as one piece, with their leading space (" or"): merges appended to
    # the BPE tokenizer of the model the run starts from, the embeddings grown by the new pieces
    # (Backbone.keep_words_whole); the tokenizer before `shipped_world_or` split " or" into the first
    # piece of " old" and "r", so "How old is ..." read as a choice question (docs/EXPERIMENTS.md §12.9)
    tokenizer_words: tuple[str, ...] = ()
    # the new pieces' embedding rows: "mean" (of the pieces each joins) or "move" (a word's piece
    # takes its first piece's rows, which become the table's mean: Backbone.keep_words_whole)
    tokenizer_words_init: str = "mean"
    gen_kinds: dict[str, float] = field(
        default_factory=lambda: {"caption": 0.15, "vqa": 0.55, "rag": 0.2, "fashion": 0.1})
    pair_kinds: dict[str, float] = field(
        default_factory=lambda: {"caption": 0.7, "page": 0.1, "knowledge": 0.1, "fashion": 0.1})
    # teachers (roles: text, image, cross); "minilm", "efficientnet-lite0", a hub id, or null
    teachers: dict[str, str | None] = field(
        default_factory=lambda: {"text": "minilm", "image": "efficientnet-lite0", "cross": None})
    teacher_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    teacher_min_accuracy: float = 0.6  # drop a teacher below this minimal-pair accuracy
    teacher_sigma: float = 1.0
    # data
    data: str | None = None  # a JSONL file; None: the built-in synthetic world
    n_scenes: int = 1500
    n_pages: int = 400
    n_houses: int = 300
    n_fashion: int = 2000
    image_size: int = 64
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 100
    save_dtype: str = "float32"  # backbone weights as stored: "float32" | "float16" | "bfloat16"

    def __post_init__(self) -> None:
        if isinstance(self.tiny, dict):
            self.tiny = TinyConfig.from_dict(self.tiny)
        if isinstance(self.sugar, dict):
            self.sugar = SugarConfig.from_dict(self.sugar)
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"save_dtype must be float32, float16 or bfloat16, got {self.save_dtype!r}")
        if self.n_houses >= SEEN_NAME_OFFSET:
            raise ValueError(f"n_houses must stay below {SEEN_NAME_OFFSET} (the seen evaluation's names)")
        if self.read_steps > self.steps:
            raise ValueError(f"read_steps ({self.read_steps}) must not exceed steps ({self.steps})")
        if self.standardize_projector not in ("none", "global", "feature"):
            raise ValueError(f"standardize_projector must be none, global or feature, "
                             f"got {self.standardize_projector!r}")
        if not 0.0 <= self.rag_gold_first <= 1.0:
            raise ValueError("rag_gold_first must be a probability (0..1)")
        if not 0.0 <= self.rag_text_distractors <= 1.0:
            raise ValueError("rag_text_distractors must be a probability (0..1)")
        if not 0.0 <= self.abstain_unknown_share <= 0.7:
            raise ValueError("abstain_unknown_share must be in 0..0.7 (real text takes 0.3 of the abstention examples)")
        if not 0.0 <= self.unknown_text_distractors <= 1.0:
            raise ValueError("unknown_text_distractors must be a probability (0..1)")
        if not 0.0 <= self.knowledge_text_negatives <= 1.0:
            raise ValueError("knowledge_text_negatives must be a probability (0..1)")
        if self.context_order is not None and self.context_order not in CONTEXT_ORDERS:
            raise ValueError(f"context_order must be one of {CONTEXT_ORDERS}, got {self.context_order!r}")
        self.phrasings = tuple(self.phrasings)
        unknown = sorted(set(self.phrasings) - set(FAMILIES + TRAIN_ONLY))
        if unknown or not self.phrasings:
            raise ValueError(f"phrasings must be a non-empty list of {FAMILIES + TRAIN_ONLY}, got unknown {unknown}")
        if self.tokenizer_words_init not in ("mean", "move"):
            raise ValueError(f"tokenizer_words_init must be mean or move, got {self.tokenizer_words_init!r}")
        if self.unknown_questions not in ("base", "wide", "swapped", "words"):
            raise ValueError(f"unknown_questions must be base, wide, swapped or words, got {self.unknown_questions!r}")
        if self.vision_lr_scale < 0:
            raise ValueError("vision_lr_scale must be >= 0")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        self.lora_targets = tuple(self.lora_targets)
        if isinstance(self.tokenizer_words, str):
            raise ValueError(f"tokenizer_words must be a list of words, got the string {self.tokenizer_words!r}")
        self.tokenizer_words = tuple(self.tokenizer_words)
        if not all(isinstance(w, str) and w.strip() for w in self.tokenizer_words):
            raise ValueError(f"tokenizer_words must be non-empty words, got {list(self.tokenizer_words)}")
        self.teacher_weights = tuple(self.teacher_weights)  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"training config: unknown keys {unknown}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        data.pop("_comment", None)
        return cls.from_dict(data)

    def with_overrides(self, pairs: list[str]) -> TrainConfig:
        """`key=value` strings, values parsed as JSON when they parse."""
        changes: dict[str, Any] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep:
                raise ValueError(f"--set expects key=value, got {pair!r}")
            try:
                changes[key] = json.loads(raw)
            except json.JSONDecodeError:
                changes[key] = raw
        current = self.to_dict()
        if "family" in changes:  # the tiny base's family (model/families/), set at the top level
            changes["tiny"] = {**current["tiny"], **changes.get("tiny", {}), "family": changes.pop("family")}
        for key in ("tiny", "sugar"):  # nested settings: merged, not replaced
            if isinstance(changes.get(key), dict):
                changes[key] = {**current[key], **changes[key]}
        return TrainConfig.from_dict({**current, **changes})

    def ablated(self) -> TrainConfig:
        """The effective settings of the chosen ablation."""
        a = self.ablation
        c = dataclasses.replace(self)
        if a == "gen_only":
            c.lam = 0.0
        elif a == "disc_only":  # no generative loss: a stage of it alone would be an empty step
            c.read_steps = c.align_steps = 0
        elif a == "no_triple":
            c.beta = 0.0
        elif a == "last_token":
            c.sugar = dataclasses.replace(c.sugar, pooling="last")
        return c

    @property
    def use_gen(self) -> bool:
        return self.ablation != "disc_only"

    @property
    def use_disc(self) -> bool:
        return self.ablation != "gen_only" and self.lam > 0

    @property
    def use_ga(self) -> bool:
        return self.ablation != "no_ga"


PRESETS: dict[str, dict[str, Any]] = {
    # `sugar train`'s default preset: 300 joint steps, budgeted to train in <= 10 minutes on 2 CPU
    # cores (to watch training; the checkpoint in the package is `shipped`)
    "tiny": {"tiny": {"patch_size": 16}, "steps": 300, "threads": 2},
    # the checkpoint shipped with the project (model/default_checkpoint/): the staged recipe
    # (issue #20, docs/EXPERIMENTS.md §11): image tokens centred and scaled, 1,000 generative steps
    # with the vision side frozen (200 of captions first), then 3,000 joint steps, the vision
    # side still frozen; many house names; stored in float16. The shipped files are this run
    # resumed to 8,000 steps (`--steps 8000 --set threads=1 --resume`, METHOD §11.4), then
    # continued with `shipped_rag` (below)
    "shipped": {"tiny": {"patch_size": 16}, "steps": 4000, "threads": 2, "warmup": 50, "n_houses": 1500,
                "checkpoint_every": 100, "save_dtype": "float16",
                "standardize_projector": "global", "image_scale": 2.0, "read_steps": 1000, "align_steps": 200,
                "vision_lr_scale": 0.0},
    # the paper's claims across seeds at a reduced budget (`sugar eval --ablations --preset claims`):
    # the shipped recipe (joint losses, λ = 1 from the start, no stage 1, the tiny preset's batches)
    # cut to 200 steps and smaller pools: about 5.5 minutes a joint run here. (Half the batches
    # at 300 steps stayed at chance: minimal pairs 0.22, retrieval R@1 0.05.)
    "claims": {"tiny": {"patch_size": 16}, "steps": 200, "threads": 2, "warmup": 15,
               "n_scenes": 600, "n_pages": 200, "n_houses": 300, "n_fashion": 1000},
    # the claims at a budget where the models read images (issue #20): the shipped staged
    # recipe, 500 generative steps then 300 joint ones, the claims preset's pools; one thread,
    # so two jobs share the 2-core machine without oversubscribing it
    "claims_staged": {"tiny": {"patch_size": 16}, "steps": 800, "threads": 1, "warmup": 30,
                      "n_scenes": 600, "n_pages": 200, "n_houses": 300, "n_fashion": 1000,
                      "standardize_projector": "global", "image_scale": 2.0, "read_steps": 500,
                      "align_steps": 200, "vision_lr_scale": 0.0},
    # a few steps: smoke tests and CI
    "smoke": {"steps": 6, "gen_batch": 4, "pair_batch": 8, "n_scenes": 60, "n_pages": 20,
              "n_houses": 20, "n_fashion": 40, "log_every": 2, "checkpoint_every": 3,
              "tiny": dict(SMOKE_TINY),
              "image_size": 32, "teachers": {"text": None, "image": None, "cross": None}},
}


# the RAG continuation of the shipped checkpoint (docs/EXPERIMENTS.md §11.6): a warm start (`--set
# init=DIR`: the 8,000-step `shipped` run) trained on the served distribution — the gold document
# ranked first 90 % of the time, RAG prompts with the best-ranked document nearest the question
# (`context_order: best_last`), RAG 55 % of the generative batch; the joint losses and the frozen
# vision side as before (the shipped files: 2,000 steps, 2,049 s here)
PRESETS["shipped_rag"] = {**PRESETS["shipped"], "steps": 2000, "read_steps": 0, "align_steps": 0, "lr": 1e-3,
                          "context_order": "best_last", "rag_gold_first": 0.9,
                          "gen_kinds": {"caption": 0.05, "vqa": 0.3, "rag": 0.55, "fashion": 0.1}}


# its second continuation (docs/EXPERIMENTS.md §11.7): the same served distribution with 10,000 training
# houses instead of 1,500, so that house names are too many to learn and a banner's colour is read
# from its image (`--set init=DIR`: the `shipped_rag` run resumed to 3,000 steps)
PRESETS["shipped_houses"] = {**PRESETS["shipped_rag"], "steps": 1000, "n_houses": 10000}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (known: {sorted(PRESETS)})")
    return TrainConfig.from_dict(PRESETS[name])


# the world continuation of issue #30 (docs/EXPERIMENTS.md §12): a warm start from the shipped checkpoint
# (`--set init=model/default_checkpoint`) on the served distribution with every banner attribute
# asked (six in the knowledge questions and documents), questions in the trained phrasing families
# (training/phrasing.py), and abstention examples ("not in the documents"); the joint losses, the
# vision side frozen (at a tenth of the LM's rate it collapsed in the probe), 1,500 training houses
PRESETS["shipped_world"] = {**PRESETS["shipped_rag"], "steps": 3000, "n_houses": 1500, "warmup": 50,
                            "gen_kinds": {"caption": 0.05, "vqa": 0.3, "rag": 0.45, "abstain": 0.1, "fashion": 0.1}}


# its continuation (docs/EXPERIMENTS.md §12.4; `--set init=DIR`: the `shipped_world` run): the same
# generative data at a third of the learning rate; the knowledge pairs (a banner question -> its
# house's document) at 0.3 of the discriminative batch instead of 0.1, for the dense gold-document
# retrieval the `shipped_world` run lost (0.883 -> 0.842), half of them with a real-text passage as
# the hard negative, and text-to-text pairs (`passage`: the inverse cloze task on Debian's licences),
# so that a banner question does not land on real text beside the banners (it did: the evaluation's
# index of houses and licence passages put a licence passage first for 4 of 6 attribute questions)
PRESETS["shipped_world_tune"] = {**PRESETS["shipped_world"], "steps": 1500, "lr": 3e-4,
                                 "knowledge_text_negatives": 0.5,
                                 "pair_kinds": {"caption": 0.45, "knowledge": 0.3, "page": 0.1, "fashion": 0.1,
                                                "passage": 0.05}}


# the shipped checkpoint continued with real text among the RAG examples' documents (issue #30,
# docs/EXPERIMENTS.md §12.7): a question about a house whose document sits beside licence
# passages is still answered from its banner. Without it the model had learned "real text in the
# context -> not in the documents" (from the abstention examples), so the calibrated threshold
# had to sit above those answerable questions' margins and let most unanswerable ones through.
# A warm start: `sugar train --preset shipped_world_mixed --set init=model/default_checkpoint`
PRESETS["shipped_world_mixed"] = {**PRESETS["shipped_world_tune"], "steps": 1200, "rag_text_distractors": 0.3}

# "How old is House X?" was answered "striped" or "solid" (issue #30, docs/EXPERIMENTS.md §12.9): the
# shipped tokenizer splits " or" into " o" + "r", and the model had learned " o" as the "or" of the
# choice questions. No training step: " or" becomes one piece that takes " o"'s embedding rows, and
# " o" (now the first piece of "old", "our", "other" ...) the table's mean; then `sugar eval
# --calibrate`. A warm start: `sugar train --preset shipped_world_or --set init=model/default_checkpoint`
PRESETS["shipped_world_or"] = {**PRESETS["shipped_world_mixed"], "steps": 0, "tokenizer_words": [" or"],
                               "tokenizer_words_init": "move"}

# the claims on the recipe that ships (issue #30, goal 5; docs/EXPERIMENTS.md §12.5): `claims_staged`'s
# budget and pools (500 generative steps, then 300 joint ones, one thread) with the shipped
# checkpoint's final data — the `shipped_world` generative mix (six banner attributes, the trained
# phrasing families, abstention examples, RAG with the gold document first 90 % of the time and
# nearest the question) and the `shipped_world_tune` pairs (knowledge pairs at 0.3 with a real-text
# hard negative half of the time, inverse-cloze passages)
PRESETS["claims_world"] = {**PRESETS["claims_staged"], "context_order": "best_last", "rag_gold_first": 0.9,
                           "gen_kinds": PRESETS["shipped_world"]["gen_kinds"],
                           "knowledge_text_negatives": PRESETS["shipped_world_tune"]["knowledge_text_negatives"],
                           "pair_kinds": PRESETS["shipped_world_tune"]["pair_kinds"]}
