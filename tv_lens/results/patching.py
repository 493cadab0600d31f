"""The result of task-vector patching: per layer, source task and target task, the effect of the patch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.errors import AnalysisError
from tv_lens.results.axes import LAYER_AXIS_TITLE, error_bars, layer_axis, layer_index, layer_label
from tv_lens.results.base import Result
from tv_lens.results.shared import HeldOutInputs, SweepSettings, real_prompts
from tv_lens.stats import group_means
from tv_lens.stats.selection import HeldOutBest

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.basedatatypes import BaseTraceType


__all__ = ["PatchingEffects", "own_and_other_targets", "own_targets"]


@dataclass(frozen=True, eq=False)
class PatchingEffects(SweepSettings, Result):
    """Accuracy and loss changes from patching task ``t``'s vector into prompts of task ``s``, per layer.

    Per-prompt tensors keep every number the summaries are computed from; ``prompt`` indexes the patched
    prompts, ``source`` the tasks of those prompts and ``target`` the injected vectors' tasks. The bootstrap and
    sweep settings are those of :class:`~tv_lens.results.SweepSettings`.

    Attributes:
        layers: Block index of each patched layer (-1 = embedding output).
        source_names: Task of each source entry (the prompts' tasks).
        target_names: Task of each target entry (the injected vectors).
        task_ids: Source entry of each prompt ``[prompt]``.
        clean_correct: 1.0 where the unpatched prediction is right ``[prompt]``.
        clean_loss: Unpatched answer cross-entropy ``[prompt]``.
        correct: Patched correctness ``[layer, target, prompt]``.
        loss: Patched cross-entropy ``[layer, target, prompt]``.
        follows: 1.0 where the patched prediction equals the target task's rule applied to the prompt's
            query, 0.0 where not; NaN where undefined (no rule, e.g. Null, or the rule gives the prompt's own
            answer) ``[layer, target, prompt]``.
        clean_follows: The same for the unpatched prediction ``[target, prompt]``.
        accuracy_change: Mean of ``correct - clean_correct`` per (layer, source, target).
        accuracy_change_ci: Its bootstrap interval ``[layer, source, target, 2]``.
        loss_change: Mean of ``loss - clean_loss`` per (layer, source, target).
        loss_change_ci: Its bootstrap interval ``[layer, source, target, 2]``.
        override: Mean of ``follows`` (defined prompts) per (layer, source, target); NaN if none.
        clean_override: Mean of ``clean_follows`` per (source, target).
        correct_change: Accuracy change of correct patches (target = source), per layer.
        correct_change_ci: Its interval ``[layer, 2]``.
        incorrect_change: Accuracy change of incorrect patches (each prompt's mean over targets ≠ its task).
        incorrect_change_ci: Its interval ``[layer, 2]``.
        correct_loss_change: Loss change of correct patches, per layer.
        correct_loss_change_ci: Its interval ``[layer, 2]``.
        incorrect_loss_change: Loss change of incorrect patches, per layer.
        incorrect_loss_change_ci: Its interval ``[layer, 2]``.
        override_rate: Pooled mean of ``follows`` over prompts and targets ≠ their task, per layer.
        clean_override_rate: The same for the unpatched predictions (how often the other rules agree by chance).
        writes: Prompts each (layer, target) intervention wrote to ``[layer, target]``.
        mode: ``"replace"``, ``"add"`` or ``"add_difference"``.
        site: Residual site patched.
        scale: Factor on the added vector (``add`` modes).
        null_task: Name of the Null task (left out of the correct / incorrect summaries as a source).
    """

    layers: tuple[int, ...]
    source_names: tuple[str, ...]
    target_names: tuple[str, ...]
    task_ids: Int[Tensor, " prompt"]
    clean_correct: Float[Tensor, " prompt"]
    clean_loss: Float[Tensor, " prompt"]
    correct: Float[Tensor, "layer target prompt"]
    loss: Float[Tensor, "layer target prompt"]
    follows: Float[Tensor, "layer target prompt"]
    clean_follows: Float[Tensor, "target prompt"]
    accuracy_change: Float[Tensor, "layer source target"]
    accuracy_change_ci: Float[Tensor, "layer source target 2"]
    loss_change: Float[Tensor, "layer source target"]
    loss_change_ci: Float[Tensor, "layer source target 2"]
    override: Float[Tensor, "layer source target"]
    clean_override: Float[Tensor, "source target"]
    correct_change: Float[Tensor, " layer"]
    correct_change_ci: Float[Tensor, "layer 2"]
    incorrect_change: Float[Tensor, " layer"]
    incorrect_change_ci: Float[Tensor, "layer 2"]
    correct_loss_change: Float[Tensor, " layer"]
    correct_loss_change_ci: Float[Tensor, "layer 2"]
    incorrect_loss_change: Float[Tensor, " layer"]
    incorrect_loss_change_ci: Float[Tensor, "layer 2"]
    override_rate: Float[Tensor, " layer"]
    clean_override_rate: float
    writes: Int[Tensor, "layer target"]
    mode: str = "replace"
    site: str = "resid_post"
    scale: float = 1.0
    null_task: str = "null"

    def _axes(self) -> dict[str, int]:
        return {"layer": len(self.layers), "source": len(self.source_names), "target": len(self.target_names)}

    @property
    def clean_accuracy(self) -> Float[Tensor, " source"]:
        """Unpatched accuracy of each source task."""
        return group_means(self.clean_correct, self.task_ids, len(self.source_names))

    @property
    def accuracy(self) -> Float[Tensor, "layer source target"]:
        """Patched accuracy per (layer, source, target)."""
        return group_means(self.correct, self.task_ids, len(self.source_names)).transpose(-1, -2)

    @property
    def n_prompts(self) -> Int[Tensor, " source"]:
        """Prompts of each source task."""
        return torch.bincount(self.task_ids, minlength=len(self.source_names))

    @property
    def best_layer(self) -> int:
        """Block index where incorrect patches raise the answer loss most above correct ones.

        The loss separates correct from incorrect vectors also where accuracy is at its ceiling (an accuracy gap
        would tie there).

        Raises:
            AnalysisError: No layer has both correct and incorrect patches to compare (:attr:`compared` is False).
        """
        if not self.compared:
            raise AnalysisError(
                "This patching result has no layer where both correct and incorrect vectors were patched (one task "
                "and no Null task, or targets that are all, or none, of the prompts' own tasks), so no layer "
                "separates them; read the changes per layer (to_frame(), figure()), or patch with the vectors of "
                "another task or of the Null task too."
            )
        gap = self.incorrect_loss_change - self.correct_loss_change
        return self.layers[int(torch.argmax(torch.nan_to_num(gap, nan=-torch.inf)))]

    @property
    def compared(self) -> bool:
        """Whether some layer has both correct and incorrect patches, whose loss changes :attr:`best_layer` compares."""
        return not bool((self.incorrect_loss_change - self.correct_loss_change).isnan().all())

    def held_out_best(self) -> HeldOutBest:
        """The layer of :attr:`best_layer`'s criterion chosen on half the prompts, its gap read on the other half.

        :attr:`best_layer` is the layer where incorrect patches raise the loss most above correct ones, and the
        prompts that measure that gap also chose the layer. This chooses it on one half of the prompts (balanced
        within each source task, this result's bootstrap settings and seed) and reads each prompt's gap (its mean
        loss change under every other target minus that under its own task's vector) at the layer the other half
        chose, and the other way round (:func:`~tv_lens.stats.selection.held_out_best`). ``half`` and ``scores``
        run over the prompts of every task but Null whose own task is a target and that have another target.
        """
        return self._held_out()

    def _held_out_inputs(self) -> HeldOutInputs:
        own = own_targets(self.source_names, self.target_names, self.task_ids)
        mine, other = own_and_other_targets(self.loss - self.clean_loss, own)
        keep = real_prompts(self.task_ids, self.source_names, self.null_task) & (own >= 0) & ~other[0].isnan()
        return HeldOutInputs((other - mine)[:, keep], self.task_ids[keep], len(self.source_names), self.layers)

    def at(self, layer: int) -> int:
        """Index into the layer axis of a block index."""
        return layer_index(self.layers, layer, "this patching result")

    def headline(self) -> dict[str, Any]:
        """Correct vs incorrect changes (accuracy and loss, with intervals) and the override rate at the best layer.

        Without both to compare (:attr:`compared` is False) the headline is the mode and a ``layer`` of ``None``.
        """
        if not self.compared:
            return {"mode": self.mode, "layer": None}
        i = self.at(self.best_layer)
        numbers: dict[str, Any] = {"mode": self.mode, "layer": self.layers[i]}
        for name in _SUMMARIES:
            numbers[name] = float(getattr(self, name)[i])
            numbers[f"{name}_ci"] = [float(x) for x in getattr(self, f"{name}_ci")[i]]
        return numbers | {"override_rate": float(self.override_rate[i])} | self._held_out_numbers("held_out_loss_gap")

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, source, target).

        Columns: ``layer`` (block index, -1 = embedding output), ``layer_label``, ``source``, ``target``,
        ``correct`` (target is the source's own task), ``accuracy``, ``accuracy_change``, ``ci_low``,
        ``ci_high``, ``loss``, ``loss_change``, ``loss_ci_low``, ``loss_ci_high``, ``override``,
        ``clean_override``, ``n_prompts``, ``writes``.
        """
        import pandas as pd

        accuracy = self.accuracy
        loss = group_means(self.loss, self.task_ids, len(self.source_names)).transpose(-1, -2)
        counts = self.n_prompts.tolist()
        rows = []
        for i, layer in enumerate(self.layers):
            label = layer_label(layer, self.site)
            for s, source in enumerate(self.source_names):
                for t, target in enumerate(self.target_names):
                    acc_ci = self.accuracy_change_ci[i, s, t].tolist()
                    loss_ci = self.loss_change_ci[i, s, t].tolist()
                    rows.append(
                        (
                            layer,
                            label,
                            source,
                            target,
                            source == target,
                            float(accuracy[i, s, t]),
                            float(self.accuracy_change[i, s, t]),
                            *acc_ci,
                            float(loss[i, s, t]),
                            float(self.loss_change[i, s, t]),
                            *loss_ci,
                            float(self.override[i, s, t]),
                            float(self.clean_override[s, t]),
                            counts[s],
                            int(self.writes[i, t]),
                        )
                    )
        columns = [
            "layer",
            "layer_label",
            "source",
            "target",
            "correct",
            "accuracy",
            "accuracy_change",
            "ci_low",
            "ci_high",
            "loss",
            "loss_change",
            "loss_ci_low",
            "loss_ci_high",
            "override",
            "clean_override",
            "n_prompts",
            "writes",
        ]
        return pd.DataFrame(rows, columns=columns)

    def summary_frame(self) -> pd.DataFrame:
        """Correct vs incorrect patches per layer: one row per (layer, comparison).

        Columns: ``layer``, ``layer_label``, ``comparison`` (``"correct"`` or ``"incorrect"``),
        ``accuracy_change``, ``ci_low``, ``ci_high``, ``loss_change``, ``loss_ci_low``, ``loss_ci_high``,
        ``override_rate`` (incorrect rows only; NaN for correct).
        """
        import pandas as pd

        comparisons = {
            "correct": (
                self.correct_change,
                self.correct_change_ci,
                self.correct_loss_change,
                self.correct_loss_change_ci,
            ),
            "incorrect": (
                self.incorrect_change,
                self.incorrect_change_ci,
                self.incorrect_loss_change,
                self.incorrect_loss_change_ci,
            ),
        }
        override = {"correct": torch.full_like(self.override_rate, torch.nan), "incorrect": self.override_rate}
        rows = [
            (
                layer,
                layer_label(layer, self.site),
                comparison,
                float(change[i]),
                *change_ci[i].tolist(),
                float(loss[i]),
                *loss_ci[i].tolist(),
                float(override[comparison][i]),
            )
            for i, layer in enumerate(self.layers)
            for comparison, (change, change_ci, loss, loss_ci) in comparisons.items()
        ]
        columns = [
            "layer",
            "layer_label",
            "comparison",
            "accuracy_change",
            "ci_low",
            "ci_high",
            "loss_change",
            "loss_ci_low",
            "loss_ci_high",
            "override_rate",
        ]
        return pd.DataFrame(rows, columns=columns)

    def traces(self) -> list[BaseTraceType]:
        """One heatmap of accuracy change (rows: source task, columns: injected task) per layer.

        Only the first is visible; :meth:`figure` adds a layer slider that switches between them.
        """
        import plotly.graph_objects as go

        bound = float(torch.nan_to_num(self.accuracy_change.abs(), nan=0.0).max()) or 1.0
        return [
            go.Heatmap(
                z=self.accuracy_change[i].tolist(),
                x=list(self.target_names),
                y=list(self.source_names),
                zmin=-bound,
                zmax=bound,
                colorscale="RdBu",
                name=layer_label(layer, self.site),
                visible=i == 0,
                hovertemplate="prompts of %{y}<br>vector of %{x}<br>accuracy change %{z:.3f}<extra></extra>",
            )
            for i, layer in enumerate(self.layers)
        ]

    def figure_layout(self) -> dict[str, Any]:
        """Heatmap axes and a slider over layers."""
        n = len(self.layers)
        steps = [
            {
                "method": "update",
                "label": layer_label(layer, self.site),
                "args": [{"visible": [j == i for j in range(n)]}],
            }
            for i, layer in enumerate(self.layers)
        ]
        return {
            "title": {"text": f"Task-vector patching ({self.mode}, {self.site}): accuracy change"},
            "xaxis": {"title": {"text": "injected task vector (target)"}},
            "yaxis": {"title": {"text": "prompt task (source)"}, "autorange": "reversed"},
            "sliders": [{"active": 0, "currentvalue": {"prefix": "layer: "}, "steps": steps}],
        }

    def summary_traces(self) -> list[BaseTraceType]:
        """Accuracy change of correct and incorrect patches (with CI error bars), and the override rate."""
        import plotly.graph_objects as go

        x = list(self.layers)

        def line(name: str, values: Tensor, ci: Tensor) -> go.Scatter:
            return go.Scatter(
                x=x,
                y=values.tolist(),
                mode="lines+markers",
                name=name,
                error_y=error_bars(values, ci),
            )

        override = go.Scatter(
            x=x, y=self.override_rate.tolist(), mode="lines+markers", name="override rate", line={"dash": "dot"}
        )
        return [
            line("correct vector", self.correct_change, self.correct_change_ci),
            line("incorrect vector", self.incorrect_change, self.incorrect_change_ci),
            override,
        ]

    def summary_figure(self) -> go.Figure:
        """Correct vs incorrect accuracy change and override rate against layer."""
        import plotly.graph_objects as go

        return go.Figure(
            data=self.summary_traces(),
            layout={
                "title": {"text": f"Correct vs incorrect task vectors ({self.mode}, {LAYER_AXIS_TITLE})"},
                "xaxis": layer_axis(self.layers, self.site),
                "yaxis": {"title": {"text": "accuracy change / override rate"}},
            },
        )


_SUMMARIES = ("correct_change", "incorrect_change", "correct_loss_change", "incorrect_loss_change")
"""The per-layer summaries of correct and incorrect patches, each with its interval ``<name>_ci``."""


def own_targets(
    source_names: tuple[str, ...], target_names: tuple[str, ...], sources: Int[Tensor, " prompt"]
) -> Int[Tensor, " prompt"]:
    """Each prompt's own task on the target axis (-1 where its task is not a target)."""
    own = [target_names.index(name) if name in target_names else -1 for name in source_names]
    return torch.tensor(own, dtype=torch.long)[sources.cpu()]


def own_and_other_targets(
    delta: Float[Tensor, "layer target prompt"], own: Int[Tensor, " prompt"]
) -> tuple[Float[Tensor, "layer prompt"], Float[Tensor, "layer prompt"]]:
    """Each prompt's change under its own task's vector (correct), and its mean change under every other target.

    A prompt whose task is not a target gets its target 0's change as its own (mask it with ``own >= 0``); one
    without another target gets NaN as the other.
    """
    n_targets, n = delta.shape[1], delta.shape[2]
    others = torch.arange(n_targets)[:, None] != own[None, :]  # [target, prompt]
    mine = delta[:, own.clamp(min=0), torch.arange(n)]
    other = (delta * others).sum(1) / others.sum(0)
    return mine, other
