"""The best of several options (e.g. layers), chosen on half the prompts and scored on the other half.

The best layer's value measured on the prompts that chose it is optimistic: with many layers, noise alone lifts
the maximum. Hendel et al. choose the layer on a development set and report test accuracy. :func:`held_out_best`
does the same without new prompts, both ways (cross-fitting): the prompts are split into two halves, balanced
within each group (task); the option chosen on one half scores the other half's prompts, and the other way round.
Every prompt is scored once, at an option chosen without it; the mean of these scores is the estimate, and its
interval is a stratified bootstrap of them (:func:`~tv_lens.stats.bootstrap.stratified_bootstrap_ci`, the two
choices held fixed).

>>> import torch
>>> values = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])  # [option, prompt]
>>> best = held_out_best(values, torch.tensor([0, 0, 1, 1]), 2, options=(3, 7), n_bootstrap=0)
>>> best.chosen, best.value
((7, 7), 0.75)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.checks import check_tensor_data, is_int
from tv_lens.errors import AnalysisError, ShapeError
from tv_lens.stats.bootstrap import stratified_bootstrap_ci
from tv_lens.stats.groups import check_groups
from tv_lens.tasks.sampling import seeded_generator

__all__ = ["HeldOutBest", "held_out_best", "ranked_heads", "split_halves"]


@dataclass(frozen=True)
class HeldOutBest:
    """The best option chosen on each half of the prompts and scored on the other half.

    Attributes:
        chosen: The option chosen on each half, ``(on half 0, on half 1)``; the first scores half 1's prompts,
            the second half 0's.
        half: The half (0 or 1) of each prompt ``[prompt]``.
        scores: Each prompt's value at the option chosen on the other half ``[prompt]`` (float64, on the CPU).
        value: Mean of ``scores``, the estimate of the best option's value.
        ci: Its stratified bootstrap interval ``(low, high)`` (NaN with ``n_bootstrap=0``).
    """

    chosen: tuple[Any, Any]
    half: Int[Tensor, " prompt"]
    scores: Float[Tensor, " prompt"]
    value: float
    ci: tuple[float, float]


def split_halves(groups: Int[Tensor, " prompt"], n_groups: int, seed: int = 0) -> Int[Tensor, " prompt"]:
    """Assign each prompt to half 0 or 1 at random (``seed``), balanced within each group to one prompt."""
    generator = seeded_generator(seed)
    half = torch.empty(len(groups), dtype=torch.long)
    placed = 0
    groups = groups.cpu()
    for g in range(n_groups):
        members = (groups == g).nonzero().flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        half[order] = (torch.arange(len(order)) + placed) % 2
        placed += len(order)
    return half


def held_out_best(
    values: Float[Tensor, "option prompt"],
    groups: Int[Tensor, " prompt"],
    n_groups: int,
    options: Sequence[Any],
    higher_is_better: bool = True,
    eligible: Sequence[bool] | None = None,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> HeldOutBest:
    """The option with the best mean value, chosen on one half of the prompts and scored on the other.

    Args:
        values: Per-prompt value of every option ``[option, prompt]`` (e.g. 1.0 where the answer is right).
        groups: Group (task) of each prompt, in ``0 .. n_groups - 1``; the halves are balanced within each.
        n_groups: Number of groups.
        options: The name of each option (e.g. its layer), what :attr:`HeldOutBest.chosen` holds.
        higher_is_better: Choose the highest mean (``False``: the lowest).
        eligible: Which options may be chosen (default: all); ties go to the earliest, NaN means never win.
        n_bootstrap: Resamples of the interval.
        ci: Confidence level of the interval.
        seed: Seed of the split and of the bootstrap.

    Raises:
        ShapeError: ``values``, ``groups``, ``options`` or ``eligible`` disagree in size.
        AnalysisError: fewer than two prompts, or no eligible option.
    """
    _check(values, groups, n_groups, options, higher_is_better)
    n_options, n_prompts = values.shape
    flags = [True] * n_options if eligible is None else eligible
    if isinstance(flags, (str, bytes)) or len(flags) != n_options or not all(isinstance(f, bool) for f in flags):
        raise AnalysisError(f"eligible must hold one bool per option ({n_options}), got {eligible!r}.")
    allowed = torch.tensor(list(flags), dtype=torch.bool)
    if not bool(allowed.any()):
        raise AnalysisError("eligible marks no option as eligible; mark at least one True.")
    if n_prompts < 2:
        raise AnalysisError(
            f"held_out_best needs at least two prompts (one half chooses, the other is scored), got {n_prompts}; "
            "pass more prompts."
        )
    values, groups = values.detach().cpu().double(), groups.cpu()
    half = split_halves(groups, n_groups, seed)
    sign = 1.0 if higher_is_better else -1.0
    candidates = allowed.nonzero().flatten()
    chosen = []
    for h in (0, 1):
        means = sign * values[candidates][:, half == h].mean(-1)
        chosen.append(int(candidates[torch.argmax(torch.nan_to_num(means, nan=-torch.inf))]))
    scores = values[torch.tensor(chosen)[1 - half], torch.arange(n_prompts)]
    _, interval = stratified_bootstrap_ci(scores, groups, n_groups, n_bootstrap, ci, seed)
    low, high = interval.tolist()
    return HeldOutBest((options[chosen[0]], options[chosen[1]]), half, scores, float(scores.mean()), (low, high))


def _check(values: Any, groups: Any, n_groups: Any, options: Any, higher_is_better: Any) -> None:
    """Raise a :class:`ShapeError` or :class:`AnalysisError` naming what of the arguments cannot be used."""
    if not isinstance(values, Tensor) or values.ndim != 2 or values.is_complex():
        raise ShapeError(
            "values must be a real [option, prompt] tensor, got "
            f"{type(values).__name__} {tuple(getattr(values, 'shape', ()))}."
        )
    check_tensor_data(values, "values")
    n_options, n_prompts = values.shape
    if not isinstance(groups, Tensor) or groups.shape != (n_prompts,) or groups.is_floating_point():
        raise ShapeError(
            f"groups must be a tensor of one integer group per prompt ({n_prompts}), got {type(groups).__name__} "
            f"{tuple(getattr(groups, 'shape', ()))} of {getattr(groups, 'dtype', None)}."
        )
    check_tensor_data(groups, "groups")
    if not is_int(n_groups) or n_groups < 1 or groups.dtype == torch.bool or groups.is_complex():
        raise ShapeError(f"n_groups must be an int >= 1 and groups integer ids, got {n_groups!r} and {groups.dtype}.")
    check_groups(groups, n_groups, "groups")
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence) or len(options) != n_options:
        raise ShapeError(f"options must name every option: a sequence of {n_options}, got {options!r}.")
    if not isinstance(higher_is_better, bool):
        raise AnalysisError(f"higher_is_better must be a bool, got {higher_is_better!r}.")


def ranked_heads(
    scores: Float[Tensor, "layer head"], layers: Sequence[int] | None = None, k: int | None = None
) -> tuple[tuple[int, int], ...]:
    """The ``k`` (``None``: every) ``(layer, head)`` of largest score, largest first (NaN last; ties: block, then head).

    Args:
        scores: One score per head.
        layers: Block index of each row of ``scores`` (default ``0, 1, ...``).
        k: How many heads.

    Raises:
        ShapeError: ``scores`` is not 2-D or ``layers`` does not name each of its rows.
        AnalysisError: ``k`` is not an int in ``[1, heads]``.
    """
    if scores.ndim != 2:
        raise ShapeError(f"scores must hold one score per head [layer, head], got shape {tuple(scores.shape)}.")
    blocks = range(scores.shape[0]) if layers is None else layers
    if len(blocks) != scores.shape[0]:
        raise ShapeError(
            f"layers must name the block of each of the {scores.shape[0]} rows of scores, got {len(blocks)}: "
            f"{tuple(blocks)!r:.80}."
        )
    n_heads = scores.shape[1]
    if k is not None and (not is_int(k) or not 1 <= k <= scores.numel()):
        raise AnalysisError(f"k must be an int in [1, {scores.numel()}] (the heads measured), got {k!r}.")
    order = torch.argsort(torch.nan_to_num(scores.flatten(), nan=-torch.inf), descending=True, stable=True)
    return tuple((blocks[int(i) // n_heads], int(i) % n_heads) for i in order[:k])
