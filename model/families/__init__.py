"""Model families: one file per Hugging Face architecture, each a `Backbone` subclass
(model/backbone.py) registered under its config.json `model_type`s, each buildable as a tiny
random instance (`build_tiny`: model/tiny.py trains the tokenizer) for tests and for training
here from scratch.

| family | model_type | what differs |
|---|---|---|
| `llava` | llava | fixed tokens per image; the vLLM key layout; the normalised projector's fold |
| `qwen2_vl`, `qwen2_5_vl` | qwen2_vl, qwen2_5_vl | tokens per image follow its size; `image_grid_thw`; M-RoPE |
| `idefics3` | idefics3 (SmolVLM v1) | image splitting into tiles + a global tile; `pixel_attention_mask` |

Nothing outside this package names a family's module attributes: training and serving reach
the parts through `Backbone.vision_modules()`, `projector()`, `projector_output()`, `decoder()`
and `lora_targets`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..backbone import _REGISTRY, Backbone
from . import idefics3, llava, qwen2_vl


def families() -> dict[str, type[Backbone]]:
    """Every registered family by its name (importing model.families registers them)."""
    return {cls.family: cls for cls in _REGISTRY.values()}


def _config_file(path: str | Path) -> Path:
    """config.json of a local Hugging Face directory, or of a hub id ("org/name": fetched into
    the Hugging Face cache, where the machine may reach the hub)."""
    local = Path(path) / "config.json"
    if local.is_file() or Path(path).exists() or str(path).count("/") != 1 or str(path).startswith((".", "/")):
        if not local.is_file():
            raise FileNotFoundError(f"{local}: missing (not a Hugging Face model directory)")
        return local
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(path), "config.json"))
    except Exception as e:  # offline, unknown repo, gated: say which and why
        raise FileNotFoundError(f"{path}: not a local directory, and its config.json could not be fetched "
                                f"from the hub ({type(e).__name__}); download the model and pass its "
                                "directory") from None


def family_of(path: str | Path) -> type[Backbone]:
    """The family that loads the Hugging Face directory (or hub id) `path`, by its config.json."""
    cfg_file = _config_file(path)
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: corrupt JSON ({e})") from None
    cls = _REGISTRY.get(model_type)
    if cls is None:
        raise ValueError(
            f"{cfg_file}: model_type {model_type!r} is not supported (supported: {sorted(_REGISTRY)})"
        )
    return cls


def load_backbone(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Backbone:
    """Load any registered family from a Hugging Face model directory."""
    return family_of(path).from_pretrained(path, dtype=dtype, device=device)


__all__ = ["families", "family_of", "idefics3", "llava", "load_backbone", "qwen2_vl"]
