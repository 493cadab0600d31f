"""Results of the function-vector analysis: mean head activations, causal indirect effects, the vector itself.

:class:`MeanHeadActivations` holds each head's mean ``attn.hook_z`` at the answer position per task;
:class:`IndirectEffects` how much writing that mean into one head of a corrupted prompt raises the probability
of the right answer; :class:`FunctionVector` the sum of the top heads' mean outputs through ``W_O``. The layer
sweep of the vector and the bundle of all four live in :mod:`tv_lens.results.function_vector_prompting`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.checks import is_int
from tv_lens.errors import LayerOutOfRangeError, ShapeError
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.results.axes import head_axes, head_heatmap, head_label, layer_index
from tv_lens.results.base import Result
from tv_lens.results.combination import combination
from tv_lens.results.decodability import ALL_TASKS
from tv_lens.results.provenance import VectorProvenance, check_vector_model, with_application
from tv_lens.results.shared import SweepSettings, ranked_task, task_index
from tv_lens.stats import group_means
from tv_lens.stats.selection import ranked_heads

if TYPE_CHECKING:
    import pandas as pd
    from plotly.basedatatypes import BaseTraceType

    from tv_lens.results.vector_decoding import NamedRows, VectorDecoding

__all__ = ["FunctionVector", "IndirectEffects", "MeanHeadActivations"]


@dataclass(frozen=True, eq=False)
class MeanHeadActivations(Result):
    """Each head's ``attn.hook_z`` at the answer position, averaged over a task's clean ICL prompts.

    On grouped-query-attention models ``hook_z`` has one entry per *query* head, so every query head has its own
    mean even where several share a key/value head.

    Attributes:
        activations: ``[task, layer, head, d_head]``.
        task_names: Name of each task entry.
        layers: TransformerLens block index of each layer entry.
        n_prompts: Prompts averaged per task ``[task]``.
    """

    activations: Float[Tensor, "task layer head d_head"]
    task_names: tuple[str, ...]
    layers: tuple[int, ...]
    n_prompts: Int[Tensor, " task"]

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(set(self.task_names)) != len(self.task_names) or len(set(self.layers)) != len(self.layers):
            raise ShapeError(
                f"MeanHeadActivations needs distinct tasks and layers, got {self.task_names}, {self.layers}."
            )

    def _axes(self) -> dict[str, int]:
        return {"task": len(self.task_names), "layer": len(self.layers)}

    @property
    def n_heads(self) -> int:
        """Heads per block."""
        return int(self.activations.shape[2])

    def task_index(self, task: str) -> int:
        """Index of ``task`` on the task axis."""
        return task_index(self.task_names, task, "mean head activations")

    def layer_index(self, layer: int) -> int:
        """Index of block ``layer`` on the layer axis."""
        return layer_index(self.layers, layer, "these mean head activations")

    def get(self, task: str, layer: int, head: int) -> Float[Tensor, " d_head"]:
        """The mean ``hook_z`` of ``head`` in block ``layer`` for ``task``."""
        if not is_int(head) or not 0 <= head < self.n_heads:
            raise LayerOutOfRangeError(
                f"Head {head!r} is not a head index: blocks have {self.n_heads} heads, so pass an int in "
                f"[0, {self.n_heads - 1}]."
            )
        return self.activations[self.task_index(task), self.layer_index(layer), head]

    def to_frame(self) -> pd.DataFrame:
        """One row per (task, layer, head). Columns: ``task``, ``layer``, ``head``, ``norm``, ``n_prompts``."""
        import pandas as pd

        norms = self.activations.double().norm(dim=-1)
        rows = [
            (name, layer, head, float(norms[t, i, head]), int(self.n_prompts[t]))
            for t, name in enumerate(self.task_names)
            for i, layer in enumerate(self.layers)
            for head in range(self.n_heads)
        ]
        return pd.DataFrame(rows, columns=["task", "layer", "head", "norm", "n_prompts"])

    def traces(self) -> list[BaseTraceType]:
        """A (layer x head) heatmap of the norm of the mean, averaged over tasks."""
        norms = self.activations.double().norm(dim=-1).mean(0)
        return [head_heatmap(norms, self.layers, "mean |z|")]

    def figure_layout(self) -> dict[str, Any]:
        """Heads on x, blocks on y."""
        return head_axes("Norm of each head's mean activation at the answer position (mean over tasks)")


@dataclass(frozen=True, eq=False)
class IndirectEffects(SweepSettings, Result):
    """Causal indirect effect (CIE) of every head: its task-mean activation written into corrupted prompts.

    For a prompt of task ``t`` whose demonstrations carry wrong labels, head ``h`` of block ``l`` gets task ``t``'s
    mean ``hook_z`` at the answer position; the CIE is the probability of the right first answer token with that
    patch minus without it. Heads are ranked (:meth:`top_heads`, the function vector's heads) by
    :attr:`mean_over_tasks`, the mean over tasks of each task's mean CIE, as Todd et al. average it, so a task with
    more prompts does not weigh more; ``overall`` is the mean over every prompt, which equals it when every task
    has as many prompts. The bootstrap and sweep settings are those of :class:`~tv_lens.results.SweepSettings`.

    Attributes:
        layers: Block index of each layer entry.
        task_names: Name of each task entry.
        task_ids: Task of each corrupted prompt ``[prompt]``.
        corrupted_prob: Probability of the right first answer token, unpatched ``[prompt]``.
        corrupted_loss: Teacher-forced cross-entropy over every answer token, unpatched ``[prompt]``.
        patched_prob: The same probability with one head patched ``[layer, head, prompt]``.
        patched_loss: The same loss with one head patched ``[layer, head, prompt]``.
        cie: Mean CIE per task ``[layer, head, task]``.
        cie_ci: Its bootstrap interval ``[layer, head, task, 2]``.
        overall: Mean CIE over every prompt ``[layer, head]`` (not the ranking's :attr:`mean_over_tasks`).
        overall_ci: Its interval ``[layer, head, 2]``.
        writes: Prompts each head's patch wrote to ``[layer, head]``.
        label_noise: Probability with which each demonstration of the corrupted prompts got a wrong label.
    """

    layers: tuple[int, ...]
    task_names: tuple[str, ...]
    task_ids: Int[Tensor, " prompt"]
    corrupted_prob: Float[Tensor, " prompt"]
    corrupted_loss: Float[Tensor, " prompt"]
    patched_prob: Float[Tensor, "layer head prompt"]
    patched_loss: Float[Tensor, "layer head prompt"]
    cie: Float[Tensor, "layer head task"]
    cie_ci: Float[Tensor, "layer head task 2"]
    overall: Float[Tensor, "layer head"]
    overall_ci: Float[Tensor, "layer head 2"]
    writes: Int[Tensor, "layer head"]
    label_noise: float = 0.0

    def _axes(self) -> dict[str, int]:
        return {"layer": len(self.layers), "task": len(self.task_names)}

    @property
    def n_heads(self) -> int:
        """Heads per block."""
        return int(self.patched_prob.shape[1])

    @property
    def mean_over_tasks(self) -> Float[Tensor, "layer head"]:
        """The mean over the tasks with prompts of each task's mean CIE (what :meth:`top_heads` ranks by)."""
        present = torch.bincount(self.task_ids.cpu(), minlength=len(self.task_names)) > 0
        return self.cie[..., present.to(self.cie.device)].mean(-1)

    @property
    def loss_change(self) -> Float[Tensor, "layer head task"]:
        """Mean change of the teacher-forced answer loss per task (negative: the patch helps)."""
        return group_means(self.patched_loss - self.corrupted_loss, self.task_ids, len(self.task_names))

    def top_heads(self, k: int = 10, task: str | None = None) -> tuple[tuple[int, int], ...]:
        """The ``k`` heads of largest mean CIE, over tasks (:attr:`mean_over_tasks`) or for ``task``.

        Ties go to the earlier block, then the lower head.

        Raises:
            AnalysisError: ``k`` is not an int in ``[1, heads]``.
            TaskError: ``task`` is not a task of the result, or none of the corrupted prompts is of that task (its
                CIE is NaN, so no head ranks above another).
        """
        if task is None:
            return ranked_heads(self.mean_over_tasks, self.layers, k)
        return ranked_heads(self.cie[..., ranked_task(self.task_names, self.task_ids, task, "CIE")], self.layers, k)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head, task), plus task ``"all"`` (``overall``: the mean over every prompt).

        Columns: ``layer``, ``head``, ``task``, ``cie``, ``ci_low``, ``ci_high``, ``loss_change``, ``writes``.
        """
        import pandas as pd

        loss = self.loss_change
        overall_loss = (self.patched_loss - self.corrupted_loss).mean(-1)
        rows = []
        for i, layer in enumerate(self.layers):
            for head in range(self.n_heads):
                writes = int(self.writes[i, head])
                overall = (float(self.overall[i, head]), *self.overall_ci[i, head].tolist())
                rows.append((layer, head, ALL_TASKS, *overall, float(overall_loss[i, head]), writes))
                for t, name in enumerate(self.task_names):
                    cie = (float(self.cie[i, head, t]), *self.cie_ci[i, head, t].tolist())
                    rows.append((layer, head, name, *cie, float(loss[i, head, t]), writes))
        columns = ["layer", "head", "task", "cie", "ci_low", "ci_high", "loss_change", "writes"]
        return pd.DataFrame(rows, columns=columns)

    def traces(self) -> list[BaseTraceType]:
        """A (layer x head) heatmap of the mean CIE over tasks (:attr:`mean_over_tasks`)."""
        return [head_heatmap(self.mean_over_tasks, self.layers, "CIE")]

    def task_traces(self, task: str) -> list[BaseTraceType]:
        """The same heatmap for one task."""
        return [head_heatmap(self.cie[..., task_index(self.task_names, task, "CIE")], self.layers, "CIE")]

    def figure_layout(self) -> dict[str, Any]:
        """Heads on x, blocks on y."""
        return head_axes("Causal indirect effect of each head (gain in P(answer) on corrupted prompts)")


@dataclass(frozen=True, eq=False)
class FunctionVector(Result):
    """Per task, the sum over the chosen heads of their mean output ``mean_z @ W_O[layer, head]``.

    Attributes:
        vectors: ``[task, d_model]``.
        task_names: Name of each task entry.
        heads: ``(layer, head)`` of every summed head, by decreasing mean CIE over tasks.
        head_outputs: Each chosen head's mean output ``[task, k, d_model]`` (``vectors`` is their sum).
        provenance: The source model and how the vector is meant to be applied (added to ``resid_post``; the
            layer is the best one of the zero-shot sweep when :class:`~tv_lens.analyses.FunctionVectors` built
            it); ``None``: not recorded.
    """

    vectors: Float[Tensor, "task d_model"]
    task_names: tuple[str, ...]
    heads: tuple[tuple[int, int], ...]
    head_outputs: Float[Tensor, "task k d_model"]
    provenance: VectorProvenance | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(set(self.heads)) != self.k or self.k == 0:
            raise ShapeError(f"FunctionVector needs at least one head, each once; got {self.heads}.")

    def _axes(self) -> dict[str, int]:
        return {"task": len(self.task_names), "k": len(self.heads)}

    @property
    def d_model(self) -> int:
        """Width of the vectors."""
        return int(self.vectors.shape[-1])

    @property
    def k(self) -> int:
        """Heads summed."""
        return len(self.heads)

    def get(self, task: str) -> Float[Tensor, " d_model"]:
        """The function vector of ``task``."""
        return self.vectors[task_index(self.task_names, task, "function vector")]

    def combine(self, weights: Mapping[str, float], name: str) -> FunctionVector:
        """One function vector ``name``: ``Σ weight · vector`` of the named tasks (each head's output likewise).

        Todd et al.'s vector algebra, e.g. ``combine({"last-copy": 1, "first-antonym": 1, "first-copy": -1},
        "last-antonym")``; the provenance keeps how to apply it and says what it combines.
        """
        combined = combination(self.task_names, weights, name, "function vector")
        return FunctionVector(
            vectors=combined.of(self.vectors),
            task_names=(combined.name,),
            heads=self.heads,
            head_outputs=combined.of(self.head_outputs),
            provenance=combined.provenance(self.provenance),
        )

    def applied_as(
        self, layers: int | tuple[int, ...] | None = None, operation: str | None = None, scale: float | None = None
    ) -> FunctionVector:
        """A copy whose provenance says how to apply it: at ``layers``, by ``operation``, times ``scale``.

        :func:`tv_lens.steering.steer` uses these as its defaults; arguments left ``None`` keep the recorded ones.
        """
        provenance = with_application(self.provenance, layers, operation, scale, "This function vector")
        return replace(self, provenance=provenance)

    def check_model(self, model: Any) -> ModelAdapter:
        """Check that the vector fits ``model`` (``d_model``, the source model's sizes); return its adapter.

        A model of the source model's sizes with other weights gets an
        :class:`~tv_lens.results.provenance.OtherWeightsWarning`, not an error.

        Raises:
            ShapeError: Another ``d_model``, or a source model of other sizes.
        """
        adapter = adapt(model)
        check_vector_model(adapter, self.d_model, self.provenance, "This function vector's vectors", _REBUILD)
        return adapter

    def named_rows(self, model: Any) -> NamedRows:
        """Every task's vector as a row named ``"{task} FV"``, after :meth:`check_model`."""
        self.check_model(model)
        names = tuple(f"{task} FV" for task in self.task_names)
        return names, self.task_names, (None,) * len(names), self.vectors

    def decode(self, model: Any, k: int = 10, *, tokenizer: Any = None) -> VectorDecoding:
        """Logit lens of every task's vector: top ``k`` tokens (:func:`tv_lens.analyses.decode_vectors`)."""
        from tv_lens.analyses.vector_decoding import decode_vectors

        return decode_vectors(model, self, k, tokenizer=tokenizer)

    def to_frame(self) -> pd.DataFrame:
        """One row per (task, head), plus head ``"all"`` (the vector). Columns: ``task``, ``head``, ``norm``."""
        import pandas as pd

        rows = []
        for t, name in enumerate(self.task_names):
            rows.append((name, ALL_TASKS, float(self.vectors[t].double().norm())))
            norms = self.head_outputs[t].double().norm(dim=-1)
            rows.extend((name, head_label(*head), float(norms[j])) for j, head in enumerate(self.heads))
        return pd.DataFrame(rows, columns=["task", "head", "norm"])

    def traces(self) -> list[BaseTraceType]:
        """Norm of each chosen head's mean output, one bar group per task."""
        import plotly.graph_objects as go

        labels = [head_label(*head) for head in self.heads]
        norms = self.head_outputs.double().norm(dim=-1)
        return [go.Bar(x=labels, y=norms[t].tolist(), name=name) for t, name in enumerate(self.task_names)]

    def figure_layout(self) -> dict[str, Any]:
        """Heads on x (by decreasing CIE)."""
        return {
            "title": {"text": f"Function vector: norm of each of the top-{self.k} heads' mean output"},
            "xaxis": {"title": {"text": "head (by decreasing mean CIE over tasks)"}},
            "yaxis": {"title": {"text": "L2 norm of mean z @ W_O"}},
            "barmode": "group",
        }


_REBUILD = "FunctionVectors().run(model, pool) or function_vector(model, ...)"
