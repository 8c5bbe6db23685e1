"""`build_tiny`: a random-init tiny backbone of any family with a locally trained tokenizer.

The result is a standard Hugging Face model of the family (LLaVA: CLIP vision
tower + Llama; Qwen2-VL; Idefics3), a byte-level BPE tokenizer (any text
encodes, no unknown tokens) carrying the family's special tokens, the family's
PIL image processor and the chat template of `model.prompts`, so the same
directory loads in transformers and in vLLM.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .backbone import Backbone
from .config import PromptFormat, TinyConfig
from .prompts import chat_template

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]

# A small built-in corpus: the prompt scaffolding plus everyday words, so that
# common text compresses well. Byte-level BPE still encodes anything.
BASE_CORPUS = [
    "USER: ASSISTANT: Context: Question: Answer: [1] [2] [3] [4] [5] [6] [7] [8] [9] [10]",
    "What colour is the shape? What shape is it? How many shapes are there? Is the circle "
    "left of the square? Where is the triangle? yes no one two three four five six",
    "red green blue yellow purple orange white black grey pink brown cyan magenta",
    "circle square triangle star diamond hexagon cross heart ring arrow",
    "small medium large big tiny left right top bottom center middle above below",
    "striped dotted plain solid rotated upright tilted horizontal vertical",
    "The banner of House shows a picture of an image of the of a an and is in on at with",
    "T-shirt top trouser pullover dress coat sandal shirt sneaker bag ankle boot item catalog",
    "the quick brown fox jumps over the lazy dog, and 0123456789 numbers. This that these "
    "those there here which who what when where why how because therefore however",
]


def train_tokenizer(corpus: Iterable[str], vocab_size: int, fmt: PromptFormat, eos: str = "</s>",
                    extra: Iterable[str] = ("<image>",), image_token: str = "<image>"):
    """Byte-level BPE trained here with `tokenizers`, wrapped for transformers; `extra`: the
    family's special tokens (image placeholders and markers), after the pad/bos/eos ids;
    `image_token`: the one the image features replace (the tokenizer's `image_token`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *extra],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token=eos,
        extra_special_tokens={"image_token": image_token},
        model_max_length=1 << 30,
    )
    fast.chat_template = chat_template(fmt, eos)
    return fast


def build_tiny(
    config: TinyConfig | None = None,
    out_dir: str | Path | None = None,
    corpus: Iterable[str] = (),
    fmt: PromptFormat | None = None,
) -> Backbone:
    """A random-init tiny backbone of `config.family` (model/families/), with a tokenizer
    trained here on `corpus` that carries the family's special tokens; saved to `out_dir`
    (vLLM-compatible) when given. `fmt.image_placeholder` must be the family's."""
    from .families import families

    config = config or TinyConfig()
    fmt = fmt or PromptFormat()
    known = families()
    if config.family not in known:
        raise ValueError(f"unknown model family {config.family!r} (registered: {sorted(known)})")
    cls = known[config.family]
    if fmt.image_placeholder != cls.placeholder:
        raise ValueError(f"the {cls.family} family's image placeholder is {cls.placeholder!r}, "
                         f"the prompt format's {fmt.image_placeholder!r}")
    tokenizer = train_tokenizer([*BASE_CORPUS, *corpus], config.vocab_size, fmt, extra=cls.special_tokens,
                                image_token=cls.image_pad)
    backbone = cls.build_tiny(config, tokenizer)
    model = backbone.model
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    if out_dir is not None:
        backbone.save(out_dir)
    return backbone
