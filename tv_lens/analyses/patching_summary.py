"""Summaries of a task-vector patching sweep, from its per-prompt outputs (pure tensor code).

Per (layer, source task, target task): the mean accuracy and loss change against the unpatched run, with
stratified bootstrap intervals (prompts resampled within their task), and the override rate. Per layer:
correct patches (each prompt's own task) against incorrect ones (each prompt's mean over every other
target), with Null-task prompts left out as sources, and the pooled override rate. The definitions are
those of :mod:`tv_lens.analyses.patching`.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.errors import ShapeError
from tv_lens.results.patching import PatchingEffects, own_and_other_targets, own_targets
from tv_lens.results.shared import real_prompts
from tv_lens.stats.bootstrap import stratified_bootstrap_ci

__all__ = ["summarize_patching"]


def summarize_patching(
    correct: Float[Tensor, "layer target prompt"],
    loss: Float[Tensor, "layer target prompt"],
    predicted: Int[Tensor, "layer target prompt n_answer"],
    clean_correct: Float[Tensor, " prompt"],
    clean_loss: Float[Tensor, " prompt"],
    clean_predicted: Int[Tensor, "prompt n_answer"],
    answers: Int[Tensor, "prompt n_answer"],
    sources: Int[Tensor, " prompt"],
    source_names: tuple[str, ...],
    target_names: tuple[str, ...],
    layers: tuple[int, ...],
    writes: Int[Tensor, "layer target"],
    target_answers: Int[Tensor, "target prompt n_target_answer"] | None = None,
    **settings: Any,
) -> PatchingEffects:
    """Effects of a patching sweep from its per-prompt outputs (see :mod:`tv_lens.analyses.patching`).

    Args:
        correct: Patched correctness per (layer, target, prompt).
        loss: Patched answer cross-entropy.
        predicted: Patched argmax answer tokens.
        clean_correct: Unpatched correctness per prompt.
        clean_loss: Unpatched cross-entropy.
        clean_predicted: Unpatched argmax answer tokens.
        answers: Each prompt's answer tokens.
        sources: Each prompt's index on the source axis.
        source_names: Task of each source entry.
        target_names: Task of each target entry.
        layers: Block index of each layer entry.
        writes: Prompts each (layer, target) intervention wrote to.
        target_answers: Each target rule's answer tokens per prompt (``-1``: no rule); ``None``: no overriding.
        **settings: ``mode``, ``site``, ``scale``, ``null_task``, ``n_bootstrap``, ``ci``, ``seed`` and optionally
            ``rows_per_pass``.
    """
    n_t, n = len(target_names), len(sources)
    defined = _defined(target_answers, answers, n_t, n)
    follows = _follows(predicted, target_answers, defined)
    clean_follows = _follows(clean_predicted[None].expand(n_t, -1, -1), target_answers, defined)
    own = own_targets(source_names, target_names, sources)
    real = real_prompts(sources, source_names, settings["null_task"])
    n_s = len(source_names)
    d_acc, d_loss = correct - clean_correct, loss - clean_loss
    boot = {"n_bootstrap": settings["n_bootstrap"], "ci": settings["ci"], "seed": settings["seed"]}
    acc_ci, _ = stratified_bootstrap_ci(d_acc, sources, n_s, **boot)
    loss_ci, _ = stratified_bootstrap_ci(d_loss, sources, n_s, **boot)
    summary = _summary(d_acc, d_loss, follows, clean_follows, own, real, sources, n_s, boot)
    return PatchingEffects(
        layers=layers,
        source_names=source_names,
        target_names=target_names,
        task_ids=sources,
        clean_correct=clean_correct,
        clean_loss=clean_loss,
        correct=correct,
        loss=loss,
        follows=follows,
        clean_follows=clean_follows,
        accuracy_change=_by_source(d_acc, sources, n_s),
        accuracy_change_ci=acc_ci.permute(0, 2, 1, 3),
        loss_change=_by_source(d_loss, sources, n_s),
        loss_change_ci=loss_ci.permute(0, 2, 1, 3),
        override=_by_source(follows, sources, n_s, nan_aware=True),
        clean_override=_by_source(clean_follows, sources, n_s, nan_aware=True),
        writes=writes,
        ci_level=settings["ci"],
        n_bootstrap=settings["n_bootstrap"],
        mode=settings["mode"],
        site=settings["site"],
        scale=settings["scale"],
        null_task=settings["null_task"],
        seed=settings["seed"],
        rows_per_pass=settings.get("rows_per_pass"),
        **summary,
    )


def _defined(target_answers: Tensor | None, answers: Tensor, n_t: int, n: int) -> Tensor:
    """Where overriding is defined: the target has a rule and it differs from the prompt's own answer.

    ``target_answers`` may hold fewer answer columns than ``answers`` (text tasks give the first token only):
    the comparison then covers those columns.
    """
    if target_answers is None:
        return torch.zeros(n_t, n, dtype=torch.bool)
    target_answers = torch.as_tensor(target_answers).cpu()
    m = target_answers.shape[-1] if target_answers.ndim == 3 else 0
    if target_answers.ndim != 3 or target_answers.shape[:2] != (n_t, n) or not 1 <= m <= answers.shape[-1]:
        raise ShapeError(
            f"target_answers must be [target={n_t}, batch={n}, n_answer<={answers.shape[-1]}], got "
            f"{tuple(target_answers.shape)}."
        )
    has_rule = (target_answers >= 0).all(-1)
    return has_rule & (target_answers != answers[None, :, :m]).any(-1)


def _follows(predicted: Tensor, target_answers: Tensor | None, defined: Tensor) -> Tensor:
    """1.0 / 0.0 where the prediction equals the target rule's answer, NaN where undefined."""
    if target_answers is None:
        return torch.full(predicted.shape[:-1], float("nan"), dtype=torch.float64)
    target_answers = torch.as_tensor(target_answers).cpu()
    same = (predicted[..., : target_answers.shape[-1]] == target_answers).all(-1).double()
    return torch.where(defined, same, torch.full_like(same, float("nan")))


def _by_source(values: Tensor, sources: Tensor, n_s: int, nan_aware: bool = False) -> Tensor:
    """Mean over each source's prompts of ``values[..., target, prompt]``: ``[..., source, target]``."""
    one_hot = torch.nn.functional.one_hot(sources, n_s).double()
    if not nan_aware:
        return ((values.double() @ one_hot) / one_hot.sum(0)).transpose(-1, -2)
    known = ~torch.isnan(values)
    sums = torch.where(known, values, torch.zeros_like(values)).double() @ one_hot
    return (sums / (known.double() @ one_hot)).transpose(-1, -2)


def _summary(
    d_acc: Tensor,
    d_loss: Tensor,
    follows: Tensor,
    clean_follows: Tensor,
    own: Tensor,
    real: Tensor,
    sources: Tensor,
    n_s: int,
    boot: dict[str, Any],
) -> dict[str, Any]:
    """Correct vs incorrect changes per layer (means over prompts, bootstrap by task) and override rates."""
    n_l, n_t, _ = d_acc.shape
    others = torch.arange(n_t)[:, None] != own[None, :]  # [target, prompt]
    keep_correct = real & (own >= 0)
    keep_incorrect = real & (others.sum(0) > 0)
    out: dict[str, Any] = {}
    for name, delta in (("change", d_acc), ("loss_change", d_loss)):
        mine, other = own_and_other_targets(delta, own)  # [layer, prompt] each
        for kind, values, keep in (("correct", mine, keep_correct), ("incorrect", other, keep_incorrect)):
            key = f"{kind}_{name}"
            out[key], out[key + "_ci"] = _mean_ci(values, keep, sources, n_s, boot, n_l)
    pooled = others[None] & real[None, None, :] & ~torch.isnan(follows)
    counts = pooled.sum((1, 2)).double()
    out["override_rate"] = torch.where(pooled, follows, 0.0).sum((1, 2)) / counts
    clean_pool = others & real[None, :] & ~torch.isnan(clean_follows)
    clean_count = int(clean_pool.sum())
    rate = float(torch.where(clean_pool, clean_follows, 0.0).sum() / clean_count) if clean_count else float("nan")
    out["clean_override_rate"] = rate
    return out


def _mean_ci(
    values: Tensor, keep: Tensor, sources: Tensor, n_s: int, boot: dict[str, Any], n_l: int
) -> tuple[Float[Tensor, " layer"], Float[Tensor, "layer 2"]]:
    if not bool(keep.any()):
        nan = float("nan")
        return torch.full((n_l,), nan, dtype=torch.float64), torch.full((n_l, 2), nan, dtype=torch.float64)
    _, overall = stratified_bootstrap_ci(values[:, keep], sources[keep], n_s, **boot)
    return values[:, keep].double().mean(-1), overall
