"""Fused forward of the global alignment kernel for the no-gradient path (numba).

The local kernel is computed inside the sweep from the Gram matrix that one
matmul produced, so the [m, n, pairs] kernel tensor is never materialised:
one read of the Gram matrix, one exp per cell (γ = 1). Rows are swept in
order with the pair dimension innermost (contiguous, vectorised); values are
float64 and every row is rescaled per pair, the scale kept in log space.
Used only for inference (no autograd); `model.kernels` checks it against the
differentiable anti-diagonal sweep and the path-enumeration reference.
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

if numba is not None:

    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _ga_rows(g, x2, y2, xl, yl, Bx, By, m, n, inv2s2, inv_gamma, mode, out):  # pragma: no cover
        # g: [m*Bx, n*By] Gram matrix with rows (i, bx) and columns (j, by)
        # mode 0: γ = 1 (q = e / (2 - e)); 1: γ > 0 general; 2: γ = 0 (max-product)
        for bx in numba.prange(Bx):
            prev = np.zeros((n + 1, By))
            cur = np.zeros((n + 1, By))
            log_scale = np.zeros(By)
            for b in range(By):
                prev[0, b] = 1.0
            mx = xl[bx]
            for i in range(1, mx + 1):
                row = (i - 1) * Bx + bx
                xi2 = x2[i - 1, bx]
                for b in range(By):
                    cur[0, b] = 0.0
                for j in range(1, n + 1):
                    col0 = (j - 1) * By
                    for b in range(By):
                        d2 = xi2 + y2[j - 1, b] - 2.0 * g[row, col0 + b]
                        if d2 < 0.0:
                            d2 = 0.0
                        z = d2 * inv2s2
                        e = math.exp(-z)
                        if mode == 0:
                            q = e / (2.0 - e)
                        else:
                            lk = -(z + math.log(2.0 - e))
                            q = math.exp(lk * inv_gamma)
                        if j > yl[b]:
                            q = 0.0
                        if mode == 2:
                            a = prev[j, b]
                            if cur[j - 1, b] > a:
                                a = cur[j - 1, b]
                            if prev[j - 1, b] > a:
                                a = prev[j - 1, b]
                            cur[j, b] = q * a
                        else:
                            cur[j, b] = q * (prev[j, b] + cur[j - 1, b] + prev[j - 1, b])
                for b in range(By):
                    s = 0.0
                    for j in range(1, n + 1):
                        if cur[j, b] > s:
                            s = cur[j, b]
                    if i == mx:
                        v = cur[yl[b], b]
                        out[bx, b] = (math.log(v) if v > 0.0 else -np.inf) + log_scale[b]
                    if s > 0.0:
                        inv = 1.0 / s
                        for j in range(n + 1):
                            cur[j, b] *= inv
                        log_scale[b] += math.log(s)
                prev, cur = cur, prev


def available() -> bool:
    return numba is not None


_threads: int | None = None  # set_threads' count, for every thread that launches the forward


def set_threads(n: int) -> None:
    """numba's threads (at most its configured pool, NUMBA_NUM_THREADS). numba keeps the count
    per thread, so every thread that launches the forward takes it there (a server's executor
    threads too); set here as well, which starts numba's pool now, before torch's first parallel
    op (started later, at the first launch, it left the calling thread's torch on all cores)."""
    global _threads
    if numba is not None:
        _threads = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(_threads)


def ga_log_kernel_fused(
    g: np.ndarray,
    x2: np.ndarray,
    y2: np.ndarray,
    xl: np.ndarray,
    yl: np.ndarray,
    sigma: float,
    gamma: float,
) -> np.ndarray:
    """log K for all pairs. g: [m*Bx, n*By]; x2: [m, Bx]; y2: [n, By]; returns [Bx, By] (γ-scaled)."""
    m, Bx = x2.shape
    n, By = y2.shape
    out = np.empty((Bx, By), dtype=np.float64)
    mode = 0 if gamma == 1.0 else (2 if gamma == 0.0 else 1)
    if _threads is not None and numba.get_num_threads() != _threads:
        numba.set_num_threads(_threads)
    inv_gamma = 1.0 / gamma if gamma > 0 else 1.0
    _ga_rows(
        g, x2, y2, xl.astype(np.int64), yl.astype(np.int64), Bx, By, m, n,
        1.0 / (2.0 * sigma * sigma), inv_gamma, mode, out,
    )
    return out * gamma if gamma > 0 else out
