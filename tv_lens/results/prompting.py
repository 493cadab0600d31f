"""The result of task-vector prompting: zero-shot accuracy with an injected task vector, per layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.results.axes import error_bars, layer_axis, layer_label
from tv_lens.results.base import Result
from tv_lens.results.decodability import ALL_TASKS
from tv_lens.results.shared import HeldOutInputs, SweepSettings, real_prompts
from tv_lens.stats import group_means
from tv_lens.stats.selection import HeldOutBest

if TYPE_CHECKING:
    import pandas as pd
    from plotly.basedatatypes import BaseTraceType


__all__ = ["PromptingAccuracy"]


@dataclass(frozen=True, eq=False)
class PromptingAccuracy(SweepSettings, Result):
    """Task-vector prompting (TVP) accuracy per layer, next to ICL and plain zero-shot accuracy.

    Overall numbers (``accuracy``, ``icl_accuracy``, ``zero_shot_accuracy`` and their intervals) are
    means over the prompts of every task except the Null task (whose answers are random); per-task
    numbers include it. The bootstrap and sweep settings are those of :class:`~tv_lens.results.SweepSettings`.

    Attributes:
        layers: Block index of each injection layer (-1 = embedding output).
        task_names: Name of every task entry.
        task_ids: Task entry of each prompt ``[prompt]``.
        tvp_correct: 1.0 where the zero-shot prompt with the injected vector is answered right ``[layer, prompt]``.
        tvp_loss: Its answer loss ``[layer, prompt]``: cross-entropy of the answer tokens, or for continuous
            (regression) answers the squared error of the prediction.
        icl_correct: Correctness of the full ICL prompt ``[prompt]``.
        icl_loss: Its loss ``[prompt]`` (as ``tvp_loss``).
        zero_shot_correct: Correctness of the query-only prompt without injection ``[prompt]``.
        zero_shot_loss: Its loss ``[prompt]`` (as ``tvp_loss``).
        accuracy: TVP accuracy per layer.
        accuracy_ci: Its bootstrap interval ``[layer, 2]``.
        per_task: TVP accuracy ``[layer, task]``.
        per_task_ci: Its interval ``[layer, task, 2]``.
        icl_accuracy: ICL accuracy.
        icl_ci: Its interval ``[2]``.
        zero_shot_accuracy: Zero-shot accuracy.
        zero_shot_ci: Its interval ``[2]``.
        writes: Prompts each layer's injection wrote to ``[layer]``.
        vector_source: The ICL prompt each zero-shot prompt's vector was read from ``[prompt]`` (-1: task mean).
        source: ``"other_prompt"`` (another ICL prompt of the task, of another query: a dummy query),
            ``"same_prompt"`` (its own ICL prompt: an upper bound) or ``"task_mean"`` (its task's mean vector).
        mode: ``"replace"`` or ``"add"``.
        site: Residual site read and written.
        null_task: Name of the Null task.
        scoring: How ``*_correct`` were scored: ``"teacher_forced"`` (argmax of every answer token), or by
            greedy generation, ``"exact_match"`` / ``"first_word"`` of the generated text against the answer.
        tolerance: For continuous answers, the squared error up to which a prediction counted as correct
            (``None`` for token answers, correct when every answer token is the argmax; files saved before this
            field existed load with ``None``).
    """

    layers: tuple[int, ...]
    task_names: tuple[str, ...]
    task_ids: Int[Tensor, " prompt"]
    tvp_correct: Float[Tensor, "layer prompt"]
    tvp_loss: Float[Tensor, "layer prompt"]
    icl_correct: Float[Tensor, " prompt"]
    icl_loss: Float[Tensor, " prompt"]
    zero_shot_correct: Float[Tensor, " prompt"]
    zero_shot_loss: Float[Tensor, " prompt"]
    accuracy: Float[Tensor, " layer"]
    accuracy_ci: Float[Tensor, "layer 2"]
    per_task: Float[Tensor, "layer task"]
    per_task_ci: Float[Tensor, "layer task 2"]
    icl_accuracy: float
    icl_ci: Float[Tensor, " 2"]
    zero_shot_accuracy: float
    zero_shot_ci: Float[Tensor, " 2"]
    writes: Int[Tensor, " layer"]
    vector_source: Int[Tensor, " prompt"]
    source: str = "other_prompt"
    mode: str = "replace"
    site: str = "resid_post"
    null_task: str = "null"
    scoring: str = "teacher_forced"
    tolerance: float | None = None

    def _axes(self) -> dict[str, int]:
        return {"layer": len(self.layers), "task": len(self.task_names)}

    @property
    def best_layer(self) -> int:
        """Block index with the highest TVP accuracy (the earliest on ties)."""
        return self.layers[int(torch.argmax(torch.nan_to_num(self.accuracy, nan=-1.0)))]

    @property
    def best_accuracy(self) -> float:
        """TVP accuracy at :attr:`best_layer`, measured on the prompts that chose it (see :meth:`held_out_best`)."""
        return float(self.accuracy[self.layers.index(self.best_layer)])

    def held_out_best(self) -> HeldOutBest:
        """The best layer chosen on half the prompts, its accuracy read on the other half, and the other way round.

        :attr:`best_accuracy` is optimistic: the prompts that score the layer also chose it, and with many layers
        noise alone lifts the maximum. Hendel et al. choose the layer on a development set; this does so without
        new prompts (:func:`~tv_lens.stats.selection.held_out_best`: halves balanced within each task, every task
        but Null, this result's bootstrap settings and seed). ``chosen`` holds the two layers chosen; ``half``
        and ``scores`` run over the prompts of every task but Null.
        """
        return self._held_out()

    def _held_out_inputs(self) -> HeldOutInputs:
        real = real_prompts(self.task_ids, self.task_names, self.null_task)
        return HeldOutInputs(self.tvp_correct[:, real], self.task_ids[real], len(self.task_names), self.layers)

    def headline(self) -> dict[str, Any]:
        """TVP accuracy at the best layer with its interval, the same chosen on held-out prompts, and the baselines."""
        return {
            "best_layer": self.best_layer,
            "best_accuracy": self.best_accuracy,
            "best_accuracy_ci": [float(x) for x in self.accuracy_ci[self.layers.index(self.best_layer)]],
            **self._held_out_numbers("held_out_accuracy"),
            "zero_shot_accuracy": float(self.zero_shot_accuracy),
            "icl_accuracy": float(self.icl_accuracy),
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, task), plus task ``"all"`` (every task but Null).

        Columns: ``layer`` (block index, -1 = embedding output), ``layer_label``, ``task``, ``tvp_accuracy``,
        ``ci_low``, ``ci_high``, ``tvp_loss``, ``icl_accuracy``, ``zero_shot_accuracy``, ``n_prompts``.
        """
        import pandas as pd

        n_tasks = len(self.task_names)
        loss = group_means(self.tvp_loss, self.task_ids, n_tasks)
        icl = group_means(self.icl_correct, self.task_ids, n_tasks)
        zero = group_means(self.zero_shot_correct, self.task_ids, n_tasks)
        counts = torch.bincount(self.task_ids, minlength=n_tasks)
        real = real_prompts(self.task_ids, self.task_names, self.null_task)
        rows = []
        for i, layer in enumerate(self.layers):
            label = layer_label(layer, self.site)
            rows.append(
                (
                    layer,
                    label,
                    ALL_TASKS,
                    float(self.accuracy[i]),
                    *self.accuracy_ci[i].tolist(),
                    float(self.tvp_loss[i, real].double().mean()),
                    self.icl_accuracy,
                    self.zero_shot_accuracy,
                    int(real.sum()),
                )
            )
            for t, name in enumerate(self.task_names):
                rows.append(
                    (
                        layer,
                        label,
                        name,
                        float(self.per_task[i, t]),
                        *self.per_task_ci[i, t].tolist(),
                        float(loss[i, t]),
                        float(icl[t]),
                        float(zero[t]),
                        int(counts[t]),
                    )
                )
        columns = [
            "layer",
            "layer_label",
            "task",
            "tvp_accuracy",
            "ci_low",
            "ci_high",
            "tvp_loss",
            "icl_accuracy",
            "zero_shot_accuracy",
            "n_prompts",
        ]
        return pd.DataFrame(rows, columns=columns)

    def traces(self) -> list[BaseTraceType]:
        """TVP accuracy against layer (CI error bars), with the ICL and zero-shot accuracies as flat lines."""
        import plotly.graph_objects as go

        x = list(self.layers)
        tvp = go.Scatter(
            x=x,
            y=self.accuracy.tolist(),
            mode="lines+markers",
            name="task-vector prompting",
            error_y=error_bars(self.accuracy, self.accuracy_ci),
        )
        icl = go.Scatter(x=x, y=[self.icl_accuracy] * len(x), mode="lines", name="ICL", line={"dash": "dash"})
        zero = go.Scatter(
            x=x, y=[self.zero_shot_accuracy] * len(x), mode="lines", name="zero-shot", line={"dash": "dot"}
        )
        return [tvp, icl, zero]

    def figure_layout(self) -> dict[str, Any]:
        """Accuracy against block index."""
        return {
            "title": {
                "text": f"Task-vector prompting ({self.source}, {self.mode}); best layer {self.best_layer} "
                f"({layer_label(self.best_layer, self.site)})"
            },
            "xaxis": layer_axis(self.layers, self.site),
            "yaxis": {"title": {"text": "accuracy"}, "range": [0, 1.05]},
        }
