"""What :func:`tv_lens.training.train` returns: the trained model, its history and its checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tv_lens.errors import ConfigError
from tv_lens.models import ModelConfig
from tv_lens.results.shared import real_tasks
from tv_lens.training.config import TrainConfig

__all__ = ["TrainResult"]


@dataclass(frozen=True, eq=False)
class TrainResult:
    """A finished (or stopped) training run.

    Attributes:
        model: The trained model (the object passed to ``train``, trained in place; every module back in the
            train or eval mode it had before the run).
        config: The run's training config.
        model_config: The model's config, if the run was given one.
        history: One row per step: ``step`` (optimiser steps done), ``lr``, ``loss``, ``loss_icl``,
            ``loss_tvp`` (NaN without TVP-loss), ``grad_norm`` (before clipping), ``elapsed_s``.
        evals: One row per (evaluation step, task) on the held-out prompts: ``step``, ``task``,
            ``accuracy`` and ``loss`` of the query answer, ``n_prompts``; with TVP-loss also
            ``tvp_accuracy`` (zero-shot query with the injected vector) and ``zero_shot_accuracy``.
        checkpoints: Checkpoint files of the run, oldest first (for analyses over training).
        steps: Optimiser steps completed.
        elapsed_s: Training wall time in seconds, over all resumed parts of the run.
    """

    model: Any
    config: TrainConfig
    model_config: ModelConfig | None
    history: pd.DataFrame
    evals: pd.DataFrame
    checkpoints: tuple[Path, ...]
    steps: int
    elapsed_s: float

    def accuracy(self, column: str = "accuracy", step: int | None = None) -> dict[str, float]:
        """Per-task held-out score at the last evaluation (or at ``step``), e.g. ``{"offset(1)": 1.0, ...}``."""
        if self.evals.empty:
            raise ConfigError("The run has no evaluation yet; train to an eval step (eval_every) or to the end.")
        if column not in self.evals.columns:
            raise ConfigError(f"Unknown evaluation column {column!r}; available: {list(self.evals.columns)}.")
        step = int(self.evals["step"].max()) if step is None else step
        rows = self.evals[self.evals["step"] == step]
        if rows.empty:
            raise ConfigError(f"No evaluation at step {step}; evaluated steps: {sorted(set(self.evals['step']))}.")
        return {str(task): float(value) for task, value in zip(rows["task"], rows[column], strict=True)}

    def icl_accuracy(self, include_null: bool = False, column: str = "accuracy") -> float:
        """Mean of :meth:`accuracy` over tasks; the Null task (chance by construction) is left out by default."""
        accuracy = self.accuracy(column)
        scores = list(accuracy.values())
        kept = range(len(scores)) if include_null else real_tasks(list(accuracy))
        return sum(scores[t] for t in kept) / len(kept)
