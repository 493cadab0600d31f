"""Task decodability, task-vector prompting and function vectors side by side, per layer, on one model and pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from tv_lens.results.axes import layer_axis
from tv_lens.results.base import Result
from tv_lens.results.decodability import Decodability
from tv_lens.results.function_vector_prompting import FunctionVectorResult
from tv_lens.results.prompting import PromptingAccuracy

if TYPE_CHECKING:
    import pandas as pd
    from plotly.basedatatypes import BaseTraceType

__all__ = ["MEASURES", "VectorComparison"]

#: The three per-layer measures, with their colours in the figure.
MEASURES = {
    "TD": "#1f77b4",
    "TVP accuracy": "#d62728",
    "FV accuracy": "#2ca02c",
}


@dataclass(frozen=True, eq=False)
class VectorComparison(Result):
    """TD, task-vector prompting accuracy and function-vector zero-shot accuracy per layer, each result whole.

    Attributes:
        decodability: Task decodability of the ICL prompts (:class:`~tv_lens.analyses.TaskDecodability`).
        prompting: Task-vector prompting on the same prompts (:class:`~tv_lens.analyses.TaskVectorPrompting`).
        function_vectors: The function-vector analysis (:class:`~tv_lens.analyses.FunctionVectors`): its CIE, the
            vector and its zero-shot sweep.
    """

    decodability: Decodability
    prompting: PromptingAccuracy
    function_vectors: FunctionVectorResult

    def curves(self) -> dict[str, tuple[tuple[int, ...], Tensor, Tensor]]:
        """Per measure: its layers, values ``[layer]`` and interval ``[layer, 2]``."""
        fv = self.function_vectors.prompting
        return {
            "TD": (self.decodability.layers, self.decodability.td, self.decodability.td_ci),
            "TVP accuracy": (self.prompting.layers, self.prompting.accuracy, self.prompting.accuracy_ci),
            "FV accuracy": (fv.layers, fv.accuracy, fv.accuracy_ci),
        }

    def baselines(self) -> dict[str, float]:
        """ICL and zero-shot accuracy of the prompts of the TVP sweep (Null left out), and TD's chance level."""
        return {
            "ICL accuracy": self.prompting.icl_accuracy,
            "zero-shot accuracy": self.prompting.zero_shot_accuracy,
            "TD chance": 1.0 / len(self.decodability.task_names),
        }

    def best_layers(self) -> dict[str, int]:
        """The block of highest value of each measure (the earliest on ties; TD passes over the embedding)."""
        fv = self.function_vectors.prompting
        return {
            "TD": self.decodability.best_layer,
            "TVP accuracy": self.prompting.best_layer,
            "FV accuracy": fv.best_layer,
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per (measure, layer), then one per baseline (``layer`` missing).

        Columns: ``measure`` (``"TD"``, ``"TVP accuracy"``, ``"FV accuracy"``, or a baseline of
        :meth:`baselines`), ``layer``, ``value``, ``ci_low``, ``ci_high``.
        """
        import pandas as pd

        rows: list[tuple[Any, ...]] = []
        for measure, (layers, values, ci) in self.curves().items():
            rows.extend(
                (measure, layer, float(values[i]), float(ci[i, 0]), float(ci[i, 1])) for i, layer in enumerate(layers)
            )
        nan = float("nan")
        rows.extend((name, None, value, nan, nan) for name, value in self.baselines().items())
        frame = pd.DataFrame(rows, columns=["measure", "layer", "value", "ci_low", "ci_high"])
        frame["layer"] = frame["layer"].astype("Int64")
        return frame

    def traces(self) -> list[BaseTraceType]:
        """Each measure as a line with a shaded interval; ICL and zero-shot accuracy dashed, TD chance dotted."""
        import plotly.graph_objects as go

        traces: list[BaseTraceType] = []
        every_layer: set[int] = set()
        for measure, (layers, values, ci) in self.curves().items():
            colour = MEASURES[measure]
            x = list(layers)
            every_layer.update(x)
            band = _rgba(colour, 0.18)
            traces.append(
                go.Scatter(
                    x=x + x[::-1],
                    y=ci[:, 1].tolist() + ci[:, 0].flip(0).tolist(),
                    fill="toself",
                    fillcolor=band,
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=measure,
                    name=f"{measure} interval",
                )
            )
            traces.append(
                go.Scatter(
                    x=x,
                    y=values.tolist(),
                    mode="lines+markers",
                    name=measure,
                    legendgroup=measure,
                    line={"color": colour, "width": 2},
                    customdata=ci.tolist(),
                    hovertemplate=f"{measure}<br>layer %{{x}}: %{{y:.3f}} "
                    "[%{customdata[0]:.3f}, %{customdata[1]:.3f}]<extra></extra>",
                )
            )
        span = [min(every_layer), max(every_layer)]
        styles = {"ICL accuracy": ("dash", "#444444"), "zero-shot accuracy": ("dash", "#999999")}
        styles["TD chance"] = ("dot", MEASURES["TD"])
        for name, value in self.baselines().items():
            dash, colour = styles[name]
            traces.append(
                go.Scatter(
                    x=span,
                    y=[value, value],
                    mode="lines",
                    name=f"{name} ({value:.2f})",
                    line={"dash": dash, "color": colour, "width": 1.5},
                    hovertemplate=f"{name}: {value:.3f}<extra></extra>",
                )
            )
        return traces

    def figure_layout(self) -> dict[str, Any]:
        """Block index on x, TD and accuracy on y (0 to 1), a white template fit for a paper."""
        layers = sorted({layer for layers, _, _ in self.curves().values() for layer in layers})
        ci = self.prompting.ci_level
        return {
            "title": {"text": f"Task decodability and task-vector / function-vector accuracy per layer ({ci:.0%} CI)"},
            "xaxis": layer_axis(layers, self.prompting.site),
            "yaxis": {"title": {"text": "TD / accuracy"}, "range": [0, 1.05]},
            "template": "simple_white",
            "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        }


def _rgba(colour: str, alpha: float) -> str:
    """``"#rrggbb"`` as ``"rgba(r, g, b, alpha)"``."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"
