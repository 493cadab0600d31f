"""The result of the layer-finetuning experiment: TD per layer and accuracy, before and after, side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor

from tv_lens.errors import ShapeError
from tv_lens.results.axes import error_bars, layer_axis, layer_label
from tv_lens.results.base import Result
from tv_lens.results.decodability import ALL_TASKS
from tv_lens.results.shared import real_tasks

if TYPE_CHECKING:
    import pandas as pd
    from plotly.basedatatypes import BaseTraceType


__all__ = ["FinetuningComparison"]


@dataclass(frozen=True, eq=False)
class FinetuningComparison(Result):
    """Task decodability and ICL accuracy of a base model and of its finetuned variants.

    The variant axis is typically ``("base", "first:k", "last:k")``: the model before finetuning, after
    finetuning its first ``k`` blocks, and after finetuning its last ``k`` blocks (Han et al. §4.4).

    Attributes:
        variants: Name of every model compared.
        blocks: Blocks trained in each variant (empty for the base model).
        layers: Block index of each TD entry (-1 = embedding output).
        task_names: Name of every task entry.
        td: Task decodability ``[variant, layer]``.
        td_ci: Its bootstrap interval ``[variant, layer, 2]``.
        accuracy: ICL accuracy per task ``[variant, task]``.
        overall: ICL accuracy over every task but Null ``[variant]``.
        overall_ci: Its bootstrap interval ``[variant, 2]``.
        final_loss: Training loss at the last finetuning step ``[variant]`` (NaN for the base model).
        settings: Finetuning settings (``k``, ``steps``, ``lr``, ``lora``: the LoRA parameters and targets).
        site: Residual site TD was read at.
    """

    variants: tuple[str, ...]
    blocks: tuple[tuple[int, ...], ...]
    layers: tuple[int, ...]
    task_names: tuple[str, ...]
    td: Float[Tensor, "variant layer"]
    td_ci: Float[Tensor, "variant layer 2"]
    accuracy: Float[Tensor, "variant task"]
    overall: Float[Tensor, " variant"]
    overall_ci: Float[Tensor, "variant 2"]
    final_loss: Float[Tensor, " variant"]
    settings: dict[str, Any] = field(default_factory=dict)
    site: str = "resid_post"

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.blocks) != len(self.variants):
            raise ShapeError(f"FinetuningComparison.blocks needs one entry per variant ({len(self.variants)}).")

    def _axes(self) -> dict[str, int]:
        return {"variant": len(self.variants), "layer": len(self.layers), "task": len(self.task_names)}

    def td_change(self, variant: str) -> Float[Tensor, " layer"]:
        """TD of ``variant`` minus TD of the first variant (the base model), per layer."""
        return self.td[self.variants.index(variant)] - self.td[0]

    def headline(self) -> dict[str, Any]:
        """Accuracy and last-layer TD of every variant (base, first blocks, last blocks) on the new tasks."""
        return {
            "tasks": [self.task_names[t] for t in real_tasks(self.task_names)],
            "accuracy": {variant: float(self.overall[v]) for v, variant in enumerate(self.variants)},
            "td_last_layer": {variant: float(self.td[v, -1]) for v, variant in enumerate(self.variants)},
            "last_layer": self.layers[-1],
        }

    def to_frame(self) -> pd.DataFrame:
        """TD per (variant, layer).

        Columns: ``variant``, ``blocks`` (trained blocks, e.g. ``"0,1"``), ``layer`` (block index, -1 =
        embedding output), ``layer_label``, ``td``, ``ci_low``, ``ci_high``, ``td_change`` (vs the base).
        """
        import pandas as pd

        rows = []
        for v, variant in enumerate(self.variants):
            change = self.td[v] - self.td[0]
            for i, layer in enumerate(self.layers):
                rows.append(
                    (
                        variant,
                        ",".join(map(str, self.blocks[v])),
                        layer,
                        layer_label(layer, self.site),
                        float(self.td[v, i]),
                        *self.td_ci[v, i].tolist(),
                        float(change[i]),
                    )
                )
        columns = ["variant", "blocks", "layer", "layer_label", "td", "ci_low", "ci_high", "td_change"]
        return pd.DataFrame(rows, columns=columns)

    def accuracy_frame(self) -> pd.DataFrame:
        """Accuracy per (variant, task), plus task ``"all"`` (every task but Null).

        Columns: ``variant``, ``task``, ``accuracy``, ``ci_low``, ``ci_high``, ``final_loss``.
        """
        import pandas as pd

        rows = []
        for v, variant in enumerate(self.variants):
            loss = float(self.final_loss[v])
            rows.append((variant, ALL_TASKS, float(self.overall[v]), *self.overall_ci[v].tolist(), loss))
            rows.extend(
                (variant, name, float(self.accuracy[v, t]), float("nan"), float("nan"), loss)
                for t, name in enumerate(self.task_names)
            )
        return pd.DataFrame(rows, columns=["variant", "task", "accuracy", "ci_low", "ci_high", "final_loss"])

    def traces(self) -> list[BaseTraceType]:
        """One TD curve per variant (with CI error bars)."""
        import plotly.graph_objects as go

        return [
            go.Scatter(
                x=list(self.layers),
                y=self.td[v].tolist(),
                mode="lines+markers",
                name=f"{variant} (accuracy {float(self.overall[v]):.2f})",
                error_y=error_bars(self.td[v], self.td_ci[v]),
            )
            for v, variant in enumerate(self.variants)
        ]

    def figure_layout(self) -> dict[str, Any]:
        """TD against block index."""
        return {
            "title": {"text": "Finetuning early vs late blocks: task decodability per layer"},
            "xaxis": layer_axis(self.layers, self.site),
            "yaxis": {"title": {"text": "task decodability"}, "range": [0, 1.05]},
        }
