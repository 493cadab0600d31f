"""Task-vector prompting's core: whose vector each query gets, the write, and the zero-shot pass.

Task-vector prompting (TVP; Hendel et al. 2023, Yang et al. 2025) reads an ICL prompt's residual at its
pre-answer position at block ``l`` and writes it at the same block and position of the query-only
("zero-shot") twin of a prompt (``batch.zero_shot()``). The TVP analysis (:mod:`tv_lens.analyses.prompting`) and
the TVP-loss of training (:mod:`tv_lens.training.tvp_loss`) take these steps from here:

- :func:`vector_sources`: which ICL prompt each zero-shot query takes its vector from (``"other_prompt"``: the
  next prompt of its task, cyclically, whose query differs where the queries are given; ``"same_prompt"``: its
  own).
- :func:`injection`: the intervention that writes one vector per prompt at the zero-shot query's pre-answer
  position (``"replace"`` or ``"add"``, at a residual site of a block).
- :func:`prompted_outputs`: the zero-shot pass with the vectors written at one block (with gradients unless under
  ``torch.no_grad``). The analysis sweeps the blocks by giving these injections, one cell each, to
  :func:`~tv_lens.interventions.run_sweep`.

>>> vector_sources(torch.tensor([0, 1, 0, 1, 0]), ("a", "b"), "other_prompt")
tensor([2, 3, 4, 1, 0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.errors import AnalysisError, TaskError
from tv_lens.interventions.engine import run_with_interventions
from tv_lens.interventions.specs import Intervention, add, replace

__all__ = [
    "INJECT_MODES",
    "PROMPT_SOURCES",
    "check_inject_mode",
    "injection",
    "other_prompts",
    "prompted_outputs",
    "vector_sources",
]

PROMPT_SOURCES: tuple[str, ...] = ("other_prompt", "same_prompt")
"""The ICL prompt whose vector a zero-shot query gets: another prompt of its task, or its own."""
INJECT_MODES: tuple[str, ...] = ("replace", "add")
"""How the vector is written: overwrite the zero-shot residual, or add to it."""


def other_prompts(
    task_ids: Int[Tensor, " prompt"],
    task_names: Sequence[str],
    queries: Int[Tensor, " prompt"] | None = None,
    *,
    unpaired: bool = False,
) -> Int[Tensor, " prompt"]:
    """For each prompt, the next prompt of the same task in the batch (cyclically) whose query differs.

    A vector read from that partner carries the task but not the prompt's own query, so a zero-shot pass
    it is injected into must still read the query itself. ``queries`` (an id per prompt, equal for prompts of one
    query, e.g. :func:`~tv_lens.probes.prompt_ids` of the zero-shot prompts) makes the partner one with another
    query, as Hendel et al.'s dummy query excludes the test input; ``None``: the next prompt of the task, whatever
    its query. ``unpaired``: a prompt whose task has no prompt of another query gets ``-1`` (no partner), not an
    error (a training batch drawn at random).

    Raises:
        TaskError: A task with a single prompt (it has no other prompt to take a vector from), or, with ``queries``
            and not ``unpaired``, a prompt whose task has no other prompt of another query.
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
        if queries is None:
            continue
        own = queries[members]
        for k in range(len(members)):
            later = [(k + step) % len(members) for step in range(1, len(members))]
            other = next((j for j in later if own[j] != own[k]), None)
            if other is None and unpaired:
                partner[members[k]] = -1
                continue
            if other is None:
                raise TaskError(
                    f"Every prompt of task {task_names[t]!r} has the query of prompt {int(members[k])}, so no other "
                    "prompt's vector leaves that query out. Sample more prompts per task (or a pool of more inputs), "
                    "or use source='task_mean'."
                )
            partner[members[k]] = members[other]
    return partner


def vector_sources(
    task_ids: Int[Tensor, " prompt"],
    task_names: Sequence[str],
    source: str,
    queries: Int[Tensor, " prompt"] | None = None,
    *,
    unpaired: bool = False,
) -> Int[Tensor, " prompt"]:
    """Index of the ICL prompt each zero-shot query takes its vector from (``source`` in :data:`PROMPT_SOURCES`).

    ``queries`` and ``unpaired``: for ``"other_prompt"`` (see :func:`other_prompts`; ``-1``: no partner).

    Raises:
        AnalysisError: A ``source`` not in :data:`PROMPT_SOURCES`.
    """
    if source not in PROMPT_SOURCES:
        raise AnalysisError(
            f"Unknown vector source {source!r}: a zero-shot query takes its vector from one of {list(PROMPT_SOURCES)}; "
            "pass one of them."
        )
    if source == "same_prompt":
        return torch.arange(len(task_ids))
    return other_prompts(task_ids, task_names, queries, unpaired=unpaired)


def injection(
    layer: int, vectors: Float[Tensor, "prompt d_model"], mode: str = "replace", site: str = "resid_post"
) -> Intervention:
    """The write of ``vectors`` (one per prompt) at each prompt's pre-answer position, at ``site`` of ``layer``.

    Raises:
        AnalysisError: A ``mode`` not in :data:`INJECT_MODES`.
    """
    check_inject_mode(mode)
    make = replace if mode == "replace" else add
    return make(layer, vectors, pos="answer", site=site)


def check_inject_mode(mode: str) -> None:
    """Raise :class:`~tv_lens.errors.AnalysisError` unless ``mode`` is one of :data:`INJECT_MODES`."""
    if mode not in INJECT_MODES:
        raise AnalysisError(f"Unknown TVP mode {mode!r}; use one of {list(INJECT_MODES)}.")


def prompted_outputs(
    model: Any,
    zero_shot: Any,
    vectors: Float[Tensor, "prompt d_model"],
    layer: int,
    mode: str = "replace",
    batch_size: int | None = None,
) -> Float[Tensor, "prompt n_answer d_out"]:
    """Outputs at the answer positions of the zero-shot prompts with ``vectors`` written at block ``layer``'s output.

    ``zero_shot`` is a batch of query-only prompts (``batch.zero_shot()``, right-padded); gradients flow into the
    model and ``vectors`` unless the call is under ``torch.no_grad``. ``batch_size``: prompts per pass (``None``:
    all at once).
    """
    run = run_with_interventions(
        model,
        zero_shot.inputs,
        zero_shot.answer_pos,
        [injection(layer, vectors, mode)],
        attention_mask=zero_shot.attention_mask,
        n_answer_tokens=zero_shot.answer_lengths,
        batch_size=batch_size,
    )
    return run.logits
