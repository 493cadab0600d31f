"""Axes and error bars shared by every result: layers are TransformerLens block indices, -1 the embedding output.

Per-head results draw a (block x head) heatmap: :func:`head_heatmap` inside :func:`head_axes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from tv_lens.errors import LayerOutOfRangeError
from tv_lens.models.adapter import EMBED_LAYER

if TYPE_CHECKING:
    from plotly.basedatatypes import BaseTraceType

__all__ = [
    "LAYER_AXIS_TITLE",
    "counted",
    "error_bars",
    "head_axes",
    "head_heatmap",
    "head_label",
    "interval_text",
    "layer_axis",
    "layer_index",
    "layer_label",
]

LAYER_AXIS_TITLE = "layer (TransformerLens block index; -1 = embedding output)"


def counted(n: int | str, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (``"1 shot"``, ``"4 shots"``)."""
    return f"{n} {noun}" if int(n) == 1 else f"{n} {noun}s"


def interval_text(values: Sequence[float]) -> str:
    """An interval to three decimals, or ``(no interval)`` where none was computed (NaN bounds: no bootstrap).

    >>> interval_text([0.25, 0.5]), interval_text([math.nan, math.nan])
    ('[0.250, 0.500]', '(no interval)')
    """
    return "(no interval)" if any(math.isnan(v) for v in values) else f"[{values[0]:.3f}, {values[1]:.3f}]"


def layer_label(layer: int, site: str = "resid_post") -> str:
    """``"embed"`` for the embedding output (block index -1), else ``"L{block} {site}"``."""
    return "embed" if layer == EMBED_LAYER else f"L{layer} {site}"


def layer_axis(layers: Sequence[int], site: str = "resid_post") -> dict[str, Any]:
    """A plotly axis for block indices: ticks at each layer, labelled with :func:`layer_label`."""
    return {
        "title": {"text": LAYER_AXIS_TITLE},
        "tickmode": "array",
        "tickvals": list(layers),
        "ticktext": [layer_label(layer, site) for layer in layers],
    }


def layer_index(layers: Sequence[int], layer: int, what: str) -> int:
    """Index of block ``layer`` (-1 = embedding output) on the layer axis ``layers`` of ``what`` (e.g. ``"this TD"``).

    Raises:
        LayerOutOfRangeError: ``layer`` is not on the axis (the message names the layers that are).
    """
    if layer not in layers:
        raise LayerOutOfRangeError(
            f"Layer {layer} is not among the layers of {what}, {tuple(layers)}; pass one of those, or compute {what} "
            "again with that layer."
        )
    return list(layers).index(layer)


def error_bars(values: Tensor, ci: Tensor) -> dict[str, Any]:
    """A plotly ``error_y`` from ``values`` to the interval bounds ``ci[..., 0]`` and ``ci[..., 1]``."""
    return {
        "type": "data",
        "symmetric": False,
        "array": (ci[..., 1] - values).tolist(),
        "arrayminus": (values - ci[..., 0]).tolist(),
    }


def head_label(layer: int, head: int) -> str:
    """``"L{layer}H{head}"``."""
    return f"L{layer}H{head}"


def head_heatmap(
    values: Tensor, layers: Sequence[int], name: str, *, colorscale: str = "RdBu", zmid: float | None = 0.0
) -> BaseTraceType:
    """A heatmap of one number per head ``values [layer, head]``: heads on x, the blocks ``layers`` on y."""
    import plotly.graph_objects as go

    return go.Heatmap(
        z=values.tolist(),
        x=[f"H{h}" for h in range(values.shape[1])],
        y=[f"L{layer}" for layer in layers],
        colorscale=colorscale,
        zmid=zmid,
        hovertemplate=f"%{{y}} %{{x}}<br>{name} %{{z:.4f}}<extra></extra>",
    )


def head_axes(title: str) -> dict[str, Any]:
    """The layout of a :func:`head_heatmap`: ``title``, heads on x, blocks on y."""
    return {
        "title": {"text": title},
        "xaxis": {"title": {"text": "head"}},
        "yaxis": {"title": {"text": "layer (TransformerLens block index)"}},
    }
