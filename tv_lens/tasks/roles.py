"""The role of every position of an ICL prompt: prefix, a demonstration's input, answer or separator, query.

Where the answer position attends (:mod:`tv_lens.analyses.attention`) is read by role. A batch carries the span
of every demonstration (``demo_start``, ``demo_answer_pos``, ``demo_answer_end``) and of the query (``query_start``,
``answer_pos``), so the roles follow from its fields whatever the task family or prompt format:

- ``"prefix"``: before the first demonstration (BOS, an instruction);
- ``"demo_input"``: a demonstration from its first token up to the token right before its answer (``x →`` in the
  arrow format);
- ``"demo_answer"``: a demonstration's answer tokens;
- ``"separator"``: what follows a demonstration's answer up to the next demonstration or the query (the newline
  of a text prompt; token and regression prompts have none);
- ``"query"``: the query before the answer position;
- ``"answer_pos"``: the answer position itself (the query's ``→``).

Positions after the answer position (the query's answer tokens, padding) are never attended from it: ``-1``.

:func:`demonstration_roles` keeps every demonstration apart, counted back from the query (``"demo_answer[-1]"``: the
last demonstration's answer), for how attention falls off with a demonstration's distance.

>>> from tv_lens.tasks import offset_pool
>>> batch = offset_pool(offsets=(1,), n_values=8, null=False).sample(1, n_shots=2, seed=0)
>>> position_roles(batch)[0].tolist()  # x → y, x → y, x_q → (answer)
[1, 1, 2, 1, 1, 2, 4, 5, -1]
>>> roles, names = demonstration_roles(batch)
>>> roles[0].tolist()
[1, 1, 2, 4, 4, 5, 7, 8, -1]
>>> names[1:7]
('demo_input[-2]', 'demo_answer[-2]', 'separator[-2]', 'demo_input[-1]', 'demo_answer[-1]', 'separator[-1]')
"""

from __future__ import annotations

from typing import cast

import torch
from jaxtyping import Int
from torch import Tensor

from tv_lens.tasks.prompt_rows import PromptRows

__all__ = ["PROMPT_ROLES", "demonstration_roles", "position_roles"]

PROMPT_ROLES: tuple[str, ...] = ("prefix", "demo_input", "demo_answer", "separator", "query", "answer_pos")
"""The roles of :func:`position_roles`, in the order of their ids."""

_DEMONSTRATION_PARTS = PROMPT_ROLES[1:4]  # the roles within a demonstration's span


def position_roles(batch: PromptRows) -> Int[Tensor, "batch pos"]:
    """The role id of every position of ``batch`` (an index into :data:`PROMPT_ROLES`; ``-1`` after ``answer_pos``).

    Args:
        batch: An :class:`~tv_lens.tasks.ICLBatch` or :class:`~tv_lens.tasks.RegressionBatch`.

    Returns:
        Role ids ``[batch, pos]`` on the batch's device.
    """
    return _roles_and_demonstrations(batch)[0]


def demonstration_roles(batch: PromptRows) -> tuple[Int[Tensor, "batch pos"], tuple[str, ...]]:
    """The roles of :func:`position_roles` with every demonstration's input, answer and separator a role of its own.

    Demonstrations are counted back from the query, so ``"demo_input[-1]"``, ``"demo_answer[-1]"`` and
    ``"separator[-1]"`` are the last demonstration's (the nearest the query) in every prompt, whatever its number
    of shots. The names run in prompt order: ``prefix``, ``demo_input[-k]``, ``demo_answer[-k]``,
    ``separator[-k]``, ..., ``separator[-1]``, ``query``, ``answer_pos``, with ``k`` the batch's ``max_shots``; a
    prompt with fewer shots has no position of the farthest ones.

    Args:
        batch: An :class:`~tv_lens.tasks.ICLBatch` or :class:`~tv_lens.tasks.RegressionBatch`.

    Returns:
        Role ids ``[batch, pos]`` on the batch's device (``-1`` after ``answer_pos``) and the name of every id.
    """
    roles, demo = _roles_and_demonstrations(batch)
    k, parts = batch.max_shots, len(_DEMONSTRATION_PARTS)
    back = batch.n_shots[:, None] - demo  # 1 for the last demonstration
    part = roles - 1  # 0, 1, 2 within a demonstration
    in_demo = (part >= 0) & (part < parts)
    ids = torch.where(in_demo, 1 + parts * (k - back) + part, roles)
    ids = torch.where(roles > parts, roles + parts * (k - 1), ids)  # the query and the answer position
    names = [f"{name}[-{n}]" for n in range(k, 0, -1) for name in _DEMONSTRATION_PARTS]
    return ids, (PROMPT_ROLES[0], *names, *PROMPT_ROLES[1 + parts :])


def _roles_and_demonstrations(batch: PromptRows) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """The role id of every position and the demonstration its span belongs to (``-1`` outside every span)."""
    prefix, demo_input, demo_answer, separator, query, answer = range(len(PROMPT_ROLES))
    pos = torch.arange(batch.inputs.shape[1], device=batch.answer_pos.device)[None, :]
    roles = torch.full((len(batch), pos.shape[1]), -1, dtype=torch.long, device=pos.device)
    demo = torch.full_like(roles, -1)
    is_demo = batch.demo_start >= 0
    roles[pos < batch.prefix_lengths[:, None]] = prefix
    ends, answer_end = batch.demonstration_ends, cast(Tensor, batch.demo_answer_end)  # set when the batch is made
    for j in range(batch.max_shots):
        start, before, after = (field[:, j, None] for field in (batch.demo_start, batch.demo_answer_pos, answer_end))
        shown = is_demo[:, j, None]
        roles[shown & (pos >= start) & (pos <= before)] = demo_input
        roles[shown & (pos > before) & (pos < after)] = demo_answer
        roles[shown & (pos >= after) & (pos < ends[:, j, None])] = separator
        demo[shown & (pos >= start) & (pos < ends[:, j, None])] = j
    roles[(pos >= batch.query_start[:, None]) & (pos < batch.answer_pos[:, None])] = query
    roles[pos == batch.answer_pos[:, None]] = answer
    return roles, demo
