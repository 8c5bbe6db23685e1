"""A LLaVA projector whose input and output are standardised, folded away at save time
(installed and folded by model/families/llava.py).

Why (issue #10, measured on the tiny preset): trained from random init, the
vision tower's residual stream grows a direction shared by every token (norm
~12 after the patch embedding, 140-250 at the last layer) and the plain
projector maps it to image tokens of norm 290-1,390 against ~0.4 for text
embeddings, with cosine 0.9995+ between any two image tokens. After the LM's
first RMSNorm every image is then the same vector and the LM answers from the
question's prior. A per-token LayerNorm changes no cosine; the shared
direction has to go.

`NormalizedProjector` keeps LLaVA's `linear_1 -> act -> linear_2` and adds two
per-feature standardisations with *running* statistics, used in training as
in inference (each training step first folds its batch's statistics, global
across ranks, into the running ones, then normalises with those, detached):

    x̂ = (x - μ_in) / σ_in                  vision features, centred and whitened per feature
    y  = linear_2(act(linear_1(x̂)))
    ŷ = (y - μ_out) / σ_out · τ             image tokens, centred, per-element RMS τ

with τ the RMS of the text embedding table at build time, so image tokens
enter the LM at the scale of text tokens. Both normalisations are affine
maps, so `fold_projector` writes them into `linear_1` and `linear_2`: the
saved checkpoint is a plain LLaVA (transformers and vLLM load it unchanged)
whose outputs equal this module's.

Why running and not batch statistics (measured): with batch statistics in
training the shipped run's model came to rely on each batch's own centring;
served with the running averages (the only thing a plain LLaVA can hold), its
minimal-pair accuracy was 0.39 where re-normalising each evaluation batch gave
0.65 — a train/serve gap. Normalising with the running statistics in training
too makes the trained function the served one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .heads import GlobalBatchNorm


class RunningStandardize(GlobalBatchNorm):
    """Per-feature (x - μ) / σ with running μ, σ in training and inference alike.

    Training updates the running statistics from the batch first (global across
    ranks; a cumulative average over the first 1/momentum steps, so the start is
    not stuck at the init), then normalises with them, detached."""

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__(dim, momentum, eps)
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: [N, d]
        if self.training:
            self._update(z.detach())
        return (z - self.running_mean) / torch.sqrt(self.running_var + self.eps)

    @torch.no_grad()
    def _update(self, z: torch.Tensor) -> None:
        import torch.distributed as dist

        stats = torch.cat([z.new_tensor([z.shape[0]]), z.sum(0), (z * z).sum(0)]).float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats, group=self.process_group or dist.group.WORLD)
        n, d = stats[0], z.shape[1]
        if float(n) < 2:
            return
        mean = stats[1 : 1 + d] / n
        var = (stats[1 + d :] / n - mean * mean).clamp_min(0.0) * n / (n - 1)
        self.num_batches_tracked += 1
        m = max(self.momentum, 1.0 / float(self.num_batches_tracked))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
        self.running_var.lerp_(var.to(self.running_var.dtype), m)


class NormalizedProjector(nn.Module):
    def __init__(self, projector: nn.Module, target_rms: float) -> None:
        super().__init__()
        self.linear_1 = projector.linear_1
        self.act = projector.act
        self.linear_2 = projector.linear_2
        if self.linear_1.bias is None or self.linear_2.bias is None:
            raise ValueError("NormalizedProjector needs projector biases to fold into")
        self.in_norm = RunningStandardize(self.linear_1.in_features)
        self.out_norm = RunningStandardize(self.linear_2.out_features)
        self.register_buffer("target_rms", torch.tensor(float(target_rms)))

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        shape = image_features.shape  # [N_img, tokens, d_vis]
        x = self.in_norm(image_features.reshape(-1, shape[-1]))
        y = self.linear_2(self.act(self.linear_1(x)))
        y = self.out_norm(y) * self.target_rms
        return y.reshape(*shape[:-1], y.shape[-1])

    @torch.no_grad()
    def folded(self, plain: nn.Module) -> nn.Module:
        """`plain` (a LlavaMultiModalProjector) with the inference-time
        normalisations written into its linear layers."""
        eps_in, eps_out = self.in_norm.eps, self.out_norm.eps
        s_in = torch.rsqrt(self.in_norm.running_var + eps_in)  # [d_vis]
        w1 = self.linear_1.weight * s_in[None, :]
        b1 = self.linear_1.bias - w1 @ self.in_norm.running_mean
        s_out = torch.rsqrt(self.out_norm.running_var + eps_out) * self.target_rms  # [d]
        w2 = self.linear_2.weight * s_out[:, None]
        b2 = (self.linear_2.bias - self.out_norm.running_mean) * s_out
        plain.linear_1.weight.copy_(w1)
        plain.linear_1.bias.copy_(b1)
        plain.linear_2.weight.copy_(w2)
        plain.linear_2.bias.copy_(b2)
        return plain


def text_embedding_rms(model: Any) -> torch.Tensor:
    """The per-element RMS of a HF model's input embedding table, detached."""
    return model.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt()
