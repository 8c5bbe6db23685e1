"""Global alignment kernel (dynamic sequence alignment) between slice sequences.

docs/METHOD.md §4. For sequences x = (x_1..x_m), y = (y_1..y_n) of vectors:

    log κ(a, b) = -(d²/(2σ²) + log(2 - exp(-d²/(2σ²)))),   d² = ‖a - b‖²
    R[0,0] = 0, R[i,0] = R[0,j] = -inf
    R[i,j] = log κ_ij + γ·LSE((R[i-1,j], R[i,j-1], R[i-1,j-1]) / γ)
    log K(x, y) = R[m, n]

γ = 1 is Cuturi's global alignment kernel; γ = 0 takes the max branch (hard
DTW: the best single path). The public similarity is the normalised

    s(x, y) = log K(x, y) - ½ log K(x, x) - ½ log K(y, y)    (0 for x = y, ≤ 0 otherwise)

and `length_normalize` is the separate, explicit step s̄ = s / ((m + n) / 2).

Implementation. For γ > 0 the recursion is linear in Q = exp(R/γ):
Q[i,j] = q_ij · (Q[i-1,j] + Q[i,j-1] + Q[i-1,j-1]) with q = κ^(1/γ) ∈ (0, 1],
so the sweep needs no exp/log per cell: it runs along anti-diagonals
(all cells with i + j = c are independent) on a [rows, pairs] layout with the
pair index contiguous, rescaling every few diagonals (per pair, by the
diagonal's max; the scale is carried in log space) so nothing under- or
overflows. When q itself would underflow (distant, unnormalised inputs with a
small σ or γ) the same sweep runs in log space instead. γ = 0 always runs in
log space with max. Every path is differentiable by autograd; the rescaling
factors are constants to autograd because the result does not depend on them.
Inference (no autograd, CPU) takes a fused numba forward (`model._ga_numba`)
that computes the local kernel inside a row sweep from the Gram matrix.
`ga_log_kernel_reference` enumerates every alignment path (tiny inputs only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import _ga_numba

# per-cell log q below this and the linear sweep would underflow: use log space
_LINEAR_FLOOR = {torch.float32: -70.0, torch.float64: -600.0, torch.bfloat16: -70.0}
_CHUNK_CELLS = 1 << 24  # cells of q per chunk of pairs (64 MiB in float32)


def set_threads(n: int) -> None:
    """Use `n` CPU threads for torch and for the fused numba forward. Both run on the same
    OpenMP runtime, and numba's first parallel launch sets the calling thread's OpenMP team size
    to its own count (all cores): with torch alone set, a one-thread training ran two threads
    from its first joint step on (measured: `omp_get_max_threads()` 1 -> 2)."""
    torch.set_num_threads(n)
    _ga_numba.set_threads(n)


def local_log_kernel(d2: torch.Tensor, sigma: float) -> torch.Tensor:
    """Cuturi's local log-kernel from squared distances (any shape)."""
    z = d2 / (2.0 * sigma * sigma)
    return -(z + torch.log(2.0 - torch.exp(-z)))


def _check(x: torch.Tensor, name: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name} must be [B, len, D], got shape {tuple(x.shape)}")


def _lengths_and_compact(
    x: torch.Tensor, mask: torch.Tensor | None, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengths [B] and x with its real slices moved to the front (stable)."""
    B, m, _ = x.shape
    if mask is None:
        return x, torch.full((B,), m, dtype=torch.long, device=x.device)
    if mask.shape != (B, m):
        raise ValueError(f"{name}_mask must be [{B}, {m}], got {tuple(mask.shape)}")
    mask = mask.to(torch.bool)
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError(f"{name}: every sequence needs at least one real slice")
    prefix = torch.arange(m, device=x.device)[None, :] < lengths[:, None]
    if not bool((prefix == mask).all()):
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        x = torch.gather(x, 1, order[:, :, None].expand_as(x))
    return x, lengths


def _sq_dists_all_pairs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[m, n, Bx*By] squared distances, pair index last (contiguous)."""
    Bx, m, D = x.shape
    By, n, _ = y.shape
    xf = x.transpose(0, 1).reshape(m * Bx, D)  # rows ordered (i, bx)
    yf = y.transpose(0, 1).reshape(n * By, D)  # rows ordered (j, by)
    x2 = (xf * xf).sum(1)
    y2 = (yf * yf).sum(1)
    # ‖a‖² + ‖b‖² - 2 a·b with the matmul fused into the first addition
    d2 = torch.addmm(y2[None, :], xf, yf.T, alpha=-2.0) + x2[:, None]  # [m*Bx, n*By]
    d2 = d2.clamp_min(0.0)
    return d2.view(m, Bx, n, By).permute(0, 2, 1, 3).reshape(m, n, Bx * By)


def _sq_dists_paired(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[m, n, B] squared distances between x[b] and y[b]."""
    g = torch.bmm(x, y.transpose(1, 2))  # [B, m, n]
    d2 = (x * x).sum(-1)[:, :, None] + (y * y).sum(-1)[:, None, :] - 2.0 * g
    return d2.clamp_min(0.0).permute(1, 2, 0).contiguous()


def _sweep_linear(
    q: torch.Tensor, rows: torch.Tensor, ends: torch.Tensor, floor: float, min_logq: float
) -> torch.Tensor:
    """log Q[m_p, n_p] for each pair p. q: [M, N, P] (0 outside each pair)."""
    M, N, P = q.shape
    qf = q.reshape(M * N, P)
    dev, dt = q.device, q.dtype
    r2 = torch.zeros(M + 1, P, dtype=dt, device=dev)
    r2[0] = 1.0  # diagonal 0: R[0,0]
    r1 = torch.zeros(M + 1, P, dtype=dt, device=dev)  # diagonal 1: border only
    log_scale = torch.zeros(P, dtype=dt, device=dev)
    # rescale often enough that neither decay (≥ q_min per step) nor growth
    # (≤ 3x per step) leaves the floating-point range
    every = int(max(1, min(60, math.floor(-floor / max(-min_logq, 1e-6)))))
    tiny = torch.finfo(dt).tiny
    results: list[tuple[torch.Tensor, torch.Tensor]] = []
    end_groups = _group_by_end(ends)
    for c in range(2, M + N + 1):
        lo, hi = max(1, c - N), min(M, c - 1)
        i = torch.arange(lo, hi + 1, device=dev)
        qc = qf.index_select(0, (i - 1) * N + (c - i - 1))  # [hi-lo+1, P]
        body = qc * (r1[lo - 1 : hi] + r1[lo : hi + 1] + r2[lo - 1 : hi])
        rc = F.pad(body, (0, 0, lo, M - hi))
        if (c - 1) % every == 0 or c in end_groups:
            s = rc.detach().amax(0).clamp_min(tiny)
            rc = rc / s
            r1 = r1 / s
            log_scale = log_scale + torch.log(s)
        if c in end_groups:
            idx = end_groups[c]
            val = rc.index_select(1, idx).gather(0, rows[idx][None, :])[0]
            results.append((idx, torch.log(val) + log_scale.index_select(0, idx)))
        r2, r1 = r1, rc
    return _assemble(results, P, dt, dev)


def _sweep_log(
    logq: torch.Tensor, rows: torch.Tensor, ends: torch.Tensor, hard: bool
) -> torch.Tensor:
    """Log-space sweep: LSE (soft) or max (hard). logq: [M, N, P] (very negative outside)."""
    M, N, P = logq.shape
    lf = logq.reshape(M * N, P)
    dev, dt = logq.device, logq.dtype
    neg = -1e30 if dt != torch.float64 else -1e300
    r2 = torch.full((M + 1, P), neg, dtype=dt, device=dev)
    r2[0] = 0.0
    r1 = torch.full((M + 1, P), neg, dtype=dt, device=dev)
    results: list[tuple[torch.Tensor, torch.Tensor]] = []
    end_groups = _group_by_end(ends)
    for c in range(2, M + N + 1):
        lo, hi = max(1, c - N), min(M, c - 1)
        i = torch.arange(lo, hi + 1, device=dev)
        lc = lf.index_select(0, (i - 1) * N + (c - i - 1))
        a, b, d = r1[lo - 1 : hi], r1[lo : hi + 1], r2[lo - 1 : hi]
        if hard:
            comb = torch.maximum(torch.maximum(a, b), d)
        else:
            mx = torch.maximum(torch.maximum(a, b), d).detach()
            comb = mx + torch.log(torch.exp(a - mx) + torch.exp(b - mx) + torch.exp(d - mx))
        rc = F.pad(lc + comb, (0, 0, lo, M - hi), value=neg)
        if c in end_groups:
            idx = end_groups[c]
            results.append((idx, rc.index_select(1, idx).gather(0, rows[idx][None, :])[0]))
        r2, r1 = r1, rc
    return _assemble(results, P, dt, dev)


def _group_by_end(ends: torch.Tensor) -> dict[int, torch.Tensor]:
    ends_cpu = ends.cpu()
    groups: dict[int, torch.Tensor] = {}
    for c in torch.unique(ends_cpu).tolist():
        groups[int(c)] = (ends_cpu == c).nonzero()[:, 0].to(ends.device)
    return groups


def _assemble(results, P: int, dt: torch.dtype, dev: torch.device) -> torch.Tensor:
    idx = torch.cat([r[0] for r in results])
    val = torch.cat([r[1] for r in results])
    return torch.zeros(P, dtype=dt, device=dev).index_put((idx,), val)


def _log_kernel_from_d2(
    d2: torch.Tensor,
    xl: torch.Tensor,
    yl: torch.Tensor,
    sigma: float,
    gamma: float,
    impl: str = "auto",
) -> torch.Tensor:
    """log K for P pairs from d2 [M, N, P]; xl, yl: [P] lengths."""
    M, N, P = d2.shape
    dev = d2.device
    valid = (torch.arange(M, device=dev)[:, None, None] < xl[None, None, :]) & (
        torch.arange(N, device=dev)[None, :, None] < yl[None, None, :]
    )
    ends = xl + yl
    rows = xl
    floor = _LINEAR_FLOOR.get(d2.dtype, -70.0)
    if gamma > 0:
        d2max = float(d2.detach().amax()) if d2.numel() else 0.0
        min_logq = float(local_log_kernel(torch.tensor(d2max, dtype=torch.float64), sigma)) / gamma
        if impl == "linear" or (impl != "log" and min_logq > floor):
            if gamma == 1.0:
                e = torch.exp(d2 * (-0.5 / (sigma * sigma)))
                q = e / (2.0 - e)
            else:
                q = torch.exp(local_log_kernel(d2, sigma) / gamma)
            q = torch.where(valid, q, torch.zeros((), dtype=q.dtype, device=dev))
            return gamma * _sweep_linear(q, rows, ends, floor, min_logq)
        logq = local_log_kernel(d2, sigma) / gamma
        logq = torch.where(valid, logq, torch.full((), -1e30, dtype=logq.dtype, device=dev))
        return gamma * _sweep_log(logq, rows, ends, hard=False)
    logq = local_log_kernel(d2, sigma)
    logq = torch.where(valid, logq, torch.full((), -1e30, dtype=logq.dtype, device=dev))
    return _sweep_log(logq, rows, ends, hard=True)


def ga_log_kernel(
    x: torch.Tensor,
    y: torch.Tensor,
    x_mask: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    sigma: float = 1.0,
    gamma: float = 1.0,
    paired: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """log K between every x[a] and y[b] ([Bx, By]), or x[b] and y[b] when `paired` ([B]).

    `impl` picks the implementation (tests compare them): "auto"; "fused"
    (numba forward, no autograd); "linear" / "log" (the anti-diagonal sweep in
    linear or log space, differentiable).
    """
    if impl not in ("auto", "fused", "linear", "log"):
        raise ValueError(f"unknown impl {impl!r}")
    _check(x, "x")
    _check(y, "y")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y dimensions differ: {x.shape[-1]} vs {y.shape[-1]}")
    if sigma <= 0:
        raise ValueError("sigma must be > 0")
    if gamma < 0:
        raise ValueError("gamma must be >= 0")
    if x.dtype != y.dtype:
        y = y.to(x.dtype)
    x, xl = _lengths_and_compact(x, x_mask, "x")
    y, yl = _lengths_and_compact(y, y_mask, "y")
    if paired:
        if x.shape[0] != y.shape[0]:
            raise ValueError("paired=True needs x and y with the same batch size")
        return _log_kernel_from_d2(_sq_dists_paired(x, y), xl, yl, sigma, gamma, impl)
    Bx, m, _ = x.shape
    By, n, _ = y.shape
    fused = impl == "fused" or (impl == "auto" and _fused_ok(x, y, sigma, gamma))
    # chunk over x so that the pairwise tensors stay bounded in memory
    step = max(1, _CHUNK_CELLS // max(1, m * n * By))
    out = []
    for a in range(0, Bx, step):
        xs, xls = x[a : a + step], xl[a : a + step]
        if fused:
            out.append(_fused_all_pairs(xs, y, xls, yl, sigma, gamma))
            continue
        d2 = _sq_dists_all_pairs(xs, y)
        pl_x = xls[:, None].expand(-1, By).reshape(-1)
        pl_y = yl[None, :].expand(xs.shape[0], -1).reshape(-1)
        kern = _log_kernel_from_d2(d2, pl_x, pl_y, sigma, gamma, impl)
        out.append(kern.view(xs.shape[0], By))
    return torch.cat(out, 0)


def _fused_ok(x: torch.Tensor, y: torch.Tensor, sigma: float, gamma: float) -> bool:
    """The numba forward serves inference: CPU, no autograd, values in float64 range."""
    if not _ga_numba.available() or x.device.type != "cpu" or y.device.type != "cpu":
        return False
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        return False
    if x.dtype not in (torch.float32, torch.float64):
        return False
    # d² ≤ (‖a‖ + ‖b‖)²: a bound on how fast a row can decay between rescalings
    bound = float(x.detach().norm(dim=-1).amax() + y.detach().norm(dim=-1).amax()) ** 2
    min_logq = float(local_log_kernel(torch.tensor(bound, dtype=torch.float64), sigma))
    if gamma > 0:
        min_logq /= gamma
    return -min_logq * max(x.shape[1], y.shape[1]) < 600.0


def _fused_all_pairs(
    x: torch.Tensor, y: torch.Tensor, xl: torch.Tensor, yl: torch.Tensor, sigma: float, gamma: float
) -> torch.Tensor:
    Bx, m, D = x.shape
    By, n, _ = y.shape
    xf = x.detach().transpose(0, 1).reshape(m * Bx, D)  # rows (i, bx)
    yf = y.detach().transpose(0, 1).reshape(n * By, D)  # rows (j, by)
    g = (xf @ yf.T).numpy()
    x2 = (xf * xf).sum(1).view(m, Bx).numpy()
    y2 = (yf * yf).sum(1).view(n, By).numpy()
    out = _ga_numba.ga_log_kernel_fused(g, x2, y2, xl.numpy(), yl.numpy(), sigma, gamma)
    return torch.from_numpy(out).to(x.dtype)


def ga_similarity(
    x: torch.Tensor,
    y: torch.Tensor,
    x_mask: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    sigma: float = 1.0,
    gamma: float = 1.0,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Raw normalised similarity s(x, y) of §4 for every pair: [Bx, By].

    x: [Bx, m, D], y: [By, n, D]; masks [B, len] bool mark real slices.
    exp(s) is tslearn's normalised GAK (`cdist_gak`) for γ = 1.
    """
    kxy = ga_log_kernel(x, y, x_mask, y_mask, sigma, gamma, impl=impl)
    kxx = ga_log_kernel(x, x, x_mask, x_mask, sigma, gamma, paired=True, impl=impl)
    kyy = ga_log_kernel(y, y, y_mask, y_mask, sigma, gamma, paired=True, impl=impl)
    return kxy - 0.5 * kxx[:, None] - 0.5 * kyy[None, :]


def pad_sequences(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged [m_i, D] sequences -> zero-padded [B, max m, D] and the mask of real slices."""
    m = max(len(x) for x in seqs)
    out = seqs[0].new_zeros(len(seqs), m, seqs[0].shape[-1])
    mask = torch.zeros(len(seqs), m, dtype=torch.bool, device=out.device)
    for b, x in enumerate(seqs):
        out[b, : len(x)] = x
        mask[b, : len(x)] = True
    return out, mask


def sequence_lengths(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.full((x.shape[0],), x.shape[1], dtype=x.dtype, device=x.device)
    return mask.sum(1).to(x.dtype)


def length_normalize(s: torch.Tensor, x_len: torch.Tensor, y_len: torch.Tensor) -> torch.Tensor:
    """s̄ = s / ((m + n) / 2): removes the growth of |s| with the lengths."""
    return s / ((x_len[:, None] + y_len[None, :]) * 0.5)


def sugar_similarity(
    x: torch.Tensor,
    y: torch.Tensor,
    x_mask: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    sigma: float = 1.0,
    gamma: float = 1.0,
    normalization: str = "mean_length",
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """The ranking/loss similarity: s, then the configured length normalisation."""
    s = ga_similarity(x, y, x_mask, y_mask, sigma, gamma, impl=impl)
    if normalization == "none":
        return s
    if normalization == "mean_length":
        return length_normalize(s, sequence_lengths(x, x_mask), sequence_lengths(y, y_mask))
    raise ValueError(f"unknown length normalisation {normalization!r}")


@dataclass(frozen=True)
class KernelSettings:
    """The ranking kernel's settings: one type for the model (`SugarModel.similarity`), the
    training objective and the index's rerank (stored in the index's metadata)."""

    sigma: float = 1.0
    gamma: float = 1.0
    normalization: str = "mean_length"  # "mean_length" | "none"

    def similarity(self, x: torch.Tensor, y: torch.Tensor, x_mask: torch.Tensor | None = None,
                   y_mask: torch.Tensor | None = None, *, impl: str = "auto") -> torch.Tensor:
        return sugar_similarity(x, y, x_mask, y_mask, self.sigma, self.gamma, self.normalization, impl=impl)


def soft_alignment(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """[m, n]: how much of the global alignment of x [m, D] and y [n, D] passes through each
    cell — ∂ log K / ∂ log κ(i, j), the probability that the path visits (i, j) when paths
    weigh exp(their summed log κ / γ) (at γ = 0: 1 on the best path, 0 elsewhere). The kernel
    `ga_log_kernel` computes, explained: which slice of one sample aligns with which of the other."""
    with torch.enable_grad():
        d2 = ((x.double()[:, None, :] - y.double()[None, :, :]) ** 2).sum(-1)
        lk = local_log_kernel(d2, sigma).detach().requires_grad_(True)
        m, n = lk.shape
        neg = torch.tensor(float("-inf"), dtype=lk.dtype)
        R: list[list[torch.Tensor]] = [[neg] * (n + 1) for _ in range(m + 1)]
        R[0][0] = torch.zeros((), dtype=lk.dtype)
        for i in range(1, m + 1):
            for j in range(1, n + 1):
                prev = torch.stack([R[i - 1][j], R[i][j - 1], R[i - 1][j - 1]])
                step = prev.max() if gamma == 0 else gamma * torch.logsumexp(prev / gamma, 0)
                R[i][j] = lk[i - 1, j - 1] + step
        (grad,) = torch.autograd.grad(R[m][n], lk)
    return grad.to(x.dtype)


# ----------------------------------------------------------------- references


def alignment_paths(m: int, n: int):
    """Every monotone path from (1,1) to (m,n) with steps (1,0), (0,1), (1,1)."""

    def rec(i: int, j: int):
        if (i, j) == (m, n):
            yield [(i, j)]
            return
        for di, dj in ((1, 0), (0, 1), (1, 1)):
            a, b = i + di, j + dj
            if a <= m and b <= n:
                for rest in rec(a, b):
                    yield [(i, j), *rest]

    yield from rec(1, 1)


def ga_log_kernel_reference(
    x: torch.Tensor, y: torch.Tensor, sigma: float = 1.0, gamma: float = 1.0
) -> torch.Tensor:
    """log K by enumerating every alignment path. x: [m, D], y: [n, D] (tiny only)."""
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    lk = local_log_kernel(d2, sigma)
    totals = torch.stack(
        [sum(lk[i - 1, j - 1] for i, j in path) for path in alignment_paths(len(x), len(y))]
    )
    if gamma == 0:
        return totals.max()
    return gamma * torch.logsumexp(totals / gamma, 0)


def ga_log_kernel_naive(
    x: torch.Tensor, y: torch.Tensor, sigma: float = 1.0, gamma: float = 1.0
) -> float:
    """Plain-Python double loop over the DP table for one pair (benchmark baseline)."""
    m, n = len(x), len(y)
    xs, ys = x.tolist(), y.tolist()
    neg = -math.inf
    R = [[neg] * (n + 1) for _ in range(m + 1)]
    R[0][0] = 0.0
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            d2 = sum((a - b) ** 2 for a, b in zip(xs[i - 1], ys[j - 1], strict=True))
            z = d2 / (2 * sigma * sigma)
            lk = -(z + math.log(2 - math.exp(-z)))
            prev = (R[i - 1][j], R[i][j - 1], R[i - 1][j - 1])
            if gamma == 0:
                R[i][j] = lk + max(prev)
            else:
                mx = max(prev)
                R[i][j] = lk + mx + gamma * math.log(sum(math.exp((p - mx) / gamma) for p in prev))
    return R[m][n]


__all__ = [
    "alignment_paths",
    "ga_log_kernel",
    "ga_log_kernel_naive",
    "ga_log_kernel_reference",
    "ga_similarity",
    "length_normalize",
    "local_log_kernel",
    "pad_sequences",
    "sequence_lengths",
    "soft_alignment",
    "sugar_similarity",
]
