"""GPU smoke test, ready to run as is on a one-GPU machine: `python scripts/gpu_smoke.py`.

1. The family contract (tests/test_families.py) with the tiny models on the GPU
   (SUGAR_TEST_DEVICE=cuda; its training tests run where accelerate puts them: the GPU).
2. Per family, a short LoRA run in bf16 on the GPU through the CLI (`sugar train --preset smoke
   --set family=F --set lora_rank=8 --set bf16=true`), its loss finite, its checkpoint loaded on
   the GPU and embedding there.
3. faiss-gpu, where installed (`pip install -e ".[gpu]"`): the index's GPU search against the
   exact CPU search on the same vectors.

Without a GPU it prints why and exits 0 (nothing to check); any failure exits 1. Prints one
line per check and a summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _check(name: str, fn, results: list) -> None:
    t0 = time.time()
    try:
        detail = fn() or ""
        results.append((name, "ok", detail, time.time() - t0))
    except Exception as e:  # noqa: BLE001 - reported, then the exit status says it
        results.append((name, "FAILED", f"{type(e).__name__}: {e}"[:400], time.time() - t0))
    print(f"{results[-1][1]:>6}  {name}  {results[-1][2]}  ({results[-1][3]:.0f} s)", flush=True)


def contract() -> str:
    env = {**os.environ, "SUGAR_TEST_DEVICE": "cuda"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_families.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
    if r.returncode:
        raise RuntimeError(tail + "\n" + r.stdout[-2000:])
    return tail


def lora_bf16(family: str) -> str:
    import torch

    from model.sample import Sample
    from model.sugar import SugarModel

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ck"
        cmd = [sys.executable, "-m", "sugar_cli", "train", "--preset", "smoke", "--set", f"family={family}",
               "--set", "lora_rank=8", "--set", "bf16=true", "--steps", "10", "--out", str(out)]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(r.stderr[-1500:])
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        if not all(torch.isfinite(torch.tensor(row["loss"])) for row in rows):
            raise RuntimeError(f"non-finite loss: {[row['loss'] for row in rows]}")
        model = SugarModel.from_pretrained(out, device="cuda")
        e = model.embed([Sample.build(["a red circle"])])
        assert e.summary.is_cuda and torch.isfinite(e.summary).all()
        return f"loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}"


def faiss_gpu() -> str:
    import numpy as np

    from index.vectors import VectorIndex, VectorSettings, gpu_available

    if not gpu_available():
        return "skipped: faiss-gpu is not installed (pip install -e '.[gpu]')"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:50] + 0.01 * rng.standard_normal((50, 128)).astype(np.float32)
    results = {}
    for use_gpu in (False, True):
        ix = VectorIndex(128, VectorSettings(type="flat", use_gpu=use_gpu), "flat")
        ix.add(np.arange(5000, dtype=np.int64), x)
        results[use_gpu] = ix.search(q, 10)[1]
    same = float((results[True] == results[False]).mean())
    if same < 0.99:
        raise RuntimeError(f"GPU and CPU flat search agree on {same:.3f} of the ids")
    return f"flat search on the GPU = CPU on {same:.3f} of the top-10 ids"


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_smoke: skipped, no CUDA device (torch {torch.__version__}, "
              f"CUDA build: {torch.version.cuda or 'none'})")
        return 0
    from model.families import families

    print(f"gpu_smoke on {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    results: list = []
    _check("family contract on cuda (tests/test_families.py)", contract, results)
    for fam in sorted(families()):
        _check(f"LoRA bf16 run on cuda: {fam}", lambda fam=fam: lora_bf16(fam), results)
    _check("faiss-gpu search", faiss_gpu, results)
    failed = [r for r in results if r[1] != "ok"]
    print(f"\n{len(results) - len(failed)} of {len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
