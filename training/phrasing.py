"""How questions are asked: phrasing families for the world's VQA and banner questions.

A model that learned one sentence per question answers that sentence and breaks on a change
of case or word order (issue #30: the README's question in lower case was answered "no").
Every question here is built from a *family* of phrasings:

| family | what changes | example (banner colour) |
|---|---|---|
| `canonical` | nothing (the README's form) | What colour is the banner of House Vyd? |
| `order` | word order | On the banner of House Vyd, what colour is the shape? |
| `synonym` | other words, same question | Which colour does the banner of House Vyd have? |
| `case` | lower or upper case | what colour is the banner of house vyd? |
| `spelling` | US spelling | What color is the banner of House Vyd? |
| `request` | a request, not a question | Tell me the colour of the banner of House Vyd. |
| `punctuation` | the question mark dropped or doubled | What colour is the banner of House Vyd |
| `extra` | extra words around it | Quick question: what colour is the banner of House Vyd, please? |
| `filler` | other words around it (training only) | Hey, what colour is the banner of House Vyd? Be brief. |

`TRAINED` families appear in training; `HELD_OUT` ones only in the evaluation (`sugar eval`
prints accuracy by family), so a held-out score near the trained one says the model reads
the question, not its surface. `TRAIN_ONLY` families are drawn in training when a recipe
names them (TrainConfig.phrasings) and never evaluated: `filler` puts words around a question as
`extra` does, from a disjoint set, so that `extra` stays a held-out test of words never trained.

`ABSTAIN` is the one answer for a question the documents cannot answer: the asked house is
not among them, they do not show the asked thing (a motto, a founder), or they are not of
this world at all (real text such as licences). `UNKNOWN_*` are such questions, in a trained
and a held-out set.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from model.prompts import ABSTAIN_ANSWER

FAMILIES = ("canonical", "order", "synonym", "case", "spelling", "request", "punctuation", "extra")
TRAINED = ("canonical", "order", "synonym", "case", "spelling", "request")
HELD_OUT = ("punctuation", "extra")
TRAIN_ONLY = ("filler",)

ABSTAIN = ABSTAIN_ANSWER

# banner questions: attribute -> family -> templates ({n}: the house name). Families without
# an entry (spelling for attributes without a UK/US difference) fall back to canonical.
BANNER: dict[str, dict[str, tuple[str, ...]]] = {
    "color": {
        "canonical": ("What colour is the banner of House {n}?",),
        "order": ("On the banner of House {n}, what colour is the shape?", "House {n}'s banner: what colour is it?"),
        "synonym": ("Which colour does the banner of House {n} have?", "What is the colour of House {n}'s banner?"),
        "spelling": ("What color is the banner of House {n}?", "Which color does the banner of House {n} have?"),
        "request": ("Tell me the colour of the banner of House {n}.", "Name the colour of House {n}'s banner."),
    },
    "shape": {
        "canonical": ("What shape is on the banner of House {n}?",),
        "order": ("On the banner of House {n}, what shape is shown?", "House {n}'s banner: what shape is on it?"),
        "synonym": ("Which shape does the banner of House {n} show?", "What is the shape on House {n}'s banner?"),
        "request": ("Tell me the shape on the banner of House {n}.", "Name the shape on House {n}'s banner."),
    },
    "size": {
        "canonical": ("Is the shape on the banner of House {n} small or large?",),
        "order": ("On the banner of House {n}, is the shape small or large?",
                  "House {n}'s banner: is its shape small or large?"),
        "synonym": ("How big is the shape on the banner of House {n}, small or large?",
                    "Is the shape on House {n}'s banner large or small?"),
        "request": ("Tell me whether the shape on the banner of House {n} is small or large.",
                    "Say if the shape on House {n}'s banner is small or large."),
    },
    "texture": {
        "canonical": ("Is the banner of House {n} striped or solid?",),
        "order": ("On the banner of House {n}, is the shape striped or solid?",
                  "House {n}'s banner: is it striped or solid?"),
        "synonym": ("Is the shape on House {n}'s banner solid or striped?",
                    "Does the banner of House {n} show a striped or a solid shape?"),
        "request": ("Tell me whether the banner of House {n} is striped or solid.",
                    "Say if House {n}'s banner is solid or striped."),
    },
    "count": {
        "canonical": ("How many shapes are on the banner of House {n}?",),
        "order": ("On the banner of House {n}, how many shapes are there?",
                  "House {n}'s banner: how many shapes does it show?"),
        "synonym": ("What number of shapes does the banner of House {n} show?",
                    "Count the shapes on House {n}'s banner: how many?"),
        "request": ("Tell me how many shapes are on the banner of House {n}.",
                    "Count the shapes on the banner of House {n}."),
    },
    "position": {
        "canonical": ("Where is the shape on the banner of House {n}?",),
        "order": ("On the banner of House {n}, where is the shape?", "House {n}'s banner: where is its shape?"),
        "synonym": ("In which part of the banner of House {n} is the shape?",
                    "Where on House {n}'s banner does the shape sit?"),
        "request": ("Tell me where the shape is on the banner of House {n}.",
                    "Say where the shape sits on House {n}'s banner."),
    },
}

# VQA questions about one image: attribute -> family -> templates ({o}: "shape" or "shapes",
# {be}: "is" or "are"); multi-object scenes use the plural
VQA: dict[str, dict[str, tuple[str, ...]]] = {
    "color": {
        "canonical": ("What colour {be} the {o}?",),
        "order": ("The {o}: what colour {be} {it}?",),
        "synonym": ("Which colour {do} the {o} have?", "What is the colour of the {o}?"),
        "spelling": ("What color {be} the {o}?", "Which color {do} the {o} have?"),
        "request": ("Tell me the colour of the {o}.", "Name the colour of the {o}."),
    },
    "shape": {
        "canonical": ("What shape is shown?",),
        "order": ("Shown here: what shape is it?",),
        "synonym": ("Which shape can be seen?", "What is the shape in the image?"),
        "request": ("Tell me the shape in the image.", "Name the shape shown."),
    },
    "size": {
        "canonical": ("{Be} the {o} small or large?",),
        "order": ("The {o}: small or large?",),
        "synonym": ("How big {be} the {o}, small or large?", "{Be} the {o} large or small?"),
        "request": ("Tell me whether the {o} {be} small or large.",),
    },
    "texture": {
        "canonical": ("Is it striped or solid?",),
        "order": ("Striped or solid: which is it?",),
        "synonym": ("Is it solid or striped?", "Does the image show striped or solid shapes?"),
        "request": ("Tell me whether it is striped or solid.",),
    },
    "count": {
        "canonical": ("How many shapes are there?",),
        "order": ("Shapes in the image: how many are there?",),
        "synonym": ("What number of shapes is shown?", "How many shapes can be seen?"),
        "request": ("Tell me how many shapes there are.", "Count the shapes."),
    },
    "position": {
        "canonical": ("Where is the shape?",),
        "order": ("The shape: where is it?",),
        "synonym": ("In which part of the image is the shape?", "Where does the shape sit?"),
        "request": ("Tell me where the shape is.",),
    },
}

_EXTRA = (("Quick question: ", ""), ("", " Thanks!"), ("I would like to know: ", ""), ("Please: ", ""),
          ("", " Answer in one word."))
# the `filler` family's words (training only): none of `_EXTRA`'s
_FILLER = (("Hey, ", ""), ("Hello! ", ""), ("Can you tell me: ", ""), ("Another thing: ", ""), ("", " Thank you."),
           ("", " Be brief."), ("", " Just curious."), ("", " Cheers."))
# families that put words around a question, and their (before, after) words
_AROUND = {"extra": _EXTRA, "filler": _FILLER}
# families that change a canonical or synonym phrasing's surface, not its words
_SURFACE = ("case", "punctuation", *_AROUND)

# questions whose answer no banner document holds (trained / held out of training)
UNKNOWN_TRAINED = ("What is the motto of House {n}?", "Who founded House {n}?", "Where is the castle of House {n}?",
                   "Which animal is on the banner of House {n}?")
UNKNOWN_HELD_OUT = ("How old is House {n}?", "What is the name of the lord of House {n}?")
# TrainConfig.unknown_questions "wide": the trained four and more of the kind — about the house
# (people, lands, trade, customs) and about what a banner does not show (words, flowers, who made
# it) —, none about the held-out ones' age or lord
UNKNOWN_WIDE = UNKNOWN_TRAINED + (
    "What are the words of House {n}?", "How many knights serve House {n}?", "Who is the heir of House {n}?",
    "Which river flows through the lands of House {n}?", "What is the seat of House {n} called?",
    "Which house is allied with House {n}?", "What does House {n} trade in?", "Who is the enemy of House {n}?",
    "Which god does House {n} pray to?", "What food is House {n} known for?",
    "How many people live in the lands of House {n}?", "What language is spoken by House {n}?",
    "When is the feast day of House {n}?", "Which region does House {n} hold?",
    "What word is written on the banner of House {n}?", "Which flower is on the banner of House {n}?",
    "Who sewed the banner of House {n}?", "Where does the banner of House {n} hang?",
    "How much gold does House {n} have?", "Which ships does House {n} sail?")
# TrainConfig.unknown_questions "swapped": the things a house has that its document does not show
# (the document is its banner); a banner question about one of them is the answerable
# question's minimal pair, one noun apart
NOT_SHOWN = ("castle", "shield", "cloak", "ship", "sword", "gate", "tower", "helmet", "hall", "horse")
# TrainConfig.unknown_questions "words": the asked thing is any word of real text (world.askable_words
# of the training licences, about 1,500), in the banner questions' place of the banner or in one
# of these forms in the place of the attribute — so that only the world's own words are answered
_WORD_FORMS = ("What {w} is the banner of House {n}?", "What {w} is on the banner of House {n}?",
               "What is the {w} of House {n}?", "Which {w} does House {n} have?", "Tell me the {w} of House {n}.",
               "What is the {w} of the banner of House {n}?", "House {n}'s {w}: what is it?")
# "How" began only answerable questions (how many shapes, how big), and the checkpoint shipped
# before `shipped_world_or` abstained on 0 of 60 "How old is House X?" (93-100 % for the other
# unanswerable questions; it answered "striped" or "solid": `or_lookalikes`): "How" with anything
# else abstains
_HOW_FORMS = ("How {w} is House {n}?", "How {w} is the banner of House {n}?", "How many {w} does House {n} have?",
              "How much {w} does House {n} have?", "How {w} are the people of House {n}?")

# questions about real text (licences) whose answers the world's model cannot read
TEXT_TRAINED = ("What does this license say about warranty?", "Who holds the copyright?",
                "Can I redistribute the software?", "What are the conditions for modification?",
                "Does the license allow commercial use?")
TEXT_HELD_OUT = ("Does the Apache License grant a patent license?", "What is the warranty under the GPL?",
                 "Which version of the license applies?")


def _family_text(text: str, family: str, rng: random.Random) -> str:
    """The surface changes of the families that do not change the words."""
    if family == "case":
        return text.lower() if rng.random() < 0.75 else text.upper()
    if family == "punctuation":
        base = text.rstrip("?.!")
        return base + rng.choice(("", " ?", "??", "?!", " .", "..."))
    if family in _AROUND:
        pre, post = rng.choice(_AROUND[family])
        base = text[0].lower() + text[1:] if pre else text
        return pre + base + post
    return text


def _pick(options: tuple[str, ...], rng: random.Random) -> str:
    return options[0] if len(options) == 1 else rng.choice(options)  # one option draws nothing


def _templates(table: dict[str, tuple[str, ...]], family: str) -> tuple[str, ...]:
    # case, punctuation and extra words change the surface of a canonical or synonym phrasing
    if family in _SURFACE:
        return table["canonical"] + table.get("synonym", ())
    return table.get(family) or table["canonical"]


def banner_question(attribute: str, name: str, family: str, rng: random.Random, thing: str = "banner") -> str:
    """A question about the banner (or, asked with another `thing`, about that) of House `name`,
    phrased in `family`."""
    text = _pick(_templates(BANNER[attribute], family), rng).format(n=name).replace("banner", thing)
    return _family_text(text, family, rng)


def vqa_question(attribute: str, plural: bool, family: str, rng: random.Random) -> str:
    """A question about the one image, phrased in `family`."""
    words = {"o": "shapes" if plural else "shape", "be": "are" if plural else "is",
             "Be": "Are" if plural else "Is", "do": "do" if plural else "does", "it": "they" if plural else "it"}
    return _family_text(_pick(_templates(VQA[attribute], family), rng).format(**words), family, rng)


def unknown_question(name: str, held_out: bool, rng: random.Random) -> str:
    return rng.choice(UNKNOWN_HELD_OUT if held_out else UNKNOWN_TRAINED).format(n=name)


def wide_unknown_question(name: str, rng: random.Random, families: tuple[str, ...] = TRAINED) -> str:
    """A training question the documents cannot answer, from `UNKNOWN_WIDE`, with the surface
    change of a trained family (the lower case the served questions come in)."""
    return _family_text(rng.choice(UNKNOWN_WIDE).format(n=name), pick_family(rng, families), rng)


def swapped_unknown_question(name: str, rng: random.Random, families: tuple[str, ...] = TRAINED) -> str:
    """A training question the documents cannot answer: half the time one of `UNKNOWN_TRAINED`,
    else a banner question (any attribute, a trained family) about a thing of `NOT_SHOWN` instead
    of the banner — "What colour is the castle of House Vyd?" —, so that what is asked about, not
    the question's form, decides between the answer and "not in the documents"."""
    if rng.random() < 0.5:
        return unknown_question(name, False, rng)
    attribute = rng.choice(tuple(BANNER))
    return banner_question(attribute, name, pick_family(rng, families), rng, rng.choice(NOT_SHOWN))


def or_lookalikes(words: tuple[str, ...], tokenize: Callable[[str], list[str]]) -> tuple[str, ...]:
    """The words of `words` that `tokenize` (the model's tokenizer) begins with the first piece of
    " or" where it splits " or" into more: the word a choice question ("striped or solid?") is
    recognised by. The checkpoint shipped before `shipped_world_or` (docs/EXPERIMENTS.md §12.9) read
    such a word as "or" and answered "How old is House X?" (" o", "l", "d") with "striped" or
    "solid"; the shipped tokenizer keeps " or" whole, so none does."""
    pieces = tokenize(" or")
    if len(pieces) < 2:
        return ()
    return tuple(w for w in words if (own := tokenize(" " + w))[0] == pieces[0] and own[:2] != pieces[:2])


def word_unknown_question(name: str, rng: random.Random, words: tuple[str, ...],
                          families: tuple[str, ...] = TRAINED, lookalikes: tuple[str, ...] = ()) -> str:
    """A training question the documents cannot answer, in a trained family: a third of the time
    one of `UNKNOWN_TRAINED`, a third one of `_HOW_FORMS` about a word of `words`, else a banner
    question with the word in the banner's place or one of `_WORD_FORMS` with it in the
    attribute's. Where `lookalikes` are given (`or_lookalikes`), half the words are drawn from them."""
    r = rng.random()
    if r < 1 / 3 or not words:
        return unknown_question(name, False, rng)
    w, family = rng.choice(lookalikes if lookalikes and rng.random() < 0.5 else words), pick_family(rng, families)
    if r < 2 / 3:
        return _family_text(rng.choice(_HOW_FORMS).format(w=w, n=name), family, rng)
    if rng.random() < 0.5:
        return banner_question(rng.choice(tuple(BANNER)), name, family, rng, w)
    return _family_text(rng.choice(_WORD_FORMS).format(w=w, n=name), family, rng)


def pick_family(rng: random.Random, families: tuple[str, ...] = TRAINED) -> str:
    """A family for a training question: canonical half the time, else any trained one."""
    return "canonical" if rng.random() < 0.4 else rng.choice(families)
