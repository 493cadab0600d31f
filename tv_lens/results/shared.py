"""What several results record alike: their bootstrap and sweep settings, and which prompts and tasks count.

A result with bootstrap intervals inherits :class:`BootstrapSettings`; one measured by a sweep of forward passes
over prompt copies, :class:`SweepSettings`. Their fields are keyword-only, so they come after the result's own
fields in its constructor whatever their defaults. Overall numbers leave out the Null task, whose answers are
random: :func:`real_tasks` and :func:`real_prompts` say which tasks and prompts count. A result that chooses a best
layer says what it chooses from (:class:`HeldOutInputs`); its settings then choose it on held-out prompts.

>>> import torch
>>> real_tasks(("add", "null", "copy")), real_prompts(torch.tensor([0, 1, 2, 1]), ("add", "null", "copy"))
([0, 2], tensor([ True, False,  True, False]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.errors import TaskError
from tv_lens.stats.selection import HeldOutBest, held_out_best
from tv_lens.tasks.pool import NULL_TASK

__all__ = ["BootstrapSettings", "HeldOutInputs", "SweepSettings", "real_prompts", "real_tasks", "task_index"]


class HeldOutInputs(NamedTuple):
    """What a result's best layer is chosen from: arguments of :func:`~tv_lens.stats.selection.held_out_best`."""

    values: Float[Tensor, "layer prompt"]
    groups: Int[Tensor, " prompt"]
    n_groups: int
    layers: tuple[int, ...]
    eligible: Sequence[bool] | None = None


@dataclass(frozen=True, eq=False, kw_only=True)
class BootstrapSettings:
    """The settings of a result's bootstrap intervals (keyword-only fields of every result that has them).

    Attributes:
        ci_level: Confidence level of the intervals.
        n_bootstrap: Bootstrap resamples behind the intervals (0: no intervals, NaN).
        seed: Seed of the bootstrap.
    """

    ci_level: float = 0.95
    n_bootstrap: int = 1000
    seed: int = 0

    def _held_out_inputs(self) -> HeldOutInputs:
        """What a best layer is chosen from (results with one override it)."""
        raise NotImplementedError(f"{type(self).__name__} chooses no best layer.")

    def _held_out(self, inputs: HeldOutInputs | None = None) -> HeldOutBest:
        """:func:`~tv_lens.stats.selection.held_out_best` of :meth:`_held_out_inputs`, with these settings and seed."""
        values, groups, n_groups, layers, eligible = inputs or self._held_out_inputs()
        settings: dict[str, Any] = {"n_bootstrap": self.n_bootstrap, "ci": self.ci_level, "seed": self.seed}
        return held_out_best(values, groups, n_groups, layers, eligible=eligible, **settings)

    def _held_out_numbers(self, name: str) -> dict[str, Any]:
        """Headline entries of :meth:`_held_out`: the layers chosen, ``name`` and ``name_ci`` (none for < 2 prompts)."""
        inputs = self._held_out_inputs()
        if inputs.values.shape[-1] < 2:
            return {}
        best = self._held_out(inputs)
        return {"held_out_layers": list(best.chosen), name: best.value, f"{name}_ci": list(best.ci)}


@dataclass(frozen=True, eq=False, kw_only=True)
class SweepSettings(BootstrapSettings):
    """The bootstrap settings of a result measured by a sweep of interventions, and how the sweep ran.

    Attributes:
        rows_per_pass: Rows (prompt copies) per forward pass the sweep ran with: the requested ``rows_per_pass``,
            or less where a pass ran out of memory and was halved (``None``: not recorded).
    """

    rows_per_pass: int | None = None


def real_tasks(task_names: Sequence[str], null_task: str = NULL_TASK) -> list[int]:
    """Indices of every task but the Null task ``null_task``."""
    return [t for t, name in enumerate(task_names) if name != null_task]


def real_prompts(
    task_ids: Int[Tensor, " prompt"], task_names: Sequence[str], null_task: str = NULL_TASK
) -> Bool[Tensor, " prompt"]:
    """Which prompts are of a task other than the Null task ``null_task`` (all, where no task is called that)."""
    null = list(task_names).index(null_task) if null_task in task_names else -1
    return task_ids != null


def task_index(task_names: Sequence[str], task: str, what: str) -> int:
    """Index of ``task`` in ``task_names``; ``what`` names what the result holds per task (for the message).

    Raises:
        TaskError: ``task`` is not one of ``task_names``.
    """
    if task not in task_names:
        raise TaskError(f"Task {task!r} has no {what}; these cover {list(task_names)}. Build them from its prompts.")
    return list(task_names).index(task)


def ranked_task(task_names: Sequence[str], task_ids: Int[Tensor, " prompt"], task: str, what: str) -> int:
    """Index of ``task`` (:func:`task_index`) whose heads are to be ranked by their ``what``.

    Raises:
        TaskError: ``task`` is not one of ``task_names``, or no prompt is of it: its ``what`` is NaN for every
            head, so no head ranks above another (the first heads in block order would be its "top" heads).
    """
    t = task_index(task_names, task, what)
    if not bool((task_ids == t).any()):
        raise TaskError(
            f"Task {task!r} has no prompts in this result, so its {what} is NaN for every head and no head ranks "
            "above another; compute the result on prompts of that task too, or ask for the top heads of another "
            "task or over every prompt (task=None)."
        )
    return t
