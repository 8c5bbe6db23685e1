"""SugarModel: one checkpoint that embeds interleaved samples and generates.

Checkpoint layout (ARCHITECTURE.md):

    CKPT/backbone/          pure Hugging Face model directory (transformers and vLLM load it)
    CKPT/heads.safetensors  the projector heads (+ normalisation statistics)
    CKPT/sugar_config.json  SugarConfig (embedding dim, pooling, layer, σ, γ, prompts, versions)
    CKPT/training.json      data, steps, seed, metrics, code version

`embedding_version` is a content hash of everything that decides the vectors
(backbone and head weights, pooling, layer, prompts): it changes exactly when
the vectors would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .backbone import Backbone, EncodedBatch
from .config import SugarConfig
from .families import load_backbone
from .heads import SliceHeads, pool_slices, summary_vector
from .prompts import embedding_prompt
from .sample import Sample

logger = logging.getLogger(__name__)

# the checkpoint shipped inside the package (trained by `sugar train --preset shipped`)
DEFAULT_CHECKPOINT = Path(__file__).parent / "default_checkpoint"

BACKBONE_DIR = "backbone"
HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "sugar_config.json"
TRAINING_FILE = "training.json"


def rebuild_commands(checkpoint: Path = DEFAULT_CHECKPOINT) -> list[str]:
    """The runs that made `checkpoint`, in order, as its training.json `history` records them
    (DIR: the checkpoint being built; a warm start writes DIR2, which then becomes DIR)."""
    path = checkpoint / TRAINING_FILE
    try:
        history = json.loads(path.read_text()).get("history") or []
    except (OSError, ValueError) as e:
        return [f"(the recipe is recorded in {path}, which cannot be read: {e}; git checkout it)"]
    return [run["command"] for run in history]


class CheckpointError(Exception):
    """A checkpoint file is missing or corrupt; `path` names the file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass
class SliceEmbeddings:
    """slices: [B, m, D] (zeros where mask is False); mask, is_image: [B, m]; summary: [B, D]."""

    slices: torch.Tensor
    mask: torch.Tensor
    is_image: torch.Tensor
    summary: torch.Tensor

    def __len__(self) -> int:
        return self.slices.shape[0]

    def item(self, b: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(slice vectors [m_b, D], summary [D], modalities) of sample b."""
        n = int(self.mask[b].sum())
        mods = ["image" if f else "text" for f in self.is_image[b, :n].tolist()]
        return self.slices[b, :n], self.summary[b], mods


class SugarModel(nn.Module):
    def __init__(self, backbone: Backbone, config: SugarConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.vlm = backbone.model  # the HF model, registered as a submodule (parameters, .train(), .to())
        self.config = config
        self.heads = SliceHeads(backbone.hidden_size, config.embed_dim, config.head_norm)

    # ------------------------------------------------------------ embedding
    def encode(self, samples: Sequence[Sample]) -> EncodedBatch:
        prompts = [embedding_prompt(s, self.config.prompts) for s in samples]
        return self.backbone.encode(prompts, padding_side="right")

    def embed_batch(self, batch: EncodedBatch) -> SliceEmbeddings:
        """Differentiable: one forward pass, pooled per slice, projected, normalised."""
        return self.embed_batches([batch])

    def embed_batches(self, batches: Sequence[EncodedBatch]) -> SliceEmbeddings:
        """Like `embed_batch` over the rows of all `batches` in order, each batch padded
        only to its own longest prompt (e.g. short queries apart from long documents):
        one forward pass per batch, one pass of the heads over every slice (so a batch
        normalisation before the heads sees them all)."""
        batches = [b.to(self.backbone.device) for b in batches]
        hidden = [self.backbone.hidden_states(b, self.config.hidden_layer) for b in batches]
        return self.embed_hidden_states(hidden, batches)

    def embed_hidden_states(self, hidden: Sequence[torch.Tensor], batches: Sequence[EncodedBatch]) -> SliceEmbeddings:
        """Slice pooling and the heads on hidden states computed elsewhere ([B, T, d] per batch:
        this process's forward pass, or a vLLM pooling runner's per-token states)."""
        pooled, masks, images = [], [], []
        for h, batch in zip(hidden, batches, strict=True):
            m = batch.slice_mask.shape[1]
            pooled.append(pool_slices(h, batch.token_slice.to(h.device), m, self.config.pooling).float())
            masks.append(batch.slice_mask.to(h.device))
            images.append(batch.slice_is_image.to(h.device))
        m = max(p.shape[1] for p in pooled)
        pooled_all, mask, is_image = (torch.cat([_pad_slices(t, m) for t in ts]) for ts in (pooled, masks, images))
        slices = self.heads(pooled_all, mask, is_image)
        return SliceEmbeddings(slices=slices, mask=mask, is_image=is_image, summary=summary_vector(slices, mask))

    @torch.no_grad()
    def embed(self, samples: Sequence[Sample], batch_size: int = 32) -> SliceEmbeddings:
        """Inference: batches of `batch_size`, padded to the longest sample overall."""
        was_training = self.training
        self.eval()
        try:
            parts = [
                self.embed_batch(self.encode(samples[i : i + batch_size]))
                for i in range(0, len(samples), batch_size)
            ]
        finally:
            self.train(was_training)
        return concat_embeddings(parts)

    def similarity(self, q: SliceEmbeddings, d: SliceEmbeddings,
                   normalization: str | None = None) -> torch.Tensor:
        """[Bq, Bd] ranking similarity: GA kernel + the configured length normalisation
        (`normalization` overrides it, e.g. "none" for raw s)."""
        k = self.config.kernel
        if normalization is not None:
            k = dataclasses.replace(k, normalization=normalization)
        return k.similarity(q.slices, d.slices, q.mask, d.mask)

    # ------------------------------------------------------------ checkpoint I/O
    def compute_embedding_version(self) -> str:
        h = hashlib.sha256()
        c = self.config
        h.update(
            json.dumps(
                [c.embed_dim, c.pooling, c.hidden_layer, c.head_norm, c.prompts.embedding_fields()],
                sort_keys=True,
            ).encode()
        )
        for module in (self.vlm, self.heads):
            for name, t in sorted(module.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def save_pretrained(self, path: str | Path, training: dict[str, Any] | None = None,
                        dtype: torch.dtype | None = None) -> None:
        """Write the checkpoint directory. `dtype` (e.g. torch.float16): store the
        backbone weights in that precision (a compact checkpoint to ship); the
        in-memory model is rounded to it first, so the embedding version and every
        vector describe the weights as stored (loading casts them back to float32)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.fold()  # the version hashes the weights as saved
        if dtype is not None:
            with torch.no_grad():
                for p in self.vlm.parameters():
                    p.copy_(p.to(dtype).to(p.dtype))
        self.config.embedding_version = self.compute_embedding_version()
        if dtype is None:
            self.backbone.save(path / BACKBONE_DIR)
        else:
            orig = next(self.vlm.parameters()).dtype
            self.vlm.to(dtype)
            try:
                self.backbone.save(path / BACKBONE_DIR)
            finally:
                self.vlm.to(orig)
        heads = {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}
        save_file(heads, str(path / HEADS_FILE), metadata={"format": "pt"})
        self.config.save(path / CONFIG_FILE)
        (path / TRAINING_FILE).write_text(json.dumps(training or {}, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> SugarModel:
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(path, "checkpoint directory not found")
        config = read_sugar_config(path)
        bdir = path / BACKBONE_DIR
        if not bdir.is_dir():
            raise CheckpointError(bdir, "missing backbone directory")
        for f in sorted(bdir.glob("*.safetensors")) + [path / HEADS_FILE]:
            check_safetensors(f)
        try:
            backbone = load_backbone(bdir, dtype=dtype, device=device)
        except (OSError, ValueError) as e:
            raise CheckpointError(bdir, f"cannot load backbone ({e})") from e
        model = cls(backbone, config)
        heads = load_file(str(path / HEADS_FILE))
        try:
            model.heads.load_state_dict(heads)
        except RuntimeError as e:
            raise CheckpointError(path / HEADS_FILE, f"does not match the config ({e})") from None
        model.heads.to(device)
        model.eval()
        return model

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # training states saved before the families (model/families/) named the HF model `llava`
        old = prefix + "llava."
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[prefix + "vlm." + key[len(old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def embedding_version(self) -> str:
        return self.config.embedding_version

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim


def abstain_token(backbone: Backbone) -> int:
    """The first token of the abstention answer as a generation target writes it."""
    from .prompts import ABSTAIN_ANSWER, answer_text

    with backbone.lock:
        return int(backbone.tokenizer(answer_text(ABSTAIN_ANSWER, ""), add_special_tokens=False)["input_ids"][0])


def abstain_margin(logits: torch.Tensor, token: int) -> torch.Tensor:
    """[B] the next-token log-probability of `token` minus the best other token's ([B, V] logits)."""
    lp = torch.log_softmax(logits.float(), -1)
    other = lp.clone()
    other[:, token] = float("-inf")
    return lp[:, token] - other.max(-1).values


def check_checkpoint(path: str | Path) -> SugarConfig:
    """Every file a checkpoint needs is there and intact (no weights are loaded);
    raises CheckpointError naming the first file that is missing or corrupt."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(path, "checkpoint directory not found")
    config = read_sugar_config(path)
    bdir = path / BACKBONE_DIR
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if not (bdir / name).is_file():
            raise CheckpointError(bdir / name, "missing")
    weights = sorted(bdir.glob("*.safetensors"))
    if not weights:
        raise CheckpointError(bdir / "model.safetensors", "missing")
    for f in [*weights, path / HEADS_FILE]:
        check_safetensors(f)
    return config


def read_sugar_config(path: Path) -> SugarConfig:
    f = path / CONFIG_FILE
    if not f.is_file():
        raise CheckpointError(f, "missing")
    try:
        return SugarConfig.from_dict(json.loads(f.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f, f"corrupt JSON ({e})") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f, f"invalid ({e})") from None


def read_training_info(path: str | Path) -> dict[str, Any]:
    f = Path(path) / TRAINING_FILE
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f, f"corrupt JSON ({e})") from None


def check_safetensors(f: Path) -> None:
    if not f.is_file():
        raise CheckpointError(f, "missing")
    try:
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():  # noqa: SIM118 - safe_open has no iterator
                fh.get_slice(k)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f, f"corrupt safetensors file ({e})") from None
    size = f.stat().st_size
    with open(f, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        raise CheckpointError(f, f"truncated or padded: {size} bytes, expected {8 + header_len + end}")


def _pad_slices(t: torch.Tensor, m: int) -> torch.Tensor:
    """[B, m0, ...] -> [B, m, ...], zeros (False) in the new slice positions."""
    extra = m - t.shape[1]
    if extra == 0:
        return t
    return torch.cat([t, t.new_zeros((t.shape[0], extra, *t.shape[2:]))], 1)


def concat_embeddings(parts: Sequence[SliceEmbeddings]) -> SliceEmbeddings:
    m = max(p.slices.shape[1] for p in parts)
    return SliceEmbeddings(
        slices=torch.cat([_pad_slices(p.slices, m) for p in parts]),
        mask=torch.cat([_pad_slices(p.mask, m) for p in parts]),
        is_image=torch.cat([_pad_slices(p.is_image, m) for p in parts]),
        summary=torch.cat([p.summary for p in parts]),
    )


def build_tiny_model(config: SugarConfig | None = None, tiny: Any = None, corpus=()) -> SugarModel:
    """A random-init tiny SugarModel of `tiny.family` (tests, smoke runs, the start of `sugar
    train`); the prompt format's image placeholder becomes the family's."""
    from .config import TinyConfig
    from .tiny import build_tiny

    config = with_family_prompts(config or SugarConfig(), (tiny or TinyConfig()).family)
    backbone = build_tiny(tiny, corpus=corpus, fmt=config.prompts)
    with torch.random.fork_rng():
        torch.manual_seed(getattr(tiny, "seed", 0))
        model = SugarModel(backbone, config)
    model.eval()
    return model


def with_family_prompts(config: SugarConfig, family: str) -> SugarConfig:
    """`config` with the image placeholder of `family` (model/families/)."""
    from .families import families

    known = families()
    if family not in known:
        raise ValueError(f"unknown model family {family!r} (registered: {sorted(known)})")
    placeholder = known[family].placeholder
    if config.prompts.image_placeholder == placeholder:
        return config
    return config.replace(prompts=dataclasses.replace(config.prompts, image_placeholder=placeholder))
