"""Wall time per phase of a training step, for `sugar bench train` (off by default).

The trainer wraps each phase of a step in `timer("name")`; disabled, that is a
no-op context. Phases: data (drawing and rendering the batch), encode
(prompts, tokenising, image processing), gen_forward, embed_forward, losses
(kernels, teachers), backward, optimizer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    def __init__(self) -> None:
        self.enabled = False
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        t = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t

    def reset(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out
