"""`build_tiny`: a random-init tiny LLaVA with a locally trained tokenizer.

The result is a standard Hugging Face LLaVA (CLIP vision tower + Llama), a
byte-level BPE tokenizer (any text encodes, no unknown tokens), a PIL image
processor and the chat template of `model.prompts`, so the same directory
loads in transformers and in vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch

from .backbone import LlavaBackbone
from .config import PromptFormat, TinyConfig
from .prompts import chat_template

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<image>"]

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


def train_tokenizer(corpus: Iterable[str], vocab_size: int, fmt: PromptFormat, eos: str = "</s>"):
    """Byte-level BPE trained here with `tokenizers`, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token=eos,
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=1 << 30,
    )
    fast.chat_template = chat_template(fmt, eos)
    return fast


def dct_patch_init_(weight: torch.Tensor) -> None:
    """Low-frequency 2-D DCT-II filters for a conv patch embedding [D, C, P, P].

    Output channel i holds one unit-norm DCT basis image on one colour channel,
    lowest frequencies first (u + v), cycling over the colour channels; the DC
    filters make a patch's mean colour a fixed direction of its embedding. A
    random patch embedding mixes pixels with random signs, so a partly covered
    patch's colour lands on a direction that changes with where the object edge
    falls; the LM then cannot read colour from a few object tokens within a
    short budget. Only the init changes: the layer is still CLIP's conv.
    """
    d, c, p, _ = weight.shape
    n = torch.arange(p, dtype=torch.float64)
    freqs = sorted(((u, v) for u in range(p) for v in range(p)), key=lambda uv: (uv[0] + uv[1], uv))
    with torch.no_grad():
        for i in range(min(d, len(freqs) * c)):
            u, v = freqs[i // c]
            f = torch.outer(torch.cos(math.pi * (n + 0.5) * u / p), torch.cos(math.pi * (n + 0.5) * v / p))
            weight[i].zero_()
            weight[i, i % c] = (f / f.norm()).to(weight.dtype)


def build_tiny(
    config: TinyConfig | None = None,
    out_dir: str | Path | None = None,
    corpus: Iterable[str] = (),
    fmt: PromptFormat | None = None,
) -> LlavaBackbone:
    """Random-init tiny LLaVA; saved to `out_dir` (vLLM-compatible) when given."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    config = config or TinyConfig()
    fmt = fmt or PromptFormat()
    tokenizer = train_tokenizer([*BASE_CORPUS, *corpus], config.vocab_size, fmt)
    vocab = len(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden,
        intermediate_size=config.vision_hidden * 4,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        projection_dim=config.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab,
        hidden_size=config.text_hidden,
        intermediate_size=config.text_hidden * 4,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_kv_heads,
        max_position_embeddings=config.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    llava_cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = LlavaForConditionalGeneration(llava_cfg)
    if config.patch_init == "dct":
        dct_patch_init_(model.model.vision_tower.embeddings.patch_embedding.weight)
    if config.projector_norm:
        from .projector import install_normalized_projector

        install_normalized_projector(model)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    mean = {} if config.image_mean is None else {"image_mean": [config.image_mean] * 3}
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": config.image_size},
        crop_size={"height": config.image_size, "width": config.image_size},
        **mean,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=tokenizer.chat_template,
    )
    backbone = LlavaBackbone(model, processor)
    if out_dir is not None:
        backbone.save(out_dir)
    return backbone
