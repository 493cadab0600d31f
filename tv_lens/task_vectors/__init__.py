"""Task vectors: per task and layer, the mean residual stream at the token right before an answer.

Hendel et al. (2023) and Han et al. (2025, §3.3) summarise what an in-context prompt tells the model about
its task by one vector in the residual stream: the activation of the token right before the answer (the
separator ``→``, or the last input token), read at some layer. Averaging it over many prompts of a task
gives that task's vector at that layer. :class:`TaskVectors` holds one vector per (task, layer), with what
it was averaged over, saves and loads itself (one safetensors file, written atomically), and is what
task-vector patching (:mod:`tv_lens.analyses.patching`), task-vector prompting
(:mod:`tv_lens.analyses.prompting`) and steering (:mod:`tv_lens.steering`) consume.

Vectors built by :meth:`TaskVectors.from_model` record where they came from
(:class:`~tv_lens.results.provenance.VectorProvenance`: the source model's sizes and weight fingerprint, the
site, the operation they are meant for and the task pool), so a saved file applied to a model of other sizes is
a clear error and one with other weights a warning (:meth:`TaskVectors.check_model`).

Two reductions (Han et al. describe both; the choice is exposed as ``reduce=``):

- ``"mean_over_prompts"`` (default): the mean over a task's prompts of the residual at each prompt's
  query answer position. All layers come from one forward pass (:func:`tv_lens.probes.collect`).
- ``"mean_over_demo_positions"``: for each prompt, the mean of the residual over its demonstrations'
  pre-answer tokens (``ICLBatch.demo_answer_pos``); then the mean over the task's prompts, so every prompt
  weighs the same whatever its number of shots. Prompts without demonstrations are left out. Also one
  forward pass, stopped after the last layer needed; every demonstration position is read in it.

The means are computed in :mod:`tv_lens.task_vectors.means`, the prompts they average over are chosen in
:mod:`tv_lens.task_vectors.prompts`.

>>> from tv_lens.models import ModelConfig, build_model
>>> from tv_lens.tasks import offset_pool
>>> pool = offset_pool(offsets=(1, 2), n_values=8)
>>> model = build_model(ModelConfig(d_vocab=pool.vocab_size, n_layers=2, d_model=32, n_heads=4, n_ctx=32))
>>> tv = TaskVectors.from_model(model, pool, layers=(0, 1), n_per_task=5, n_shots=3)
>>> tv.vectors.shape, tv.task_names
(torch.Size([3, 2, 32]), ('offset(1)', 'offset(2)', 'null'))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.errors import AnalysisError, ShapeError, TaskError
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.probes import Representations, check_residual_site, collect
from tv_lens.results.axes import layer_axis, layer_index, layer_label
from tv_lens.results.base import Result
from tv_lens.results.combination import combination
from tv_lens.results.provenance import (
    ModelSignature,
    VectorProvenance,
    check_vector_model,
    describe_tasks,
    with_application,
)
from tv_lens.task_vectors.means import demo_means, kept_task_means, task_means
from tv_lens.task_vectors.prompts import as_batch, kept_task_ids
from tv_lens.tasks import ICLBatch, RegressionBatch, RegressionPool, ShotSpec, TaskPool, TextPool

if TYPE_CHECKING:
    import pandas as pd
    from plotly.basedatatypes import BaseTraceType

    from tv_lens.results.vector_decoding import NamedRows, VectorDecoding

__all__ = ["REDUCTIONS", "Reduce", "TaskVectors"]

Reduce = Literal["mean_over_prompts", "mean_over_demo_positions"]
REDUCTIONS: tuple[str, ...] = get_args(Reduce)


@dataclass(frozen=True, eq=False)
class TaskVectors(Result):
    """One residual-stream vector per task and layer.

    Attributes:
        vectors: ``[task, layer, d_model]``.
        layers: TransformerLens block index of each layer entry (-1 = embedding output).
        task_names: Name of each task entry.
        n_prompts: Prompts averaged per task ``[task]``.
        n_positions: Residual rows averaged per task ``[task]`` (prompts, or (prompt, demonstration) pairs).
        site: Residual site read (``"resid_post"`` ...).
        reduce: ``"mean_over_prompts"`` or ``"mean_over_demo_positions"``.
        provenance: The source model, the operation the vectors are meant for and the task pool (``None``: not
            recorded, e.g. vectors from :meth:`from_representations` or saved by an earlier tv_lens).
    """

    vectors: Float[Tensor, "task layer d_model"]
    layers: tuple[int, ...]
    task_names: tuple[str, ...]
    n_prompts: Int[Tensor, " task"]
    n_positions: Int[Tensor, " task"]
    site: str = "resid_post"
    reduce: str = "mean_over_prompts"
    provenance: VectorProvenance | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(set(self.task_names)) != len(self.task_names) or len(set(self.layers)) != len(self.layers):
            raise ShapeError(f"TaskVectors needs distinct task names and layers, got {self.task_names}, {self.layers}.")
        _check_reduce(self.reduce)
        origin = self.provenance
        if origin is not None and (origin.site != self.site or not set(origin.layers) <= set(self.layers)):
            raise ShapeError(
                f"TaskVectors.provenance must be a VectorProvenance of site {self.site!r} and layers among "
                f"{self.layers}, got {origin!r}; set it with applied_as(...)."
            )

    def _axes(self) -> dict[str, int]:
        return {"task": len(self.task_names), "layer": len(self.layers)}

    @classmethod
    def from_model(
        cls,
        model: Any,
        data: TaskPool | TextPool | RegressionPool | ICLBatch | RegressionBatch,
        layers: Sequence[int] | None = None,
        reduce: Reduce = "mean_over_prompts",
        *,
        site: str = "resid_post",
        tasks: Sequence[str] | None = None,
        n_per_task: int = 100,
        n_shots: ShotSpec = 4,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = False,
        model_name: str | None = None,
    ) -> TaskVectors:
        """Task vectors of ``model`` from a pool (sampled, seeded) or a given batch, with their provenance.

        Args:
            model: A TransformerLens model.
            data: A :class:`~tv_lens.tasks.TaskPool`, :class:`~tv_lens.tasks.TextPool` (of the model's tokenizer) or
                :class:`~tv_lens.tasks.RegressionPool` (``n_per_task`` prompts of every task with ``n_shots``
                demonstrations are sampled with ``seed``), or a batch of one
                (:class:`~tv_lens.tasks.ICLBatch`, :class:`~tv_lens.tasks.RegressionBatch`; regression prompts need a
                continuous-input model).
            layers: Block indices (-1 = embedding output); ``None``: every block.
            reduce: ``"mean_over_prompts"`` or ``"mean_over_demo_positions"``.
            site: Residual site to read.
            tasks: Tasks to keep (default: every task with prompts in the batch, in task-id order).
            n_per_task: Prompts per task when sampling from a pool.
            n_shots: Demonstrations per prompt when sampling from a pool.
            seed: Sampling seed.
            batch_size: Prompts per forward pass.
            progress: Show a progress bar.
            model_name: A name for the model, recorded in :attr:`provenance` next to its weight fingerprint.

        Raises:
            AnalysisError: Unknown ``reduce``; a task without demonstrations for ``"mean_over_demo_positions"``.
            LayerOutOfRangeError: A layer outside the model.
            TaskError: A task in ``tasks`` with no prompt in the batch, or ``tasks`` naming no task.
        """
        _check_reduce(reduce)
        adapter = adapt(model)
        batch = as_batch(data, n_per_task, n_shots, seed, getattr(model, "tokenizer", None))
        layers = tuple(range(adapter.n_layers)) if layers is None else adapter.check_layers(layers, allow_embed=True)
        check_residual_site(site)
        keep = kept_task_ids(batch, tasks)
        if reduce == "mean_over_prompts":
            reps = collect(
                model,
                batch.inputs,
                batch.answer_pos,
                layers,
                site,
                attention_mask=batch.attention_mask,
                task_ids=batch.task_ids,
                batch_size=batch_size,
                progress=progress,
            )
            per_prompt, weights = reps.activations, torch.ones(len(batch), dtype=torch.long)
        else:
            per_prompt, weights = demo_means(adapter, batch, layers, site, batch_size, progress)
        means, names, n_prompts, n_positions = task_means(per_prompt, weights, batch, keep, reduce)
        vectors = TaskVectors(means, layers, names, n_prompts, n_positions, site, reduce)
        signature = ModelSignature.of(model, model_name)
        pool = describe_tasks(batch, vectors.task_names)
        return replace(vectors, provenance=VectorProvenance(signature, site, (), "replace", 1.0, pool))

    @classmethod
    def from_representations(cls, reps: Representations, task_names: Sequence[str] | None = None) -> TaskVectors:
        """Mean over prompts per task of collected rows (``reps.task_ids`` gives each prompt's task)."""
        if reps.task_ids is None:
            raise TaskError("reps has no task_ids; collect with task_ids=batch.task_ids to build task vectors.")
        ids = reps.task_ids.cpu()
        names = tuple(task_names) if task_names is not None else tuple(f"task {i}" for i in range(int(ids.max()) + 1))
        if int(ids.max()) >= len(names):
            raise TaskError(f"task ids go up to {int(ids.max())} but only {len(names)} task names were given.")
        present = [t for t in range(len(names)) if bool((ids == t).any())]
        vectors, counts = kept_task_means(reps.activations, ids, present, torch.ones(len(ids), dtype=torch.long))
        return cls(
            vectors,
            reps.layers,
            tuple(names[t] for t in present),
            counts,
            counts.clone(),
            reps.site,
            "mean_over_prompts",
        )

    @property
    def d_model(self) -> int:
        """Width of the vectors."""
        return int(self.vectors.shape[-1])

    def task_index(self, task: str) -> int:
        """Index of ``task`` on the task axis."""
        if task not in self.task_names:
            raise TaskError(
                f"Task {task!r} has no vector; these task vectors cover {list(self.task_names)}. Build them from "
                "prompts of that task (TaskVectors.from_model on a pool or batch that includes it)."
            )
        return self.task_names.index(task)

    def layer_index(self, layer: int) -> int:
        """Index of block ``layer`` on the layer axis.

        Raises:
            LayerOutOfRangeError: The vectors were not read at ``layer``.
        """
        return layer_index(self.layers, layer, "these task vectors")

    def get(self, task: str, layer: int) -> Float[Tensor, " d_model"]:
        """The vector of ``task`` at block ``layer``."""
        return self.vectors[self.task_index(task), self.layer_index(layer)]

    def at(self, layer: int) -> Float[Tensor, "task d_model"]:
        """Every task's vector at block ``layer``."""
        return self.vectors[:, self.layer_index(layer)]

    def select(self, tasks: Sequence[str] | None = None, layers: Sequence[int] | None = None) -> TaskVectors:
        """A copy restricted to ``tasks`` and ``layers`` (in the order given; ``None``: all of them).

        Raises:
            TaskError: ``tasks`` or ``layers`` is not a non-empty list (a lone name or block, or an empty list).
        """
        t = [self.task_index(name) for name in _entries(tasks, "tasks", "['offset(1)']", self.task_names)]
        ls = [self.layer_index(layer) for layer in _entries(layers, "layers", "[2]", self.layers)]
        return replace(
            self,
            vectors=self.vectors[t][:, ls],
            layers=tuple(self.layers[i] for i in ls),
            task_names=tuple(self.task_names[i] for i in t),
            n_prompts=self.n_prompts[t],
            n_positions=self.n_positions[t],
            provenance=_kept_layers(self.provenance, tuple(self.layers[i] for i in ls)),
        )

    def combine(self, weights: Mapping[str, float], name: str) -> TaskVectors:
        """One task ``name`` at every layer: ``Σ weight · vector`` of the named tasks (Todd et al.'s vector algebra).

        ``n_prompts`` and ``n_positions`` of the new task count those of every task it combines; the provenance
        keeps how to apply it and says what it combines.
        """
        combined = combination(self.task_names, weights, name, "task vector")
        return replace(
            self,
            vectors=combined.of(self.vectors),
            task_names=(combined.name,),
            n_prompts=self.n_prompts[combined.rows].sum().reshape(1),
            n_positions=self.n_positions[combined.rows].sum().reshape(1),
            provenance=combined.provenance(self.provenance),
        )

    def applied_as(
        self, layers: Sequence[int] | None = None, operation: str | None = None, scale: float | None = None
    ) -> TaskVectors:
        """A copy whose provenance says how to apply the vectors: at ``layers``, by ``operation``, times ``scale``.

        :func:`tv_lens.steering.steer` uses these as its defaults. Arguments left ``None`` keep the recorded ones.

        Raises:
            AnalysisError: The vectors have no provenance (build them with :meth:`from_model`), or a bad setting.
            LayerOutOfRangeError: A layer the vectors were not read at.
        """
        for layer in layers or ():
            self.layer_index(layer)
        provenance = with_application(self.provenance, layers, operation, scale, "These task vectors")
        return replace(self, provenance=provenance)

    def check_model(self, model: Any) -> ModelAdapter:
        """Check that the vectors fit ``model`` (``d_model``, layers, the source model's sizes); return its adapter.

        A model of the source model's sizes with other weights (a fine-tune) gets an
        :class:`~tv_lens.results.provenance.OtherWeightsWarning`, not an error.

        Raises:
            ShapeError: Another ``d_model``, or a source model of other sizes.
            LayerOutOfRangeError: A layer outside the model.
        """
        adapter = adapt(model)
        check_vector_model(
            adapter, self.d_model, self.provenance, "These task vectors", "TaskVectors.from_model(model, ...)"
        )
        for layer in self.layers:
            adapter.check_layer(layer, allow_embed=True)
        return adapter

    def named_rows(self, model: Any) -> NamedRows:
        """Every (task, layer) vector as a row named ``"{task} L{layer}"``, after :meth:`check_model`."""
        self.check_model(model)
        pairs = [(task, layer) for task in self.task_names for layer in self.layers]
        names = tuple(f"{task} L{layer}" for task, layer in pairs)
        return names, tuple(t for t, _ in pairs), tuple(ly for _, ly in pairs), self.vectors.flatten(0, 1)

    def decode(self, model: Any, k: int = 10, *, tokenizer: Any = None) -> VectorDecoding:
        """Logit lens of every (task, layer) vector: top ``k`` tokens (:func:`tv_lens.analyses.decode_vectors`)."""
        from tv_lens.analyses.vector_decoding import decode_vectors

        return decode_vectors(model, self, k, tokenizer=tokenizer)

    def cosine(self, layer: int) -> Float[Tensor, "task task"]:
        """Cosine similarity between the tasks' vectors at block ``layer``."""
        v = torch.nn.functional.normalize(self.at(layer).double(), dim=-1)
        return v @ v.T

    def to_frame(self) -> pd.DataFrame:
        """One row per (task, layer).

        Columns: ``task``, ``layer`` (block index, -1 = embedding output), ``layer_label``, ``site``,
        ``reduce``, ``norm`` (L2 norm of the vector), ``n_prompts``, ``n_positions``.
        """
        import pandas as pd

        norms = self.vectors.double().norm(dim=-1)
        rows = [
            (
                name,
                layer,
                layer_label(layer, self.site),
                self.site,
                self.reduce,
                float(norms[t, i]),
                int(self.n_prompts[t]),
                int(self.n_positions[t]),
            )
            for t, name in enumerate(self.task_names)
            for i, layer in enumerate(self.layers)
        ]
        columns = ["task", "layer", "layer_label", "site", "reduce", "norm", "n_prompts", "n_positions"]
        return pd.DataFrame(rows, columns=columns)

    def traces(self) -> list[BaseTraceType]:
        """The norm of every task's vector against layer, one line per task."""
        import plotly.graph_objects as go

        norms = self.vectors.double().norm(dim=-1)
        return [
            go.Scatter(x=list(self.layers), y=norms[t].tolist(), mode="lines+markers", name=name)
            for t, name in enumerate(self.task_names)
        ]

    def figure_layout(self) -> dict[str, Any]:
        """Norm against block index."""
        return {
            "title": {"text": f"Task vector norms ({self.reduce}, {self.site})"},
            "xaxis": layer_axis(self.layers, self.site),
            "yaxis": {"title": {"text": "L2 norm"}},
        }


def _kept_layers(provenance: VectorProvenance | None, layers: tuple[int, ...]) -> VectorProvenance | None:
    """``provenance`` with its layers restricted to ``layers``."""
    if provenance is None:
        return None
    return replace(provenance, layers=tuple(layer for layer in provenance.layers if layer in layers))


def _check_reduce(reduce: str) -> None:
    if reduce not in REDUCTIONS:
        raise AnalysisError(f"Unknown reduce {reduce!r}; use one of {list(REDUCTIONS)}.")


def _entries(chosen: Any, what: str, example: str, every: Sequence[Any]) -> list[Any]:
    """The entries ``select`` keeps along one axis: ``chosen`` as a list, or ``every`` one for ``None``."""
    if chosen is None:
        return list(every)
    if isinstance(chosen, (str, bytes)) or not isinstance(chosen, Sequence) or len(chosen) == 0:
        raise TaskError(
            f"select takes {what} as a non-empty list, got {chosen!r:.60}; pass e.g. {what}={example}, or None to "
            "keep them all."
        )
    return list(chosen)
