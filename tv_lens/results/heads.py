"""Results of head ablation: per-head importance per task, heads shared across tasks, the pruning curve."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.errors import AnalysisError
from tv_lens.results.axes import head_axes, head_heatmap
from tv_lens.results.base import Result
from tv_lens.results.decodability import ALL_TASKS
from tv_lens.results.shared import SweepSettings, ranked_task, real_prompts, real_tasks
from tv_lens.stats import group_means
from tv_lens.stats.overlap import chance_jaccard
from tv_lens.stats.selection import ranked_heads

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.basedatatypes import BaseTraceType


__all__ = ["HeadImportance", "PruningCurve"]


@dataclass(frozen=True, eq=False)
class PruningCurve(Result):
    """The metric as heads are ablated cumulatively, least important first.

    Attributes:
        order: ``(layer, head)`` of each removed head, in removal order.
        values: Mean metric per task after removing the first ``k`` heads ``[k, task]`` (``k = 0 .. K``).
        overall: The same over every non-Null prompt ``[k]``.
        task_names: Name of every task entry.
        writes: Prompts written by the ablation of ``order[m]`` at step ``k`` ``[k, K]`` (0 for ``m >= k``).
        metric: Name of the metric.
        higher_is_better: Whether a larger metric is better.
    """

    order: tuple[tuple[int, int], ...]
    values: Float[Tensor, "k task"]
    overall: Float[Tensor, " k"]
    task_names: tuple[str, ...]
    writes: Int[Tensor, "k removed"]
    metric: str = "cross_entropy"
    higher_is_better: bool = False

    def _axes(self) -> dict[str, int]:
        return {"k": len(self.order) + 1, "removed": len(self.order), "task": len(self.task_names)}

    def to_frame(self) -> pd.DataFrame:
        """One row per (heads removed, task), plus task ``"all"``.

        Columns: ``n_removed``, ``last_removed`` (``"L{layer}H{head}"``, empty at 0), ``task``, ``metric``, ``value``.
        """
        import pandas as pd

        rows = []
        for k in range(len(self.order) + 1):
            last = "" if k == 0 else f"L{self.order[k - 1][0]}H{self.order[k - 1][1]}"
            rows.append((k, last, ALL_TASKS, self.metric, float(self.overall[k])))
            rows.extend(
                (k, last, name, self.metric, float(self.values[k, t])) for t, name in enumerate(self.task_names)
            )
        return pd.DataFrame(rows, columns=["n_removed", "last_removed", "task", "metric", "value"])

    def traces(self) -> list[BaseTraceType]:
        """The metric against the number of heads removed: overall (thick) and per task."""
        import plotly.graph_objects as go

        x = list(range(len(self.order) + 1))
        overall = go.Scatter(x=x, y=self.overall.tolist(), mode="lines+markers", name="all tasks", line={"width": 3})
        tasks = [
            go.Scatter(x=x, y=self.values[:, t].tolist(), mode="lines", name=name, line={"width": 1})
            for t, name in enumerate(self.task_names)
        ]
        return [overall, *tasks]

    def figure_layout(self) -> dict[str, Any]:
        """Metric against heads removed."""
        return {
            "title": {"text": "Greedy head pruning (least important heads removed first)"},
            "xaxis": {"title": {"text": "heads removed"}},
            "yaxis": {"title": {"text": self.metric}},
        }


@dataclass(frozen=True, eq=False)
class HeadImportance(SweepSettings, Result):
    """How much each attention head matters for each task, measured by ablating it.

    ``importance`` is the harm of ablating a head: the metric's change in the bad direction (accuracy
    drop, loss increase), so a positive value means the head helps. Overall values are over the prompts of
    every task but Null. The bootstrap and sweep settings are those of :class:`~tv_lens.results.SweepSettings`.

    Attributes:
        task_names: Name of every task entry.
        task_ids: Task entry of each prompt ``[prompt]``.
        clean_correct: Unablated correctness ``[prompt]``.
        clean_loss: Unablated cross-entropy ``[prompt]``.
        ablated_correct: Correctness with one head ablated ``[layer, head, prompt]``.
        ablated_loss: Cross-entropy with one head ablated ``[layer, head, prompt]``.
        importance: Mean harm per task ``[layer, head, task]`` in the chosen metric.
        importance_ci: Its bootstrap interval ``[layer, head, task, 2]``.
        overall: Mean harm over non-Null prompts ``[layer, head]``.
        overall_ci: Its interval ``[layer, head, 2]``.
        attribution: Attribution-patching estimate of the loss increase per prompt ``[layer, head, prompt]``
            (NaN when the screen was not run).
        attribution_spearman: Spearman rank correlation, over heads, of the overall attribution estimate
            with the exact overall loss increase (NaN when the screen was not run).
        attribution_method: What the estimate linearized: ``"log_odds"`` or ``"loss"`` (``None``: not run).
        shared: Task x task overlap of important heads ``[task, task]``.
        shared_method: ``"jaccard"`` (of each task's top-k heads) or ``"spearman"`` (of importance vectors).
        top_k: Heads per task in the Jaccard overlap.
        pruning: Cumulative ablation of the least important heads.
        writes: Prompts each head's ablation wrote to ``[layer, head]``.
        ablation_values: The value written into each head (zeros, or its mean ``hook_z``) ``[layer, head, d_head]``.
        metric: ``"cross_entropy"`` or ``"accuracy"``.
        mode: ``"zero"`` or ``"mean"`` ablation.
        null_task: Name of the Null task.
    """

    task_names: tuple[str, ...]
    task_ids: Int[Tensor, " prompt"]
    clean_correct: Float[Tensor, " prompt"]
    clean_loss: Float[Tensor, " prompt"]
    ablated_correct: Float[Tensor, "layer head prompt"]
    ablated_loss: Float[Tensor, "layer head prompt"]
    importance: Float[Tensor, "layer head task"]
    importance_ci: Float[Tensor, "layer head task 2"]
    overall: Float[Tensor, "layer head"]
    overall_ci: Float[Tensor, "layer head 2"]
    attribution: Float[Tensor, "layer head prompt"]
    attribution_spearman: float
    shared: Float[Tensor, "task task"]
    shared_method: str
    top_k: int
    pruning: PruningCurve
    writes: Int[Tensor, "layer head"]
    ablation_values: Float[Tensor, "layer head d_head"]
    metric: str = "cross_entropy"
    mode: str = "zero"
    null_task: str = "null"
    attribution_method: str | None = "loss"

    def _axes(self) -> dict[str, int]:
        return {"task": len(self.task_names)}

    @property
    def n_layers(self) -> int:
        """Blocks of the model."""
        return int(self.ablated_loss.shape[0])

    @property
    def n_heads(self) -> int:
        """Heads per block."""
        return int(self.ablated_loss.shape[1])

    @property
    def loss_increase(self) -> Float[Tensor, "layer head task"]:
        """Exact mean loss increase per task (what the attribution estimate approximates)."""
        return group_means(self.ablated_loss - self.clean_loss, self.task_ids, len(self.task_names))

    @property
    def attribution_by_task(self) -> Float[Tensor, "layer head task"]:
        """Mean attribution estimate per task."""
        return group_means(self.attribution, self.task_ids, len(self.task_names))

    def top_heads(self, k: int = 5, task: str | None = None) -> list[tuple[int, int]]:
        """The ``k`` most important ``(layer, head)`` overall or for ``task``.

        Raises:
            TaskError: ``task`` is not a task of the result, or no prompt is of it.
        """
        if task is None:
            return list(ranked_heads(self.overall)[:k])
        return list(
            ranked_heads(self.importance[..., ranked_task(self.task_names, self.task_ids, task, "importance")])[:k]
        )

    def task_overlaps(self) -> Float[Tensor, " pair"]:
        """The overlap (:attr:`shared`) of every ordered pair of two different tasks with prompts, Null left out."""
        counts = torch.bincount(self.task_ids, minlength=len(self.task_names))
        real = [t for t in real_tasks(self.task_names, self.null_task) if counts[t] > 0]
        return self.shared[real][:, real][~torch.eye(len(real), dtype=torch.bool)]

    def chance_overlap(self, q: float = 0.95) -> tuple[float, float]:
        """Mean and ``q``-quantile of the overlap of two random sets of ``top_k`` heads: the baseline of :attr:`shared`.

        Tasks share important heads beyond chance where their overlap exceeds the quantile
        (:func:`~tv_lens.stats.overlap.chance_jaccard`, exact).

        Raises:
            AnalysisError: ``shared_method`` is ``"spearman"`` (no top-k sets), or ``q`` outside ``(0, 1)``.
        """
        if self.shared_method != "jaccard":
            raise AnalysisError(
                f"The chance overlap is that of top-k sets; this result's shared heads are {self.shared_method!r} "
                "correlations. Run HeadAblation(shared='jaccard') for top-k overlaps."
            )
        return chance_jaccard(self.n_layers * self.n_heads, self.top_k, q)

    def headline(self) -> dict[str, Any]:
        """The three most important heads, the mean overlap of tasks' top heads, and the screen's Spearman.

        ``shared_chance`` is the 95th percentile of two random top-k sets' overlap (:meth:`chance_overlap`; NaN for
        Spearman correlations), the level above which the tasks share heads beyond chance. ``attribution_spearman``
        is NaN where it is not measured: no screen (``attribution_method`` ``None``), one head, or estimates or loss
        increases that are all equal.
        """
        off_diagonal = self.task_overlaps()
        return {
            "top_heads": [f"L{layer}H{head}" for layer, head in self.top_heads(3)],
            "attribution_spearman": float(self.attribution_spearman),
            "attribution_method": self.attribution_method,
            "shared_mean": float(off_diagonal.mean()) if len(off_diagonal) else math.nan,
            "shared_pairs": len(off_diagonal),
            "shared_method": self.shared_method,
            "shared_chance": self.chance_overlap()[1] if self.shared_method == "jaccard" else math.nan,
            "n_heads": self.n_layers * self.n_heads,
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head, task), plus task ``"all"`` (every task but Null).

        Columns: ``layer``, ``head``, ``task``, ``metric``, ``importance``, ``ci_low``, ``ci_high``,
        ``loss_increase``, ``attribution``, ``writes``.
        """
        import pandas as pd

        loss = self.loss_increase
        attribution = self.attribution_by_task
        real = real_prompts(self.task_ids, self.task_names, self.null_task)
        rows = []
        for layer in range(self.n_layers):
            for head in range(self.n_heads):
                rows.append(
                    (
                        layer,
                        head,
                        ALL_TASKS,
                        self.metric,
                        float(self.overall[layer, head]),
                        *self.overall_ci[layer, head].tolist(),
                        float((self.ablated_loss[layer, head, real] - self.clean_loss[real]).mean()),
                        float(self.attribution[layer, head, real].mean()),
                        int(self.writes[layer, head]),
                    )
                )
                for t, name in enumerate(self.task_names):
                    rows.append(
                        (
                            layer,
                            head,
                            name,
                            self.metric,
                            float(self.importance[layer, head, t]),
                            *self.importance_ci[layer, head, t].tolist(),
                            float(loss[layer, head, t]),
                            float(attribution[layer, head, t]),
                            int(self.writes[layer, head]),
                        )
                    )
        columns = [
            "layer",
            "head",
            "task",
            "metric",
            "importance",
            "ci_low",
            "ci_high",
            "loss_increase",
            "attribution",
            "writes",
        ]
        return pd.DataFrame(rows, columns=columns)

    def traces(self) -> list[BaseTraceType]:
        """A (layer x head) heatmap of overall importance."""
        return [head_heatmap(self.overall, range(self.n_layers), "importance", colorscale="Viridis", zmid=None)]

    def figure_layout(self) -> dict[str, Any]:
        """Heads on x, blocks on y."""
        return head_axes(f"Head importance ({self.mode} ablation, {self.metric} harm)")

    def shared_traces(self) -> list[BaseTraceType]:
        """A task x task heatmap of :attr:`shared`."""
        import plotly.graph_objects as go

        names = list(self.task_names)
        return [go.Heatmap(z=self.shared.tolist(), x=names, y=names, zmin=-1 if self.shared_method != "jaccard" else 0)]

    def shared_figure(self) -> go.Figure:
        """The shared-heads matrix as a figure."""
        import plotly.graph_objects as go

        what = f"Jaccard overlap of top-{self.top_k} heads" if self.shared_method == "jaccard" else "Spearman"
        return go.Figure(data=self.shared_traces(), layout={"title": {"text": f"Heads shared across tasks ({what})"}})
