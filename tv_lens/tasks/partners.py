"""Pair every prompt with another prompt of the same task: the source of a task vector free of its own query."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from tv_lens.errors import TaskError

__all__ = ["other_prompts"]


def other_prompts(task_ids: Int[Tensor, " prompt"], task_names: Sequence[str]) -> Int[Tensor, " prompt"]:
    """For each prompt, the next prompt of the same task in the batch (cyclically).

    A vector read from that partner carries the task but not the prompt's own query, so a zero-shot pass
    it is injected into must still read the query itself.

    Raises:
        TaskError: A task with a single prompt (it has no other prompt to take a vector from).
    """
    partner = torch.empty_like(task_ids)
    for t in task_ids.unique().tolist():
        members = (task_ids == t).nonzero().flatten()
        if len(members) < 2:
            raise TaskError(
                f"Too few prompts: task {task_names[t]!r} has 1 prompt, but each prompt's task vector is taken "
                "from another prompt of its task. Sample at least 2 prompts per task."
            )
        partner[members] = members.roll(-1)
    return partner
