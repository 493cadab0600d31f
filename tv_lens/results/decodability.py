"""The result of a task-decodability analysis: TD per layer and per task, confusion, bootstrap CIs, figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.models.adapter import EMBED_LAYER
from tv_lens.results.axes import LAYER_AXIS_TITLE, error_bars, layer_axis, layer_index, layer_label
from tv_lens.results.base import Result
from tv_lens.results.shared import BootstrapSettings, HeldOutInputs
from tv_lens.stats.selection import HeldOutBest

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.basedatatypes import BaseTraceType

__all__ = ["ALL_TASKS", "Decodability", "best_layer", "block_entries"]

ALL_TASKS = "all"


def best_layer(layers: tuple[int, ...], td: Float[Tensor, " layer"]) -> int:
    """The block index of highest TD, the earliest on ties, passing over the embedding output (-1).

    In a causal model the embedding output at the pre-answer token depends on that token and its
    position only, never on the demonstrations, so its TD measures formatting differences between tasks
    (or tie-breaking among identical points), not a task representation. It is the best layer only when it
    is the only layer.
    """
    blocks = [i for i, eligible in enumerate(block_entries(layers)) if eligible]
    return layers[max(blocks, key=lambda i: (float(td[i]), -i))]


def block_entries(layers: tuple[int, ...]) -> list[bool]:
    """Which layer entries may be the best layer: every block, the embedding output (-1) only if it is alone."""
    blocks = [layer != EMBED_LAYER for layer in layers]
    return blocks if any(blocks) else [True] * len(layers)


@dataclass(frozen=True, eq=False)
class Decodability(BootstrapSettings, Result):
    """Task decodability (TD) per layer: overall, per task, and the task × task confusion.

    The bootstrap settings are those of :class:`~tv_lens.results.BootstrapSettings`; ``seed`` also seeds the
    probe's folds.

    Attributes:
        td: Fraction of prompts whose predicted task is their true task, per layer ``[layer]``.
        td_ci: Bootstrap confidence interval (low, high) of ``td`` ``[layer, 2]``.
        per_task: TD over each task's prompts ``[layer, task]`` (NaN for a task without prompts).
        per_task_ci: Bootstrap CI of ``per_task`` ``[layer, task, 2]``.
        confusion: Counts ``[layer, true task, predicted task]``; its diagonal over its row sums is ``per_task``.
        predictions: Predicted task of each prompt ``[layer, prompt]`` (leave-one-out or cross-validated).
        labels: True task of each prompt ``[prompt]``.
        layers: TransformerLens block index of each layer entry; -1 is the embedding output.
        task_names: Name of every task id.
        site: Residual site the representations were read at.
        method: ``"knn"`` (leave-one-out k-NN, Han et al.) or ``"probe"`` (cross-validated logistic regression).
        settings: The method's parameters (``k``, ``metric`` or ``n_folds``, ``C``; ``repeats``, absent in files
            saved before that option existed, where it was ``"keep"``).
        prompt_ids: An id per prompt shared by exactly the identical prompts ``[prompt]`` (``None`` where the
            representations came without them, or in files saved before this field existed).
    """

    td: Float[Tensor, " layer"]
    td_ci: Float[Tensor, "layer 2"]
    per_task: Float[Tensor, "layer task"]
    per_task_ci: Float[Tensor, "layer task 2"]
    confusion: Int[Tensor, "layer task task"]
    predictions: Int[Tensor, "layer prompt"]
    labels: Int[Tensor, " prompt"]
    layers: tuple[int, ...]
    task_names: tuple[str, ...]
    site: str = "resid_post"
    method: str = "knn"
    settings: dict[str, Any] = field(default_factory=dict)
    prompt_ids: Int[Tensor, " prompt"] | None = None

    def _axes(self) -> dict[str, int]:
        return {"layer": len(self.layers), "task": len(self.task_names)}

    @property
    def best_layer(self) -> int:
        """Block index with the highest TD (the earliest on ties); see :func:`best_layer`."""
        return best_layer(self.layers, self.td)

    @property
    def n_per_task(self) -> Int[Tensor, " task"]:
        """Number of prompts of each task."""
        return torch.bincount(self.labels, minlength=len(self.task_names))

    @property
    def n_repeated(self) -> int | None:
        """Prompts with an identical prompt of their own task in the sample (``None``: not known).

        Under ``settings["repeats"] == "keep"`` each such prompt has a copy of its task at distance 0 among its
        neighbours (see :mod:`tv_lens.analyses.decodability`).
        """
        if self.prompt_ids is None:
            return None
        keys = self.prompt_ids * len(self.task_names) + self.labels
        _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
        return int((counts[inverse] > 1).sum())

    @property
    def chance(self) -> float:
        """TD of always guessing the most frequent task (1 / number of tasks for a balanced pool)."""
        return float(self.n_per_task.max()) / len(self.labels)

    @property
    def confusion_rates(self) -> Float[Tensor, "layer task task"]:
        """``confusion`` with every row divided by its task's number of prompts (NaN rows for absent tasks)."""
        counts = self.confusion.double()
        return counts / counts.sum(-1, keepdim=True)

    def at(self, layer: int) -> int:
        """Index into the layer axis of a block index (-1 = embedding output)."""
        return layer_index(self.layers, layer, "this decodability result")

    def held_out_best(self) -> HeldOutBest:
        """The best layer chosen on half the prompts, its TD read on the other half, and the other way round.

        The best layer's TD is optimistic: the prompts that score the layer also chose it. This chooses it on one
        half (halves balanced within each task, this result's bootstrap settings and seed) and scores each prompt
        at the layer the other half chose (:func:`~tv_lens.stats.selection.held_out_best`; the embedding output
        only where it is the only layer, as :func:`best_layer`). A prompt's prediction still comes from its
        neighbours among all prompts; only the choice of layer is held out. ``chosen`` holds the two layers.
        """
        return self._held_out()

    def _held_out_inputs(self) -> HeldOutInputs:
        correct = (self.predictions == self.labels).double()
        return HeldOutInputs(correct, self.labels, len(self.task_names), self.layers, block_entries(self.layers))

    def headline(self) -> dict[str, Any]:
        """TD at the best layer with its interval, the same chosen on held-out prompts, chance, repeats, TD by layer."""
        i = self.at(self.best_layer)
        return {
            "best_layer": self.best_layer,
            "best_td": float(self.td[i]),
            "best_td_ci": [float(x) for x in self.td_ci[i]],
            **self._held_out_numbers("held_out_td"),
            "chance": self.chance,
            "repeated_prompts": self.n_repeated,
            "repeats": self.settings.get("repeats", "keep"),
            "td_by_layer": {str(layer): float(v) for layer, v in zip(self.layers, self.td, strict=True)},
        }

    def to_frame(self) -> pd.DataFrame:
        """Tidy TD table: one row per (layer, task), plus task ``"all"`` for the overall TD.

        Columns: ``layer`` (block index, -1 = embedding output), ``layer_label``, ``task``, ``td``,
        ``ci_low``, ``ci_high``, ``n_prompts``.
        """
        import pandas as pd

        rows = []
        counts = self.n_per_task.tolist()
        for i, layer in enumerate(self.layers):
            label = layer_label(layer, self.site)
            low, high = self.td_ci[i].tolist()
            rows.append((layer, label, ALL_TASKS, float(self.td[i]), low, high, len(self.labels)))
            for t, name in enumerate(self.task_names):
                low, high = self.per_task_ci[i, t].tolist()
                rows.append((layer, label, name, float(self.per_task[i, t]), low, high, counts[t]))
        columns = ["layer", "layer_label", "task", "td", "ci_low", "ci_high", "n_prompts"]
        return pd.DataFrame(rows, columns=columns)

    def confusion_frame(self) -> pd.DataFrame:
        """Tidy confusion table.

        Columns: ``layer``, ``layer_label``, ``true_task``, ``predicted_task``, ``count``, ``rate``.
        """
        import pandas as pd

        rates = self.confusion_rates
        rows = [
            (layer, layer_label(layer, self.site), true, pred, int(self.confusion[i, a, b]), float(rates[i, a, b]))
            for i, layer in enumerate(self.layers)
            for a, true in enumerate(self.task_names)
            for b, pred in enumerate(self.task_names)
        ]
        return pd.DataFrame(rows, columns=["layer", "layer_label", "true_task", "predicted_task", "count", "rate"])

    def traces(self) -> list[BaseTraceType]:
        """Overall TD with CI error bars, one line per task, and the chance level (dashed)."""
        import plotly.graph_objects as go

        x = list(self.layers)
        td = self.td.tolist()
        overall = go.Scatter(
            x=x,
            y=td,
            mode="lines+markers",
            name="all tasks",
            error_y=error_bars(self.td, self.td_ci),
            line={"width": 3},
        )
        per_task = [
            go.Scatter(x=x, y=self.per_task[:, t].tolist(), mode="lines", name=name, line={"width": 1})
            for t, name in enumerate(self.task_names)
        ]
        chance = go.Scatter(
            x=x, y=[self.chance] * len(x), mode="lines", name="chance", line={"dash": "dash", "color": "gray"}
        )
        return [overall, *per_task, chance]

    def figure_layout(self) -> dict[str, Any]:
        """TD curve layout: block-index x axis, TD in [0, 1]."""
        method = "k-NN" if self.method == "knn" else "linear probe"
        return {
            "title": {"text": f"Task decodability ({method}, {self.site})"},
            "xaxis": layer_axis(self.layers, self.site),
            "yaxis": {"title": {"text": "task decodability"}, "range": [0, 1.05]},
        }

    def confusion_traces(self, layer: int | None = None) -> list[BaseTraceType]:
        """A heatmap of confusion rates (rows: true task, columns: predicted) at ``layer`` (default: best)."""
        import plotly.graph_objects as go

        i = self.at(self.best_layer if layer is None else layer)
        rates = self.confusion_rates[i]
        return [
            go.Heatmap(
                z=rates.tolist(),
                x=list(self.task_names),
                y=list(self.task_names),
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                text=self.confusion[i].tolist(),
                hovertemplate="true %{y}<br>predicted %{x}<br>rate %{z:.3f} (n=%{text})<extra></extra>",
            )
        ]

    def confusion_figure(self, layer: int | None = None) -> go.Figure:
        """The confusion heatmap at ``layer`` (default: the best layer) as a figure."""
        import plotly.graph_objects as go

        chosen = self.best_layer if layer is None else layer
        return go.Figure(
            data=self.confusion_traces(chosen),
            layout={
                "title": {"text": f"Task confusion at {layer_label(chosen, self.site)} ({LAYER_AXIS_TITLE})"},
                "xaxis": {"title": {"text": "predicted task"}},
                "yaxis": {"title": {"text": "true task"}, "autorange": "reversed"},
            },
        )
