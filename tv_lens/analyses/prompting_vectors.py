"""The vector task-vector prompting writes into each zero-shot prompt, per layer, by its ``source``.

``"other_prompt"`` / ``"same_prompt"``: the residual of an ICL prompt at its answer position (another prompt
of the same task, or the prompt's own; :func:`tv_lens.interventions.prompting.vector_sources` picks it), read
for every layer in one pass (:func:`tv_lens.probes.collect`). ``"task_mean"``: the prompt's task mean, from
given :class:`~tv_lens.task_vectors.TaskVectors` or over the ICL prompts themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.analyses.patching import check_vectors
from tv_lens.errors import TaskError
from tv_lens.interventions.prompting import vector_sources
from tv_lens.probes import collect
from tv_lens.stats import group_means
from tv_lens.task_vectors import TaskVectors

__all__ = ["prompting_vectors"]


def prompting_vectors(
    model: Any,
    inputs: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_in"],
    answer_pos: Int[Tensor, " batch"],
    attention_mask: Int[Tensor, "batch pos"] | None,
    ids: Int[Tensor, " batch"],
    task_names: Sequence[str],
    layers: tuple[int, ...],
    site: str,
    source: str,
    vectors: TaskVectors | None,
    batch_size: int,
    queries: Int[Tensor, " batch"] | None = None,
) -> tuple[Float[Tensor, "layer batch d_model"], Int[Tensor, " batch"]]:
    """Each zero-shot prompt's vector per layer ``[layer, prompt, d_model]``, and its ICL prompt (-1: a mean).

    ``inputs``, ``answer_pos`` and ``attention_mask`` are the ICL prompts, ``ids`` their tasks (checked);
    ``vectors`` serve ``source="task_mean"`` when given (else the task means of these prompts); ``queries`` (an id
    per prompt's query) make ``"other_prompt"`` take the vector of a prompt of another query.

    Raises:
        TaskError: ``vectors`` without a prompt's task; ``"other_prompt"`` without another prompt of the task (of
            another query).
        ShapeError: ``vectors`` that are not ``TaskVectors`` or do not fit the model.
    """
    none = torch.full((len(ids),), -1, dtype=torch.long)
    if source == "task_mean" and vectors is not None:
        check_vectors(vectors, model)
        missing = sorted({task_names[t] for t in ids.tolist()} - set(vectors.task_names))
        if missing:
            raise TaskError(
                f"The task vectors have no vector for tasks {missing} of these prompts (they cover "
                f"{list(vectors.task_names)}); build them from prompts of every task."
            )
        rows = torch.tensor([vectors.task_index(task_names[t]) for t in ids.tolist()])
        columns = [vectors.layer_index(layer) for layer in layers]
        return vectors.vectors[rows][:, columns].transpose(0, 1), none
    partner = none if source == "task_mean" else vector_sources(ids, task_names, source, queries)  # before the pass
    reps = collect(
        model, inputs, answer_pos, layers, site, attention_mask=attention_mask, batch_size=batch_size, progress=False
    )
    if source == "task_mean":
        return _task_means(reps.activations, ids, len(task_names)), partner
    return reps.activations[:, partner], partner


def _task_means(activations: Tensor, ids: Tensor, n_tasks: int) -> Tensor:
    """Each prompt's task mean of ``activations [layer, prompt, d]`` (float64 sums, cast back)."""
    means = group_means(activations.transpose(1, 2), ids, n_tasks).transpose(1, 2)  # [layer, task, d]
    return means[:, ids.to(means.device)].to(activations.dtype)
