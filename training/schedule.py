"""The staged recipe's schedule: learning rates per step, the stages, and where they begin.

Stage 1 (`read_steps`, docs/EXPERIMENTS.md §11): the generative loss alone with the vision side
frozen, its first `align_steps` on captions; then the joint phase, the vision side at
`vision_lr_scale` x the schedule (0: frozen throughout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from .config import TrainConfig


def warmup_cosine(step: int, steps: int, warmup: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine decay to `min_lr_ratio` at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Schedule:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def lr(self, step: int) -> float:
        """The LR multiplier of everything but the vision side."""
        c = self.cfg
        return warmup_cosine(step, c.steps, c.warmup, c.min_lr_ratio)

    def vision_lr(self, step: int) -> float:
        """The vision side: frozen through stage 1, then `vision_lr_scale` x the schedule."""
        return 0.0 if self.reading(step) else self.cfg.vision_lr_scale * self.lr(step)

    def reading(self, step: int) -> bool:
        """Stage 1: the generative loss alone, the vision side frozen."""
        return step < self.cfg.read_steps

    def gen_kinds(self, step: int) -> dict[str, float]:
        c = self.cfg
        return c.align_kinds if step < c.align_steps else c.gen_kinds

    def set_stage(self, step: int, vision_params: Sequence[nn.Parameter]) -> None:
        """Vision parameters need no gradient while frozen (stage 1, or a scale of 0)."""
        frozen = self.reading(step) or self.cfg.vision_lr_scale == 0
        for p in vision_params:
            p.requires_grad_(not frozen)

    def marks(self) -> dict[str, int]:
        """Where the phases begin (for the loss curves)."""
        c = self.cfg
        marks = {}
        if 0 < c.align_steps < c.steps:
            marks["captions end"] = c.align_steps
        if 0 < c.read_steps < c.steps:
            marks["joint phase"] = c.read_steps
        return marks
