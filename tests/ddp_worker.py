"""Run a few training steps and write the per-step losses (used by test_train.py).

Launched plainly (one process) and with `torchrun --nproc_per_node 2` on the
same global batch; the test compares the two.
"""

from __future__ import annotations

import json
import sys

import torch


def main(out: str, steps: int) -> None:
    torch.set_num_threads(1)
    from training.config import preset
    from training.loop import Trainer

    cfg = preset("smoke").with_overrides([f"steps={steps}", "hard_negatives=1.0", "gen_batch=4",
                                          "pair_batch=8", "lr=0.003"])
    tr = Trainer(cfg, out + ".run")
    records = [tr.step(s) for s in range(steps)]
    if tr.rank == 0:
        with open(out, "w") as f:
            json.dump({"world": tr.world_size, "records": records}, f)
    tr.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
