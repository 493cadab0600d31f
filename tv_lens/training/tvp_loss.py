"""TVP-loss: train the model so that one layer's residual at the query carries the task on its own.

Task-vector prompting (Hendel et al.; Yang et al.) reads the residual stream of an ICL prompt at its
pre-answer position at block ``l`` and writes it into a *zero-shot* prompt (the query alone) at the same
block and position; if the vector carries the task, the zero-shot prompt is then answered correctly.
Yang et al. make this an auxiliary objective::

    loss = L_ICL + λ · L_TVP

``L_ICL`` is the usual loss at every answer of the context pass. ``L_TVP`` is the query-answer loss of
the zero-shot pass (``batch.zero_shot()``) into which the vector is injected. The vector is captured by a
hook *in the same context pass* that computes ``L_ICL`` (no extra pass), and injected by the prompting core the
TVP analysis uses too (:mod:`tv_lens.interventions.prompting`: which prompt gives each query its vector, the
write, the zero-shot pass). Unless ``detach=True``, gradients of ``L_TVP`` flow back through the vector into the
blocks up to ``l`` of the context pass.

Yang et al. extract the vector from a context pass that does not hold the test query. By default
(``source="other_prompt"``) each zero-shot query therefore gets the vector of *another* prompt of its
task in the batch, the next one whose query differs (:func:`vector_partners`): read at that prompt's pre-answer
position, it carries the task, not this query's answer, so the loss cannot be lowered by copying an answer through the
vector. A prompt whose task has no prompt of another query in the batch has no TVP term. ``source="same_prompt"``
takes the prompt's own vector (which also holds its query).

Assumptions (Yang et al.'s details were not verified): the vector is the block's output (``resid_post``)
at the pre-answer position and is written at the zero-shot query's pre-answer position; the zero-shot
answer loss is averaged over all prompts, Null-task ones included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tv_lens.errors import ConfigError, HookNotFoundError, TaskError
from tv_lens.interventions.prompting import check_inject_mode, prompted_outputs, vector_sources
from tv_lens.models import adapt
from tv_lens.models.adapter import ModelAdapter
from tv_lens.models.exclusive import evaluating
from tv_lens.positions import prepare_prompts
from tv_lens.probes import collect, prompt_ids
from tv_lens.tasks import ICLBatch, RegressionBatch
from tv_lens.training.config import TVPConfig
from tv_lens.training.objectives import Objective, RegressionObjective, TokenObjective, check_objective

__all__ = ["Losses", "training_loss", "tvp_accuracy", "tvp_losses"]


@dataclass(frozen=True)
class Losses:
    """The loss of one training step and its parts (scalars, attached to the graph).

    Attributes:
        total: What is minimised: ``icl + λ · tvp`` (or ``icl`` alone).
        icl: Mean loss at every answer of the context pass.
        tvp: Query-answer loss of the zero-shot pass with the injected vector (``None`` without TVP-loss).
    """

    total: Tensor
    icl: Tensor
    tvp: Tensor | None = None


def training_loss(adapter: ModelAdapter, objective: Objective, batch: Any, tvp: TVPConfig | None) -> Losses:
    """The loss of one step: plain ICL loss, or ICL + TVP-loss when ``tvp`` is given."""
    if tvp is None:
        icl = objective.context_loss(adapter, batch)
        return Losses(icl, icl)
    return _tvp_losses(adapter, batch, tvp, objective)


def tvp_losses(
    model: Any, batch: ICLBatch | RegressionBatch, tvp: TVPConfig, objective: Objective | None = None
) -> Losses:
    """``L_ICL``, ``L_TVP`` and ``L_ICL + λ·L_TVP`` of a batch, with gradients through the vector unless detached.

    Args:
        model: A TransformerLens model (or its adapter).
        batch: ICL prompts; their zero-shot twins are built with ``batch.zero_shot()``.
        tvp: Layer, λ, replace/add and detach.
        objective: How answers are scored (default: token cross-entropy, or squared error for a
            :class:`~tv_lens.tasks.RegressionBatch`).
    """
    if not isinstance(tvp, TVPConfig):
        raise ConfigError(f"tvp must be a TVPConfig, got {tvp!r:.60}; build one, e.g. TVPConfig(layer=1, lam=1.0).")
    _check_batch(batch)
    adapter = adapt(model)
    prepare_prompts(adapter, batch.inputs, batch.answer_pos, batch.attention_mask)  # ids and length fit the model
    return _tvp_losses(adapter, batch, tvp, objective)


def _tvp_losses(
    model: Any, batch: ICLBatch | RegressionBatch, tvp: TVPConfig, objective: Objective | None = None
) -> Losses:
    """:func:`tvp_losses` without checking its arguments (each training step)."""
    adapter = adapt(model)
    adapter.check_layer(tvp.layer)
    objective = _default_objective(batch) if objective is None else check_objective(objective)
    captured: list[Tensor] = []

    def grab(activation: Tensor, hook: Any) -> None:
        rows = torch.arange(activation.shape[0], device=activation.device)
        captured.append(activation[rows, batch.answer_pos.to(activation.device)])

    name = adapter.hook_name("resid_post", tvp.layer)
    icl = objective.context_loss(adapter, batch, hooks=[(name, grab)])
    if not captured:
        raise HookNotFoundError(
            f"The context pass never called hook point {name!r}, so no task vector was read for the TVP-loss. "
            "Train a model that calls it in its forward pass (every TransformerLens model does)."
        )
    vectors = captured[0].detach() if tvp.detach else captured[0]
    zero_shot = batch.zero_shot()
    partner = vector_partners(adapter, batch, zero_shot, tvp.source)
    paired = partner >= 0
    if not bool(paired.any()):  # every prompt's task shares one query: no vector leaves a query out
        return Losses(icl, icl, torch.full((), torch.nan))
    zero_shot = zero_shot.select(paired)
    vectors = vectors[partner[paired].to(vectors.device)]
    term = objective.answer_loss(prompted_outputs(adapter, zero_shot, vectors, tvp.layer, tvp.mode), zero_shot).mean()
    return Losses(icl + tvp.lam * term, icl, term)


def vector_partners(
    model: Any, batch: ICLBatch | RegressionBatch, zero_shot: ICLBatch | RegressionBatch, source: str
) -> Tensor:
    """The ICL prompt each zero-shot query gets its vector from: ``-1`` where ``"other_prompt"`` finds none.

    ``"other_prompt"`` takes the next prompt of the task whose query differs (a prompt of the same query would carry
    its answer), as the analysis does; a prompt without one has no TVP term (a batch drawn at random can hold a task
    whose prompts all share a query).
    """
    queries = None
    if source == "other_prompt":
        queries = prompt_ids(model, zero_shot.inputs, zero_shot.answer_pos, zero_shot.attention_mask)
    return vector_sources(batch.task_ids.cpu(), batch.task_names, source, queries, unpaired=True)


@torch.no_grad()
def tvp_accuracy(
    model: Any,
    batch: ICLBatch | RegressionBatch,
    layer: int,
    mode: str = "replace",
    objective: Objective | None = None,
    source: str = "other_prompt",
    batch_size: int | None = None,
) -> Float[Tensor, " batch"]:
    """Per-prompt accuracy of the zero-shot queries with a layer-``layer`` vector injected.

    Vectors are read in one pass over the whole batch (stopping after block ``layer``) at each prompt's
    pre-answer position; each query gets the vector of the prompt ``source`` names (see :class:`TVPConfig`).
    Zero-shot passes run ``batch_size`` prompts at a time (``None``: all at once). ``objective`` scores the
    answers (default: exact match of tokens, or :class:`RegressionObjective`'s tolerance for a regression batch).
    The model runs in eval mode (no dropout), and every module gets its own mode back. NaN for a prompt without a
    partner (``"other_prompt"``: its task has no prompt of another query in ``batch``).
    """
    _check_batch(batch)
    check_inject_mode(mode)
    adapter = adapt(model)
    adapter.check_layer(layer)
    objective = _default_objective(batch) if objective is None else check_objective(objective)
    reps = collect(
        adapter,
        batch.inputs,
        batch.answer_pos,
        [layer],
        attention_mask=batch.attention_mask,
        batch_size=batch_size or max(len(batch), 1),
        progress=False,
    )
    zero_shot = batch.zero_shot()
    partner = vector_partners(adapter, batch, zero_shot, source)
    paired = partner >= 0
    accuracy = torch.full((len(batch),), torch.nan, dtype=torch.float64)
    if not bool(paired.any()):
        return accuracy
    zero_shot = zero_shot.select(paired)
    vectors = reps.activations[0][partner[paired]]
    with evaluating(adapter.model):  # as the vectors were read: no dropout of a model left in train mode
        outputs = prompted_outputs(adapter, zero_shot, vectors, layer, mode, batch_size)
    accuracy[paired] = objective.answer_accuracy(outputs, zero_shot).cpu().double()
    return accuracy


def _check_batch(batch: Any) -> None:
    if not isinstance(batch, (ICLBatch, RegressionBatch)):
        raise TaskError(
            f"batch must be an ICLBatch (or RegressionBatch) of prompts, got a {type(batch).__name__}; pass "
            "pool.sample(n_per_task, n_shots, seed)."
        )


def _default_objective(batch: Any) -> Objective:
    return RegressionObjective() if isinstance(batch, RegressionBatch) else TokenObjective()
