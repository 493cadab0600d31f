"""Passes that fit in memory: halve the prompts of a pass after an out-of-memory error and retry.

Analyses take a size per pass (``batch_size`` prompts, ``rows_per_pass`` stacked prompt copies). A size that
fits a small model can exhaust an accelerator on a 7–9B one; :func:`fitting` runs the work at the requested
size and, when the accelerator runs out of memory, frees its cache, halves the size and runs the work again
from the start (nothing is kept from the failed attempt, so the result equals a run at the smaller size). The
size that fitted is returned so that callers can record it. Work that runs inside other work (an engine pass
inside a sweep) does not retry on its own: the outermost size halves, so the size recorded is the size that ran.

>>> fitting(lambda size: size * 10, 64, "batch_size")
(640, 64)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextvars import ContextVar
from typing import TypeVar

import torch

from tv_lens.errors import OutOfMemoryError

__all__ = ["fitting", "is_out_of_memory"]

T = TypeVar("T")

_retrying: ContextVar[bool] = ContextVar("tv_lens_retrying", default=False)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says that an accelerator ran out of memory (CUDA, MPS, or a backend's RuntimeError)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def fitting(work: Callable[[int], T], size: int, what: str) -> tuple[T, int]:
    """``work(size)``, halving ``size`` after every out-of-memory error until the work fits.

    Args:
        work: Does the whole job with ``size`` prompts (or rows) per pass; must not keep state between calls.
        size: The size to try first.
        what: The option's name, for the warning and the error.

    Returns:
        ``(work(size_used), size_used)``.

    Raises:
        OutOfMemoryError: The work does not fit even at size 1.
    """
    if _retrying.get():  # inside other work: its size halves, not this one
        return work(size), size
    while True:
        token = _retrying.set(True)
        try:
            return work(size), size
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if size <= 1:
                raise OutOfMemoryError(
                    f"Out of memory with {what}=1: one prompt per pass does not fit on this device. Use a device "
                    "with more memory, a lower precision (dtype=torch.bfloat16), shorter prompts, or spread the "
                    "model over devices (device_map)."
                ) from error
        finally:
            _retrying.reset(token)
        _free_cache()  # outside the except block: the failed attempt's tensors went with its traceback
        smaller = max(1, size // 2)
        warnings.warn(
            f"Out of memory with {what}={size}; retrying with {what}={smaller}. Pass {what}={smaller} to start there.",
            RuntimeWarning,
            stacklevel=2,
        )
        size = smaller


def _free_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
