"""Per-head means and causal indirect effects: which heads carry an in-context task to the answer position.

Todd et al. (2024) average each head's output (``attn.hook_z``) at the answer position over clean ICL prompts of a
task, then write that mean into one head of prompts whose demonstrations carry wrong labels and measure how much it
restores the right answer: the head's causal indirect effect (CIE). :mod:`tv_lens.analyses.function_vectors` sums
the heads of largest CIE into a function vector; see it for the method and its options.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tv_lens.analyses.answers import answer_scores, prompt_task_ids
from tv_lens.analyses.options import CausalOptions, PassOptions, analysis_config
from tv_lens.analyses.prompt_batches import LabelledPrompts, aligned_with_answers, check_prompts
from tv_lens.checks import check_tensor_data, is_number
from tv_lens.errors import AnalysisError, NonFiniteError, ShapeError, TaskError
from tv_lens.interventions import ablate_head
from tv_lens.interventions.sweep import Cell, align, run_sweep
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.running import HookFn, read_batches
from tv_lens.results.function_vectors import IndirectEffects, MeanHeadActivations
from tv_lens.stats import group_means
from tv_lens.stats.bootstrap import stratified_bootstrap_ci

if TYPE_CHECKING:
    from tv_lens.analyses.function_vectors import FunctionVectors  # which imports this module

__all__ = ["IndirectEffects", "MeanHeadActivations", "causal_indirect_effects", "check_means", "mean_head_activations"]


def mean_head_activations(
    model: Any,
    prompts: LabelledPrompts,
    *,
    layers: Sequence[int] | None = None,
    config: FunctionVectors | None = None,
) -> MeanHeadActivations:
    """Each head's mean ``attn.hook_z`` at the answer position, per task with prompts (float64 sums).

    The options are the attributes of :class:`~tv_lens.analyses.FunctionVectors` read here: ``batch_size`` and
    ``progress``.

    Args:
        model: A TransformerLens model.
        prompts: Clean ICL prompts (an ``ICLBatch``, or :class:`~tv_lens.analyses.Prompts`, whose ``answers`` may be
            ``None``: none are read): tokens, answer positions, task ids and names (tasks without prompts are left
            out), and the attention mask (needed for left padding).
        layers: Blocks to read (default: every block).
        config: The options (``None``: ``FunctionVectors()``).

    Raises:
        ModelNotSupportedError: The model's ``attn.hook_z`` is not ``[batch, pos, n_heads, d_head]``.
        TaskError: ``prompts`` without a field of :class:`~tv_lens.analyses.LabelledPrompts` (e.g. a tensor).
    """
    options = analysis_config(config, PassOptions, "FunctionVectors")  # None: the defaults of its pass options
    adapter = adapt(model)
    layers = tuple(range(adapter.n_layers)) if layers is None else adapter.check_layers(layers)
    check_prompts(prompts)
    task_names = prompts.task_names
    aligned = align(model, prompts.inputs, prompts.answer_pos, prompts.attention_mask)
    ids = prompt_task_ids(prompts.task_ids, task_names, len(aligned))
    n_tasks = len(task_names)
    sums = torch.zeros(n_tasks, len(layers), adapter.n_heads, adapter.d_head, dtype=torch.float64)

    def hooks_for(index: Tensor) -> list[tuple[str, HookFn]]:
        pos = aligned.answer_pos[index]
        weights = torch.nn.functional.one_hot(ids[index], n_tasks).double()  # [prompt, task]
        return [
            (
                adapter.hook_name("attn.hook_z", layer),
                partial(_sum_z, adapter=adapter, store=sums[:, i], pos=pos, weights=weights),
            )
            for i, layer in enumerate(layers)
        ]

    ends = aligned.answer_pos + 1
    read_batches(
        adapter,
        aligned.inputs,
        ends,
        options.batch_size,
        hooks_for,
        stores=(sums,),
        desc="head means",
        progress=options.progress,
    )
    counts = torch.bincount(ids, minlength=n_tasks)
    present = counts.nonzero().flatten()
    means = sums[present] / counts[present, None, None, None].double()
    return MeanHeadActivations(means, tuple(task_names[t] for t in present.tolist()), layers, counts[present])


def _sum_z(
    activation: Tensor, hook: Any, *, adapter: ModelAdapter, store: Tensor, pos: Tensor, weights: Tensor
) -> None:
    """Hook body: add each prompt's ``hook_z`` at its answer position into its task's sum."""
    adapter.check_head_outputs(activation, hook.name)
    rows = torch.arange(len(pos), device=activation.device)
    picked = activation[rows, pos.to(activation.device)].detach().to("cpu", torch.float64)
    store += torch.einsum("pt,phd->thd", weights, picked)


def causal_indirect_effects(
    model: Any,
    prompts: LabelledPrompts,
    means: MeanHeadActivations,
    *,
    label_noise: float = 0.0,
    config: FunctionVectors | None = None,
    seed: int = 0,
) -> IndirectEffects:
    """CIE of every head of ``means.layers``: its task mean written at the answer position of corrupted prompts.

    The options are the attributes of :class:`~tv_lens.analyses.FunctionVectors` read here: ``n_bootstrap``,
    ``ci``, ``rows_per_pass`` and ``progress``.

    Args:
        model: A TransformerLens model.
        prompts: Corrupted ICL prompts (demonstrations with wrong labels; an ``ICLBatch``, or
            :class:`~tv_lens.analyses.Prompts`): tokens, answer positions, the right answer tokens
            ``[batch, n_answer]`` (``-1`` pads shorter answers), task ids and names (every task with a mean in
            ``means``), and the attention mask (needed for left padding).
        means: Mean head activations of clean prompts (:func:`mean_head_activations`).
        label_noise: The share of wrong demonstration labels in the prompts (recorded on the result).
        config: The options (``None``: ``FunctionVectors()``).
        seed: Seed of the bootstrap.

    Raises:
        TaskError: A prompt's task has no mean activation; ``prompts`` without a field of
            :class:`~tv_lens.analyses.LabelledPrompts`.
        ShapeError: ``means`` from a model with other head sizes.
        NonFiniteError: ``means`` hold NaN or infinite values.
        AnalysisError: ``label_noise`` is not a number in ``[0, 1]``.
    """
    options = analysis_config(config, CausalOptions, "FunctionVectors")  # None: the defaults of its causal options
    adapter = adapt(model)
    check_means(adapter, means)
    if not is_number(label_noise) or not 0 <= label_noise <= 1:
        raise AnalysisError(
            f"label_noise must be a number in [0, 1] (the share of wrong demonstration labels in the corrupted "
            f"prompts, recorded on the result), got {label_noise!r}; e.g. 0.99."
        )
    aligned, answers = aligned_with_answers(model, prompts)
    task_names = prompts.task_names
    ids = _mean_ids(prompt_task_ids(prompts.task_ids, task_names, len(aligned)), task_names, means)
    per_prompt = means.activations[ids]  # [prompt, layer, head, d_head]
    heads = [(i, layer, head) for i, layer in enumerate(means.layers) for head in range(means.n_heads)]
    cells = [
        Cell((ablate_head(layer, head, "mean", mean=per_prompt[:, i, head], pos="answer"),)) for i, layer, head in heads
    ]
    score = partial(_score, answers=answers)
    sweep = run_sweep(
        model, aligned, cells, score, rows_per_pass=options.rows_per_pass, progress=options.progress, desc="CIE"
    )
    shape = (len(means.layers), means.n_heads, len(aligned))
    patched_prob, patched_loss = sweep.cells[..., 0].reshape(shape), sweep.cells[..., 1].reshape(shape)
    corrupted_prob, corrupted_loss = sweep.clean[:, 0], sweep.clean[:, 1]
    effect = patched_prob - corrupted_prob
    n_tasks = len(means.task_names)
    cie_ci, overall_ci = stratified_bootstrap_ci(effect, ids, n_tasks, options.n_bootstrap, options.ci, seed)
    return IndirectEffects(
        layers=means.layers,
        task_names=means.task_names,
        task_ids=ids,
        corrupted_prob=corrupted_prob,
        corrupted_loss=corrupted_loss,
        patched_prob=patched_prob,
        patched_loss=patched_loss,
        cie=group_means(effect, ids, n_tasks),
        cie_ci=cie_ci,
        overall=effect.mean(-1),
        overall_ci=overall_ci,
        writes=torch.tensor([w[0] for w in sweep.writes], dtype=torch.long).view(shape[:2]),
        label_noise=float(label_noise),
        ci_level=options.ci,
        n_bootstrap=options.n_bootstrap,
        seed=seed,
        rows_per_pass=sweep.rows_per_pass,
    )


def _score(logits: Tensor, index: Tensor, *, answers: Tensor) -> Tensor:
    """Probability of the first answer token and the teacher-forced loss over every answer token (float64)."""
    target = answers[index].to(logits.device)
    _, loss = answer_scores(logits, target)
    prob = logits[:, 0].double().softmax(-1).gather(-1, target[:, :1]).squeeze(-1)
    return torch.stack([prob, loss], dim=1).cpu()


def check_means(adapter: ModelAdapter, means: MeanHeadActivations) -> None:
    """Raise unless ``means`` are finite :class:`MeanHeadActivations` of this model's heads and blocks."""
    if not isinstance(means, MeanHeadActivations):
        raise ShapeError(f"means must be MeanHeadActivations (from mean_head_activations), got {type(means).__name__}.")
    if tuple(means.activations.shape[2:]) != (adapter.n_heads, adapter.d_head):
        raise ShapeError(
            f"The mean head activations are [head={means.activations.shape[2]}, d_head={means.activations.shape[3]}] "
            f"but the model has {adapter.n_heads} heads of width {adapter.d_head}; compute them on this model."
        )
    check_tensor_data(means.activations, "The mean head activations")
    if not bool(torch.isfinite(means.activations).all()):
        raise NonFiniteError(
            "The mean head activations hold NaN or infinite values; compute them again with mean_head_activations "
            "from clean prompts of a model whose outputs are finite (check its weights with torch.isfinite)."
        )
    adapter.check_layers(means.layers)


def _mean_ids(ids: Tensor, task_names: Sequence[str], means: MeanHeadActivations) -> Tensor:
    """Each prompt's task as an index into ``means.task_names``."""
    missing = sorted({task_names[t] for t in ids.unique().tolist()} - set(means.task_names))
    if missing:
        raise TaskError(
            f"No mean head activations for tasks {missing} (they cover {list(means.task_names)}); compute them from "
            "clean prompts of every task, or leave those prompts out."
        )
    lookup = torch.tensor([means.task_names.index(name) if name in means.task_names else -1 for name in task_names])
    return lookup[ids]
