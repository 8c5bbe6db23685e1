"""Stage 0 of the staged recipe: a vision side whose tokens the LM can read.

Why (issue #20, measured with `scripts/vqa_probe.py`): a random-init LM learns
to read a clean code from its image positions in tens of steps, even from one
position of sixteen, and it also reads a code carried by *every* token under
per-sample noise three times its size; it never leaves its constant answer when
the attribute sits on a few tokens and every token carries that noise — what a
random-init vision tower produces. LLaVA-family models are built in this order
for that reason: a pre-trained vision encoder first, the LM taught to read it
second, everything together last.

Our tiny tower has no pre-training to inherit (no CLIP-like model ships
offline), so stage 0 gives it one, weakly supervised by captions (in the
manner of "learning visual features from large weakly supervised data":
predict the words of an image's caption from the image):

    every projector output token y_t (and their mean) → Linear → softmax
    ≈ the caption's tokens, uniformly (cross-entropy against that distribution)

Every token has to say what the caption says about the whole image, so the
answer to a question is present on all image positions — the case the LM
reads at once. Only the vision tower, the projector and a throw-away read-out
train; the LM is untouched. `standardize_projector` then folds a fixed
per-feature standardisation of the projector's output (scaled to the text
embeddings' RMS) into `linear_2`: the checkpoint stays a plain LLaVA.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

logger = logging.getLogger(__name__)


def vision_parameters(backbone) -> list[nn.Parameter]:
    """The vision encoder's and the projector's parameters (`Backbone.vision_modules`)."""
    seen: set[int] = set()
    out = []
    for module in backbone.vision_modules():
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def set_vision_trainable(backbone, trainable: bool) -> None:
    for p in vision_parameters(backbone):
        p.requires_grad_(trainable)


def caption_targets(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """[N, V] multi-hot: which token ids each caption holds (special tokens excluded)."""
    vocab = len(tokenizer)
    out = torch.zeros(len(captions), vocab)
    ids = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    for i, row in enumerate(ids):
        out[i, row] = 1.0
    return out


class CaptionWordsObjective(nn.Module):
    """{"vision_loss"}: every image token, and their mean, predicts the caption's tokens."""

    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.readout = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        # tokens: [N, t, d] projector outputs; targets: [N, V] multi-hot
        dist = targets / targets.sum(1, keepdim=True).clamp_min(1.0)  # the caption's words, uniform
        per_token = F.log_softmax(self.readout(self.norm(tokens)), -1)  # [N, t, V]
        pooled = F.log_softmax(self.readout(self.norm(tokens.mean(1))), -1)  # [N, V]
        loss = -(per_token * dist[:, None, :]).sum(-1).mean() - (pooled * dist).sum(-1).mean()
        return {"vision_loss": loss}


def train_vision(backbone, draw: Callable[[int], list[tuple[Image.Image, str]]], steps: int,
                 lr: float = 2e-3, batch: int = 32, log_every: int = 50) -> list[dict]:
    """Stage 0: `steps` steps of the caption-words objective; `draw(step)` gives
    `batch` (image, caption) pairs. Returns the logged rows (step, vision_loss)."""
    vlm = backbone.model
    objective = CaptionWordsObjective(backbone.hidden_size, len(backbone.tokenizer))
    params = vision_parameters(backbone)
    opt = torch.optim.AdamW([*params, *objective.parameters()], lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    was = vlm.training
    vlm.train()
    rows = []
    for step in range(steps):
        pairs = draw(step)
        images, captions = zip(*pairs, strict=True)
        with backbone.lock:
            targets = caption_targets(backbone.tokenizer, captions)
        loss = objective(backbone.image_tokens(images), targets)["vision_loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            rows.append({"step": step + 1, "vision_loss": round(loss.item(), 4)})
            logger.info("vision stage step %d/%d vision_loss %.4f", step + 1, steps, loss.item())
    vlm.train(was)
    return rows


@torch.no_grad()
def standardize_projector(backbone, images: Sequence[Image.Image], per_feature: bool = False,
                          scale: float = 1.0, eps: float = 1e-8) -> dict:
    """Fold `(y - μ) / σ · τ` into the projector's last linear layer.

    μ: the mean projector output over every token of `images` (the vector all
    image tokens share); σ: their RMS around it, one number (`per_feature`:
    one per feature, which also lifts near-constant features to full size);
    τ: the RMS of the LM's text embedding table, times `scale`. A fixed affine map folded into
    `Backbone.projector_output()`, so the checkpoint stays a plain model of its family; valid while
    the vision side stays frozen (or moves slowly). Returns the RMS ratio (image tokens / text) before and after.
    """
    vlm = backbone.model
    out_layer = backbone.projector_output()  # the projector's last linear layer
    if out_layer.bias is None:
        raise ValueError(f"standardize_projector: the {backbone.family} family's projector output layer has no "
                         "bias to fold the centring into (use standardize_projector none)")
    was = vlm.training
    vlm.eval()
    text = float(backbone.text_embedding_rms())
    tau = text * scale
    y = backbone.image_tokens(images).reshape(-1, out_layer.out_features).float()
    before = float(y.pow(2).mean().sqrt()) / text
    mu = y.mean(0)
    sd = (y.std(0) if per_feature else (y - mu).pow(2).mean().sqrt().expand_as(mu)) + eps
    scale = tau / sd
    out_layer.weight.mul_(scale[:, None].to(out_layer.weight.dtype))
    out_layer.bias.copy_(((out_layer.bias - mu) * scale).to(out_layer.bias.dtype))
    y2 = backbone.image_tokens(images).reshape(-1, out_layer.out_features).float()
    after = float(y2.pow(2).mean().sqrt()) / text
    vlm.train(was)
    return {"norm_ratio_before": round(before, 3), "norm_ratio_after": round(after, 3)}
