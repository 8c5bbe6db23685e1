"""Losses as modules returning named losses (docs/METHOD.md §6).

- `GenerativeLoss`  -> {"gen_loss"}: token cross-entropy on response tokens;
- `ContrastiveLoss` -> {"nce_loss"}: symmetric InfoNCE over the GA-kernel
  similarity s̄ (or the summary cosine for the "no alignment kernel"
  ablation); hard negatives are extra columns of the query->document term
  only; in-batch duplicates are masked out, never pushed apart;
- `StructureLoss`   -> {"struct_loss"}: KL(softmax(T_i) || softmax(S_i)) from
  the triple-kernel teacher similarity T. Rows where the teacher says nothing
  (a constant row: e.g. text queries against image documents without a
  cross-modal teacher) are skipped rather than pulled towards uniform (ours).

- `image_token_loss` -> the image-token regulariser (ours, docs/EXPERIMENTS.md §9):
  the size of the image tokens' common vector and the squared log-ratio of
  their spread around it to the text embeddings' scale.

`objective.SugarObjective` sums `λ·(nce + β·struct) + gen + ρ·image_reg`; the loop logs every `*_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GenerativeLoss(nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor, normalizer: float | None = None) -> dict:
        """logits [B, T, V], labels [B, T] (-100 = ignore); mean over response tokens.

        `normalizer`: the global number of response tokens under data parallelism
        (so the per-rank losses add up to the single-process loss).
        """
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:]
        total = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
            ignore_index=-100, reduction="sum",
        )
        n = normalizer if normalizer is not None else float((shift_labels != -100).sum().clamp_min(1))
        return {"gen_loss": total / n}


class ContrastiveLoss(nn.Module):
    def __init__(self, temperature: float = 0.05, learnable: bool = True) -> None:
        super().__init__()
        scale = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(scale) if learnable else None
        if not learnable:
            self.register_buffer("fixed_scale", scale)

    @property
    def scale(self) -> torch.Tensor:
        ls = self.log_scale if self.log_scale is not None else self.fixed_scale
        return ls.clamp(max=math.log(100.0)).exp()

    def forward(self, sim: torch.Tensor, same: torch.Tensor, scale: torch.Tensor | None = None) -> dict:
        """sim: [B, B + N] query x (positives, then hard negatives); same: [B, B + N] bool,
        True where column j holds the same content as row i's positive (duplicates).
        `scale`: 1/t when computed by the caller (under DDP it must come out of forward)."""
        B = sim.shape[0]
        logits = sim * (self.scale if scale is None else scale)
        eye = torch.eye(B, dtype=torch.bool, device=sim.device)
        dup = same.clone()
        dup[:, :B] &= ~eye  # the diagonal is the target, not a duplicate
        neg_inf = torch.finfo(logits.dtype).min
        q2d = logits.masked_fill(dup, neg_inf)
        block = logits[:, :B].T.masked_fill(dup[:, :B].T, neg_inf)  # document -> query
        target = torch.arange(B, device=sim.device)
        loss = 0.5 * (F.cross_entropy(q2d, target) + F.cross_entropy(block, target))
        return {"nce_loss": loss}


class StructureLoss(nn.Module):
    def __init__(self, teacher_temperature: float = 0.05, min_row_std: float = 1e-4) -> None:
        super().__init__()
        self.teacher_temperature = teacher_temperature
        self.min_row_std = min_row_std

    def forward(self, student_logits: torch.Tensor, teacher_sim: torch.Tensor,
                mask: torch.Tensor | None = None) -> dict:
        """student_logits: S / t [B, C]; teacher_sim: s̄* [B, C]; mask: columns to use."""
        if mask is not None:
            neg_inf = torch.finfo(student_logits.dtype).min
            student_logits = student_logits.masked_fill(~mask, neg_inf)
            teacher_sim = teacher_sim.masked_fill(~mask, float("-inf"))
        finite = torch.isfinite(teacher_sim)
        t_std = torch.where(finite, teacher_sim, torch.nan).nan_to_num(0.0)
        informative = (t_std.std(1) > self.min_row_std) & (finite.sum(1) > 1)
        if not bool(informative.any()):
            return {"struct_loss": student_logits.sum() * 0.0}
        t = F.softmax(teacher_sim[informative] / self.teacher_temperature, dim=1)
        log_s = F.log_softmax(student_logits[informative], dim=1)
        kl = (t * (torch.log(t.clamp_min(1e-12)) - log_s)).masked_fill(t == 0, 0.0).sum(1)
        return {"struct_loss": kl.mean()}


def image_token_loss(tokens: torch.Tensor, text_rms: torch.Tensor) -> torch.Tensor:
    """Keep the projector's image tokens centred and at the scale of text embeddings.

    tokens: [N, d], every image token of a forward pass (projector output);
    text_rms: the per-element RMS of the LM's input embedding table (t).
    With μ the mean token and c_n = y_n - μ:

        common = log(1 + ||μ||² / (d t²))                 the shared vector, in text-token units
        spread = (½ log(mean_n ||c_n||² / (d t²)))²       what is left, at the text scale

    Trained from random init, nothing else stops a direction shared by every image
    token from growing until, after the LM's RMSNorm, all images look alike (§9).
    Both terms are measured in units of a text token and logged, so a shared vector
    hundreds of times the text scale costs a few units and its gradient stays bounded.
    The penalty acts on the trained function itself: the checkpoint stays a plain
    LLaVA projector, and training and serving compute the same thing.
    """
    y = tokens.float()
    unit = y.shape[-1] * text_rms.float().pow(2).clamp_min(1e-12)  # d t²: a text token's energy
    mu = y.mean(0)
    common = torch.log1p(mu.pow(2).sum() / unit)
    spread = 0.5 * torch.log((y - mu).pow(2).sum(-1).mean().clamp_min(1e-12) / unit)
    return common + spread.pow(2)
