"""The averages behind task vectors: residuals at demonstration positions, and means over each task's prompts.

:meth:`tv_lens.task_vectors.TaskVectors.from_model` reads one row per prompt (the query's pre-answer residual, or
the mean over its demonstrations' pre-answer tokens, :func:`demo_means`) and averages the rows of each task
(:func:`task_means`), in float64.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.errors import AnalysisError, NonFiniteError
from tv_lens.models.adapter import ModelAdapter
from tv_lens.models.running import HookFn, read_batches
from tv_lens.positions import check_batch_size, prepare_prompts
from tv_lens.stats import group_means
from tv_lens.tasks import ICLBatch, RegressionBatch

__all__ = ["demo_means", "kept_task_means", "task_means"]


def demo_means(
    adapter: ModelAdapter,
    batch: ICLBatch | RegressionBatch,
    layers: tuple[int, ...],
    site: str,
    batch_size: int,
    progress: bool,
) -> tuple[Float[Tensor, "layer prompt d_model"], Int[Tensor, " prompt"]]:
    """Per prompt, the mean residual over its demonstrations' pre-answer tokens; and its number of them."""
    check_batch_size(batch_size)
    prompts = prepare_prompts(adapter, batch.inputs, batch.answer_pos, batch.attention_mask)
    positions = batch.demo_answer_pos.cpu() - prompts.shift[:, None]
    valid = batch.demo_answer_pos.cpu() >= 0
    counts = valid.sum(-1)
    names = [adapter.hook_name(site, layer) for layer in layers]
    sums = torch.zeros(len(layers), len(batch), adapter.d_model, dtype=torch.float64)
    has_demo = (counts > 0).nonzero().flatten()
    last = torch.where(valid, positions, 0).amax(-1)[has_demo] if len(has_demo) else torch.zeros(0, dtype=torch.long)

    def hooks_for(chunk: Tensor) -> list[tuple[str, HookFn]]:
        index = has_demo[chunk]
        pos, keep = positions[index].clamp(min=0).to(adapter.device), valid[index].to(adapter.device)
        return [
            (name, partial(_sum_rows, store=sums[i], index=index, pos=pos, valid=keep)) for i, name in enumerate(names)
        ]

    inputs = prompts.inputs[has_demo.to(prompts.inputs.device)]
    read_batches(adapter, inputs, last + 1, batch_size, hooks_for, desc="task vectors", progress=progress)
    if not bool(torch.isfinite(sums).all()):
        raise NonFiniteError("NaN or infinite activations at demonstration positions; check the model's weights.")
    means = sums / counts.clamp(min=1)[None, :, None]
    return means.to(adapter.dtype), (counts > 0).long()


def _sum_rows(activation: Tensor, hook: Any, *, store: Tensor, index: Tensor, pos: Tensor, valid: Tensor) -> None:
    """Hook body: sum each prompt's rows at its demonstration positions into ``store[index]``."""
    rows = torch.arange(len(pos), device=activation.device)[:, None]
    picked = activation[rows, pos.to(activation.device)] * valid[..., None].to(activation.device)
    store[index] = picked.sum(1).detach().to("cpu", torch.float64)


def kept_task_means(
    per_prompt: Float[Tensor, "layer prompt d_model"], ids: Int[Tensor, " prompt"], keep: list[int], weights: Tensor
) -> tuple[Float[Tensor, "task layer d_model"], Int[Tensor, " task"]]:
    """Mean over the prompts of each kept task (prompts with weight 0 left out), in float64 then cast back."""
    members = weights > 0
    n_tasks = max(int(ids.max()), *keep) + 1
    means = group_means(per_prompt[:, members].movedim(1, -1), ids[members], n_tasks)  # [layer, d_model, task]
    counts = torch.bincount(ids[members], minlength=n_tasks)
    return means[..., keep].permute(2, 0, 1).to(per_prompt.dtype), counts[keep]


def task_means(
    per_prompt: Tensor, weights: Tensor, batch: ICLBatch | RegressionBatch, keep: list[int], reduce: str
) -> tuple[Float[Tensor, "task layer d_model"], tuple[str, ...], Int[Tensor, " task"], Int[Tensor, " task"]]:
    """Per kept task: the mean of its prompts' rows (weight 0 left out), its name, its prompts and its positions."""
    ids = batch.task_ids.cpu()
    names = tuple(batch.task_names[t] for t in keep)
    empty = [batch.task_names[t] for t in keep if not bool(((ids == t) & (weights > 0)).any())]
    if empty:
        raise AnalysisError(
            f"Tasks {empty} have no prompt with demonstrations, so reduce='mean_over_demo_positions' has nothing "
            "to average; sample prompts with n_shots >= 1 or use reduce='mean_over_prompts'."
        )
    vectors, n_prompts = kept_task_means(per_prompt, ids, keep, weights)
    if reduce == "mean_over_prompts":
        n_positions = n_prompts.clone()
    else:
        shots = (batch.demo_answer_pos.cpu() >= 0).sum(-1)
        n_positions = torch.tensor([int(shots[ids == t].sum()) for t in keep], dtype=torch.long)
    return vectors, names, n_prompts, n_positions
