"""Slice pooling and the projection heads (docs/METHOD.md §3).

z_i = mean (or last) of the hidden states of slice i's tokens; one head per
modality: e_i = normalize(Linear(norm(z_i))). The normalisation before the
heads is a batch normalisation without affine parameters whose statistics,
under torch.distributed, are computed over the global batch (sums all-reduced
with gradients), so one process and N processes on the same global batch
compute the same thing (SyncBatchNorm does not run on CPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def pool_slices(
    hidden: torch.Tensor, token_slice: torch.Tensor, num_slices: int, mode: str = "mean"
) -> torch.Tensor:
    """[B, T, d] hidden states -> [B, m, d] per-slice vectors (zeros for absent slices)."""
    B, T, d = hidden.shape
    valid = token_slice >= 0
    idx = token_slice.clamp_min(0)
    if mode == "mean":
        onehot = F.one_hot(idx, num_slices).to(hidden.dtype) * valid[..., None].to(hidden.dtype)
        summed = torch.einsum("btm,btd->bmd", onehot, hidden)
        counts = onehot.sum(1).clamp_min(1.0)  # [B, m]
        return summed / counts[..., None]
    if mode == "last":
        pos = torch.arange(T, device=hidden.device).expand(B, T)
        pos = torch.where(valid, pos, torch.full_like(pos, -1))
        last = torch.full((B, num_slices), -1, dtype=torch.long, device=hidden.device)
        last = last.scatter_reduce(1, idx, pos, reduce="amax", include_self=True)
        out = torch.gather(hidden, 1, last.clamp_min(0)[..., None].expand(-1, -1, d))
        return out * (last >= 0)[..., None].to(hidden.dtype)
    raise ValueError(f"unknown pooling {mode!r}")


class GlobalBatchNorm(nn.Module):
    """BatchNorm1d (no affine) whose batch statistics span all ranks."""

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        # set by a data-parallel trainer: a group of its own keeps these collectives
        # (forward and backward) from interleaving with DDP's gradient all-reduce
        self.process_group = None
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: [N, d]
        if not self.training:
            return (z - self.running_mean) / torch.sqrt(self.running_var + self.eps)
        stats = torch.cat([z.new_tensor([z.shape[0]]), z.sum(0), (z * z).sum(0)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from torch.distributed.nn.functional import all_reduce

            stats = all_reduce(stats, group=self.process_group or dist.group.WORLD)
        n, d = stats[0], z.shape[1]
        if float(n.detach()) < 2:  # statistics of one row are meaningless: use the running ones
            return (z - self.running_mean) / torch.sqrt(self.running_var + self.eps)
        mean = stats[1 : 1 + d] / n
        var = (stats[1 + d :] / n - mean * mean).clamp_min(0.0)
        with torch.no_grad():
            unbiased = var * n / (n - 1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        return (z - mean) / torch.sqrt(var + self.eps)


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "batch":
        return GlobalBatchNorm(dim)
    if kind == "layer":
        return nn.LayerNorm(dim, elementwise_affine=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown head_norm {kind!r}")


class SliceHeads(nn.Module):
    """One projector per modality: text and image slices map into one space."""

    def __init__(self, hidden: int, embed_dim: int, norm: str = "batch") -> None:
        super().__init__()
        self.text_norm = make_norm(norm, hidden)
        self.image_norm = make_norm(norm, hidden)
        self.text_proj = nn.Linear(hidden, embed_dim)
        self.image_proj = nn.Linear(hidden, embed_dim)
        self.embed_dim = embed_dim

    def forward(
        self, pooled: torch.Tensor, slice_mask: torch.Tensor, is_image: torch.Tensor
    ) -> torch.Tensor:
        """pooled [B, m, d] -> L2-normalised [B, m, D]; zeros where slice_mask is False."""
        B, m, _ = pooled.shape
        out = pooled.new_zeros(B, m, self.embed_dim)
        for flag, norm, proj in (
            (False, self.text_norm, self.text_proj),
            (True, self.image_norm, self.image_proj),
        ):
            sel = slice_mask & (is_image == flag)
            z = pooled[sel]
            e = F.normalize(proj(norm(z)), dim=-1)
            # always in the graph, even with no slice of this modality: under DDP
            # every rank must run the same collectives forward and backward
            out = out.index_put((sel,), e)
        return out


def summary_vector(slices: torch.Tensor, slice_mask: torch.Tensor) -> torch.Tensor:
    """g = normalize(sum_i e_i) over the real slices: [B, D]."""
    return F.normalize((slices * slice_mask[..., None].to(slices.dtype)).sum(1), dim=-1)
