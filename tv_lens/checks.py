"""The type checks of user input that every package shares: a count is an int, a number an int or a float.

``True`` passes ``isinstance(value, int)`` (``bool`` is a subclass of ``int``), so an option that takes a count or
a number checks with these, which refuse a bool: ``n_per_task=True`` is a mistake, not one prompt.

>>> is_int(3), is_int(True), is_int(3.0), is_number(0.5), is_number(True)
(True, False, False, True, False)
"""

from __future__ import annotations

from typing import Any, TypeGuard

__all__ = ["is_int", "is_number"]


def is_int(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or a float and not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)
