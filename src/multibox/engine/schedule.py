"""Learning-rate schedules: linear warmup, then multistep or cosine (as a LambdaLR factor)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["LRFactor"]


class LRFactor:
    """``lr(step) = base_lr * factor(step)`` for ``torch.optim.lr_scheduler.LambdaLR``.

    Warmup rises linearly from ``warmup_factor`` to 1 over ``warmup_iters`` steps (Goyal et al. 2017). Then
    ``multistep`` multiplies by ``gamma`` at each milestone (the paper: x0.1 at 80k and 100k of 120k), or ``cosine``
    decays to ``min_factor`` at ``max_iters``. A plain object (not a closure) so that its state is checkpointed.
    """

    def __init__(
        self,
        *,
        schedule: str = "multistep",
        max_iters: int,
        warmup_iters: int = 0,
        warmup_factor: float = 1 / 3,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        min_factor: float = 0.0,
    ) -> None:
        if schedule not in ("multistep", "cosine"):
            raise ValueError(f"unknown schedule {schedule!r}; use 'multistep' or 'cosine'")
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        self.schedule = schedule
        self.max_iters = int(max_iters)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.min_factor = float(min_factor)

    def __call__(self, step: int) -> float:
        if self.schedule == "multistep":
            factor = self.gamma ** sum(step >= m for m in self.milestones)
        else:
            t = min(step, self.max_iters) / self.max_iters
            factor = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        if step < self.warmup_iters:
            alpha = step / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor
