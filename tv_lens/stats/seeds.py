"""A claim tested over training seeds: the interval of its per-seed values and the verdict rule.

Each seed trains its own model on its own data and samples its own prompts, so the spread of a statistic over seeds
covers both. :func:`seed_interval` is the mean with a Student-t interval over the per-seed values;
:func:`seed_verdict` combines it with whether the claim holds in each seed on its own (that seed's own interval,
e.g. a bootstrap over prompts, excludes the null value in the claimed direction):

- **holds**: the interval over seeds excludes the null value in the claimed direction *and* every seed holds;
- **mixed**: exactly one of the two;
- **does not hold**: neither.

>>> [round(v, 3) for v in seed_interval([1.0, 2.0, 3.0])]
[2.0, -0.484, 4.484]
>>> seed_verdict([0.4, 0.5, 0.6], [True, True, False], null=0.0, direction="greater")
'mixed'
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

from scipy.stats import t as student_t
from torch import Tensor

from tv_lens.checks import is_number
from tv_lens.errors import ConfigError

__all__ = ["Direction", "seed_interval", "seed_verdict"]

Direction = Literal["greater", "less", "differs"]
"""The claimed direction of a statistic against its null value (``"differs"``: either side)."""


def seed_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of per-seed values and its Student-t interval, ``mean ± t_{n-1} · sd / √n``.

    A value may be any real number: a Python, NumPy (``float32`` ...) or one-element tensor one.
    """
    if not is_number(level) or not 0 < level < 1:
        raise ConfigError(f"level must lie in (0, 1), got {level!r}; e.g. 0.95.")
    values = _seed_values(values)
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        raise ConfigError(
            f"An interval over seeds needs at least 2 finite per-seed values, got {list(values)}; run more seeds."
        )
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(student_t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def seed_verdict(
    values: Sequence[float], holds: Sequence[bool], null: float, direction: Direction, level: float = 0.95
) -> str:
    """``"holds"``, ``"mixed"`` or ``"does not hold"`` by the rule of this module.

    ``direction`` ``"differs"`` is two-sided: the interval excludes ``null`` on either side, and every seed must
    hold on the same side as the mean.
    """
    if direction not in ("greater", "less", "differs"):
        raise ConfigError(f"direction must be 'greater', 'less' or 'differs', got {direction!r}.")
    if len(holds) != len(values):
        raise ConfigError(f"holds needs one entry per seed ({len(values)}), got {len(holds)}.")
    values = _seed_values(values)
    mean, low, high = seed_interval(values, level)
    if direction == "greater":
        excludes = low > null
    elif direction == "less":
        excludes = high < null
    else:
        excludes = low > null or high < null
        holds = [h and (v - null) * (mean - null) > 0 for v, h in zip(values, holds, strict=True)]
    every = all(holds)
    return "holds" if excludes and every else "mixed" if excludes or every else "does not hold"


def _seed_values(values: Any) -> list[float]:
    """``values`` as Python floats: each a real number (Python, NumPy or a one-element tensor), never a bool."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"Per-seed values must be a sequence of numbers, got {values!r}; pass one float per seed.")
    floats = []
    for value in values:
        number = value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
        if not isinstance(number, numbers.Real) or isinstance(number, bool):  # NumPy's bool is no numbers.Real
            raise ConfigError(
                f"An interval over seeds needs at least 2 finite per-seed values, got {list(values)}: {value!r} is a "
                f"{type(value).__name__}, not a real number; pass one float per seed."
            )
        floats.append(float(number))
    return floats
