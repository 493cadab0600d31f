"""The result of the TD → accuracy analysis: (task, shots) points, their OLS line, R² and intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.results.axes import counted, interval_text, layer_label
from tv_lens.results.base import Result

if TYPE_CHECKING:
    import pandas as pd
    from plotly.basedatatypes import BaseTraceType


__all__ = ["TdAccuracyFit"]


@dataclass(frozen=True, eq=False)
class TdAccuracyFit(Result):
    """Ordinary least squares of a performance score on task decodability over (task, shots) points.

    Attributes:
        td: TD of each point ``[point]``.
        score: Performance of each point (accuracy by default) ``[point]``.
        task_ids: Task of each point ``[point]``.
        shots: Shot count of each point ``[point]``.
        task_names: Name of every task id.
        slope: OLS slope (score per unit TD).
        intercept: OLS intercept.
        r2: Coefficient of determination of the fit (NaN when the score is constant).
        slope_ci: Student-t interval (low, high) of the slope (NaN with fewer than 3 points).
        intercept_ci: Student-t interval of the intercept.
        layer: Block index TD was read at (-1 = embedding output).
        site: Residual site TD was read at.
        metric: Name of the performance score.
        ci_level: Confidence level of the intervals.
        td_by_layer: Mean per-task TD of the point tasks at every collected layer, per shot count
            ``[shots, layer]`` (the layer choice is its argmax over layers of the mean over shots).
        layers: Block index of each column of ``td_by_layer``.
        shot_grid: Shot count of each row of ``td_by_layer``.
        repeated: Prompts with an identical prompt of their task in the sample, per shot count of ``shot_grid``
            (``None`` in fits of given points and in files saved before this field existed).
        repeats: Whether a prompt's copies voted in its TD (``"keep"``) or were left out (``"leave_out"``).
    """

    td: Float[Tensor, " point"]
    score: Float[Tensor, " point"]
    task_ids: Int[Tensor, " point"]
    shots: Int[Tensor, " point"]
    task_names: tuple[str, ...]
    slope: float
    intercept: float
    r2: float
    slope_ci: tuple[float, float]
    intercept_ci: tuple[float, float]
    layer: int | None = None
    site: str = "resid_post"
    metric: str = "accuracy"
    ci_level: float = 0.95
    td_by_layer: Float[Tensor, "shots layer"] | None = None
    layers: tuple[int, ...] = ()
    shot_grid: tuple[int, ...] = ()
    repeated: Int[Tensor, " shots"] | None = None
    repeats: str = "keep"

    def _axes(self) -> dict[str, int]:
        return {"shots": len(self.shot_grid), "layer": len(self.layers)}

    @property
    def fitted(self) -> Float[Tensor, " point"]:
        """The line's prediction at each point's TD."""
        return self.intercept + self.slope * self.td

    def headline(self) -> dict[str, Any]:
        """The fit: shots, layer, R², slope with its interval, points, the score's range, repeated prompts."""
        return {
            "shots": sorted({int(s) for s in self.shots.tolist()}),
            "layer": self.layer,
            "r2": float(self.r2),
            "slope": float(self.slope),
            "slope_ci": [float(x) for x in self.slope_ci],
            "n_points": len(self.td),
            "score_range": [float(self.score.min()), float(self.score.max())],
            "metric": self.metric,
            "repeated_prompts": None
            if self.repeated is None
            else {str(shots): n for shots, n in zip(self.shot_grid, self.repeated.tolist(), strict=True)},
            "repeats": self.repeats,
        }

    def to_frame(self) -> pd.DataFrame:
        """Tidy points: columns ``task``, ``shots``, ``td``, ``score``, ``fitted``, ``residual``, ``layer``."""
        import pandas as pd

        fitted = self.fitted
        return pd.DataFrame(
            {
                "task": [self.task_names[t] for t in self.task_ids.tolist()],
                "shots": self.shots.tolist(),
                "td": self.td.tolist(),
                "score": self.score.tolist(),
                "fitted": fitted.tolist(),
                "residual": (self.score - fitted).tolist(),
                "layer": [self.layer] * len(self.td),
            }
        )

    def traces(self) -> list[BaseTraceType]:
        """One scatter per task (hover: shots) and the OLS line over the observed TD range."""
        import plotly.graph_objects as go

        traces: list[BaseTraceType] = []
        for t, name in enumerate(self.task_names):
            rows = (self.task_ids == t).nonzero().flatten()
            if len(rows) == 0:
                continue
            traces.append(
                go.Scatter(
                    x=self.td[rows].tolist(),
                    y=self.score[rows].tolist(),
                    mode="markers+text",
                    name=name,
                    text=[counted(s, "shot") for s in self.shots[rows].tolist()],
                    textposition="top center",
                    marker={"size": 9},
                )
            )
        low, high = float(self.td.min()), float(self.td.max())
        traces.append(
            go.Scatter(
                x=[low, high],
                y=[self.intercept + self.slope * low, self.intercept + self.slope * high],
                mode="lines",
                name=f"OLS (R² = {self._r2_text()})",
                line={"dash": "dash", "color": "black"},
            )
        )
        return traces

    def _r2_text(self) -> str:
        """R² to three decimals, or why it is undefined (a score that never varies leaves nothing to explain)."""
        return f"{self.r2:.3f}" if not math.isnan(self.r2) else f"undefined ({self.metric} does not vary)"

    def figure_layout(self) -> dict[str, Any]:
        """Score against TD, with the fit in the title."""
        where = "" if self.layer is None else f" at {layer_label(self.layer, self.site)} (block index; -1 = embedding)"
        interval = interval_text(self.slope_ci)
        return {
            "title": {
                "text": f"TD{where} predicts {self.metric}: slope {self.slope:.3f} {interval}, R² = {self._r2_text()}, "
                f"n = {len(self.td)}"
            },
            "xaxis": {"title": {"text": "task decodability"}},
            "yaxis": {"title": {"text": self.metric}},
        }
