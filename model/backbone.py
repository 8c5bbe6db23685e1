"""Backbone seam: a multimodal LLM from Hugging Face behind one small interface.

Callers (slice embeddings, training, the generation engines, the server) use
`Backbone` only: `encode` turns rendered prompts into a batch whose every token
knows the slice it belongs to, `hidden_states` runs one forward pass, `save`
writes a directory that both transformers and vLLM load, and the part
accessors (`vision_modules`, `projector`, `decoder`, `lora_targets`)
name what training freezes, standardises or adapts.

A family (model/families/: LLaVA, Qwen2-VL, Idefics3/SmolVLM) is one subclass
registered (`register`) under the `model_type`s of its `config.json`; `model.families`
holds the registry's readers (`families`, `family_of`, `load_backbone`). It says how images
become model inputs and how many tokens each one takes (`process_images`:
the pixel inputs and each image's expansion text, which may depend on the
image's size), which extra inputs the LM needs (`extra_inputs`, e.g. Qwen2-VL's
M-RoPE token types), where its parts live, and how to build a tiny random
instance of itself. Nothing outside model/families/ names a family's
attributes; a family that passes tests/test_families.py is supported.
"""

from __future__ import annotations

import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .prompts import Prompt

logger = logging.getLogger(__name__)


@dataclass
class EncodedBatch:
    """Model inputs plus the slice each token belongs to.

    input_ids, attention_mask: [B, T]; pixel_values: the family's pixel tensor for
    every image of the batch in order (LLaVA [N_img, 3, H, W]) or None;
    token_slice: [B, T] long, index of the slice a token belongs to, -1 for
    prompt scaffolding and padding; slice_mask: [B, m] bool (real slices);
    slice_is_image: [B, m] bool; extra: the family's other model inputs
    (Qwen2-VL: image_grid_thw, mm_token_type_ids; Idefics3: pixel_attention_mask).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    token_slice: torch.Tensor
    slice_mask: torch.Tensor
    slice_is_image: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> EncodedBatch:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return EncodedBatch(
            mv(self.input_ids), mv(self.attention_mask), mv(self.pixel_values),  # type: ignore[arg-type]
            mv(self.token_slice), mv(self.slice_mask), mv(self.slice_is_image),  # type: ignore[arg-type]
            {k: v.to(device) for k, v in self.extra.items()},
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            out["pixel_values"] = self.pixel_values
        out.update(self.extra)
        return out


@dataclass
class ImageInputs:
    """What a family makes of a list of images: the model's pixel inputs (`pixel_values`
    first, then any others) and, per image, the text its placeholder expands into."""

    tensors: dict[str, torch.Tensor]
    expansions: list[str]


class Backbone(ABC):
    """A loaded multimodal LLM: model, tokenizer, image processor, and the family's rules."""

    family: ClassVar[str]  # the registry name (`--set family=...`)
    model_types: ClassVar[tuple[str, ...]]  # config.json model_type values it loads
    # LoRA's target modules inside `decoder()` (attention projections)
    lora_targets: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # tokens a tiny tokenizer of this family must carry (model/tiny.py)
    special_tokens: ClassVar[tuple[str, ...]] = ()
    # the placeholder one image takes in a prompt's text (PromptFormat.image_placeholder), and
    # the token the image features replace (the placeholder expands into runs of it)
    placeholder: ClassVar[str] = "<image>"
    image_pad: ClassVar[str] = "<image>"

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token = self.placeholder
        # a fast tokenizer keeps its padding/truncation state on the Rust object: two
        # threads tokenising at once can pad with each other's settings ("expected
        # sequence of length 13 ... got 18"); every tokenizer/processor call holds this
        self.lock = threading.RLock()
        self._expansions: dict[Any, str] = {}

    # ------------------------------------------------------------ family hooks
    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> Backbone: ...

    @abstractmethod
    def process_images(self, images: Sequence[Any]) -> ImageInputs:
        """The model inputs of `images` (in order) and each one's expansion text."""

    def image_key(self, image: Any) -> Any:
        """What an image's expansion depends on (its size for every family here)."""
        return image.size

    def extra_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inputs the LM needs beside the ids and pixels (computed from the ids)."""
        return {}

    @abstractmethod
    def image_features(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """What the LM is shown of each image (the projector's output): [tokens_i, d] each
        (`inputs`: `process_images`' tensors, on any device)."""

    @abstractmethod
    def vision_modules(self) -> list[nn.Module]:
        """The vision encoder and the projector (what the vision stage trains, stage 1 freezes)."""

    @abstractmethod
    def projector(self) -> nn.Module:
        """The module whose output is the image tokens the LM reads."""

    def projector_output(self) -> nn.Linear:
        """The projector's last linear layer (a fixed standardisation is folded into it)."""
        raise NotImplementedError(f"the {self.family} family has no foldable projector output layer")

    @abstractmethod
    def decoder(self) -> nn.Module:
        """The decoder that LoRA adapts (without its LM head)."""

    @abstractmethod
    def max_image_tokens(self) -> int:
        """The most tokens any one image can take (budgets before the image is seen)."""

    def save_layout(self, path: Path) -> None:  # noqa: B027 - optional hook, no-op by default
        """Rewrite the saved files into the layout vLLM loads (after save_pretrained)."""

    def fold(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Write training-only modules into the plain architecture (before saving)."""

    # ------------------------------------------------------------ generic
    @property
    def text_config(self) -> Any:
        return self.model.config.get_text_config()

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def max_positions(self) -> int:
        return self.text_config.max_position_embeddings

    @property
    def input_image_size(self) -> int:
        """The side of the vision encoder's input (0: no fixed size, e.g. Qwen2-VL's any-size
        patches): images rendered for evaluation are at least this large."""
        return int(getattr(self.model.config.vision_config, "image_size", 0) or 0)

    @property
    def eos_token(self) -> str:
        return self.tokenizer.eos_token

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_token_id(self) -> int:
        """The id of the token that the image features replace."""
        return int(self.model.config.image_token_id)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def expansion(self, image: Any) -> str:
        """The text one image's placeholder expands into (cached by `image_key`)."""
        key = self.image_key(image)
        if key not in self._expansions:
            with self.lock:
                self._expansions[key] = self.process_images([image]).expansions[0]
        return self._expansions[key]

    def image_token_count(self, image: Any = None) -> int:
        """Tokens one image takes after expansion; without an image, the most any can take."""
        if image is None:
            return self.max_image_tokens()
        with self.lock:
            return len(self.tokenizer(self.expansion(image), add_special_tokens=False)["input_ids"])

    def image_tokens(self, images: Sequence[Any]) -> torch.Tensor:
        """[images, tokens, d]: the projector's output for each image (images of one token count)."""
        with self.lock:
            inputs = self.process_images(list(images)).tensors
        feats = self.image_features(inputs)
        if len({f.shape[0] for f in feats}) > 1:
            raise ValueError("image_tokens needs images of one token count (resize them alike)")
        return torch.stack(feats)

    def text_embedding_rms(self) -> torch.Tensor:
        """The per-element RMS of the LM's input embedding table (the scale of a text token)."""
        return self.model.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt()

    def hidden_states(self, batch: EncodedBatch, layer: int = -1) -> torch.Tensor:
        """[B, T, d] hidden states of `layer` (an index into HF's hidden_states)."""
        out = self.model.model(**batch.model_inputs(), output_hidden_states=layer != -1)
        if layer == -1:
            return out.last_hidden_state
        return out.hidden_states[layer]

    def set_chat_template(self, template: str) -> None:
        """The chat template saved with the backbone (vLLM renders prompts with it)."""
        self.tokenizer.chat_template = template

    def keep_words_whole(self, words: Sequence[str], init: str = "mean") -> list[str]:
        """Make the (BPE) tokenizer encode each of `words` — one pre-tokenizer word each, with its
        leading space where it has one (" or") — as a single piece: the merges that join its
        pieces are appended after the learned ones (the lowest priority, so a word that was
        already one piece keeps its encoding), the pieces they make get new ids, and the LM's
        input and output embeddings grow by those rows, each the mean of the rows of the pieces
        it joins. `init="move"`: a word's whole piece takes its first piece's rows instead, and
        the first piece's rows become the mean of the table (for a first piece the model learned
        as that word: " o" read as "or"). Returns the new pieces (none when every word already
        was one piece)."""
        if init not in ("mean", "move"):
            raise ValueError(f"keep_words_whole: init must be mean or move, got {init!r}")
        from tokenizers import Tokenizer

        with self.lock:
            backend = self.tokenizer.backend_tokenizer
            spec = json.loads(backend.to_str())
            if spec["model"]["type"] != "BPE":
                raise ValueError(f"keep_words_whole needs a BPE tokenizer, this one is {spec['model']['type']}")
            vocab: dict[str, int] = spec["model"]["vocab"]
            merges: list = spec["model"]["merges"]
            as_pairs = not merges or isinstance(merges[0], list)
            known = {tuple(m) if as_pairs else tuple(m.split(" ")) for m in merges}
            next_id = max([*vocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
            joined: dict[int, list[int]] = {}  # new id -> the ids of the pieces it joins
            moved: dict[int, int] = {}  # a whole word's new id -> its first piece's id ("move")
            for word in words:
                if backend.pre_tokenizer is not None and len(backend.pre_tokenizer.pre_tokenize_str(word)) != 1:
                    raise ValueError(f"keep_words_whole: {word!r} is not one word to the tokenizer")
                pieces = backend.encode(word, add_special_tokens=False).tokens
                ids = [vocab[p] for p in pieces]
                current = pieces[0]
                for k, piece in enumerate(pieces[1:], start=1):
                    if (current, piece) not in known:
                        known.add((current, piece))
                        merges.append([current, piece] if as_pairs else f"{current} {piece}")
                    current += piece
                    if current not in vocab:
                        vocab[current] = next_id
                        joined[next_id] = ids[:k + 1]
                        next_id += 1
                if init == "move" and len(pieces) > 1 and joined.get(vocab[current]) == ids:
                    moved[vocab[current]] = ids[0]
            if not joined:
                return []
            self.tokenizer._tokenizer = Tokenizer.from_str(json.dumps(spec))
            for word in words:
                got = self.tokenizer.backend_tokenizer.encode(word, add_special_tokens=False).tokens
                if len(got) != 1:  # a merge of higher priority splits it another way
                    raise ValueError(f"keep_words_whole: {word!r} still encodes as {got}")
        rows = self.model.get_input_embeddings().weight.shape[0]
        if next_id > rows:
            self.model.resize_token_embeddings(next_id, mean_resizing=False)
        tables = [self.model.get_input_embeddings().weight]
        out = self.model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != tables[0].data_ptr():
            tables.append(out.weight)
        with torch.no_grad():
            for table in tables:
                neutral = table[:rows].mean(0)
                for new, parts in joined.items():
                    table[new] = table[parts].mean(0)
                for new, first in moved.items():
                    table[new] = table[first]
                    table[first] = neutral
        added = [p for p, i in vocab.items() if i in joined]
        logger.info("tokenizer: %d new pieces %s; embeddings %d -> %d rows", len(added), added, rows,
                    self.model.get_input_embeddings().weight.shape[0])
        return added

    # ------------------------------------------------------------ prompts -> tokens
    def _expand(self, prompt: Prompt, expansions: Sequence[str] | None = None) -> tuple[str, list[tuple[int, int]]]:
        """Expand each placeholder into its image's tokens, shifting the slice spans."""
        ph = self.image_token
        if prompt.text.count(ph) != len(prompt.images):
            raise ValueError(
                f"prompt has {prompt.text.count(ph)} image placeholders for {len(prompt.images)} images"
            )
        if expansions is None:
            expansions = [self.expansion(im) for im in prompt.images]
        pieces = prompt.text.split(ph)
        text = pieces[0]
        pos, grow = [], []  # each placeholder's place in the original text, and its growth
        cursor = len(pieces[0])
        for piece, exp in zip(pieces[1:], expansions, strict=True):
            pos.append(cursor)
            grow.append(len(exp) - len(ph))
            text += exp + piece
            cursor += len(ph) + len(piece)
        spans = []
        for a, b in prompt.spans:
            spans.append((a + sum(g for p, g in zip(pos, grow, strict=True) if p < a),
                          b + sum(g for p, g in zip(pos, grow, strict=True) if p < b)))
        return text, spans

    def prompt_length(self, prompt: Prompt) -> int:
        """Tokens `prompt` takes after image expansion (no padding)."""
        with self.lock:
            text = self._expand(prompt)[0]
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_text_tokens(self, text: str) -> int:
        """Tokens of plain text (no images, no special tokens): chunk budgets (index.ingest.chunking)."""
        with self.lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokenize(self, prompt: Prompt) -> tuple[list[int], list[int]]:
        """The prompt's token ids (images expanded) and where each token starts in `prompt.text`
        (the tokens of an image start at its placeholder): one tokenisation, from which the
        ids of any prompt that leaves out spans of this one are cut (`batch_from_ids`)."""
        with self.lock:
            expansions = [self.expansion(im) for im in prompt.images]
            text, _ = self._expand(prompt, expansions)
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ph = self.image_token
        # (start, end) of each expansion in the expanded text, and its placeholder's place
        blocks: list[tuple[int, int]] = []
        places: list[int] = []
        shift = 0
        for exp in expansions:
            place = prompt.text.index(ph, places[-1] + len(ph) if places else 0)
            places.append(place)
            blocks.append((place + shift, place + shift + len(exp)))
            shift += len(exp) - len(ph)
        starts, j = [], 0
        for a, _ in enc["offset_mapping"]:
            while j < len(blocks) and blocks[j][1] <= a:  # expansions wholly before this token
                j += 1
            if j < len(blocks) and a >= blocks[j][0]:
                starts.append(places[j])
            else:
                before = sum(b - s - len(ph) for s, b in blocks[:j])
                starts.append(a - before)
        return list(enc["input_ids"]), starts

    def _batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: Sequence[Any],
               inputs: ImageInputs | None = None, token_slice: torch.Tensor | None = None,
               slice_mask: torch.Tensor | None = None, slice_is_image: torch.Tensor | None = None) -> EncodedBatch:
        tensors = dict(inputs.tensors) if inputs is not None else {}
        pixel_values = tensors.pop("pixel_values", None)
        B = input_ids.shape[0]
        empty = torch.zeros(B, 1, dtype=torch.bool)
        return EncodedBatch(
            input_ids, attention_mask, pixel_values,
            token_slice if token_slice is not None else torch.full_like(input_ids, -1),
            slice_mask if slice_mask is not None else empty,
            slice_is_image if slice_is_image is not None else empty.clone(),
            {**tensors, **self.extra_inputs(input_ids)},
        )

    def batch_from_ids(self, ids: Sequence[int], images: Sequence[Any]) -> EncodedBatch:
        """A one-prompt batch for generation from token ids already cut (`tokenize`) and the
        images whose tokens they hold (their pixels processed here)."""
        inputs = None
        if images:
            with self.lock:
                inputs = self.process_images(list(images))
        input_ids = torch.tensor([list(ids)], dtype=torch.long)
        return self._batch(input_ids, torch.ones_like(input_ids), images, inputs)

    def encode(self, prompts: Sequence[Prompt], padding_side: str = "right") -> EncodedBatch:
        with self.lock:
            return self._encode(prompts, padding_side)

    def _encode(self, prompts: Sequence[Prompt], padding_side: str) -> EncodedBatch:
        images = [im for p in prompts for im in p.images]
        inputs = self.process_images(images) if images else None
        expansions = inputs.expansions if inputs is not None else []
        texts, spans, used = [], [], 0
        for p in prompts:
            t, s = self._expand(p, expansions[used : used + len(p.images)])
            used += len(p.images)
            texts.append(t)
            spans.append(s)
        tok = self.tokenizer(
            texts,
            padding=True,
            padding_side=padding_side,
            return_offsets_mapping=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
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
        return self._batch(tok["input_ids"], tok["attention_mask"], images, inputs, token_slice, slice_mask,
                           slice_is_image)

    # ------------------------------------------------------------ decoding, saving
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

    def save(self, path: str | Path) -> None:
        """A plain Hugging Face directory of the family (training-only modules folded first,
        in place: eval outputs unchanged): weights, tokenizer, image processor, chat template,
        in the layout vLLM loads."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.fold()
        self.model.save_pretrained(str(path))
        self.save_processing(path)
        self.save_layout(path)

    def save_processing(self, path: Path) -> None:
        """Tokenizer and image processor (a family with a processor object saves that)."""
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(str(path))
        if self.tokenizer.chat_template:
            (path / "chat_template.jinja").write_text(self.tokenizer.chat_template)


# model_type -> family class (filled by model/families/ as its modules are imported)
_REGISTRY: dict[str, type[Backbone]] = {}


def register(cls: type[Backbone]) -> type[Backbone]:
    """Class decorator: a family, loaded for each of its `model_types`."""
    for model_type in cls.model_types:
        _REGISTRY[model_type] = cls
    return cls


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
