"""Head importance: ablate each attention head, measure what each task loses; shared heads; pruning.

Han et al. (2025, §3.3, App. F) ablate one attention head at a time and measure the change of the task
metric over ~100 prompts per task: a (layer, head) x task importance table. Tasks that share an
algorithm share important heads (H: linear, leaky-ReLU and sparse-linear regression do; quadratic does
not). Removing the least important heads one after another (a pruning curve) shows how few heads a task
needs.

Choices, exposed as options:

- ``mode``: zero-ablation (default) or mean-ablation of ``blocks.{l}.attn.hook_z[..., h, :]`` at every
  position (H does not say which). The mean is over every prompt and every position up to the prompt's
  last answer token.
- ``metric``: ``"cross_entropy"`` (default; smooth, and what the attribution screen estimates) or
  ``"accuracy"``. Importance is the *harm*: accuracy drop or loss increase, positive when the head helps.
- Shared heads: ``"jaccard"`` (default): the Jaccard overlap of each pair of tasks' top-k heads by
  importance (``top_k`` default: a quarter of the heads); ``"spearman"``: the rank correlation of two
  tasks' importance vectors over all heads. The Null task is a row like any other.
- Pruning: heads are ordered by overall importance (least important first, ties by block then head)
  and removed cumulatively; the curve is the metric after each removal. The order is fixed by the
  single-head ablations (not re-ranked after each removal), so the removal sets are nested; the metric
  itself need not be monotone.
- Overall numbers average over the prompts of every task but Null (random answers).

Speed: every single-head ablation is a cell of a stacked sweep (several heads per forward pass, each
writing only to its own copy of the prompts; passes start at the ablated block from the clean
residual where the model allows, :mod:`tv_lens.interventions.sweep`). Attribution patching
(:mod:`tv_lens.analyses.attribution`) estimates every head's loss change from one forward and one backward
pass (linearizing each answer's log-odds, so a saturated loss does not flatten it), and its Spearman rank
agreement with the exact ablations is reported. Every ablation goes through
:func:`tv_lens.interventions.run_with_interventions`; the result records how many prompts each wrote to.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from tv_lens.analyses.answers import answer_scores, prompt_task_ids, real_task_prompts
from tv_lens.analyses.attribution import ATTRIBUTION_METHODS, head_attribution
from tv_lens.analyses.options import N_PER_TASK, CausalOptions, analysis_config
from tv_lens.analyses.prompt_batches import LabelledPrompts, PromptBatch, PromptPool, aligned_with_answers, check_pool
from tv_lens.analyses.pruning import (
    SHARED_METHODS,
    check_count,
    pruning_curve,
    pruning_order,
    shared_heads,
    spearman,
)
from tv_lens.errors import AnalysisError
from tv_lens.interventions import ablate_head
from tv_lens.interventions.sweep import AlignedPrompts, Cell, Sweep, run_sweep
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.running import HookFn, read_batches
from tv_lens.results.heads import HeadImportance, PruningCurve
from tv_lens.stats.bootstrap import task_means
from tv_lens.tasks import NULL_TASK, ShotSpec

__all__ = ["HeadAblation", "HeadImportance", "PruningCurve", "head_importance", "shared_heads"]

HEAD_METRICS: tuple[str, ...] = ("cross_entropy", "accuracy")


def head_importance(
    model: Any,
    prompts: LabelledPrompts,
    *,
    null_task: str = NULL_TASK,
    config: HeadAblation | None = None,
    seed: int = 0,
) -> HeadImportance:
    """Ablate every head (one at a time), then prune cumulatively; estimate all heads by attribution too.

    The options are the attributes of :class:`HeadAblation`.

    Args:
        model: A TransformerLens model.
        prompts: The prompts (an ``ICLBatch`` or ``RegressionBatch``, or :class:`~tv_lens.analyses.Prompts`): inputs,
            answer positions, answer tokens ``[batch, n_answer]`` (or continuous answers ``[batch, d_out]``), task
            ids and names, and the attention mask (needed for left padding).
        null_task: Name of the Null task (left out of the overall numbers).
        config: The options (``None``: ``HeadAblation()``).
        seed: Seed of the bootstrap.

    Raises:
        AnalysisError: ``config.top_k`` or ``config.prune_steps`` outside the model's heads.
        TaskError: ``prompts`` without a field of :class:`~tv_lens.analyses.LabelledPrompts` (e.g. a tensor).
    """
    config = analysis_config(config, HeadAblation)
    adapter = adapt(model)
    n_heads_total = adapter.n_layers * adapter.n_heads
    top_k = max(1, n_heads_total // 4) if config.top_k is None else config.top_k
    prune_steps = n_heads_total if config.prune_steps is None else config.prune_steps
    check_count(top_k, "top_k", 1, n_heads_total)
    check_count(prune_steps, "prune_steps", 0, n_heads_total)
    mode, metric, rows_per_pass, progress = config.mode, config.metric, config.rows_per_pass, config.progress
    aligned, answers = aligned_with_answers(model, prompts, continuous=True)
    task_names = prompts.task_names
    ids = prompt_task_ids(prompts.task_ids, task_names, len(aligned))
    real = real_task_prompts(ids, task_names, null_task, "head importance")
    values = _ablation_values(adapter, aligned, mode, config.batch_size)
    heads = [(layer, head) for layer in range(adapter.n_layers) for head in range(adapter.n_heads)]
    cells = [Cell((_ablate(layer, head, mode, values),)) for layer, head in heads]
    score = partial(_score, answers=answers)
    sweep = run_sweep(model, aligned, cells, score, rows_per_pass=rows_per_pass, progress=progress, desc="heads")
    shape = (adapter.n_layers, adapter.n_heads, len(aligned))
    ablated_correct, ablated_loss = sweep.cells[..., 0].view(shape), sweep.cells[..., 1].view(shape)
    clean_correct, clean_loss = sweep.clean[:, 0], sweep.clean[:, 1]
    harm = clean_correct - ablated_correct if metric == "accuracy" else ablated_loss - clean_loss
    means = task_means(harm, ids, len(task_names), real, config.n_bootstrap, config.ci, seed)
    estimate = (
        head_attribution(model, aligned, answers, values, config=config)
        if config.attribution
        else torch.full_like(ablated_loss, float("nan"))
    )
    exact = (ablated_loss - clean_loss)[..., real].mean(-1)
    order = pruning_order(means.overall, heads, prune_steps)
    cells = [
        Cell(tuple(_ablate(layer, head, mode, values) for layer, head in order[:k])) for k in range(1, prune_steps + 1)
    ]
    if cells:
        pruned = run_sweep(model, aligned, cells, score, rows_per_pass=rows_per_pass, progress=progress, desc="prune")
    else:
        pruned = Sweep(sweep.clean, sweep.cells[:0], (), 0, sweep.rows_per_pass)
    pruning = pruning_curve(order, sweep.clean, pruned, metric, ids, real, task_names)
    return HeadImportance(
        task_names=tuple(task_names),
        task_ids=ids,
        clean_correct=clean_correct,
        clean_loss=clean_loss,
        ablated_correct=ablated_correct,
        ablated_loss=ablated_loss,
        importance=means.per_task,
        importance_ci=means.per_task_ci,
        overall=means.overall,
        overall_ci=means.overall_ci,
        attribution=estimate,
        attribution_spearman=spearman(estimate[..., real].mean(-1).flatten(), exact.flatten()),
        attribution_method=config.attribution_method if config.attribution else None,
        shared=shared_heads(means.per_task, config.shared, top_k),
        shared_method=config.shared,
        top_k=top_k,
        pruning=pruning,
        writes=torch.tensor([w[0] for w in sweep.writes], dtype=torch.long).view(adapter.n_layers, adapter.n_heads),
        ablation_values=values.detach().cpu(),
        metric=metric,
        mode=mode,
        null_task=null_task,
        **config.interval_settings(seed),
        rows_per_pass=min(sweep.rows_per_pass, pruned.rows_per_pass),
    )


@dataclass(frozen=True)
class HeadAblation(CausalOptions):
    """Configuration of a head-importance analysis; :meth:`run` samples prompts and ablates every head.

    Attributes:
        mode: ``"zero"`` (default) or ``"mean"`` ablation of ``attn.hook_z``.
        metric: ``"cross_entropy"`` (default; the answer loss, the squared error of a continuous answer) or
            ``"accuracy"``.
        shared: ``"jaccard"`` (default) or ``"spearman"``.
        top_k: Heads per task in the Jaccard overlap (``None``: a quarter of the heads).
        prune_steps: Heads removed in the pruning curve (``None``: all).
        attribution: Also compute the attribution-patching screen.
        attribution_method: What the screen linearizes: ``"log_odds"`` (default; each answer token's
            log-odds, mapped through the exact loss, robust to a saturated loss) or ``"loss"`` (the loss).

    The keyword-only :class:`~tv_lens.analyses.options.CausalOptions` (``n_bootstrap``, ``ci``, ``rows_per_pass``,
    ``batch_size`` for the mean and the attribution estimate, ``progress``) apply too.
    """

    mode: Literal["zero", "mean"] = "zero"
    metric: str = "cross_entropy"
    shared: str = "jaccard"
    top_k: int | None = None
    prune_steps: int | None = None
    attribution: bool = True
    attribution_method: str = "log_odds"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_options(self.mode, self.metric, self.shared, self.attribution, self.attribution_method)

    def run(
        self, model: Any, pool: PromptPool, n_per_task: int = N_PER_TASK, n_shots: ShotSpec = 4, seed: int = 0
    ) -> HeadImportance:
        """Sample ``n_per_task`` prompts per task of a token, text or regression pool (seeded); :meth:`run_batch`."""
        check_pool(pool, model)
        return self.run_batch(model, pool.sample(n_per_task, n_shots, seed), seed=seed)

    def run_batch(self, model: Any, batch: PromptBatch, seed: int = 0) -> HeadImportance:
        """Head importance on a given batch."""
        return head_importance(model, batch, config=self, seed=seed)


def _check_options(mode: str, metric: str, shared: str, attribution: bool, attribution_method: str) -> None:
    if not isinstance(attribution, bool):
        raise AnalysisError(
            f"attribution must be True or False (whether to add the gradient estimate of each head), got "
            f"{attribution!r}."
        )
    if mode not in ("zero", "mean"):
        raise AnalysisError(f"Unknown ablation mode {mode!r}; use 'zero' or 'mean'.")
    if metric not in HEAD_METRICS:
        raise AnalysisError(f"Unknown head metric {metric!r}; use one of {list(HEAD_METRICS)}.")
    if shared not in SHARED_METHODS:
        raise AnalysisError(f"Unknown shared-heads method {shared!r}; use one of {list(SHARED_METHODS)}.")
    if attribution_method not in ATTRIBUTION_METHODS:
        raise AnalysisError(
            f"Unknown attribution method {attribution_method!r}; use one of {list(ATTRIBUTION_METHODS)}."
        )


def _ablation_values(
    adapter: ModelAdapter, prompts: AlignedPrompts, mode: str, batch_size: int
) -> Float[Tensor, "layer head d_head"]:
    """Zeros, or each head's mean ``hook_z`` over every prompt and position up to its last answer token."""
    shape = (adapter.n_layers, adapter.n_heads, adapter.d_head)
    if mode == "zero":
        return torch.zeros(shape, dtype=adapter.dtype)
    sums = torch.zeros(shape, dtype=torch.float64)
    total = int(prompts.ends.sum())

    def keep(activation: Tensor, hook: Any, *, layer: int, mask: Tensor) -> None:
        adapter.check_head_outputs(activation, hook.name)
        sums[layer] += (activation.double() * mask[:, :, None, None].to(activation.device)).sum((0, 1)).cpu()

    def hooks_for(index: Tensor) -> list[tuple[str, HookFn]]:
        last = prompts.ends[index]
        mask = (torch.arange(int(last.max()))[None, :] < last[:, None]).double().to(adapter.device)
        return [
            (adapter.hook_name("attn.hook_z", layer), partial(keep, layer=layer, mask=mask))
            for layer in range(adapter.n_layers)
        ]

    read_batches(adapter, prompts.inputs, prompts.ends, batch_size, hooks_for, stores=(sums,))
    return (sums / total).to(adapter.dtype)


def _ablate(layer: int, head: int, mode: str, values: Tensor) -> Any:
    if mode == "zero":
        return ablate_head(layer, head, "zero", pos="all")
    return ablate_head(layer, head, "mean", mean=values[layer, head], pos="all")


def _score(logits: Tensor, index: Tensor, *, answers: Tensor) -> Tensor:
    return torch.stack(answer_scores(logits, answers[index]), dim=1).cpu()
