"""Model families: one file per Hugging Face architecture, each a `Backbone` subclass
(model/backbone.py) registered under its config.json `model_type`s, each buildable as a tiny
random instance (`build_tiny`: model/tiny.py trains the tokenizer) for tests and for training
here from scratch.

| family | model_type | what differs |
|---|---|---|
| `llava` | llava | fixed tokens per image; the vLLM key layout; the normalised projector's fold |
| `qwen2_vl`, `qwen2_5_vl` | qwen2_vl, qwen2_5_vl | tokens per image follow its size; `image_grid_thw`; M-RoPE token types |
| `idefics3` | idefics3 (SmolVLM v1) | image splitting into tiles + a global tile; `pixel_attention_mask` |

Nothing outside this package names a family's module attributes: training and serving reach
the parts through `Backbone.vision_modules()`, `projector()`, `projector_output()`, `decoder()`
and `lora_targets`.
"""

from . import idefics3, llava, qwen2_vl

__all__ = ["idefics3", "llava", "qwen2_vl"]
