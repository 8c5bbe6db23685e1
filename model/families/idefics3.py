"""Idefics3 (the architecture of SmolVLM v1): a SigLIP-style vision encoder, a pixel-shuffle
connector as the projector, a Llama-style LM.

What differs from LLaVA: image splitting. The image processor resizes an image so its longest
edge is `size.longest_edge`, cuts it into tiles of `max_image_size` (rows x cols) and adds the
whole image as a global tile; every tile becomes `image_seq_len` tokens after the connector's
pixel shuffle. An image's placeholder `<image>` expands into the tiles' markup (a
`<fake_token_around_image>` and a `<row_i_col_j>` tag before each tile's tokens, a
`<global-img>` tag before the global one: the processor's own format), so its token count
follows its shape. Tiles travel as `pixel_values` [images, tiles, 3, H, W] with a
`pixel_attention_mask` (padded tiles are all zero and dropped by the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbone import Backbone, ImageInputs, register
from ..config import TinyConfig
from .llava import llama_kwargs

FAKE, GLOBAL, END_OF_UTTERANCE = "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"
ROW_COL = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))


@register
class Idefics3Backbone(Backbone):
    family = "idefics3"
    model_types = ("idefics3",)
    special_tokens = ("<image>", FAKE, GLOBAL, END_OF_UTTERANCE, *ROW_COL)
    placeholder = "<image>"
    image_pad = "<image>"

    def __init__(self, model: Any, processor: Any) -> None:
        super().__init__(model, processor.tokenizer, processor.image_processor)
        self.processor = processor

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> Idefics3Backbone:
        from transformers import AutoProcessor, Idefics3ForConditionalGeneration

        model = Idefics3ForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
        model.to(device).eval()
        return cls(model, AutoProcessor.from_pretrained(str(path)))

    def process_images(self, images: Sequence[Any]) -> ImageInputs:
        # one "sample" per image: pixel_values [N, max_tiles, 3, H, W], padded tiles all zero
        out = self.image_processor([[im] for im in images], return_tensors="pt", return_row_col_info=True)
        expansions = [self.processor.replace_image_token(out, k) for k in range(len(images))]
        return ImageInputs({"pixel_values": out["pixel_values"],
                            "pixel_attention_mask": out["pixel_attention_mask"]}, expansions)

    def image_features(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        mask = inputs.get("pixel_attention_mask")
        out = self.model.model.get_image_features(inputs["pixel_values"].to(self.device),
                                                  None if mask is None else mask.to(self.device))
        return list(out.pooler_output)

    def max_image_tokens(self) -> int:
        from PIL import Image

        side = int(self.image_processor.size["longest_edge"])
        return self.image_token_count(Image.new("RGB", (side, side)))  # a square takes the most tiles

    def vision_modules(self) -> list[nn.Module]:
        return [self.model.model.vision_model, self.model.model.connector]

    def projector(self) -> nn.Module:
        return self.model.model.connector

    def decoder(self) -> nn.Module:
        return self.model.model.text_model

    def set_chat_template(self, template: str) -> None:
        self.tokenizer.chat_template = template
        self.processor.chat_template = template

    def save_processing(self, path: Path) -> None:
        self.processor.save_pretrained(str(path))

    @classmethod
    def build_tiny(cls, config: TinyConfig, tokenizer: Any) -> Idefics3Backbone:
        """A random-init tiny Idefics3: tiles of `image_size`, images resized to a longest edge
        of 2 x `image_size` (a world image: 2 x 2 tiles and the global one)."""
        from transformers import (
            Idefics3Config,
            Idefics3ForConditionalGeneration,
            Idefics3ImageProcessorPil,
            Idefics3Processor,
        )

        scale = 2
        per_side = config.image_size // config.patch_size
        if config.image_size % config.patch_size or per_side % scale:
            raise ValueError(f"idefics3: image_size / patch_size ({config.image_size}/{config.patch_size}) must be "
                             f"a whole multiple of the pixel-shuffle scale {scale}")
        cfg = Idefics3Config(
            text_config=dict(model_type="llama", **llama_kwargs(config, tokenizer)),
            vision_config=dict(hidden_size=config.vision_hidden, intermediate_size=config.vision_hidden * 4,
                               num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
                               image_size=config.image_size, patch_size=config.patch_size),
            scale_factor=scale, image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            model = Idefics3ForConditionalGeneration(cfg)
        ip = Idefics3ImageProcessorPil(size={"longest_edge": 2 * config.image_size},
                                       max_image_size={"longest_edge": config.image_size}, do_image_splitting=True)
        processor = Idefics3Processor(image_processor=ip, tokenizer=tokenizer,
                                      image_seq_len=(per_side // scale) ** 2, chat_template=tokenizer.chat_template)
        return cls(model, processor)
