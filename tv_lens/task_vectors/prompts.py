"""The prompts task vectors average over: a batch sampled from a pool (or given), and the tasks kept of it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tv_lens.errors import TaskError
from tv_lens.tasks import ICLBatch, RegressionBatch, RegressionPool, ShotSpec, TaskPool, TextPool

__all__ = ["as_batch", "kept_task_ids"]


def as_batch(
    data: TaskPool | TextPool | RegressionPool | ICLBatch | RegressionBatch,
    n_per_task: int,
    n_shots: ShotSpec,
    seed: int,
    tokenizer: Any = None,
) -> ICLBatch | RegressionBatch:
    """``data`` if it is a batch, else ``n_per_task`` prompts of every task of the pool, sampled with ``seed``.

    A :class:`~tv_lens.tasks.TextPool` is checked to tokenize as ``tokenizer`` (the model's) does.
    """
    if isinstance(data, (ICLBatch, RegressionBatch)):
        return data
    if isinstance(data, TextPool):
        data.check_tokenizer(tokenizer)
    if isinstance(data, (TaskPool, TextPool, RegressionPool)):
        return data.sample(n_per_task, n_shots, seed)
    raise TaskError(
        f"Pass a TaskPool, TextPool or RegressionPool, or a batch of one (ICLBatch, RegressionBatch), got "
        f"{type(data).__name__}."
    )


def kept_task_ids(batch: ICLBatch | RegressionBatch, tasks: Sequence[str] | None) -> list[int]:
    """Task ids to keep: those named (each must have prompts), else every task with prompts."""
    ids = batch.task_ids.cpu()
    present = [t for t in range(len(batch.task_names)) if bool((ids == t).any())]
    if tasks is None:
        return present
    if isinstance(tasks, str):
        tasks = (tasks,)
    if len(tasks) == 0:
        raise TaskError(
            "tasks= names no task, so there is nothing to average; name at least one task of the batch "
            f"({[batch.task_names[t] for t in present]}) or pass tasks=None for every task with prompts."
        )
    unknown = [name for name in tasks if name not in batch.task_names]
    missing = [name for name in tasks if name in batch.task_names and batch.task_names.index(name) not in present]
    if unknown or missing:
        raise TaskError(
            f"Tasks {unknown + missing} have no prompt in the batch (its tasks with prompts: "
            f"{[batch.task_names[t] for t in present]}); sample prompts of them or leave them out of tasks=."
        )
    return [batch.task_names.index(name) for name in tasks]
