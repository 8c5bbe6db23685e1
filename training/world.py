"""The built-in synthetic interleaved world, rendered with Pillow, deterministic by seed.

Scenes are shapes with attributes: shape, colour, size, position, count and
texture (solid or striped: the attribute the model must look closely for).
From scenes the world derives captions, VQA pairs (colour, shape, size,
count, position, texture, yes/no spatial relations), minimal pairs (two
scenes that differ in exactly one attribute), interleaved documents (image,
text, image, text ...), knowledge documents that bind invented house names
to banners, and RAG-format samples (k context documents, the relevant one at
a random position).

Splits are disjoint: a fixed ~20 % of (shape, colour) combinations and a
disjoint set of invented names appear only in the test split.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

from model.sample import Sample, Slice

SHAPES = ("circle", "square", "triangle", "star")
COLORS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "yellow": (225, 195, 20),
    "purple": (140, 60, 185),
    "orange": (240, 130, 20),
}
SIZES = {"small": 0.20, "large": 0.38}
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}
TEXTURES = ("solid", "striped")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
ATTRIBUTES = ("color", "shape", "size", "count", "position", "texture")
RELATIONS = ("left of", "right of", "above", "below")

_SYL_A = ("v", "k", "t", "m", "r", "s", "d", "l", "n", "b", "g", "p", "th", "dr", "st", "z")
_SYL_V = ("a", "e", "i", "o", "u", "ae", "y")
_SYL_C = ("ll", "n", "r", "s", "th", "k", "m", "x", "d", "rn", "sk", "l")


# colours that are none of COLORS (no held-out combination, never asked): the "offcolour"
# generative kind asks the shape of a shape drawn in one, so that reading a shape does not lean
# on its colour
OFF_COLORS = {"grey": (125, 125, 125), "brown": (125, 80, 35), "pink": (235, 130, 185), "teal": (20, 140, 140)}

# an irregular outline that is none of SHAPES (no held-out combination): the "blob" generative
# kind asks its colour, so that reading a colour does not lean on the shape it is on
BLOB = "blob"


def held_out_combo(shape: str, color: str) -> bool:
    """(shape, colour) pairs reserved for the test split (5 of 24)."""
    return (SHAPES.index(shape) * 7 + list(COLORS).index(color) * 3) % 5 == 0


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    size: str = "large"
    texture: str = "solid"
    count: int = 1
    position: str = "left"  # meaningful when count == 1
    # an optional second object for relation scenes
    other_shape: str | None = None
    other_color: str | None = None
    relation: str | None = None  # where the first object is relative to the second
    seed: int = 0  # rendering jitter

    @property
    def key(self) -> tuple:
        return (self.shape, self.color, self.size, self.texture, self.count, self.position,
                self.other_shape, self.other_color, self.relation)

    def caption(self, style: int = 0) -> str:
        """Style 0 is the training caption; style 1 a paraphrase (teacher checks)."""
        if style == 1:
            return self._paraphrase()
        tex = "striped " if self.texture == "striped" else ""
        if self.relation:
            return (f"a {self.color} {tex}{self.shape} {self.relation} a "
                    f"{self.other_color} {self.other_shape}")
        if self.count == 1:
            return f"a {self.size} {self.color} {tex}{self.shape} on the {self.position}"
        return f"{COUNT_WORDS[self.count]} {self.size} {self.color} {tex}{self.shape}s"

    def _paraphrase(self) -> str:
        if self.relation:
            return (f"{self.other_color} {self.other_shape} with a {self.texture} {self.color} "
                    f"{self.shape} {self.relation} it")
        where = f", placed {self.position}" if self.count == 1 else ""
        return (f"{COUNT_WORDS[self.count]} {self.shape}(s): {self.color}, {self.size}, "
                f"{self.texture}{where}")

    def render(self, size: int = 64) -> Image.Image:
        rng = random.Random(hash_int(self.key, self.seed))
        bg = tuple(245 - rng.randrange(12) for _ in range(3))
        img = Image.new("RGB", (size, size), bg)
        if self.relation:
            (ax, ay), (bx, by) = _relation_layout(self.relation)
            _draw(img, self.shape, self.color, "large", self.texture, ax, ay, rng, scale=0.75)
            _draw(img, self.other_shape, self.other_color, "large", "solid", bx, by, rng, scale=0.75)
        elif self.count == 1:
            cx, cy = POSITIONS[self.position]
            _draw(img, self.shape, self.color, self.size, self.texture, cx, cy, rng)
        else:
            for cx, cy in _count_layout(self.count):
                _draw(img, self.shape, self.color, self.size, self.texture, cx, cy, rng,
                      scale=0.7 if self.size == "large" else 0.9)
        return img


def hash_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _relation_layout(rel: str) -> tuple[tuple[float, float], tuple[float, float]]:
    a, b = (0.27, 0.5), (0.73, 0.5)
    if rel == "left of":
        return a, b
    if rel == "right of":
        return b, a
    a, b = (0.5, 0.27), (0.5, 0.73)
    return (a, b) if rel == "above" else (b, a)


def _count_layout(n: int) -> list[tuple[float, float]]:
    return {
        2: [(0.28, 0.5), (0.72, 0.5)],
        3: [(0.22, 0.3), (0.78, 0.3), (0.5, 0.75)],
        4: [(0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)],
    }[n]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    raise ValueError(shape)


def _blob(cx: float, cy: float, r: float, rng: random.Random) -> list[tuple[float, float]]:
    """An irregular outline, none of SHAPES: 9-14 vertices at uneven angles and radii."""
    n = rng.randrange(9, 15)
    angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(n))
    return [(cx + r * rng.uniform(0.55, 1.05) * math.cos(a), cy + r * rng.uniform(0.55, 1.05) * math.sin(a))
            for a in angles]


def _draw(img, shape, color, size, texture, cx, cy, rng, scale=1.0) -> None:
    W = img.width
    r = SIZES[size] * W * 0.5 * scale * (1 + (rng.random() - 0.5) * 0.1)
    cx = cx * W + (rng.random() - 0.5) * 0.06 * W
    cy = cy * W + (rng.random() - 0.5) * 0.06 * W
    mask = Image.new("L", img.size, 0)
    d = ImageDraw.Draw(mask)
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == BLOB:
        d.polygon(_blob(cx, cy, r, rng), fill=255)
    elif shape == "square":
        s = r * 0.88
        d.rectangle((cx - s, cy - s, cx + s, cy + s), fill=255)
    else:
        d.polygon(_polygon(shape, cx, cy, r * 1.1), fill=255)
    fill = Image.new("RGB", img.size, COLORS[color] if color in COLORS else OFF_COLORS[color])
    if texture == "striped":
        stripes = Image.new("L", img.size, 0)
        sd = ImageDraw.Draw(stripes)
        for y in range(0, W, 6):
            sd.rectangle((0, y, W, y + 2), fill=255)
        fill.paste((255, 255, 255), mask=stripes)
    img.paste(fill, mask=mask)


# ------------------------------------------------------------------- sampling


@dataclass
class WorldSplit:
    name: str  # "train" | "test"
    seed: int

    def rng(self, *tag: object) -> random.Random:
        return random.Random(hash_int(self.name, self.seed, *tag))

    def combo_ok(self, shape: str, color: str) -> bool:
        return held_out_combo(shape, color) == (self.name == "test")

    def scene(self, rng: random.Random, kind: str | None = None) -> Scene:
        kind = kind or rng.choices(["single", "count", "relation"], [0.55, 0.25, 0.2])[0]
        while True:
            shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
            if self.combo_ok(shape, color):
                break
        seed = rng.randrange(1 << 30)
        if kind == "relation":
            while True:
                o_shape, o_color = rng.choice(SHAPES), rng.choice(list(COLORS))
                if (o_shape, o_color) != (shape, color) and o_color != color:
                    break
            return Scene(shape, color, texture=rng.choice(TEXTURES), other_shape=o_shape,
                         other_color=o_color, relation=rng.choice(RELATIONS), seed=seed)
        count = 1 if kind == "single" else rng.choice([2, 3, 4])
        return Scene(shape, color, size=rng.choice(list(SIZES)), texture=rng.choice(TEXTURES),
                     count=count, position=rng.choice(list(POSITIONS)), seed=seed)

    def twin(self, scene: Scene, attribute: str, rng: random.Random) -> Scene | None:
        """The minimal-pair twin: same scene, one attribute changed (None if impossible)."""
        if scene.relation:
            return None
        if attribute == "position" and scene.count != 1:
            return None
        # training twins stay inside the training combinations; a held-out scene's twin
        # may be any combination (the held-out scene is what the pair tests), so the
        # test split has shape and colour pairs too
        ok = self.combo_ok if self.name == "train" else (lambda shape, color: True)
        choices = {
            "color": [c for c in COLORS if c != scene.color and ok(scene.shape, c)],
            "shape": [s for s in SHAPES if s != scene.shape and ok(s, scene.color)],
            "size": [s for s in SIZES if s != scene.size],
            "texture": [t for t in TEXTURES if t != scene.texture],
            "count": [c for c in (1, 2, 3, 4) if c != scene.count],
            "position": [p for p in POSITIONS if p != scene.position],
        }[attribute]
        if not choices:
            return None
        value = rng.choice(choices)
        field = {"color": "color", "shape": "shape", "size": "size", "texture": "texture",
                 "count": "count", "position": "position"}[attribute]
        return replace(scene, **{field: value}, seed=rng.randrange(1 << 30))


# the one-object VQA questions (also asked by the decoupled generative kinds, training/data.py)
COLOR_QUESTION, SHAPE_QUESTION = "What colour is the shape?", "What shape is shown?"


def answer_of(scene: Scene, attribute: str) -> str:
    """The answer word of a one-image question about `attribute`."""
    if attribute == "count":
        return COUNT_WORDS[scene.count]
    return str(getattr(scene, attribute))


def world_words() -> frozenset[str]:
    """Every word the world's answerable questions and answers use (the templates, the attribute
    values), and the words of the held-out unanswerable questions (kept held out)."""
    from .phrasing import BANNER, UNKNOWN_HELD_OUT, VQA

    texts = [t for table in (BANNER, VQA) for fams in table.values() for ts in fams.values() for t in ts]
    texts += [*UNKNOWN_HELD_OUT, *SHAPES, *COLORS, *SIZES, *POSITIONS, *TEXTURES, *COUNT_WORDS.values()]
    texts += ["colour color shapes age banners house houses"]
    return frozenset(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))


def askable_words(texts: list[str]) -> tuple[str, ...]:
    """The words (3 to 10 letters) of `texts` that are none of `world_words`: things a question
    can ask about that no document of the world shows."""
    known = world_words()
    return tuple(sorted({w for t in texts for w in re.findall(r"[a-z]+", t.lower())
                         if 3 <= len(w) <= 10 and w not in known}))


def vqa_for(scene: Scene, rng: random.Random, family: str = "canonical") -> tuple[str, str, str]:
    """(question type, question, answer) for a scene, the question phrased in `family`
    (training/phrasing.py; "canonical" draws exactly what it always drew)."""
    from .phrasing import _family_text, vqa_question

    if scene.relation:
        rel = rng.choice(RELATIONS)
        q = (f"Is the {scene.color} {scene.shape} {rel} the {scene.other_color} "
             f"{scene.other_shape}?")
        if family != "canonical":
            q = _family_text(q, family, rng)
        return "relation", q, "yes" if rel == scene.relation else "no"
    types = ["color", "shape", "size", "texture", "count"] + (["position"] if scene.count == 1 else [])
    t = rng.choice(types)
    return t, vqa_question(t, scene.count != 1, family, rng), answer_of(scene, t)


# ------------------------------------------------------------------ knowledge


def invent_names(split: WorldSplit, n: int, offset: int = 0) -> list[str]:
    """House names `offset .. offset+n` of the split's fixed sequence; train and test
    names are disjoint (the split is in the hash). Training pools take names from
    offset 0; the `seen` evaluation takes train-split names from `SEEN_NAME_OFFSET`,
    beyond any training pool: new houses whose names follow the training distribution."""
    names: list[str] = []
    seen: set[str] = set()
    i = 0
    while len(names) < n + offset:
        rng = random.Random(hash_int("name", i))
        i += 1
        name = (rng.choice(_SYL_A) + rng.choice(_SYL_V) + rng.choice(_SYL_C)
                + (rng.choice(_SYL_V) + rng.choice(_SYL_C) if rng.random() < 0.5 else "")).capitalize()
        # the name itself decides its split: test names never occur in training
        if name in seen or (hash_int("split", name) % 5 == 0) != (split.name == "test"):
            continue
        seen.add(name)
        names.append(name)
    return names[offset:]


@dataclass
class Knowledge:
    name: str
    banner: Scene

    def document(self) -> Sample:
        return Sample([Slice.of_text(f"The banner of House {self.name}:"),
                       Slice.of_image(self.banner.render())], id=f"house-{self.name.lower()}",
                      metadata={"kind": "knowledge", "house": self.name})

    def in_words(self) -> str:
        """The document's banner told in words (the `bind` examples)."""
        b = self.banner
        tex = "striped " if b.texture == "striped" else ""
        return f"The banner of House {self.name}: a {b.size} {b.color} {tex}{b.shape} on the {b.position}."

    def questions(self) -> list[str]:
        """The canonical question of every banner attribute."""
        from .phrasing import banner_question

        rng = random.Random(0)
        return [banner_question(a, self.name, "canonical", rng) for a in ATTRIBUTES]

    def question(self, rng: random.Random, family: str = "canonical",
                 attributes: tuple[str, ...] = ATTRIBUTES) -> tuple[str, str, str]:
        """(attribute, question, answer) about one banner attribute, phrased in `family`."""
        from .phrasing import banner_question

        attribute = rng.choice(attributes)
        return attribute, banner_question(attribute, self.name, family, rng), answer_of(self.banner, attribute)


SEEN_NAME_OFFSET = 20_000  # training pools must hold fewer houses than this


def knowledge_base(split: WorldSplit, n: int, offset: int = 0) -> list[Knowledge]:
    rng = split.rng("knowledge", offset) if offset else split.rng("knowledge")
    return [Knowledge(name, split.scene(rng, "single")) for name in invent_names(split, n, offset)]


# ---------------------------------------------------------------- interleaved


def interleaved_document(split: WorldSplit, rng: random.Random, idx: int) -> tuple[Sample, list[Scene]]:
    """A page of 1-3 (image, label) pairs: 2-6 slices, image, text, image, text ..."""
    n = rng.choice([1, 2, 3])
    scenes = [split.scene(rng, "single") for _ in range(n)]
    slices: list[Slice] = []
    for k, sc in enumerate(scenes):
        slices.append(Slice.of_image(sc.render()))
        slices.append(Slice.of_text(f"Figure {k + 1}."))
    return Sample(slices, id=f"page-{split.name}-{idx}", metadata={"kind": "page"}), scenes


def interleaved_query(scenes: list[Scene], rng: random.Random) -> Sample:
    """The text that answers to a page: its figures described in order (one slice each)."""
    k = min(len(scenes), 2)
    start = rng.randrange(len(scenes) - k + 1)
    return Sample([Slice.of_text(sc.caption()) for sc in scenes[start : start + k]])
