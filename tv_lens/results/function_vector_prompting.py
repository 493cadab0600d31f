"""Results of adding a function vector to zero-shot prompts per layer, and of the whole function-vector analysis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor

from tv_lens.results.axes import layer_axis, layer_label
from tv_lens.results.base import Result
from tv_lens.results.function_vectors import FunctionVector, IndirectEffects, MeanHeadActivations
from tv_lens.results.prompting import PromptingAccuracy
from tv_lens.stats.selection import HeldOutBest

if TYPE_CHECKING:
    import pandas as pd
    from plotly.basedatatypes import BaseTraceType

__all__ = ["FunctionVectorPrompting", "FunctionVectorResult"]


@dataclass(frozen=True, eq=False)
class FunctionVectorPrompting(Result):
    """Zero-shot accuracy with the function vector added at the answer position of each layer's residual.

    The numbers are a task-vector-prompting sweep (``source="task_mean"``, ``mode="add"``) whose vector at every
    layer is the task's function vector; :attr:`prompting` holds it whole (every prompt, the ICL and zero-shot
    baselines, intervals, per-task accuracies).

    Attributes:
        prompting: The sweep.
        heads: ``(layer, head)`` of the heads summed into the vector.
    """

    prompting: PromptingAccuracy
    heads: tuple[tuple[int, int], ...]

    @property
    def layers(self) -> tuple[int, ...]:
        """Block index of each injection layer (the vector is added to its ``resid_post``)."""
        return self.prompting.layers

    @property
    def accuracy(self) -> Float[Tensor, " layer"]:
        """Zero-shot accuracy with the vector added, per layer."""
        return self.prompting.accuracy

    @property
    def accuracy_ci(self) -> Float[Tensor, "layer 2"]:
        """Its bootstrap interval."""
        return self.prompting.accuracy_ci

    @property
    def zero_shot_accuracy(self) -> float:
        """Zero-shot accuracy without the vector (the floor)."""
        return self.prompting.zero_shot_accuracy

    @property
    def icl_accuracy(self) -> float:
        """Accuracy of the full ICL prompts (the ceiling)."""
        return self.prompting.icl_accuracy

    @property
    def best_layer(self) -> int:
        """Block with the highest accuracy (the earliest on ties)."""
        return self.prompting.best_layer

    @property
    def best_accuracy(self) -> float:
        """Accuracy at :attr:`best_layer`, measured on the prompts that chose it (see :meth:`held_out_best`)."""
        return self.prompting.best_accuracy

    def held_out_best(self) -> HeldOutBest:
        """The best layer chosen on half the prompts, scored on the other (:meth:`PromptingAccuracy.held_out_best`)."""
        return self.prompting.held_out_best()

    def to_frame(self) -> pd.DataFrame:
        """The sweep's table (:meth:`PromptingAccuracy.to_frame`) with ``tvp_*`` columns named ``fv_*``."""
        return self.prompting.to_frame().rename(columns={"tvp_accuracy": "fv_accuracy", "tvp_loss": "fv_loss"})

    def traces(self) -> list[BaseTraceType]:
        """Accuracy against layer (CI error bars), with the ICL and zero-shot accuracies as flat lines."""
        traces = self.prompting.traces()
        traces[0].name = "function vector"
        return traces

    def figure_layout(self) -> dict[str, Any]:
        """Accuracy against block index."""
        return {
            "title": {
                "text": f"Function vector ({len(self.heads)} heads) added; best layer {self.best_layer} "
                f"({layer_label(self.best_layer, self.prompting.site)})"
            },
            "xaxis": layer_axis(self.layers, self.prompting.site),
            "yaxis": {"title": {"text": f"accuracy ({self.prompting.scoring})"}, "range": [0, 1.05]},
        }


@dataclass(frozen=True, eq=False)
class FunctionVectorResult(Result):
    """Everything :class:`~tv_lens.analyses.FunctionVectors` measures.

    Attributes:
        means: Mean head activations of the clean prompts.
        effects: Causal indirect effect of every head on the corrupted prompts.
        vector: The function vector of every task.
        prompting: Its zero-shot accuracy per layer.
    """

    means: MeanHeadActivations
    effects: IndirectEffects
    vector: FunctionVector
    prompting: FunctionVectorPrompting

    def to_frame(self) -> pd.DataFrame:
        """The causal indirect effects' table (:meth:`IndirectEffects.to_frame`); the parts have their own."""
        return self.effects.to_frame()

    def traces(self) -> list[BaseTraceType]:
        """The (layer x head) heatmap of mean CIE; ``prompting.figure()`` draws the layer sweep."""
        return self.effects.traces()

    def figure_layout(self) -> dict[str, Any]:
        """Heads on x, blocks on y; the title gives the best layer of the vector."""
        layout = self.effects.figure_layout()
        sweep = self.prompting
        label = layer_label(sweep.best_layer, sweep.prompting.site)
        layout["title"] = {
            "text": f"Causal indirect effect per head; function vector of the top {self.vector.k}: accuracy "
            f"{sweep.best_accuracy:.2f} at layer {sweep.best_layer} ({label}; zero-shot {sweep.zero_shot_accuracy:.2f})"
        }
        return layout
