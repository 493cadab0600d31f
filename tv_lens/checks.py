"""The checks of user input that every package shares: a count is an int, a number an int or a float.

A tensor must have values to read (:func:`check_tensor_data`: not on ``meta``, not sparse); :func:`tensor_of` turns
a value into one or says what was expected.

``True`` passes ``isinstance(value, int)`` (``bool`` is a subclass of ``int``), so an option that takes a count or
a number checks with these, which refuse a bool: ``n_per_task=True`` is a mistake, not one prompt.

>>> is_int(3), is_int(True), is_int(3.0), is_number(0.5), is_number(True)
(True, False, False, True, False)
>>> is_finite_number(float("nan")), is_finite_number(10**400), is_seed(-1), is_seed(2**63)
(False, False, False, True)
"""

from __future__ import annotations

import math
import operator
from typing import Any, TypeGuard

import torch
from jaxtyping import Int
from torch import Tensor

from tv_lens.errors import ShapeError

__all__ = [
    "SEED_RANGE",
    "check_tensor_data",
    "is_finite_number",
    "is_index",
    "is_int",
    "is_integer_tensor",
    "is_number",
    "is_right_padded",
    "is_seed",
    "single_index",
    "tensor_of",
]

SEED_RANGE = 2**64
"""Seeds are ints in ``[0, SEED_RANGE)``, the range of a ``torch.Generator`` seed."""


def is_int(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_index(value: Any) -> bool:
    """Whether ``value`` is an int index (a Python, NumPy or integer 0-d tensor one), not a bool or a float."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def single_index(value: Any) -> int | None:
    """``value`` as a Python int where it is one int index (a Python, NumPy or integer 0-d tensor one), else ``None``.

    A tensor without values to read (on ``meta``, or sparse) is none: it has no int to give.
    """
    if isinstance(value, Tensor) and (value.layout != torch.strided or value.is_meta):
        return None
    return operator.index(value) if getattr(value, "ndim", 0) == 0 and is_index(value) else None


def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or a float and not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value: Any) -> TypeGuard[int | float]:
    """Whether ``value`` is a number that is a finite float (not NaN, infinite or an int too large for a float).

    Comparisons with such a value mean what they say.
    """
    if not is_number(value):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int too large for a float
        return False


def is_seed(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is an int in ``[0, SEED_RANGE)`` (a negative seed would be wrapped around silently)."""
    return is_int(value) and 0 <= value < SEED_RANGE


def check_tensor_data(tensor: Tensor, what: str) -> None:
    """Refuse a tensor whose values cannot be read: one on the ``meta`` device, or a sparse one."""
    if tensor.device.type == "meta":
        raise ShapeError(
            f"{what} is a tensor on the meta device, which has a shape but no values; create it on a real "
            "device (e.g. torch.tensor(..., device='cpu')) or materialise it first."
        )
    if tensor.layout != torch.strided:
        raise ShapeError(f"{what} is a {tensor.layout} tensor; pass a dense tensor (tensor.to_dense()).")


def is_integer_tensor(tensor: Tensor) -> bool:
    """Whether ``tensor`` holds integers: not floats, complex numbers or bools (which would read as 0 / 1)."""
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def is_right_padded(answers: Int[Tensor, "batch n_answer"]) -> bool:
    """Whether each row of ``answers`` (at least one column) holds token ids (>= 0), then only ``-1`` padding."""
    real = answers >= 0
    return not bool((answers < -1).any()) and bool(real[:, 0].all()) and not bool((real[:, 1:] & ~real[:, :-1]).any())


def tensor_of(value: Any, what: str, expected: str) -> Tensor:
    """``torch.as_tensor(value)``, or a :class:`ShapeError` saying that ``what`` must be ``expected``.

    Strings, bytes and ``None`` are refused (``torch.as_tensor`` would read a string's length or fail obscurely),
    and so are tensors without readable values (:func:`check_tensor_data`).
    """
    if isinstance(value, (str, bytes)) or value is None:
        raise ShapeError(f"{what} must be {expected}, got {value!r}.")
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ShapeError(
            f"{what} must be {expected}, got a {type(value).__name__} that is not one ({error})."
        ) from error
    check_tensor_data(tensor, what)
    return tensor
