"""The result of an ICL-performance analysis: a metric per task and number of shots, with bootstrap CIs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.results.axes import error_bars
from tv_lens.results.base import Result
from tv_lens.results.decodability import ALL_TASKS
from tv_lens.results.shared import real_tasks

if TYPE_CHECKING:
    import pandas as pd
    from plotly.basedatatypes import BaseTraceType

__all__ = ["SHOTS_AXIS_TITLE", "Performance"]

SHOTS_AXIS_TITLE = "shots (demonstrations in the prompt)"


@dataclass(frozen=True, eq=False)
class Performance(Result):
    """Mean per-prompt score (accuracy, cross-entropy, MSE ...) per task and number of shots.

    Attributes:
        values: Mean score ``[task, shots]`` (NaN where a cell has no prompts).
        ci: Bootstrap interval (low, high) of ``values`` ``[task, shots, 2]``.
        overall: Mean over all tasks' prompts ``[shots]``.
        overall_ci: Its interval ``[shots, 2]``.
        n_prompts: Prompts behind each cell ``[task, shots]``.
        shots: Number of demonstrations of each column.
        task_names: Name of every task id.
        metric: Name of the per-prompt score.
        higher_is_better: Whether a larger score is better (accuracy) or worse (losses).
        ci_level: Confidence level.
        n_bootstrap: Bootstrap resamples (0: NaN intervals).
        seed: Seed of the prompts and of the bootstrap.
    """

    values: Float[Tensor, "task shots"]
    ci: Float[Tensor, "task shots 2"]
    overall: Float[Tensor, " shots"]
    overall_ci: Float[Tensor, "shots 2"]
    n_prompts: Int[Tensor, "task shots"]
    shots: tuple[int, ...]
    task_names: tuple[str, ...]
    metric: str = "accuracy"
    higher_is_better: bool = True
    ci_level: float = 0.95
    n_bootstrap: int = 1000
    seed: int = 0

    def _axes(self) -> dict[str, int]:
        return {"task": len(self.task_names), "shots": len(self.shots)}

    def headline(self) -> dict[str, Any]:
        """ICL accuracy at the most shots (and at 0 shots, if run) over the tasks other than Null.

        Each is the mean over the tasks with prompts at that shot count (NaN where none has); ``missing_tasks``
        names the tasks other than Null without prompts at the most shots, if any (a batch of irregular shots).
        """
        real = real_tasks(self.task_names)

        def mean(j: int) -> float:
            measured = [t for t in real if self.n_prompts[t, j] > 0]
            return float(self.values[measured, j].mean()) if measured else float("nan")

        numbers: dict[str, Any] = {"icl_accuracy": mean(-1), "icl_shots": int(self.shots[-1]), "metric": self.metric}
        missing = [self.task_names[t] for t in real if self.n_prompts[t, -1] == 0]
        if missing:
            numbers["missing_tasks"] = missing
        if self.shots[0] == 0:
            numbers["zero_shot_accuracy"] = mean(0)
        return numbers

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per (task, shots), plus task ``"all"`` per shots.

        Columns: ``task``, ``shots``, ``metric``, ``value``, ``ci_low``, ``ci_high``, ``n_prompts``.
        """
        import pandas as pd

        rows = []
        for j, shots in enumerate(self.shots):
            low, high = self.overall_ci[j].tolist()
            rows.append(
                (ALL_TASKS, shots, self.metric, float(self.overall[j]), low, high, int(self.n_prompts[:, j].sum()))
            )
            for t, name in enumerate(self.task_names):
                low, high = self.ci[t, j].tolist()
                rows.append((name, shots, self.metric, float(self.values[t, j]), low, high, int(self.n_prompts[t, j])))
        return pd.DataFrame(rows, columns=["task", "shots", "metric", "value", "ci_low", "ci_high", "n_prompts"])

    def traces(self) -> list[BaseTraceType]:
        """One line per task and a thick overall line, each with CI error bars, against shots."""
        import plotly.graph_objects as go

        x = list(self.shots)

        def line(name: str, values: Tensor, ci: Tensor, width: int) -> go.Scatter:
            return go.Scatter(
                x=x,
                y=values.tolist(),
                mode="lines+markers",
                name=name,
                line={"width": width},
                error_y=error_bars(values, ci),
            )

        tasks = [line(name, self.values[t], self.ci[t], 1) for t, name in enumerate(self.task_names)]
        return [line("all tasks", self.overall, self.overall_ci, 3), *tasks]

    def figure_layout(self) -> dict[str, Any]:
        """Score against number of shots."""
        return {
            "title": {"text": f"ICL performance ({self.metric})"},
            "xaxis": {"title": {"text": SHOTS_AXIS_TITLE}, "tickmode": "array", "tickvals": list(self.shots)},
            "yaxis": {"title": {"text": self.metric}},
        }
