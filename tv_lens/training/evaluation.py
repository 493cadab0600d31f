"""Held-out evaluation during training: query accuracy and loss per task (and TVP accuracy with TVP-loss)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tv_lens.models.adapter import ModelAdapter
from tv_lens.models.exclusive import evaluating
from tv_lens.stats import group_means
from tv_lens.training.config import TVPConfig
from tv_lens.training.objectives import Objective
from tv_lens.training.tvp_loss import tvp_accuracy

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    adapter: ModelAdapter, objective: Objective, batch: Any, batch_size: int, tvp: TVPConfig | None = None
) -> list[dict[str, Any]]:
    """One row per task: ``task``, ``accuracy``, ``loss``, ``n_prompts`` (+ ``tvp_accuracy``, ``zero_shot_accuracy``).

    Runs in eval mode and gives every module of the model back its own mode.
    """
    with evaluating(adapter.model):
        scores: dict[str, list[Tensor]] = {"accuracy": [], "loss": []}
        if tvp is not None:
            scores |= {"tvp_accuracy": [], "zero_shot_accuracy": []}
        for start in range(0, len(batch), batch_size):
            chunk = batch.select(slice(start, start + batch_size))
            outputs = objective.query_outputs(adapter, chunk)
            scores["accuracy"].append(objective.answer_accuracy(outputs, chunk).cpu())
            scores["loss"].append(objective.answer_loss(outputs, chunk).cpu())
            if tvp is not None:
                zero_shot = chunk.zero_shot()
                plain = objective.query_outputs(adapter, zero_shot)
                scores["zero_shot_accuracy"].append(objective.answer_accuracy(plain, zero_shot).cpu())
        if tvp is not None:
            tvp_scores = tvp_accuracy(adapter, batch, tvp.layer, tvp.mode, objective, tvp.source, batch_size)
            scores["tvp_accuracy"] = [tvp_scores.cpu()]
    task_ids, n_tasks = batch.task_ids.cpu(), len(batch.task_names)
    # a prompt without a TVP partner (NaN) is left out of its task's TVP accuracy
    means = {name: _task_means(torch.cat(values), task_ids, n_tasks) for name, values in scores.items()}
    counts = torch.bincount(task_ids, minlength=n_tasks)
    return [
        {"task": task, **{name: float(mean[t]) for name, mean in means.items()}, "n_prompts": int(counts[t])}
        for t, task in enumerate(batch.task_names)
        if counts[t] > 0
    ]


def _task_means(values: Tensor, task_ids: Tensor, n_tasks: int) -> Tensor:
    """Each task's mean over its prompts with a value (not NaN); NaN for a task without one."""
    return group_means(values, task_ids, n_tasks, present=~values.isnan())
