"""Which heads matter together: the pruning order and curve, and the overlap of tasks' important heads.

:mod:`tv_lens.analyses.heads` measures each head alone; this module turns those numbers into a removal
order (least important first; ties by block, then head), the metric as that order is removed
cumulatively, and a task x task matrix of shared important heads (Jaccard overlap of top-k sets, or the
Spearman correlation of importance vectors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tv_lens.checks import is_int
from tv_lens.errors import AnalysisError
from tv_lens.interventions.sweep import Sweep
from tv_lens.results.heads import PruningCurve
from tv_lens.stats import group_means

__all__ = ["SHARED_METHODS", "pruning_curve", "pruning_order", "shared_heads", "spearman"]

SHARED_METHODS: tuple[str, ...] = ("jaccard", "spearman")


def shared_heads(
    importance: Float[Tensor, "layer head task"], method: str = "jaccard", top_k: int = 1
) -> Float[Tensor, "task task"]:
    """Task x task overlap of important heads.

    ``"jaccard"``: ``|A ∩ B| / |A ∪ B|`` of the tasks' ``top_k`` heads by importance (ties by block, head).
    ``"spearman"``: rank correlation of the tasks' importance vectors over all heads (average ranks on ties).
    A task whose importance is NaN at every head (no prompts of it), or the same at every head (one head, or no
    ablation changes it), has no ranking of heads and overlaps nothing: its row and column are NaN (its "top k"
    would be the first heads in block order, so two such tasks would overlap fully).
    """
    if method not in SHARED_METHODS:
        raise AnalysisError(f"Unknown shared-heads method {method!r}; use one of {list(SHARED_METHODS)}.")
    flat = importance.reshape(-1, importance.shape[-1]).double()
    n_heads, n_tasks = flat.shape
    check_count(top_k, "top_k", 1, n_heads)
    if method == "spearman":
        import pandas as pd

        return torch.tensor(pd.DataFrame(flat.numpy()).corr(method="spearman").to_numpy())
    order = torch.argsort(torch.nan_to_num(-flat, nan=torch.inf), dim=0, stable=True)[:top_k]
    member = torch.zeros(n_heads, n_tasks, dtype=torch.float64)
    member.scatter_(0, order, 1.0)
    both = member.T @ member
    overlap = both / (2 * top_k - both)
    unranked = flat.isnan().all(dim=0) | (flat.amax(dim=0) == flat.amin(dim=0))  # ties all the way down
    overlap[unranked, :] = overlap[:, unranked] = torch.nan
    return overlap


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two vectors (average ranks on ties; NaN if either is constant)."""
    import pandas as pd

    return float(pd.Series(a.double().numpy()).corr(pd.Series(b.double().numpy()), method="spearman"))


def pruning_order(overall: Tensor, heads: list[tuple[int, int]], steps: int) -> tuple[tuple[int, int], ...]:
    """The ``steps`` least important heads, least important first (ties: block, then head)."""
    ranked = torch.argsort(torch.nan_to_num(overall.flatten(), nan=torch.inf), stable=True)[:steps].tolist()
    return tuple(heads[i] for i in ranked)


def pruning_curve(
    order: tuple[tuple[int, int], ...],
    clean: Tensor,
    pruned: Sweep,
    metric: str,
    ids: Tensor,
    real: Tensor,
    task_names: Sequence[str],
) -> PruningCurve:
    """The metric after removing the first ``k`` heads of ``order`` (``k = 0`` is the clean run)."""
    column = 0 if metric == "accuracy" else 1
    steps = len(order)
    curve = torch.cat([clean[None, :, column], pruned.cells[..., column].view(steps, len(clean))])
    written = [list(w) + [0] * (steps - len(w)) for w in pruned.writes]
    writes = torch.tensor([[0] * steps, *written], dtype=torch.long).view(steps + 1, steps)
    return PruningCurve(
        order=order,
        values=group_means(curve, ids, len(task_names)),
        overall=curve[:, real].mean(-1),
        task_names=tuple(task_names),
        writes=writes,
        metric=metric,
        higher_is_better=metric == "accuracy",
    )


def check_count(value: int, name: str, low: int, high: int) -> None:
    """Raise :class:`AnalysisError` unless ``value`` is an int in ``[low, high]`` (``high`` heads)."""
    if not is_int(value) or not low <= value <= high:
        raise AnalysisError(f"{name} must be an int in [{low}, {high}] (the model has {high} heads), got {value!r}.")
