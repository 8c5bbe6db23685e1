"""Qwen2-VL and Qwen2.5-VL: a ViT over 14-px (here: any) patches with a 2x2 patch merger as the
projector, and a Qwen2 LM with multimodal RoPE.

What differs from LLaVA: an image's token count follows its size (the image processor resizes
it to a multiple of patch x merge within [min_pixels, max_pixels], and every 2x2 group of
patches becomes one token); pixels travel as flattened patches with `image_grid_thw` per image;
the LM's M-RoPE positions need `mm_token_type_ids` (1 on image tokens), computed here from the
ids. An image takes `<|vision_start|><|image_pad|><|vision_end|>` in a prompt, the pad repeated
once per token. The processor object needs a video processor (torchvision), so the tokenizer and
the PIL image processor are kept apart; vLLM builds its own processor from the saved files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..backbone import Backbone, ImageInputs, register
from ..config import TinyConfig

VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"


@register
class Qwen2VLBackbone(Backbone):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    hf_class: ClassVar[str] = "Qwen2VLForConditionalGeneration"
    special_tokens = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
    placeholder = VISION_START + IMAGE_PAD + VISION_END
    image_pad = IMAGE_PAD

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> Qwen2VLBackbone:
        import transformers
        from transformers import AutoImageProcessor, AutoTokenizer

        model = getattr(transformers, cls.hf_class).from_pretrained(str(path), dtype=dtype)
        model.to(device).eval()
        return cls(model, AutoTokenizer.from_pretrained(str(path)), AutoImageProcessor.from_pretrained(str(path)))

    @property
    def merge(self) -> int:
        return int(self.image_processor.merge_size)

    def process_images(self, images: Sequence[Any]) -> ImageInputs:
        out = self.image_processor(list(images), return_tensors="pt")
        grid = out["image_grid_thw"]  # [N, 3]: temporal, height, width patches
        counts = (grid.prod(-1) // self.merge**2).tolist()
        return ImageInputs({"pixel_values": out["pixel_values"], "image_grid_thw": grid},
                           [VISION_START + IMAGE_PAD * int(n) + VISION_END for n in counts])

    def extra_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        # M-RoPE: which tokens are image tokens (0 text, 1 image; the processor's convention)
        return {"mm_token_type_ids": (input_ids == self.image_token_id).to(torch.int32)}

    def image_features(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        out = self.model.model.get_image_features(inputs["pixel_values"].to(self.device),
                                                  inputs["image_grid_thw"].to(self.device))
        return list(out.pooler_output)

    def max_image_tokens(self) -> int:
        side = int(self.image_processor.patch_size) * self.merge
        return int(self.image_processor.size["longest_edge"]) // side**2 + 2

    def vision_modules(self) -> list[nn.Module]:
        return [self.model.model.visual]  # the patch merger (the projector) is part of it

    def projector(self) -> nn.Module:
        return self.model.model.visual.merger

    def projector_output(self) -> nn.Linear:
        return self.projector().mlp[-1]

    def decoder(self) -> nn.Module:
        return self.model.model.language_model

    @classmethod
    def tiny_config(cls, config: TinyConfig, tokenizer: Any) -> Any:
        from transformers import Qwen2VLConfig

        return Qwen2VLConfig(**cls._tiny_kwargs(config, tokenizer))

    @staticmethod
    def _tiny_kwargs(config: TinyConfig, tokenizer: Any) -> dict[str, Any]:
        half = config.text_hidden // config.text_heads // 2  # rotary pairs per head
        t = half // 4
        h = (half - t) // 2
        ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)}
        text = dict(
            vocab_size=len(tokenizer), hidden_size=config.text_hidden, intermediate_size=config.text_hidden * 4,
            num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
            num_key_value_heads=config.text_kv_heads, max_position_embeddings=config.max_positions,
            rope_scaling={"type": "mrope", "mrope_section": [t, h, half - t - h]},
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        )
        vision = dict(depth=config.vision_layers, embed_dim=config.vision_hidden, hidden_size=config.text_hidden,
                      num_heads=config.vision_heads, patch_size=config.patch_size, spatial_merge_size=2,
                      temporal_patch_size=2)
        return dict(text_config=text, vision_config=vision, image_token_id=ids[IMAGE_PAD],
                    video_token_id=ids[VIDEO_PAD], vision_start_token_id=ids[VISION_START],
                    vision_end_token_id=ids[VISION_END], tie_word_embeddings=False)

    @classmethod
    def build_tiny(cls, config: TinyConfig, tokenizer: Any) -> Qwen2VLBackbone:
        """A random-init tiny Qwen2-VL; images resized within [1, (2 x image_size)²] pixels'
        worth of merged patches, so a world image of `image_size` keeps its size."""
        import transformers
        from transformers import Qwen2VLImageProcessorPil

        side = config.patch_size * 2
        if config.image_size % side:
            raise ValueError(f"qwen2_vl: image_size {config.image_size} must be a multiple of 2 x patch_size ({side})")
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            model = getattr(transformers, cls.hf_class)(cls.tiny_config(config, tokenizer))
        ip = Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=(2 * config.image_size) ** 2,
                                      patch_size=config.patch_size, merge_size=2, temporal_patch_size=2)
        return cls(model, tokenizer, ip)


@register
class Qwen25VLBackbone(Qwen2VLBackbone):
    """Qwen2.5-VL: the same interface (window attention in the ViT, an MLP merger)."""

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    hf_class = "Qwen2_5_VLForConditionalGeneration"

    @classmethod
    def tiny_config(cls, config: TinyConfig, tokenizer: Any) -> Any:
        from transformers import Qwen2_5_VLConfig

        kw = cls._tiny_kwargs(config, tokenizer)
        v = kw["vision_config"]
        kw["vision_config"] = dict(depth=v["depth"], hidden_size=v["embed_dim"], out_hidden_size=config.text_hidden,
                                   intermediate_size=v["embed_dim"] * 2, num_heads=v["num_heads"],
                                   patch_size=v["patch_size"], spatial_merge_size=2, temporal_patch_size=2,
                                   window_size=config.patch_size * 4, fullatt_block_indexes=[0])
        return Qwen2_5_VLConfig(**kw)
