"""Learning-rate schedule: linear warmup, then half a cosine down to ``min_lr`` (as in nanoGPT).

A pure function of the step, so a resumed run uses exactly the rates of an uninterrupted one.

>>> from tv_lens.training.config import ScheduleConfig
>>> schedule = ScheduleConfig(max_steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
>>> get_lr(0, schedule), get_lr(9, schedule), get_lr(100, schedule)
(0.0001, 0.001, 0.0001)
"""

from __future__ import annotations

import math

from tv_lens.training.config import ScheduleConfig

__all__ = ["get_lr"]


def get_lr(step: int, schedule: ScheduleConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based).

    Warmup: ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``. Then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` with
    ``t = (step - warmup_steps) / (max_steps - warmup_steps)``, held at ``min_lr`` from ``max_steps`` on.
    """
    if step < schedule.warmup_steps:
        return schedule.lr * (step + 1) / schedule.warmup_steps
    decay_steps = max(1, schedule.max_steps - schedule.warmup_steps)
    progress = min(1.0, (step - schedule.warmup_steps) / decay_steps)
    return schedule.min_lr + (schedule.lr - schedule.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
