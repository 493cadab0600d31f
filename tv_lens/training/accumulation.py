"""One training step's gradient, over micro-batches when the step's batch does not fit in one pass.

A step's loss is a mean over terms (answer tokens, or predictions). Split into micro-batches, each micro-batch's
mean loss is scaled by its share of the step's terms before its backward pass, so the accumulated gradient is the
whole batch's gradient (up to floating-point summation order; dropout draws its masks per pass). A step that runs
out of accelerator memory halves its micro-batch and starts again from zero gradients
(:func:`tv_lens.models.memory.fitting`), and the later steps start from the size that fitted: the optimisation is
the same, only the passes are smaller. Steps with TVP-loss are not split (each zero-shot query takes the vector of
another prompt of the batch), nor are steps of an objective that does not count its loss terms (a
``loss_terms(batch)`` method, which the built-in objectives have).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tv_lens.models.adapter import ModelAdapter
from tv_lens.models.memory import fitting
from tv_lens.training.config import TVPConfig
from tv_lens.training.objectives import Objective
from tv_lens.training.tvp_loss import Losses, training_loss

__all__ = ["loss_counter", "step_gradients"]


def step_gradients(
    adapter: ModelAdapter,
    objective: Objective,
    batch: Any,
    tvp: TVPConfig | None,
    micro_batch: int | None,
    parameters: list[nn.Parameter],
) -> tuple[Losses, int | None]:
    """Replace the gradients of ``parameters`` by the step's gradient (left as they were if the step fails).

    Args:
        adapter: The model.
        objective: The step's loss.
        batch: The step's prompts.
        tvp: TVP-loss settings (``None``: the plain loss); a step with TVP-loss runs in one pass.
        micro_batch: Prompts per pass (``None``: the whole batch; it halves after running out of memory).
        parameters: What the optimiser trains (their gradients start from zero at every attempt).

    Returns:
        The step's losses (detached), and the micro-batch size that fitted (what the next step starts from).
    """
    count = loss_counter(objective)
    if tvp is not None or count is None:
        return _one_pass(adapter, objective, batch, tvp, parameters), micro_batch
    total = count(batch)

    def attempt(size: int) -> Losses:
        if size >= len(batch):
            return _one_pass(adapter, objective, batch, None, parameters)
        before = [parameter.grad for parameter in parameters]  # a failed attempt puts them back
        try:
            loss = torch.zeros((), dtype=torch.float64)
            for start in range(0, len(batch), size):
                chunk = batch.select(slice(start, start + size))
                part = objective.context_loss(adapter, chunk) * (count(chunk) / total)
                if start == 0:
                    _zero(parameters)
                part.backward()
                loss += part.detach().double().cpu()
        except BaseException:
            for parameter, grad in zip(parameters, before, strict=True):
                parameter.grad = grad
            raise
        return Losses(loss, loss)

    losses, size = fitting(attempt, micro_batch or len(batch), "DataConfig.micro_batch")
    return losses, None if micro_batch is None and size >= len(batch) else size


def loss_counter(objective: Objective) -> Callable[[Any], int] | None:
    """The objective's ``loss_terms(batch)`` (how many terms its ``context_loss`` averages over), if it has one."""
    count = getattr(objective, "loss_terms", None)
    return count if callable(count) else None


def _one_pass(
    adapter: ModelAdapter, objective: Objective, batch: Any, tvp: TVPConfig | None, parameters: list[nn.Parameter]
) -> Losses:
    losses = training_loss(adapter, objective, batch, tvp)  # a fault in the forward pass leaves the gradients
    _zero(parameters)
    losses.total.backward()
    return Losses(losses.total.detach(), losses.icl.detach(), None if losses.tvp is None else losses.tvp.detach())


def _zero(parameters: list[nn.Parameter]) -> None:
    for parameter in parameters:
        parameter.grad = None
