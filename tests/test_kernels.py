"""GA kernel: every implementation against path enumeration, gradients, tslearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.kernels import (
    alignment_paths,
    ga_log_kernel,
    ga_log_kernel_naive,
    ga_log_kernel_reference,
    ga_similarity,
    length_normalize,
    sugar_similarity,
)

IMPLS = ["fused", "linear", "log"]


def rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def reference_matrix(x, y, xm, ym, sigma, gamma):
    return torch.stack([
        torch.stack([
            ga_log_kernel_reference(x[a][xm[a]], y[b][ym[b]], sigma, gamma)
            for b in range(len(y))
        ])
        for a in range(len(x))
    ])


def test_path_count_is_delannoy():
    # D(m-1, n-1): 1, 3, 13, 63 paths for squares of side 1..4
    assert [len(list(alignment_paths(k, k))) for k in range(1, 5)] == [1, 3, 13, 63]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gamma", [1.0, 0.5, 2.0, 0.0])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_equals_path_enumeration_ragged(impl, gamma, sigma):
    x, y = rand(3, 4, 5, seed=1), rand(4, 3, 5, seed=2)
    xm = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    ym = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    got = ga_log_kernel(x, y, xm, ym, sigma=sigma, gamma=gamma, impl=impl)
    want = reference_matrix(x, y, xm, ym, sigma, gamma)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_non_prefix_mask_is_compacted():
    x, y = rand(2, 4, 3, seed=3), rand(2, 3, 3, seed=4)
    xm = torch.tensor([[0, 1, 0, 1], [1, 1, 1, 0]], dtype=torch.bool)
    got = ga_log_kernel(x, y, xm, None, impl="linear")
    want = reference_matrix(x, y, xm, torch.ones(2, 3, dtype=torch.bool), 1.0, 1.0)
    torch.testing.assert_close(got, want)


def test_naive_loop_matches_reference():
    x, y = rand(3, 4, seed=5), rand(4, 4, seed=6)
    for gamma in (1.0, 0.0, 0.5):
        assert ga_log_kernel_naive(x, y, 1.2, gamma) == pytest.approx(
            float(ga_log_kernel_reference(x, y, 1.2, gamma)), rel=1e-12
        )


def test_far_apart_inputs_take_log_space_and_stay_finite():
    # unnormalised, distant vectors with a small sigma: q underflows float32
    x, y = rand(2, 6, 8, seed=7) * 10, rand(3, 5, 8, seed=8) * 10
    got = ga_log_kernel(x.float(), y.float(), sigma=0.3)
    want = ga_log_kernel(x, y, sigma=0.3, impl="log")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=0)


@pytest.mark.parametrize("impl", ["linear", "log"])
@pytest.mark.parametrize("gamma,sigma", [(1.0, 1.0), (1.0, 2.5), (0.5, 1.0), (2.0, 0.8)])
def test_gradcheck(impl, gamma, sigma):
    x = rand(2, 3, 4, seed=9).requires_grad_(True)
    y = rand(3, 4, 4, seed=10).requires_grad_(True)
    xm = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    ym = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)

    def f(a, b):
        return ga_similarity(a, b, xm, ym, sigma=sigma, gamma=gamma, impl=impl)

    assert torch.autograd.gradcheck(f, (x, y), eps=1e-6, atol=1e-5)


def test_autograd_path_is_used_when_grad_needed():
    x = rand(2, 3, 4, seed=11).requires_grad_(True)
    s = ga_similarity(x, rand(2, 3, 4, seed=12))
    s.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_self_similarity_is_zero_and_symmetric(impl):
    x = F.normalize(rand(5, 6, 16, seed=13), dim=-1)
    xm = torch.arange(6)[None, :] < torch.tensor([6, 3, 1, 5, 2])[:, None]
    s = ga_similarity(x, x, xm, xm, impl=impl)
    torch.testing.assert_close(torch.diagonal(s), torch.zeros(5, dtype=s.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(s, s.T)
    assert (s <= 1e-12).all()


def test_matches_tslearn_cdist_gak_ragged():
    from tslearn.metrics import cdist_gak
    from tslearn.utils import to_time_series_dataset

    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(n, 6)) for n in (3, 7, 5, 1)]
    ys = [rng.normal(size=(n, 6)) for n in (4, 2, 6)]
    for sigma in (0.8, 2.0, 5.0):
        want = cdist_gak(to_time_series_dataset(xs), to_time_series_dataset(ys), sigma=sigma)
        x, xm = _pad(xs)
        y, ym = _pad(ys)
        s = ga_similarity(x, y, xm, ym, sigma=sigma)
        np.testing.assert_allclose(np.exp(s.numpy()), want, atol=1e-6, rtol=0)


def _pad(seqs):
    m = max(len(s) for s in seqs)
    out = torch.zeros(len(seqs), m, seqs[0].shape[1], dtype=torch.float64)
    mask = torch.zeros(len(seqs), m, dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.from_numpy(s)
        mask[i, : len(s)] = True
    return out, mask


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_within_relative_1e4_of_float64(impl):
    x = F.normalize(rand(8, 12, 32, seed=14), dim=-1)
    y = F.normalize(rand(6, 9, 32, seed=15), dim=-1)
    ym = torch.arange(9)[None, :] < torch.tensor([9, 4, 1, 7, 9, 2])[:, None]
    s64 = ga_similarity(x, y, None, ym, impl=impl)
    s32 = ga_similarity(x.float(), y.float(), None, ym, impl=impl)
    rel = ((s32.double() - s64).abs() / s64.abs()).max()
    assert rel < 1e-4


def test_impls_agree_at_benchmark_scale():
    x = F.normalize(rand(16, 16, 64, seed=16, dtype=torch.float32), dim=-1)
    y = F.normalize(rand(16, 16, 64, seed=17, dtype=torch.float32), dim=-1)
    a = ga_log_kernel(x, y, impl="fused")
    b = ga_log_kernel(x, y, impl="linear")
    c = ga_log_kernel(x, y, impl="log")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-4)


def test_raw_similarity_is_length_biased_and_normalisation_removes_growth():
    # §4: |s| grows with m + n; s̄ = s / ((m+n)/2) does not
    g = torch.Generator().manual_seed(0)
    short_s, long_s = [], []
    for L, bucket in ((4, short_s), (32, long_s)):
        x = F.normalize(torch.randn(16, L, 64, generator=g, dtype=torch.float64), dim=-1)
        y = F.normalize(torch.randn(16, L, 64, generator=g, dtype=torch.float64), dim=-1)
        s = ga_similarity(x, y)
        sbar = length_normalize(s, torch.full((16,), float(L)), torch.full((16,), float(L)))
        bucket.extend([s.abs().mean(), sbar.abs().mean()])
    assert long_s[0] > 4 * short_s[0]
    assert long_s[1] < 1.5 * short_s[1]


def test_length_normalize_is_explicit_division():
    s = torch.tensor([[-4.0, -6.0]])
    out = length_normalize(s, torch.tensor([2.0]), torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(out, torch.tensor([[-2.0, -2.0]]))
    x = rand(2, 3, 4, seed=18)
    torch.testing.assert_close(
        sugar_similarity(x, x, normalization="none"), ga_similarity(x, x)
    )


def test_hard_dtw_is_best_single_path():
    x, y = rand(3, 4, seed=19), rand(3, 4, seed=20)
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    from model.kernels import local_log_kernel

    lk = local_log_kernel(d2, 1.0)
    best = max(sum(float(lk[i - 1, j - 1]) for i, j in p) for p in alignment_paths(3, 3))
    assert float(ga_log_kernel(x[None], y[None], gamma=0.0)[0, 0]) == pytest.approx(best)


def test_errors_are_clear():
    x = rand(2, 3, 4)
    with pytest.raises(ValueError, match="dimensions differ"):
        ga_similarity(x, rand(2, 3, 5))
    with pytest.raises(ValueError, match="at least one real slice"):
        ga_similarity(x, x, torch.tensor([[1, 1, 1], [0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match=r"must be \[B, len, D\]"):
        ga_similarity(x[0], x)
    with pytest.raises(ValueError, match="sigma"):
        ga_similarity(x, x, sigma=0.0)


def test_pad_sequences():
    from model.kernels import pad_sequences

    x, mask = pad_sequences([torch.ones(2, 3), torch.full((1, 3), 2.0)])
    assert x.shape == (2, 2, 3) and mask.tolist() == [[True, True], [True, False]]
    assert x[1, 1].abs().sum() == 0 and x[1, 0, 0] == 2.0


def test_set_threads_holds_after_the_fused_forward_runs():
    """numba and torch share one OpenMP runtime: numba's first parallel launch set torch's team
    to numba's count (all cores), so `threads: 1` training ran two threads from its first joint
    step on. `set_threads` sets both, for the calling thread and for any other that launches the
    forward (a server's executor threads); checked in a fresh interpreter (a parallel torch op,
    the fused forward, then torch's count) with a numba pool of two."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (
        "import threading, numba, numpy as np, torch\n"
        "from model import _ga_numba\n"
        "from model.kernels import set_threads\n"
        "set_threads(1)\n"
        "def run():\n"
        "    a = torch.randn(256, 256); (a @ a).sum()\n"
        "    g = np.random.default_rng(0).random((6, 6))\n"
        "    o, n = np.ones((3, 2)), np.full(2, 3)\n"
        "    _ga_numba.ga_log_kernel_fused(g, o, o, n, n, 1.0, 1.0)\n"
        "    (a @ a).sum()\n"
        "    print(torch.get_num_threads(), numba.get_num_threads())\n"
        "run()\n"
        "t = threading.Thread(target=run); t.start(); t.join()  # a thread that never set its count\n"
    )
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "PYTHONPATH": str(root)}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "1", "1"]  # the setting thread, then another one
