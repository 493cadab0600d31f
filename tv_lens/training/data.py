"""The prompts of a run: a fresh batch every step, and one fixed held-out set.

Step ``s`` trains on ``pool.sample(..., seed=batch_seed(data.seed, s))``: the batch depends on the step
only, never on what ran before, so a resumed run sees exactly the batches an uninterrupted one sees.
Held-out prompts come from a separate seed stream (:func:`held_out_seed`) that no training step uses.
Both seeds are drawn from :class:`numpy.random.SeedSequence`, so nearby steps get unrelated seeds.

>>> batch_seed(0, 1) != batch_seed(0, 2) != held_out_seed(0)
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tv_lens.training.config import DataConfig

__all__ = ["batch_seed", "held_out_batch", "held_out_seed", "training_batch"]


def batch_seed(seed: int, step: int) -> int:
    """Seed of the training batch of ``step`` (0-based) in the stream of ``seed``."""
    return int(np.random.SeedSequence(seed, spawn_key=(0, step)).generate_state(1, np.uint64)[0])


def held_out_seed(seed: int) -> int:
    """Seed of the held-out prompts of the stream of ``seed`` (never a training batch's seed stream)."""
    return int(np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(1, np.uint64)[0])


def training_batch(pool: Any, data: DataConfig, step: int) -> Any:
    """The training batch of ``step``: ``data.n_per_task`` prompts per task."""
    return pool.sample(data.n_per_task, data.n_shots, seed=batch_seed(data.seed, step), label_noise=data.label_noise)


def held_out_batch(pool: Any, data: DataConfig) -> Any:
    """The held-out prompts: ``data.eval_n_per_task`` per task with ``data.held_out_shots`` shots, clean labels."""
    return pool.sample(data.eval_n_per_task, data.held_out_shots, seed=held_out_seed(data.seed))
