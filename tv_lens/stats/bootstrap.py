"""Stratified percentile bootstrap of per-prompt scores: confidence intervals of means per group and overall.

Prompts are resampled with replacement *within each group* (task), so every resample keeps the design's
number of prompts per task; the overall mean of a resample is the mean over all its prompts. The interval
is the ``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles of the resampled means (linear interpolation). The
same resampled prompt indices serve every leading entry (e.g. every layer), so intervals of different
layers are paired. Draws come from a local ``torch.Generator`` seeded with ``seed``: the same call gives
the same intervals. A resample's sum is the product of the values with how often it drew each prompt, so no
``[*lead, resample, prompt]`` copy of the values is made.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.checks import is_int, is_number
from tv_lens.errors import AnalysisError
from tv_lens.stats.groups import check_groups, group_means
from tv_lens.tasks.pool import seeded_generator

__all__ = ["TaskMeans", "check_bootstrap", "stratified_bootstrap_ci", "task_means"]


class TaskMeans(NamedTuple):
    """Means of per-prompt values per task and over the chosen prompts, with their bootstrap intervals."""

    per_task: Float[Tensor, "*lead task"]
    per_task_ci: Float[Tensor, "*lead task 2"]
    overall: Float[Tensor, "*lead"]
    overall_ci: Float[Tensor, "*lead 2"]


def task_means(
    values: Float[Tensor, "*lead prompt"],
    groups: Int[Tensor, " prompt"],
    n_groups: int,
    overall_of: Bool[Tensor, " prompt"],
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    present: Bool[Tensor, "*#lead prompt"] | None = None,
) -> TaskMeans:
    """The mean of ``values`` per task (every prompt) and over the prompts ``overall_of`` (e.g. every task but Null).

    The intervals are :func:`stratified_bootstrap_ci`'s, with the same settings and seed for both. ``present``
    (broadcastable to ``values``; ``None``: all) says which values count: each mean is over the prompts it marks.
    """
    per_task_ci, _ = stratified_bootstrap_ci(values, groups, n_groups, n_bootstrap, ci, seed, present)
    chosen = None if present is None else present[..., overall_of]
    _, overall_ci = stratified_bootstrap_ci(
        values[..., overall_of], groups[overall_of], n_groups, n_bootstrap, ci, seed, chosen
    )
    if chosen is None:
        overall = values[..., overall_of].mean(-1)
    else:
        overall = group_means(values[..., overall_of], torch.zeros_like(groups[overall_of]), 1, chosen)[..., 0]
    return TaskMeans(group_means(values, groups, n_groups, present), per_task_ci, overall, overall_ci)


def stratified_bootstrap_ci(
    values: Float[Tensor, "*lead prompt"],
    groups: Int[Tensor, " prompt"],
    n_groups: int,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    present: Bool[Tensor, "*#lead prompt"] | None = None,
) -> tuple[Float[Tensor, "*lead group 2"], Float[Tensor, "*lead 2"]]:
    """Percentile intervals of the mean of ``values`` per group and over all prompts.

    Args:
        values: Per-prompt scores (e.g. 1.0 where a prediction is right), any leading dims.
        groups: Group (task) of each prompt, in ``0 .. n_groups - 1``.
        n_groups: Number of groups; a group without prompts gets NaN intervals.
        n_bootstrap: Resamples; 0 gives NaN intervals (no bootstrap).
        ci: Confidence level in (0, 1).
        seed: Seed of the local generator.
        present: Which values count, broadcastable to ``values`` (``None``: all). A resample's mean is over the
            values it drew that count; resamples that drew none are left out of the quantiles, and an entry with no
            value that counts gets NaN.

    Returns:
        ``(per_group, overall)`` intervals, the last dim holding (low, high).

    Raises:
        AnalysisError: An unusable ``n_bootstrap`` or ``ci``.
        ShapeError: ``groups`` that are not integer groups in ``[0, n_groups)`` (a prompt outside would be left out of
            the overall interval).
    """
    check_bootstrap(n_bootstrap, ci)
    check_groups(groups, n_groups, "groups")
    generator = seeded_generator(seed)  # checked even when unused, so a bad seed is never silently ignored
    values = values.double()
    lead = values.shape[:-1]
    per_group = torch.full((*lead, n_groups, 2), float("nan"), dtype=torch.float64)
    overall = torch.full((*lead, 2), float("nan"), dtype=torch.float64)
    if n_bootstrap == 0 or groups.numel() == 0:  # check_groups: every id names a group
        return per_group, overall
    weights = None if present is None else present.to(values.device, torch.float64)  # broadcast against values
    if weights is not None:
        values = torch.where(weights > 0, values, 0.0)  # a value that does not count adds nothing, even NaN
    quantile = torch.quantile if weights is None else torch.nanquantile
    quantiles = torch.tensor([(1 - ci) / 2, (1 + ci) / 2], dtype=torch.float64)
    total = torch.zeros((*lead, n_bootstrap), dtype=torch.float64)
    n_total: Tensor | int = 0
    for g in range(n_groups):
        members = (groups == g).nonzero().flatten()
        if len(members) == 0:
            continue
        draws = torch.randint(len(members), (n_bootstrap, len(members)), generator=generator)
        # how often each resample drew each member [member, n_bootstrap]: a resample's sum is a product with it,
        # without a [*lead, n_bootstrap, member] copy of the values
        times = torch.zeros(n_bootstrap, len(members), dtype=torch.float64)
        times = times.scatter_add_(1, draws, torch.ones_like(times)).T.to(values.device)
        sums = values[..., members] @ times  # [*lead, n_bootstrap]
        counted = len(members) if weights is None else weights[..., members] @ times
        total += sums
        n_total = n_total + counted
        per_group[..., g, :] = quantile(sums / counted, quantiles, dim=-1).movedim(0, -1)
    overall[:] = quantile(total / n_total, quantiles, dim=-1).movedim(0, -1)
    return per_group, overall


def check_bootstrap(n_bootstrap: int, ci: float) -> None:
    """Raise :class:`AnalysisError` for an unusable number of resamples or confidence level."""
    if not is_int(n_bootstrap) or n_bootstrap < 0:
        raise AnalysisError(f"n_bootstrap must be an int >= 0 (0: no intervals), got {n_bootstrap!r}.")
    if not is_number(ci) or not 0 < ci < 1:
        raise AnalysisError(f"ci is a confidence level in (0, 1), e.g. 0.95; got {ci!r}.")
