"""The role of every position of an ICL prompt: prefix, demonstration input or answer, query, answer position.

Where the answer position attends (:mod:`tv_lens.analyses.attention`) is read by role. A batch carries the span
of every demonstration (``demo_start``, ``demo_answer_pos``) and of the query (``query_start``, ``answer_pos``),
so the roles follow from its fields whatever the task family or prompt format:

- ``"prefix"``: before the first demonstration (BOS, an instruction);
- ``"demo_input"``: a demonstration from its first token up to the token right before its answer (``x →`` in the
  arrow format);
- ``"demo_answer"``: a demonstration's answer tokens, with any delimiter up to the next demonstration or the query;
- ``"query"``: the query before the answer position;
- ``"answer_pos"``: the answer position itself (the query's ``→``).

Positions after the answer position (the query's answer tokens, padding) are never attended from it: ``-1``.

:func:`demonstration_roles` keeps every demonstration apart, counted back from the query (``"demo_answer[-1]"``: the
last demonstration's answer), for how attention falls off with a demonstration's distance.

>>> from tv_lens.tasks import offset_pool
>>> batch = offset_pool(offsets=(1,), n_values=8, null=False).sample(1, n_shots=2, seed=0)
>>> position_roles(batch)[0].tolist()  # x → y, x → y, x_q → (answer)
[1, 1, 2, 1, 1, 2, 3, 4, -1]
>>> roles, names = demonstration_roles(batch)
>>> roles[0].tolist()
[1, 1, 2, 3, 3, 4, 5, 6, -1]
>>> names
('prefix', 'demo_input[-2]', 'demo_answer[-2]', 'demo_input[-1]', 'demo_answer[-1]', 'query', 'answer_pos')
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from tv_lens.tasks.prompt_rows import PromptRows

__all__ = ["PROMPT_ROLES", "demonstration_roles", "position_roles"]

PROMPT_ROLES: tuple[str, ...] = ("prefix", "demo_input", "demo_answer", "query", "answer_pos")
"""The roles of :func:`position_roles`, in the order of their ids."""


def position_roles(batch: PromptRows) -> Int[Tensor, "batch pos"]:
    """The role id of every position of ``batch`` (an index into :data:`PROMPT_ROLES`; ``-1`` after ``answer_pos``).

    Args:
        batch: An :class:`~tv_lens.tasks.ICLBatch` or :class:`~tv_lens.tasks.RegressionBatch`.

    Returns:
        Role ids ``[batch, pos]`` on the batch's device.
    """
    prefix, demo_input, demo_answer, query, answer = range(len(PROMPT_ROLES))
    pos = torch.arange(batch.inputs.shape[1], device=batch.answer_pos.device)[None, :]
    roles = torch.full((len(batch), pos.shape[1]), -1, dtype=torch.long, device=pos.device)
    is_demo = batch.demo_start >= 0
    roles[pos < batch.prefix_lengths[:, None]] = prefix
    # each demonstration runs until the next one starts, the last one until the query
    following = torch.cat([batch.demo_start[:, 1:], torch.full_like(batch.demo_start[:, :1], -1)], dim=1)
    ends = torch.where(following >= 0, following, batch.query_start[:, None])
    for j in range(batch.max_shots):
        start, before = batch.demo_start[:, j, None], batch.demo_answer_pos[:, j, None]
        shown = is_demo[:, j, None]
        roles[shown & (pos >= start) & (pos <= before)] = demo_input
        roles[shown & (pos > before) & (pos < ends[:, j, None])] = demo_answer
    roles[(pos >= batch.query_start[:, None]) & (pos < batch.answer_pos[:, None])] = query
    roles[pos == batch.answer_pos[:, None]] = answer
    return roles


def demonstration_roles(batch: PromptRows) -> tuple[Int[Tensor, "batch pos"], tuple[str, ...]]:
    """The roles of :func:`position_roles` with every demonstration's input and answer a role of its own.

    Demonstrations are counted back from the query, so ``"demo_input[-1]"`` and ``"demo_answer[-1]"`` are the last
    demonstration's (the nearest the query) in every prompt, whatever its number of shots. The names run in prompt
    order: ``prefix``, ``demo_input[-k]``, ``demo_answer[-k]``, ..., ``demo_input[-1]``, ``demo_answer[-1]``,
    ``query``, ``answer_pos``, with ``k`` the batch's ``max_shots``; a prompt with fewer shots has no position of
    the farthest ones.

    Args:
        batch: An :class:`~tv_lens.tasks.ICLBatch` or :class:`~tv_lens.tasks.RegressionBatch`.

    Returns:
        Role ids ``[batch, pos]`` on the batch's device (``-1`` after ``answer_pos``) and the name of every id.
    """
    _, demo_input, demo_answer, query, answer = range(len(PROMPT_ROLES))
    roles = position_roles(batch)
    k = batch.max_shots
    pos = torch.arange(roles.shape[1], device=roles.device)[None, :, None]
    starts = batch.demo_start.to(roles.device)[:, None, :]
    demo = ((starts >= 0) & (starts <= pos)).sum(-1) - 1  # [batch, pos]: the demonstration a position lies in
    back = batch.n_shots.to(roles.device)[:, None] - demo  # 1 for the last demonstration
    in_demo = (roles == demo_input) | (roles == demo_answer)
    split = 1 + 2 * (k - back) + (roles == demo_answer).long()
    ids = torch.where(in_demo, split, roles)
    ids = torch.where(roles == query, 2 * k + 1, ids)
    ids = torch.where(roles == answer, 2 * k + 2, ids)
    names = [f"demo_{part}[-{n}]" for n in range(k, 0, -1) for part in ("input", "answer")]
    return ids, (PROMPT_ROLES[0], *names, *PROMPT_ROLES[3:])
