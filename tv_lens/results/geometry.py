"""The result of a geometry analysis: 2-D projections of every layer's representations, coloured by task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.results.axes import LAYER_AXIS_TITLE, layer_index, layer_label
from tv_lens.results.base import Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.basedatatypes import BaseTraceType


__all__ = ["Projection"]


@dataclass(frozen=True, eq=False)
class Projection(Result):
    """2-D coordinates of every prompt's representation at every layer, fitted per layer.

    Attributes:
        coords: ``[layer, prompt, 2]``.
        labels: Task id of each prompt ``[prompt]``.
        explained_variance: Fraction of variance of each PCA component ``[layer, 2]`` (NaN for UMAP).
        layers: TransformerLens block index of each layer entry; -1 is the embedding output.
        task_names: Name of every task id.
        site: Residual site the representations were read at.
        method: ``"pca"`` or ``"umap"``.
        settings: The method's parameters (UMAP: ``n_neighbors``, ``min_dist``), and ``seed``.
    """

    coords: Float[Tensor, "layer prompt 2"]
    labels: Int[Tensor, " prompt"]
    explained_variance: Float[Tensor, "layer 2"]
    layers: tuple[int, ...]
    task_names: tuple[str, ...]
    site: str = "resid_post"
    method: str = "pca"
    settings: dict[str, Any] = field(default_factory=dict)

    def _axes(self) -> dict[str, int]:
        return {"layer": len(self.layers)}

    def headline(self) -> dict[str, Any]:
        """The method, the layers projected and the variance the two components explain at the last one (NaN: UMAP)."""
        return {
            "method": self.method,
            "layers": list(self.layers),
            "explained_variance_last_layer": [float(x) for x in self.explained_variance[-1]],
        }

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per (layer, prompt).

        Columns: ``layer``, ``layer_label``, ``prompt``, ``task``, ``x``, ``y``.
        """
        import pandas as pd

        n_prompts = self.labels.shape[0]
        names = [self.task_names[t] for t in self.labels.tolist()]
        frames = [
            pd.DataFrame(
                {
                    "layer": layer,
                    "layer_label": layer_label(layer, self.site),
                    "prompt": range(n_prompts),
                    "task": names,
                    "x": self.coords[i, :, 0].tolist(),
                    "y": self.coords[i, :, 1].tolist(),
                }
            )
            for i, layer in enumerate(self.layers)
        ]
        return pd.concat(frames, ignore_index=True)

    def traces(self, layer: int | None = None) -> list[BaseTraceType]:
        """One scatter trace per task at ``layer`` (a block index; default: the last layer)."""
        import plotly.graph_objects as go

        i = len(self.layers) - 1 if layer is None else layer_index(self.layers, layer, "this projection")
        traces = []
        for t, name in enumerate(self.task_names):
            rows = (self.labels == t).nonzero().flatten()
            traces.append(
                go.Scatter(
                    x=self.coords[i, rows, 0].tolist(),
                    y=self.coords[i, rows, 1].tolist(),
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    marker={"size": 6, "color": _COLOURS[t % len(_COLOURS)]},
                    customdata=rows.tolist(),
                    hovertemplate=f"{name}<br>prompt %{{customdata}}<extra></extra>",
                )
            )
        return traces

    def figure(self) -> go.Figure:
        """Every layer's scatter, one layer visible at a time, chosen with a slider (starts at the last layer)."""
        import plotly.graph_objects as go

        n_tasks = len(self.task_names)
        figure = go.Figure()
        for layer in self.layers:
            for trace in self.traces(layer):
                trace.visible = layer == self.layers[-1]
                trace.showlegend = layer == self.layers[-1]
                figure.add_trace(trace)
        steps = []
        for i, layer in enumerate(self.layers):
            visible = [j // n_tasks == i for j in range(len(self.layers) * n_tasks)]
            steps.append(
                {
                    "method": "update",
                    "label": layer_label(layer, self.site),
                    "args": [{"visible": visible, "showlegend": visible}],
                }
            )
        axis = "PC" if self.method == "pca" else "UMAP "
        figure.update_layout(
            title={"text": f"{self.method.upper()} of {self.site} per layer, coloured by task"},
            xaxis={"title": {"text": f"{axis}1"}},
            yaxis={"title": {"text": f"{axis}2"}},
            sliders=[
                {"active": len(self.layers) - 1, "steps": steps, "currentvalue": {"prefix": f"{LAYER_AXIS_TITLE}: "}}
            ],
        )
        return figure


_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
