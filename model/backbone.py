"""Backbone seam: a multimodal LLM from Hugging Face behind one small interface.

Callers (slice embeddings, training, the generation engine) use `Backbone`
only: `encode` turns rendered prompts into a batch whose every token knows the
slice it belongs to, `hidden_states` runs one forward pass, `save` writes a
directory that both transformers and vLLM load. A family (LLaVA today;
LLaVA-NeXT or Qwen2-VL tomorrow) is one subclass registered under its
`config.model_type`; nothing else changes.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from .projector import fold_projector, text_embedding_rms
from .prompts import Prompt

logger = logging.getLogger(__name__)


@dataclass
class EncodedBatch:
    """Model inputs plus the slice each token belongs to.

    input_ids, attention_mask: [B, T]; pixel_values: [N_img, 3, H, W] or None;
    token_slice: [B, T] long, index of the slice a token belongs to, -1 for
    prompt scaffolding and padding; slice_mask: [B, m] bool (real slices);
    slice_is_image: [B, m] bool.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    token_slice: torch.Tensor
    slice_mask: torch.Tensor
    slice_is_image: torch.Tensor

    def to(self, device: torch.device | str) -> EncodedBatch:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return EncodedBatch(
            mv(self.input_ids), mv(self.attention_mask), mv(self.pixel_values),  # type: ignore[arg-type]
            mv(self.token_slice), mv(self.slice_mask), mv(self.slice_is_image),  # type: ignore[arg-type]
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            out["pixel_values"] = self.pixel_values
        return out


class Backbone(ABC):
    """A loaded multimodal LLM: model, tokenizer, image processor."""

    family: ClassVar[str]
    image_token: str  # the placeholder one image takes in a prompt's text
    model: Any
    tokenizer: Any
    processor: Any
    lock: threading.RLock  # held around every tokenizer/processor call (thread safety)

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def max_positions(self) -> int: ...

    @abstractmethod
    def image_token_count(self, image: Any = None) -> int:
        """How many tokens one image placeholder expands into."""

    @abstractmethod
    def encode(self, prompts: Sequence[Prompt], padding_side: str = "right") -> EncodedBatch: ...

    def prompt_length(self, prompt: Prompt) -> int:
        """Tokens `prompt` takes after image expansion (no padding)."""
        text = self._expand(prompt)[0]
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @abstractmethod
    def _expand(self, prompt: Prompt) -> tuple[str, list[tuple[int, int]]]: ...

    @abstractmethod
    def tokenize(self, prompt: Prompt) -> tuple[list[int], list[int]]:
        """Token ids (images expanded) and each token's start in `prompt.text`."""

    @abstractmethod
    def batch_from_ids(self, ids: Sequence[int], images: Sequence[Any]) -> EncodedBatch:
        """A one-prompt generation batch from token ids and their images."""

    def image_tokens(self, images: Sequence[Any]) -> torch.Tensor:
        """[images, tokens, d]: what the LM is shown of each image (the projector's output)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its image tokens")

    def text_embedding_rms(self) -> torch.Tensor:
        """The per-element RMS of the LM's input embedding table (the scale of a text token)."""
        return text_embedding_rms(self.model)

    def hidden_states(self, batch: EncodedBatch, layer: int = -1) -> torch.Tensor:
        """[B, T, d] hidden states of `layer` (an index into HF's hidden_states)."""
        out = self.model.model(**batch.model_inputs(), output_hidden_states=layer != -1)
        if layer == -1:
            return out.last_hidden_state
        return out.hidden_states[layer]

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int = 16, temperature: float = 0.0,
        **kwargs: Any,
    ) -> list[str]:
        """Decode a batch of rendered prompts (left padding, KV cache); greedy at temperature 0."""
        batch = self.encode(prompts, padding_side="left").to(self.device)
        sampling = temperature > 0
        out = self.model.generate(
            **batch.model_inputs(),
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=None,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **kwargs,
        )
        new = out[:, batch.input_ids.shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    @abstractmethod
    def save(self, path: str | Path) -> None: ...

    def fold(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Write training-only modules into the plain architecture (before saving)."""

    @property
    def eos_token(self) -> str:
        return self.tokenizer.eos_token

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


_REGISTRY: dict[str, type[Backbone]] = {}


def register(model_type: str):
    def deco(cls: type[Backbone]) -> type[Backbone]:
        _REGISTRY[model_type] = cls
        return cls

    return deco


def load_backbone(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Backbone:
    """Load any registered family from a Hugging Face model directory."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: missing (not a Hugging Face model directory)")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: corrupt JSON ({e})") from None
    cls = _REGISTRY.get(model_type)
    if cls is None:
        raise ValueError(
            f"{cfg_file}: model_type {model_type!r} is not supported (supported: {sorted(_REGISTRY)})"
        )
    return cls.from_pretrained(path, dtype=dtype, device=device)  # type: ignore[attr-defined]


def assign_tokens_to_slices(
    offsets: torch.Tensor, spans: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """token -> slice index by character offsets; -1 outside every slice.

    A token belongs to the slice holding its last character: byte-level BPE
    glues a word to the space before it (" red"), and that space may be the
    prompt's own (the user prefix). offsets: [T, 2] token char ranges; spans:
    [m, 2] slice char ranges, sorted and disjoint; valid: [T] bool (False for
    padding).
    """
    last = (offsets[:, 1] - 1).contiguous()
    if spans.numel() == 0:
        return torch.full_like(last, -1)
    k = torch.searchsorted(spans[:, 0].contiguous(), last, right=True) - 1  # [T]
    kc = k.clamp_min(0)
    inside = (k >= 0) & (last < spans[kc, 1]) & (offsets[:, 1] > offsets[:, 0]) & valid
    return torch.where(inside, k, torch.full_like(k, -1))


@register("llava")
class LlavaBackbone(Backbone):
    """LlavaForConditionalGeneration + LlavaProcessor (fixed tokens per image)."""

    family = "llava"

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token = processor.image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self._tokens_per_image = self._count_image_tokens()
        # a fast tokenizer keeps its padding/truncation state on the Rust object: two
        # threads tokenising at once can pad with each other's settings ("expected
        # sequence of length 13 ... got 18"); every tokenizer/processor call holds this
        self.lock = threading.RLock()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> LlavaBackbone:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
        model.to(device).eval()
        processor = AutoProcessor.from_pretrained(str(path))
        return cls(model, processor)

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
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def max_positions(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    def image_token_count(self, image: Any = None) -> int:
        return self._tokens_per_image

    def image_tokens(self, images: Sequence[Any]) -> torch.Tensor:
        pv = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        feats = self.model.get_image_features(pixel_values=pv.to(self.device, self.model.dtype))
        return torch.stack(list(feats.pooler_output))

    def _expand(self, prompt: Prompt) -> tuple[str, list[tuple[int, int]]]:
        """Expand each placeholder into the image tokens, shifting the slice spans."""
        ph = self.image_token
        if prompt.text.count(ph) != len(prompt.images):
            raise ValueError(
                f"prompt has {prompt.text.count(ph)} image placeholders for {len(prompt.images)} images"
            )
        expanded = ph * self._tokens_per_image
        grow = len(expanded) - len(ph)
        pieces = prompt.text.split(ph)
        text = expanded.join(pieces)
        # character position of each placeholder in the original text
        pos, cursor = [], 0
        for piece in pieces[:-1]:
            cursor += len(piece)
            pos.append(cursor)
            cursor += len(ph)
        spans = []
        for a, b in prompt.spans:
            shift_a = sum(grow for p in pos if p < a)
            shift_b = sum(grow for p in pos if p < b)
            spans.append((a + shift_a, b + shift_b))
        return text, spans

    def encode(self, prompts: Sequence[Prompt], padding_side: str = "right") -> EncodedBatch:
        with self.lock:
            return self._encode(prompts, padding_side)

    def prompt_length(self, prompt: Prompt) -> int:
        with self.lock:
            return super().prompt_length(prompt)

    def tokenize(self, prompt: Prompt) -> tuple[list[int], list[int]]:
        """The prompt's token ids (images expanded) and where each token starts in `prompt.text`
        (the tokens of an image start at its placeholder): one tokenisation, from which the
        ids of any prompt that leaves out spans of this one are cut (`batch_from_ids`)."""
        with self.lock:
            text, _ = self._expand(prompt)
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ph, grow = self.image_token, len(self.image_token) * (self._tokens_per_image - 1)
        places = [m.start() for m in re.finditer(re.escape(ph), prompt.text)]
        starts, j = [], 0
        for a, _ in enc["offset_mapping"]:
            # placeholders whose whole expansion lies before this token
            while j < len(places) and places[j] + j * grow + len(ph) + grow <= a:
                j += 1
            inside = j < len(places) and a >= places[j] + j * grow
            starts.append(places[j] if inside else a - j * grow)
        return list(enc["input_ids"]), starts

    def batch_from_ids(self, ids: Sequence[int], images: Sequence[Any]) -> EncodedBatch:
        """A one-prompt batch for generation from token ids already cut (`tokenize`) and the
        images whose tokens they hold (their pixels processed here)."""
        pixel_values = None
        if images:
            pixel_values = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        input_ids = torch.tensor([list(ids)], dtype=torch.long)
        return EncodedBatch(input_ids, torch.ones_like(input_ids), pixel_values,
                            torch.full_like(input_ids, -1), torch.zeros(1, 1, dtype=torch.bool),
                            torch.zeros(1, 1, dtype=torch.bool))

    def count_text_tokens(self, text: str) -> int:
        """Tokens of plain text (no images, no special tokens): chunk budgets (index.ingest.chunking)."""
        with self.lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode(self, prompts: Sequence[Prompt], padding_side: str) -> EncodedBatch:
        texts, spans = zip(*(self._expand(p) for p in prompts), strict=True)
        tok = self.tokenizer(
            list(texts),
            padding=True,
            padding_side=padding_side,
            return_offsets_mapping=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
        images = [im for p in prompts for im in p.images]
        pixel_values = None
        if images:
            pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        m = max((len(p.spans) for p in prompts), default=0)
        B, T = tok["input_ids"].shape
        token_slice = torch.full((B, T), -1, dtype=torch.long)
        slice_mask = torch.zeros(B, max(m, 1), dtype=torch.bool)
        slice_is_image = torch.zeros(B, max(m, 1), dtype=torch.bool)
        for b, p in enumerate(prompts):
            sp = torch.tensor(spans[b], dtype=torch.long).reshape(-1, 2)
            token_slice[b] = assign_tokens_to_slices(
                tok["offset_mapping"][b], sp, tok["attention_mask"][b].bool()
            )
            slice_mask[b, : len(p.spans)] = True
            slice_is_image[b, : len(p.modalities)] = torch.tensor(
                [mod == "image" for mod in p.modalities], dtype=torch.bool
            )
        counts = torch.zeros(B, max(m, 1), dtype=torch.long).scatter_add_(
            1, token_slice.clamp_min(0), (token_slice >= 0).long()
        )
        empty = slice_mask & (counts == 0)
        if empty.any():
            b, k = (int(v) for v in empty.nonzero()[0])
            raise ValueError(f"slice {k} of prompt {b} has no tokens")
        return EncodedBatch(
            input_ids=tok["input_ids"],
            attention_mask=tok["attention_mask"],
            pixel_values=pixel_values,
            token_slice=token_slice,
            slice_mask=slice_mask,
            slice_is_image=slice_is_image,
        )

    def fold(self) -> None:
        fold_projector(self.model)

    def save(self, path: str | Path) -> None:
        """A plain LLaVA directory; a training-time NormalizedProjector is folded
        into the projector's linear layers first (in place: eval outputs unchanged)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.fold()
        self.model.save_pretrained(str(path))
        self.processor.save_pretrained(str(path))
        to_vllm_layout(path)


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
