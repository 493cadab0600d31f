"""The result of an emergence analysis: accuracy, loss and TD per task against training step, and the jumps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor

from tv_lens.errors import ShapeError
from tv_lens.results.axes import layer_label
from tv_lens.results.base import Result
from tv_lens.results.decodability import ALL_TASKS
from tv_lens.results.shared import real_tasks
from tv_lens.results.suite import SuiteResult

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.basedatatypes import BaseTraceType


__all__ = ["EmergenceResult"]


@dataclass(frozen=True, eq=False)
class EmergenceResult(Result):
    """Measurements of every checkpoint of a training run, on the same prompts, and when each task emerged.

    Attributes:
        steps: Training step of each checkpoint, ascending.
        accuracy: Query accuracy per task ``[step, task]`` (NaN for regression tasks).
        loss: Query loss per task ``[step, task]`` (cross-entropy for tokens, MSE for regression).
        td: Overall TD per layer ``[step, layer]``.
        td_per_task: TD per layer and task ``[step, layer, task]``.
        layers: Block index of each layer (-1 = embedding output).
        task_names: Name of every task id.
        best_layer: Block whose TD the detector follows: the best block at the last checkpoint.
        performance: ``"accuracy"`` or ``"loss"``: the series the performance jump is detected on.
        performance_jump: Per task, the first step where performance got half-way from its first value to
            its best one (``None``: it never improved by ``min_rise``).
        td_jump: Per task, the same for TD at ``best_layer``.
        coupled: Per task, whether both jumps exist and lie within ``tolerance`` steps of each other.
        min_rise: Smallest improvement that counts as a jump (absolute for accuracy and TD; for a loss, a
            fraction of its first value).
        tolerance: Largest distance in steps between coupled jumps.
        site: Residual site TD was read at.
        snapshots: Every analysis's result at every checkpoint.
        n_per_task: Prompts per task (the same prompts at every checkpoint).
        n_shots: Shots per prompt.
        seed: Seed of the prompts.
    """

    steps: tuple[int, ...]
    accuracy: Float[Tensor, "step task"]
    loss: Float[Tensor, "step task"]
    td: Float[Tensor, "step layer"]
    td_per_task: Float[Tensor, "step layer task"]
    layers: tuple[int, ...]
    task_names: tuple[str, ...]
    best_layer: int
    performance: str
    performance_jump: tuple[int | None, ...]
    td_jump: tuple[int | None, ...]
    coupled: tuple[bool, ...]
    min_rise: float
    tolerance: int
    site: str = "resid_post"
    snapshots: tuple[SuiteResult, ...] = ()
    n_per_task: int = 0
    n_shots: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (len(self.performance_jump) == len(self.td_jump) == len(self.coupled) == len(self.task_names)):
            raise ShapeError("EmergenceResult jumps and coupling need one entry per task.")

    def _axes(self) -> dict[str, int]:
        return {"step": len(self.steps), "layer": len(self.layers), "task": len(self.task_names)}

    @property
    def td_at_best_layer(self) -> Float[Tensor, "step task"]:
        """Per-task TD at ``best_layer`` over training."""
        return self.td_per_task[:, self.layers.index(self.best_layer)]

    def headline(self) -> dict[str, Any]:
        """Checkpoints, the tasks whose performance (accuracy, or loss) and TD jump together, each task's jump steps."""
        real = real_tasks(self.task_names)
        return {
            "performance": self.performance,
            "n_checkpoints": len(self.steps),
            "best_layer": self.best_layer,
            "coupled": sum(bool(self.coupled[t]) for t in real),
            "n_tasks": len(real),
            "performance_jump": {self.task_names[t]: self.performance_jump[t] for t in real},
            "td_jump": {self.task_names[t]: self.td_jump[t] for t in real},
        }

    def to_frame(self) -> pd.DataFrame:
        """Tidy series: columns ``step``, ``task``, ``measure``, ``layer``, ``value``.

        ``measure`` is ``"accuracy"``, ``"loss"`` (``layer`` None) or ``"td"`` (one row per layer; task
        ``"all"`` for the overall TD).
        """
        import pandas as pd

        rows: list[tuple[Any, ...]] = []
        for s, step in enumerate(self.steps):
            for t, task in enumerate(self.task_names):
                rows.append((step, task, "accuracy", None, float(self.accuracy[s, t])))
                rows.append((step, task, "loss", None, float(self.loss[s, t])))
            for i, layer in enumerate(self.layers):
                rows.append((step, ALL_TASKS, "td", layer, float(self.td[s, i])))
                rows.extend(
                    (step, task, "td", layer, float(self.td_per_task[s, i, t]))
                    for t, task in enumerate(self.task_names)
                )
        return pd.DataFrame(rows, columns=["step", "task", "measure", "layer", "value"])

    def jumps_frame(self) -> pd.DataFrame:
        """The detector's report: columns ``task``, ``performance_jump``, ``td_jump`` (``<NA>``: none), ``coupled``."""
        import pandas as pd

        return pd.DataFrame(
            {
                "task": list(self.task_names),
                "performance_jump": pd.array(list(self.performance_jump), dtype="Int64"),  # <NA>: no jump
                "td_jump": pd.array(list(self.td_jump), dtype="Int64"),
                "coupled": list(self.coupled),
            }
        )

    def performance_series(self) -> Float[Tensor, "step task"]:
        """The series the performance jump is detected on (accuracy, or the loss)."""
        return self.accuracy if self.performance == "accuracy" else self.loss

    def traces(self) -> list[BaseTraceType]:
        """Per task: performance against step (solid) and TD at the best layer (dashed, legend-grouped)."""
        import plotly.graph_objects as go

        x = list(self.steps)
        series: tuple[tuple[Tensor, str, dict[str, Any]], ...] = (
            (self.performance_series(), self.performance, {"mode": "lines+markers"}),
            (self.td_at_best_layer, "TD", {"mode": "lines", "line": {"dash": "dash"}, "yaxis": "y2"}),
        )
        return [
            go.Scatter(x=x, y=values[:, t].tolist(), name=f"{task} {measure}", legendgroup=task, **style)
            for t, task in enumerate(self.task_names)
            for values, measure, style in series
        ]

    def figure(self) -> go.Figure:
        """Performance (left axis) and TD at the best layer (right axis) against step; dotted lines mark TD jumps."""
        import plotly.graph_objects as go

        figure = go.Figure(data=self.traces())
        for step in sorted({s for s in self.td_jump if s is not None}):
            figure.add_vline(x=step, line={"dash": "dot", "color": "gray"})
        figure.update_layout(
            title={"text": f"Emergence: {self.performance} and TD at {layer_label(self.best_layer, self.site)}"},
            xaxis={"title": {"text": "training step"}},
            yaxis={"title": {"text": self.performance}},
            yaxis2={"title": {"text": "task decodability"}, "overlaying": "y", "side": "right", "range": [0, 1.05]},
        )
        return figure
