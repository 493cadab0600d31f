"""How the application words numbers: three decimals, intervals, counts, blocks, and what stands for NaN."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tv_lens.results.axes import layer_label

__all__ = ["block", "interval", "number", "number_or_absent"]


def number(value: float) -> str:
    """``value`` to three decimals."""
    return f"{value:.3f}"


def number_or_absent(value: float) -> str:
    """A number, or ``absent`` where nothing was measured (NaN: a role no prompt has, a cell of no prompts)."""
    return "absent" if math.isnan(value) else number(value)


def interval(values: Sequence[float]) -> str:
    """A 95% interval, or ``(no interval)`` where none was computed (``n_bootstrap=0``: NaN bounds).

    >>> interval([0.25, 0.5]), interval([math.nan, math.nan])
    ('[0.250, 0.500]', '(no interval)')
    """
    return "(no interval)" if any(math.isnan(v) for v in values) else f"[{values[0]:.3f}, {values[1]:.3f}]"


def block(layer: int) -> str:
    """The block of a layer, as the report names it (``L2``; ``embed`` for the embedding output)."""
    return layer_label(layer).split(" ")[0]
