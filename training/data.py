"""Training and evaluation data: the synthetic world, Fashion-MNIST, users' JSONL.

Training draws from finite pools (scenes with fixed rendering seeds, their
minimal-pair twins, pages, knowledge documents), so every distinct slice has
one teacher feature computed once and cached. Two kinds of example:

- `GenExample`: a user message (optionally with RAG context documents) and
  the answer: carries the generative loss;
- `PairExample`: query, positive, optional hard negatives: carries the
  discriminative loss.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from model.jsonl import Document, GenerativeRecord, PairRecord, RagRecord, read_jsonl
from model.sample import Sample, Slice

from .phrasing import (
    ABSTAIN,
    TEXT_TRAINED,
    TRAINED,
    or_lookalikes,
    pick_family,
    swapped_unknown_question,
    unknown_question,
    wide_unknown_question,
    word_unknown_question,
)
from .world import (
    ATTRIBUTES,
    BLOB,
    COLOR_QUESTION,
    COLORS,
    OFF_COLORS,
    POSITIONS,
    SHAPE_QUESTION,
    SHAPES,
    SIZES,
    TEXTURES,
    Knowledge,
    Scene,
    WorldSplit,
    askable_words,
    hash_int,
    interleaved_document,
    interleaved_query,
    knowledge_base,
    vqa_for,
)

if TYPE_CHECKING:
    from .config import TrainConfig

logger = logging.getLogger(__name__)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
    "ankle boot",
)
FASHION_DESCRIPTIONS = (
    "a T-shirt or top", "a pair of trousers", "a pullover", "a dress", "a coat", "a sandal",
    "a shirt", "a sneaker", "a bag", "an ankle boot",
)


@dataclass
class GenExample:
    query: Sample
    answer: str
    kind: str
    documents: list[Sample] = field(default_factory=list)


@dataclass
class PairExample:
    query: Sample
    positive: Sample
    kind: str
    negatives: list[Sample] = field(default_factory=list)


def text(s: str) -> Sample:
    return Sample([Slice.of_text(s)])


def image_sample(img: Image.Image, **kw) -> Sample:
    return Sample([Slice.of_image(img)], **kw)


# --------------------------------------------------------------- Fashion-MNIST


def fashion_available(root: Path = FASHION_DIR) -> bool:
    return (root / "t10k-images-idx3-ubyte.gz").is_file()


def load_fashion(split: str, root: Path = FASHION_DIR, limit: int | None = None):
    """(images [N, 28, 28] uint8, labels [N]) for "train" or "test" (the official t10k)."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def fashion_image(arr: np.ndarray) -> Image.Image:
    # dark product on black: invert to a catalog-style white background
    return Image.fromarray(255 - arr, mode="L").convert("RGB")


# ------------------------------------------------------------------ real text

LICENCE_DIR = Path("/usr/share/common-licenses")  # Debian's base-files: on every Debian system
# the licences the evaluation asks about (never trained on): its out-of-world set
EVAL_LICENCES = ("Apache-2.0", "GPL-3")


def licence_passages(held_out: bool, root: Path = LICENCE_DIR, chars: int = 240) -> list[str]:
    """Real text outside the world: passages of about `chars` characters (whole words) of the
    licence texts Debian ships — `EVAL_LICENCES` when `held_out`, every other one otherwise.
    Empty where the directory is missing (the abstention examples then draw other kinds)."""
    if not root.is_dir():
        return []
    files = sorted(f for f in root.iterdir() if f.is_file() and not f.is_symlink()
                   and (f.name in EVAL_LICENCES) == held_out)
    out: list[str] = []
    for f in files:
        words = f.read_text(errors="replace").split()
        cur: list[str] = []
        for w in words:
            cur.append(w)
            if sum(len(x) + 1 for x in cur) >= chars:
                out.append(" ".join(cur))
                cur = []
        if len(" ".join(cur)) > chars // 2:
            out.append(" ".join(cur))
    return out


def inverse_cloze(passage: str, words: int = 12) -> tuple[str, str]:
    """A text-to-text retrieval pair from one passage, the inverse cloze task (Lee et al., 2019):
    a window of `words` consecutive words is the query, the passage without it the document.
    The window's place is a function of the passage, so a passage gives one pair (its teacher
    features are cached like any slice's)."""
    ws = passage.split()
    if len(ws) < 2 * words:
        half = max(1, len(ws) // 2)
        return " ".join(ws[:half]), " ".join(ws[half:])
    start = hash_int("cloze", passage) % (len(ws) - words + 1)
    return " ".join(ws[start : start + words]), " ".join(ws[:start] + ws[start + words :])


def fashion_catalog_doc(label: int) -> Sample:
    name = FASHION_CLASSES[label]
    return Sample([Slice.of_text(f"Catalog entry: {name}. This category shows {FASHION_DESCRIPTIONS[label]}.")],
                  id=f"fashion-{label}", metadata={"kind": "fashion-category", "label": name})


# ---------------------------------------------------------------- the pools


@dataclass
class MinimalPair:
    """A teacher check: does an anchor sit closer to its positive than to the twin that
    differs in one attribute? Image triplets re-render the scene; text ones paraphrase."""

    attribute: str
    image: tuple[Slice, Slice, Slice]
    text: tuple[Slice, Slice, Slice]


class Pools(Protocol):
    """The one interface between training data and the loop (`BatchSource` and the
    trainer call nothing else): the synthetic world (with Fashion-MNIST) and users' JSONL implement it.

    `gen_example` / `pair_example` always return an example; the loop asks only when
    `can_generate` / `can_pair` say the data has that kind. Kinds the data cannot give
    as configured are drawn as others and counted in `substitutions`."""

    substitutions: Counter[str]

    @property
    def can_generate(self) -> bool: ...

    @property
    def can_pair(self) -> bool: ...

    def gen_example(self, rng: random.Random, kinds: dict[str, float]) -> GenExample: ...

    def pair_example(self, rng: random.Random, kinds: dict[str, float], hard_negatives: float) -> PairExample: ...

    def tokenizer_corpus(self) -> list[str]: ...

    def teacher_slices(self) -> list[Slice]: ...

    def minimal_pairs(self, n: int) -> list[MinimalPair]: ...

    def caption_pairs(self, rng: random.Random, n: int) -> list[tuple[Image.Image, str]]: ...


class SyntheticPools:
    """Finite pools of one split: scenes + twins, pages, knowledge, fashion items."""

    can_generate = True
    can_pair = True

    def __init__(self, split: str, seed: int, n_scenes: int, n_pages: int, n_houses: int,
                 n_fashion: int = 0, image_size: int = 64, house_offset: int = 0) -> None:
        self.split = WorldSplit(split, seed)
        self.image_size = image_size
        rng = self.split.rng("pools")
        self.scenes: list[Scene] = [self.split.scene(rng) for _ in range(n_scenes)]
        self.twins: list[dict[str, Scene]] = []
        for sc in self.scenes:
            tw = {}
            # two minimal-pair twins per scene keep the pool (and teacher work) small
            for attr in rng.sample(ATTRIBUTES, 2):
                t = self.split.twin(sc, attr, rng)
                if t is not None:
                    tw[attr] = t
            self.twins.append(tw)
        self.pages = [interleaved_document(self.split, rng, i) for i in range(n_pages)]
        self.houses: list[Knowledge] = knowledge_base(self.split, n_houses, house_offset)
        # question phrasings drawn for training (training/phrasing.py; TrainConfig.phrasings)
        self.families: tuple[str, ...] = TRAINED
        self._licences: list[str] | None = None  # real-text passages (abstention), read when first asked
        self._askable: tuple[str, ...] | None = None
        self._lookalikes: tuple[str, ...] | None = None
        self.tokenize: Callable[[str], list[str]] | None = None  # the model's tokenizer ("words" questions)
        self._images: dict[tuple, Image.Image] = {}
        # examples of one kind drawn as another (Fashion-MNIST absent): counted, reported in
        # training.json (`data_report`) and logged by the trainer
        self.substitutions: Counter[str] = Counter()
        # the probability that a RAG example's gold document is ranked first (where the server's
        # retrieval puts it), else anywhere (TrainConfig.rag_gold_first)
        self.gold_first = 0.0
        # the probability of a real-text hard negative on a knowledge pair (TrainConfig.knowledge_text_negatives)
        self.text_negatives = 0.0
        # the abstention examples' unanswerable questions: "base" (training/phrasing.py's
        # UNKNOWN_TRAINED), "wide" (UNKNOWN_WIDE), "swapped" or "words" (phrasing.swapped_unknown_question,
        # word_unknown_question; TrainConfig.unknown_questions)
        self.unknown_questions = "base"
        # the probability that a RAG example's distractors include real-text passages (Debian's
        # licences but the evaluation's; TrainConfig.rag_text_distractors); 0 draws nothing
        self.text_distractors = 0.0
        # the share of the abstention examples about a present house (TrainConfig.abstain_unknown_share)
        self.unknown_share = 0.3
        # the probability of real-text distractors beside an unanswerable question's present house
        # (TrainConfig.unknown_text_distractors); 0 draws nothing
        self.unknown_text_distractors = 0.0
        self.fashion: tuple[np.ndarray, np.ndarray] | None = None
        if n_fashion and fashion_available():
            imgs, labels = load_fashion("train" if split == "train" else "test")
            idx = np.random.default_rng(seed).permutation(len(labels))[:n_fashion]
            self.fashion = (imgs[idx], labels[idx])
        elif n_fashion:
            logger.warning("Fashion-MNIST is not installed (Debian dataset-fashion-mnist): fashion "
                           "examples are drawn as VQA/caption ones (counted in `substitutions`)")

    # ----------------------------------------------------------- what the loop asks
    def tokenizer_corpus(self) -> list[str]:
        return ([sc.caption() for sc in self.scenes[:500]]
                + [f"The banner of House {h.name}" for h in self.houses])

    def teacher_slices(self) -> list[Slice]:
        """Every distinct slice the pools can put in a batch (teacher features, cached once)."""
        slices: list[Slice] = []
        for sc, tw in zip(self.scenes, self.twins, strict=True):
            slices.append(self.scene_sample(sc).slices[0])
            slices.extend(self.scene_sample(t).slices[0] for t in tw.values())
            slices.append(Slice.of_text(sc.caption()))
        for doc, scenes in self.pages:
            slices.extend(doc.slices)
            slices.extend(Slice.of_text(sc.caption()) for sc in scenes)
        for h in self.houses:
            slices.extend(h.document().slices)
            slices.extend(Slice.of_text(q) for q in h.questions())
        if self.fashion is not None:
            slices.extend(Slice.of_image(fashion_image(a)) for a in self.fashion[0])
            slices.extend(fashion_catalog_doc(k).slices[0] for k in range(10))
        return slices

    def minimal_pairs(self, n: int) -> list[MinimalPair]:
        """Up to `n` per attribute: the anchor is a re-render (other jitter seed) of the
        scene, or the paraphrased caption."""
        rng = random.Random(0)
        out: list[MinimalPair] = []
        for attr in ATTRIBUTES:
            cases = [(sc, tw[attr]) for sc, tw in zip(self.scenes, self.twins, strict=True) if attr in tw][:n]
            for sc, twin in cases:
                anchor = dataclasses.replace(sc, seed=rng.randrange(1 << 30))
                image = (self.scene_sample(anchor).slices[0], self.scene_sample(sc).slices[0],
                         self.scene_sample(twin).slices[0])
                text = (Slice.of_text(sc.caption(1)), Slice.of_text(sc.caption()), Slice.of_text(twin.caption()))
                out.append(MinimalPair(attr, image, text))
        return out

    def caption_pairs(self, rng: random.Random, n: int) -> list[tuple[Image.Image, str]]:
        """(image, caption) pairs for the vision stage: fresh scenes of the split (every kind,
        new rendering jitter: the tower sees more than the pools hold), a tenth Fashion-MNIST
        items with their category's description when installed."""
        out = []
        for _ in range(n):
            if self.fashion is not None and rng.random() < 0.1:
                imgs, labels = self.fashion
                i = rng.randrange(len(labels))
                out.append((fashion_image(imgs[i]), FASHION_DESCRIPTIONS[labels[i]]))
                continue
            sc = self.split.scene(rng)
            out.append((sc.render(self.image_size), sc.caption()))
        return out

    def image(self, scene: Scene) -> Image.Image:
        key = (scene.key, scene.seed)
        img = self._images.get(key)
        if img is None:
            img = self._images[key] = scene.render(self.image_size)
        return img

    def scene_sample(self, scene: Scene) -> Sample:
        return image_sample(self.image(scene))

    # ----------------------------------------------------------- generative
    def gen_example(self, rng: random.Random, kinds: dict[str, float]) -> GenExample:
        kind = rng.choices(list(kinds), list(kinds.values()))[0]
        if kind == "fashion" and self.fashion is None:
            self.substitutions["generative fashion -> vqa (Fashion-MNIST not installed)"] += 1
            kind = "vqa"
        if kind == "caption":
            sc = rng.choice(self.scenes)
            return GenExample(Sample([Slice.of_image(self.image(sc)), Slice.of_text("Describe the image.")]),
                              sc.caption(), "caption")
        if kind == "vqa":
            sc = rng.choice(self.scenes)
            qtype, q, a = vqa_for(sc, rng, pick_family(rng, self.families))
            return GenExample(Sample([Slice.of_image(self.image(sc)), Slice.of_text(q)]), a, f"vqa-{qtype}")
        if kind == "abstain":
            return self.abstain_example(rng)
        if kind == "blob":
            return self.decoupled_example(rng, (BLOB,), tuple(COLORS), "color", kind)
        if kind == "offcolour":
            return self.decoupled_example(rng, SHAPES, tuple(OFF_COLORS), "shape", kind)
        if kind == "rag":
            return self.rag_example(rng, k=rng.choice([1, 2, 3, 4, 5]))
        if kind == "bind":
            return self.binding_example(rng, k=rng.choice([2, 3, 4, 5]))
        if kind == "fashion":
            imgs, labels = self.fashion  # type: ignore[misc]
            i = rng.randrange(len(labels))
            return GenExample(Sample([Slice.of_image(fashion_image(imgs[i])),
                                      Slice.of_text("What item is this?")]),
                              FASHION_CLASSES[labels[i]], "fashion")
        raise ValueError(f"unknown generative kind {kind!r}")

    def decoupled_example(self, rng: random.Random, shapes: tuple[str, ...], colors: tuple[str, ...],
                          asked: str, kind: str) -> GenExample:
        """One object whose asked attribute predicts nothing about the other, in the scenes'
        sizes, textures and positions, against the shortcut of reading one from the other (no
        training image holds a blue triangle, and the answers for one drifted to a triangle's
        colour and a blue thing's shape). `blob`: the colour question on an outline that is none
        of the shapes (world.BLOB); `offcolour`: the shape question on a shape in a colour that
        is none of the six (world.OFF_COLORS)."""
        sc = Scene(rng.choice(shapes), rng.choice(colors), size=rng.choice(list(SIZES)),
                   texture=rng.choice(TEXTURES), position=rng.choice(list(POSITIONS)), seed=rng.randrange(1 << 30))
        question = {"color": COLOR_QUESTION, "shape": SHAPE_QUESTION}[asked]
        return GenExample(Sample([Slice.of_image(sc.render(self.image_size)), Slice.of_text(question)]),
                          getattr(sc, asked), kind)

    def rag_example(self, rng: random.Random, k: int, position: int | None = None) -> GenExample:
        house = rng.choice(self.houses)
        distractors = rng.sample([h for h in self.houses if h is not house], k - 1)
        pos = (0 if rng.random() < self.gold_first else rng.randrange(k)) if position is None else position
        ctx = self.with_text([h.document() for h in distractors], rng, self.text_distractors)
        ctx.insert(pos, house.document())
        _, q, a = house.question(rng, pick_family(rng, self.families))
        return GenExample(text(q), a, "rag", documents=ctx)

    def follow(self, cfg: TrainConfig) -> None:
        """Take the data knobs of a training recipe (the trainer and scripts/rag_probe.py)."""
        self.gold_first = cfg.rag_gold_first
        self.text_negatives = cfg.knowledge_text_negatives
        self.families = cfg.phrasings
        self.unknown_questions = cfg.unknown_questions
        self.text_distractors = cfg.rag_text_distractors
        self.unknown_share = cfg.abstain_unknown_share
        self.unknown_text_distractors = cfg.unknown_text_distractors

    def with_text(self, ctx: list[Sample], rng: random.Random, p: float) -> list[Sample]:
        """The k-1 distractor documents `ctx` with, at probability `p`, 1..k-1 of them real-text
        passages instead (as an index holding uploads beside the houses retrieves them), shuffled;
        `p` 0 draws nothing."""
        if p and ctx and self.licences and rng.random() < p:
            n = rng.randint(1, len(ctx))
            ctx[:n] = [text(t) for t in rng.sample(self.licences, n)]
            rng.shuffle(ctx)
        return ctx

    def abstain_example(self, rng: random.Random) -> GenExample:
        """A question the documents cannot answer, answered `ABSTAIN`: they are real text outside
        the world — licence passages asked about, or asked a banner question (3 in 10; Debian's
        licences but the two the evaluation asks about) —, they do not show the asked thing (a
        motto, a founder: `unknown_share`, 3 in 10 by default), or the asked house is not among
        them (the rest); with `unknown_text_distractors`, real text beside the present house too."""
        r = rng.random()
        house = rng.choice(self.houses)
        if r < 0.3 and self.licences:
            ctx = [text(t) for t in rng.sample(self.licences, rng.choice([1, 2]))]
            q = rng.choice(TEXT_TRAINED) if rng.random() < 0.6 else house.question(
                rng, pick_family(rng, self.families))[1]
            return GenExample(text(q), ABSTAIN, "abstain-text", documents=ctx)
        k = rng.choice([1, 2, 3, 4, 5])
        others = rng.sample([h for h in self.houses if h is not house], k)
        if r < 0.3 + self.unknown_share:
            ctx = self.with_text([h.document() for h in others[: k - 1]], rng, self.unknown_text_distractors)
            ctx.insert(0 if rng.random() < self.gold_first else rng.randrange(k), house.document())
            if self.unknown_questions == "wide":
                q = wide_unknown_question(house.name, rng, self.families)
            elif self.unknown_questions == "swapped":
                q = swapped_unknown_question(house.name, rng, self.families)
            elif self.unknown_questions == "words":
                q = word_unknown_question(house.name, rng, self.askable, self.families, self.lookalikes)
            else:
                q = unknown_question(house.name, False, rng)
            return GenExample(text(q), ABSTAIN, "abstain-unknown", documents=ctx)
        _, q, _ = house.question(rng, pick_family(rng, self.families))
        return GenExample(text(q), ABSTAIN, "abstain-absent", documents=[h.document() for h in others])

    @property
    def licences(self) -> list[str]:
        if self._licences is None:
            self._licences = licence_passages(held_out=False)
        return self._licences

    @property
    def askable(self) -> tuple[str, ...]:
        """The words of the training licences a "words" unanswerable question asks about."""
        if self._askable is None:
            self._askable = askable_words(self.licences)
        return self._askable

    @property
    def lookalikes(self) -> tuple[str, ...]:
        """The askable words the model's tokenizer (`tokenize`, set by the trainer) begins as it
        begins "or" (phrasing.or_lookalikes); none without a tokenizer."""
        if self._lookalikes is None:
            self._lookalikes = or_lookalikes(self.askable, self.tokenize) if self.tokenize else ()
        return self._lookalikes

    def binding_example(self, rng: random.Random, k: int) -> GenExample:
        """The RAG task with the banners told in words: k houses' documents as text (\"The
        banner of House X: a red triangle.\"), a question about one of them. Short and
        image-free, it trains the part of RAG reading that images make slow: finding the asked
        house's document among several by its name and answering from what follows it."""
        houses = rng.sample(self.houses, k)
        house = rng.choice(houses)
        ctx = [text(h.in_words()) for h in houses]
        _, q, a = house.question(rng, pick_family(rng, self.families))
        return GenExample(text(q), a, "bind", documents=ctx)

    # ----------------------------------------------------------- pairs
    def pair_example(self, rng: random.Random, kinds: dict[str, float], hard_negatives: float) -> PairExample:
        kind = rng.choices(list(kinds), list(kinds.values()))[0]
        if kind == "fashion" and self.fashion is None:
            self.substitutions["pair fashion -> caption (Fashion-MNIST not installed)"] += 1
            kind = "caption"
        if kind == "caption":
            i = rng.randrange(len(self.scenes))
            sc = self.scenes[i]
            negs = []
            if self.twins[i] and rng.random() < hard_negatives:
                negs = [self.scene_sample(rng.choice(list(self.twins[i].values())))]
            return PairExample(text(sc.caption()), self.scene_sample(sc), "caption", negs)
        if kind == "page":
            doc, scenes = rng.choice(self.pages)
            return PairExample(interleaved_query(scenes, rng), doc, "page")
        if kind == "passage" and not self.licences:
            self.substitutions["pair passage -> knowledge (no licence texts in /usr/share/common-licenses)"] += 1
            kind = "knowledge"
        if kind == "knowledge":
            house = rng.choice(self.houses)
            _, q, _ = house.question(rng, pick_family(rng, self.families))
            # real text as the hard negative: a collection holds more than banners, and a banner
            # question must not land on a passage that shares its function words
            negs = ([text(rng.choice(self.licences))] if self.text_negatives and self.licences
                    and rng.random() < self.text_negatives else [])
            return PairExample(text(q), house.document(), "knowledge", negs)
        if kind == "passage":
            q, d = inverse_cloze(rng.choice(self.licences))
            return PairExample(text(q), text(d), "passage")
        if kind == "fashion":
            imgs, labels = self.fashion  # type: ignore[misc]
            i = rng.randrange(len(labels))
            return PairExample(image_sample(fashion_image(imgs[i])), fashion_catalog_doc(int(labels[i])),
                               "fashion")
        raise ValueError(f"unknown pair kind {kind!r}")


# ------------------------------------------------------------------ user data


class JsonlPools:
    """Users' own JSONL (see model.jsonl): caption/vqa/rag -> generative, pair -> pairs.

    Documents (no task) become pairs of (their text slices, the whole document)
    when they have both text and images; otherwise they are ignored for
    training (and counted in the log).
    """

    def __init__(self, path: str | Path) -> None:
        records = read_jsonl(path)
        self.gen: list[GenExample] = []
        self.pairs: list[PairExample] = []
        skipped = 0
        for r in records:
            if isinstance(r, GenerativeRecord):
                *body, last = r.sample.slices
                if r.task == "caption":
                    q = Sample([*r.sample.slices, Slice.of_text("Describe the image.")])
                else:
                    q = Sample([*body, last])
                self.gen.append(GenExample(q, r.answer, r.task))
            elif isinstance(r, RagRecord):
                self.gen.append(GenExample(r.query, r.answer, "rag", documents=r.context))
            elif isinstance(r, PairRecord):
                self.pairs.append(PairExample(r.query, r.positive, "pair", r.negatives))
            elif isinstance(r, Document):
                texts = [s for s in r.sample.slices if s.type == "text"]
                if texts and len(texts) < len(r.sample.slices):
                    self.pairs.append(PairExample(Sample(texts), r.sample, "document"))
                else:
                    skipped += 1
        self.skipped_documents = skipped
        self.substitutions: Counter[str] = Counter()
        self.by_task: dict[str, list[GenExample]] = {}
        for g in self.gen:
            self.by_task.setdefault(g.kind, []).append(g)
        if skipped:
            logger.info("%s: %d documents without both text and images not used for training", path, skipped)
        if not self.gen and not self.pairs:
            raise ValueError(f"{path}: no training examples (need caption/vqa/rag/pair lines)")
        logger.info("%s: %d generative and %d pair examples", path, len(self.gen), len(self.pairs))

    @property
    def can_generate(self) -> bool:
        return bool(self.gen)

    @property
    def can_pair(self) -> bool:
        return bool(self.pairs)

    def gen_example(self, rng: random.Random, kinds: dict[str, float] | None = None) -> GenExample:
        """A generative example; `kinds` (task -> weight) picks among the tasks the
        file has (caption/vqa/rag), all examples when none of them is present."""
        if not self.gen:
            raise ValueError("this JSONL has no caption/vqa/rag lines (check can_generate)")
        present = {k: w for k, w in (kinds or {}).items() if k in self.by_task and w > 0}
        if not present:
            self.substitutions["generative: none of the weighted tasks in the file -> any task"] += 1
            return rng.choice(self.gen)
        task = rng.choices(list(present), list(present.values()))[0]
        return rng.choice(self.by_task[task])

    def pair_example(self, rng: random.Random, kinds=None, hard_negatives: float = 0.0) -> PairExample:
        if not self.pairs:
            raise ValueError("this JSONL has no pair lines or documents with text and images (check can_pair)")
        return rng.choice(self.pairs)

    def tokenizer_corpus(self) -> list[str]:
        return [e.answer for e in self.gen]

    def teacher_slices(self) -> list[Slice]:
        return []  # computed (and cached) as batches reach them

    def minimal_pairs(self, n: int) -> list[MinimalPair]:
        return []  # users' data has no known minimal pairs: teachers are not checked

    def caption_pairs(self, rng: random.Random, n: int) -> list[tuple[Image.Image, str]]:
        """(image, caption) pairs for the vision stage: the file's caption lines."""
        caps = [(g.query.images[0], g.answer) for g in self.by_task.get("caption", []) if g.query.images]
        if not caps:
            raise ValueError("vision_steps > 0 needs caption lines with an image in the training JSONL")
        return [rng.choice(caps) for _ in range(n)]


BUILTIN_SEED, BUILTIN_HOUSES, BUILTIN_PAGES = 7, 200, 300


@dataclass
class Batch:
    gen: list[GenExample]
    pairs: list[PairExample]


class BatchSource:
    """This rank's share of the global batch of a step: deterministic per (seed, step, rank),
    so resuming replays the same batches; contiguous shards. What the data cannot give is
    counted (`report`, in training.json) and logged the first time."""

    def __init__(self, pools: Pools, cfg, schedule, rank: int = 0, world_size: int = 1) -> None:
        self.pools, self.cfg, self.schedule = pools, cfg, schedule
        self.rank, self.world_size = rank, world_size
        self.dropped: dict[str, int] = {}

    def __call__(self, step: int) -> Batch:
        c, p = self.cfg, self.pools
        rng = random.Random(f"{c.seed}:{step}")
        kinds = self.schedule.gen_kinds(step)
        gen = [p.gen_example(rng, kinds) for _ in range(c.gen_batch)] if c.use_gen and p.can_generate else []
        pairs = ([p.pair_example(rng, c.pair_kinds, c.hard_negatives) for _ in range(c.pair_batch)]
                 if c.use_disc and p.can_pair and not self.schedule.reading(step) else [])
        if c.use_gen and not p.can_generate:
            self._drop("generative examples: the data has none", c.gen_batch)
        if c.use_disc and not p.can_pair:
            self._drop("pair examples: the data has none", c.pair_batch)
        self._drop("generative examples beyond a multiple of the world size", len(gen) % self.world_size)
        self._drop("pair examples beyond a multiple of the world size", len(pairs) % self.world_size)
        return Batch(self._shard(gen), self._shard(pairs))

    def _shard(self, xs: list) -> list:
        n = len(xs) // self.world_size
        return xs[self.rank * n : (self.rank + 1) * n]

    def _drop(self, what: str, n: int) -> None:
        if n <= 0:
            return
        if what not in self.dropped:
            logger.warning("training data: %s — %d dropped at this step (counted in training.json)", what, n)
        self.dropped[what] = self.dropped.get(what, 0) + n

    def report(self) -> dict:
        report = {"substituted": dict(getattr(self.pools, "substitutions", {})), "dropped": dict(self.dropped)}
        skipped = getattr(self.pools, "skipped_documents", 0)
        if skipped:
            report["documents_not_used"] = skipped
        return report


def builtin_houses() -> list[Knowledge]:
    """The invented houses of the built-in collection (held-out names)."""
    return knowledge_base(WorldSplit("test", BUILTIN_SEED), BUILTIN_HOUSES)


def builtin_documents() -> list[Sample]:
    """The built-in collection served by default: knowledge documents of invented
    houses (the RAG test's held-out names), interleaved pages, Fashion-MNIST categories."""
    pools = SyntheticPools("test", BUILTIN_SEED, 0, BUILTIN_PAGES, 0, 0)
    docs = [h.document() for h in builtin_houses()]
    docs += [doc for doc, _ in pools.pages]
    if fashion_available():
        docs += [fashion_catalog_doc(k) for k in range(len(FASHION_CLASSES))]
    return docs
