"""Means within groups: the mean of a per-prompt value over the prompts of each task.

>>> import torch
>>> group_means(torch.tensor([[1.0, 2.0, 3.0, 5.0]]), torch.tensor([0, 1, 0, 1]), 3)
tensor([[2.0000, 3.5000,    nan]], dtype=torch.float64)
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["group_means"]


def group_means(
    values: Float[Tensor, "*batch item"],
    ids: Int[Tensor, " item"],
    n_groups: int,
    present: Bool[Tensor, "*#batch item"] | None = None,
) -> Float[Tensor, "*batch group"]:
    """The mean of ``values`` over the items (last dimension) of each group, summed in float64.

    Args:
        values: One value per item in the last dimension (any leading dimensions).
        ids: The group of each item, in ``[0, n_groups)``.
        n_groups: Number of groups; a group without items gets NaN.
        present: Which values count, broadcastable to ``values`` (``None``: all); a group none of whose values
            count gets NaN.

    Returns:
        ``[*batch, n_groups]`` float64 means, on the device of ``values``.
    """
    ids = ids.to(values.device)
    sums = torch.zeros(*values.shape[:-1], n_groups, dtype=torch.float64, device=values.device)
    if present is None:
        sums.index_add_(-1, ids, values.double())
        return sums / torch.bincount(ids, minlength=n_groups).to(sums.device)
    weights = present.to(values.device).expand(values.shape).double()
    sums.index_add_(-1, ids, torch.where(weights > 0, values.double(), 0.0))
    return sums / torch.zeros_like(sums).index_add_(-1, ids, weights)
