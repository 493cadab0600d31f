"""Means within groups: the mean of a per-prompt value over the prompts of each task.

>>> import torch
>>> group_means(torch.tensor([[1.0, 2.0, 3.0, 5.0]]), torch.tensor([0, 1, 0, 1]), 3)
tensor([[2.0000, 3.5000,    nan]], dtype=torch.float64)
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.checks import is_int, is_integer_tensor
from tv_lens.errors import ShapeError

__all__ = ["check_groups", "group_means"]


def check_groups(ids: Int[Tensor, " item"], n_groups: int, what: str = "ids") -> None:
    """Raise a :class:`ShapeError` unless ``ids`` are integer groups in ``[0, n_groups)``.

    A group id outside the range has no group to count in: it would be dropped from every mean without a word.
    """
    if not is_int(n_groups) or n_groups < 0:
        raise ShapeError(f"n_groups must be an int >= 0 (the number of groups), got {n_groups!r}.")
    if not isinstance(ids, Tensor) or ids.ndim != 1 or not is_integer_tensor(ids):
        raise ShapeError(
            f"{what} must be a 1-D tensor of integer group ids, got {type(ids).__name__} "
            f"{tuple(getattr(ids, 'shape', ()))} of {getattr(ids, 'dtype', None)}; pass each item's task id."
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_groups):
        raise ShapeError(
            f"{what} must lie in 0 .. n_groups - 1 = {n_groups - 1}, got {ids.unique().tolist()[:8]}; pass each "
            "prompt's task id, with n_groups the number of tasks."
        )


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

    Raises:
        ShapeError: ``ids`` that are not integer groups in ``[0, n_groups)``.
    """
    check_groups(ids, n_groups)
    ids = ids.to(values.device)
    sums = torch.zeros(*values.shape[:-1], n_groups, dtype=torch.float64, device=values.device)
    if present is None:
        sums.index_add_(-1, ids, values.double())
        return sums / torch.bincount(ids, minlength=n_groups).to(sums.device)
    weights = present.to(values.device).expand(values.shape).double()
    sums.index_add_(-1, ids, torch.where(weights > 0, values.double(), 0.0))
    return sums / torch.zeros_like(sums).index_add_(-1, ids, weights)
