"""The checks the training configs run on their fields: each raises a :class:`ConfigError` naming the fix."""

from __future__ import annotations

from typing import Any

from tv_lens.checks import is_int
from tv_lens.errors import ConfigError

__all__ = ["check", "check_shots"]


def check(ok: bool, message: str) -> None:
    """Raise a :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def check_shots(value: Any, name: str) -> None:
    """Check a number of shots: an int >= 0 or an inclusive ``(min, max)`` tuple."""
    valid = (is_int(value) and value >= 0) or (
        isinstance(value, tuple) and len(value) == 2 and all(is_int(v) for v in value) and 0 <= value[0] <= value[1]
    )
    check(valid, f"{name} must be an int >= 0 or an inclusive (min, max) tuple, got {value!r}; e.g. {name}=8.")
