"""LLaVA (LlavaForConditionalGeneration + LlavaProcessor): CLIP-style vision tower, a two-layer
MLP projector, a Llama-style LM; every image the same number of tokens (the processor resizes
and crops it). The shipped checkpoint is one. Also here: the vLLM weight layout
(`to_vllm_layout`) and the fold of the training-time normalised projector (model/projector.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..backbone import Backbone, ImageInputs, register
from ..config import TinyConfig
from ..projector import NormalizedProjector, text_embedding_rms


@register
class LlavaBackbone(Backbone):
    family = "llava"
    model_types = ("llava",)
    special_tokens = ("<image>",)
    placeholder = "<image>"

    def __init__(self, model: Any, processor: Any) -> None:
        super().__init__(model, processor.tokenizer, processor.image_processor)
        self.processor = processor
        self.image_token = processor.image_token
        self._tokens_per_image = self._count_image_tokens()

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> LlavaBackbone:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
        model.to(device).eval()
        return cls(model, AutoProcessor.from_pretrained(str(path)))

    def _count_image_tokens(self) -> int:
        p = self.processor
        ip = p.image_processor
        size = getattr(ip, "crop_size", None) or ip.size
        h = size.get("height") or size.get("shortest_edge")
        w = size.get("width") or size.get("shortest_edge")
        n = (h // p.patch_size) * (w // p.patch_size) + p.num_additional_image_tokens
        if p.vision_feature_select_strategy == "default":
            n -= 1
        return n

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def image_key(self, image: Any) -> Any:
        return None  # every image takes the same tokens

    def process_images(self, images: Sequence[Any]) -> ImageInputs:
        pv = self.image_processor(list(images), return_tensors="pt")["pixel_values"]
        return ImageInputs({"pixel_values": pv}, [self.image_token * self._tokens_per_image] * len(images))

    def image_token_count(self, image: Any = None) -> int:
        return self._tokens_per_image

    def max_image_tokens(self) -> int:
        return self._tokens_per_image

    def image_features(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        pv = inputs["pixel_values"].to(self.device, self.model.dtype)
        return list(self.model.get_image_features(pixel_values=pv).pooler_output)

    def vision_modules(self) -> list[nn.Module]:
        return [self.model.model.vision_tower, self.model.model.multi_modal_projector]

    def projector(self) -> nn.Module:
        return self.model.model.multi_modal_projector

    def projector_output(self) -> nn.Linear:
        return self.projector().linear_2

    def decoder(self) -> nn.Module:
        return self.model.model.language_model

    def set_chat_template(self, template: str) -> None:
        self.tokenizer.chat_template = template
        self.processor.chat_template = template

    def save_processing(self, path: Path) -> None:
        self.processor.save_pretrained(str(path))

    def save_layout(self, path: Path) -> None:
        to_vllm_layout(path)

    def fold(self) -> None:
        fold_projector(self.model)

    @classmethod
    def build_tiny(cls, config: TinyConfig, tokenizer: Any) -> LlavaBackbone:
        """A random-init tiny LLaVA: a CLIP vision tower + a Llama, `tokenizer` trained here."""
        from transformers import (
            CLIPImageProcessorPil,
            CLIPVisionConfig,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        vision = CLIPVisionConfig(
            hidden_size=config.vision_hidden, intermediate_size=config.vision_hidden * 4,
            num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
            image_size=config.image_size, patch_size=config.patch_size, projection_dim=config.vision_hidden,
        )
        llava_cfg = LlavaConfig(
            vision_config=vision, text_config=LlamaConfig(**llama_kwargs(config, tokenizer)),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_select_strategy="default", vision_feature_layer=-1,
            projector_hidden_act="gelu", tie_word_embeddings=False,
        )
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            model = LlavaForConditionalGeneration(llava_cfg)
        if config.patch_init == "dct":
            dct_patch_init_(model.model.vision_tower.embeddings.patch_embedding.weight)
        if config.projector_norm:
            install_normalized_projector(model)
        mean = {} if config.image_mean is None else {"image_mean": [config.image_mean] * 3}
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": config.image_size},
            crop_size={"height": config.image_size, "width": config.image_size}, **mean,
        )
        processor = LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=config.patch_size,
            vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>",
            chat_template=tokenizer.chat_template,
        )
        return cls(model, processor)


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


def llama_kwargs(config: TinyConfig, tokenizer: Any) -> dict[str, Any]:
    """The tiny Llama-style LM of the LLaVA and Idefics3 families."""
    return dict(
        vocab_size=len(tokenizer), hidden_size=config.text_hidden, intermediate_size=config.text_hidden * 4,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_kv_heads, max_position_embeddings=config.max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )


def install_normalized_projector(llava: nn.Module) -> NormalizedProjector:
    """Swap a LlavaForConditionalGeneration's projector for a NormalizedProjector."""
    inner = llava.model
    proj = NormalizedProjector(inner.multi_modal_projector, float(text_embedding_rms(inner.language_model)))
    inner.multi_modal_projector = proj
    return proj


def fold_projector(llava: nn.Module) -> bool:
    """Replace a NormalizedProjector by the equivalent plain LLaVA projector, in place.

    Returns True when something was folded. Eval-mode outputs are unchanged.
    """
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    inner = llava.model
    proj = inner.multi_modal_projector
    if not isinstance(proj, NormalizedProjector):
        return False
    plain = LlavaMultiModalProjector(llava.config).to(proj.linear_1.weight.device,
                                                       proj.linear_1.weight.dtype)
    inner.multi_modal_projector = proj.folded(plain)
    return True


VISION_PREFIX = "vision_tower."
VLLM_VISION_PREFIX = "vision_tower.vision_model."


def to_vllm_layout(path: str | Path) -> None:
    """Rename `vision_tower.*` weight keys to `vision_tower.vision_model.*`.

    transformers 5 writes the former; vLLM's LLaVA loader expects the latter
    (the layout of the original llava-hf checkpoints), and transformers maps
    that layout back on load, so one directory serves both.
    """
    path = Path(path)
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        files = sorted(set(index["weight_map"].values()))
        index["weight_map"] = {_rename(k): v for k, v in index["weight_map"].items()}
    else:
        files = ["model.safetensors"]
        index = None
    for name in files:
        f = path / name
        tensors = load_file(str(f))
        renamed = {_rename(k): v.contiguous() for k, v in tensors.items()}
        if renamed.keys() != tensors.keys():
            save_file(renamed, str(f), metadata={"format": "pt"})
    if index is not None:
        index_file.write_text(json.dumps(index, indent=2))


def _rename(key: str) -> str:
    if key.startswith(VISION_PREFIX) and not key.startswith(VLLM_VISION_PREFIX):
        return VLLM_VISION_PREFIX + key[len(VISION_PREFIX) :]
    return key
