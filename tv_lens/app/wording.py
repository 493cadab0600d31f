"""How the application words numbers: three decimals, intervals, blocks, and what stands for NaN.

``interval`` is :func:`~tv_lens.results.axes.interval_text`, which the results' figure titles use too.
"""

from __future__ import annotations

import math

from tv_lens.results.axes import interval_text as interval
from tv_lens.results.axes import layer_label

__all__ = ["block", "interval", "number", "number_or_absent"]


def number(value: float) -> str:
    """``value`` to three decimals."""
    return f"{value:.3f}"


def number_or_absent(value: float) -> str:
    """A number, or ``absent`` where nothing was measured (NaN: a role no prompt has, a cell of no prompts)."""
    return "absent" if math.isnan(value) else number(value)


def block(layer: int) -> str:
    """The block of a layer, as the report names it (``L2``; ``embed`` for the embedding output)."""
    return layer_label(layer).split(" ")[0]
