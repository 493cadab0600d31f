"""Analyses on representations (decodability, geometry): their checked inputs, and the base class they share.

Every analysis on representations accepts the same things, validated here once: a ``[layer, prompt, d]`` or
``[prompt, d]`` tensor with a label per prompt, or a ``Representations`` (from :func:`tv_lens.probes.collect`,
or from a TransformerLens ``ActivationCache`` through ``Representations.from_cache``) whose ``task_ids`` serve
as labels. :class:`RepresentationAnalysis` reads them from a model in one pass and hands them to the analysis's
pure function (:func:`~tv_lens.analyses.task_decodability`, :func:`~tv_lens.analyses.project`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.analyses.options import N_PER_TASK
from tv_lens.analyses.prompt_batches import PromptBatch, PromptPool, sample_batch
from tv_lens.checks import check_tensor_data, is_int, is_integer_tensor, tensor_of
from tv_lens.errors import ShapeError
from tv_lens.probes import Representations, check_finite_rows, collect

__all__ = [
    "MAX_UNNAMED_TASKS",
    "LabelledStack",
    "LabelsInput",
    "RepresentationAnalysis",
    "RepsInput",
    "integer_ids",
    "labelled_stack",
    "named_tasks",
]

RepsInput = Representations | Float[Tensor, "layer prompt d"] | Float[Tensor, "prompt d"]
LabelsInput = Int[Tensor, " prompt"] | Sequence[int] | np.ndarray

R = TypeVar("R")


class RepresentationAnalysis(Generic[R]):
    """Base of analyses that read representations at the answer positions in one pass, then compute on them.

    Subclasses are dataclasses with ``layers``, ``site``, ``batch_size`` and ``progress`` fields; their class
    attribute ``_function`` is the pure function on given representations (e.g. ``task_decodability``), which
    :meth:`compute` calls with the subclass as its ``config``.
    """

    layers: tuple[int, ...] | None
    site: str
    batch_size: int
    progress: bool
    _function: ClassVar[Callable[..., Any]]
    """The pure function: ``(reps, labels, *, task_names, layers, config, seed) -> R``."""

    def compute(
        self,
        reps: RepsInput,
        labels: LabelsInput | None = None,
        task_names: Sequence[str] | None = None,
        seed: int = 0,
    ) -> R:
        """The result of given representations (``Representations``, e.g. from a cache, or a plain tensor)."""
        layers = self.layers if isinstance(reps, Representations) else None
        result: R = self._function(reps, labels, task_names=task_names, layers=layers, config=self, seed=seed)
        return result

    def run(self, model: Any, pool: PromptPool, n_per_task: int = N_PER_TASK, n_shots: Any = 4, seed: int = 0) -> R:
        """Sample ``n_per_task`` prompts of every task of ``pool`` (seeded) and compute on their representations."""
        return self.run_batch(model, sample_batch(pool, n_per_task, n_shots, seed, model=model), seed=seed)

    def run_batch(self, model: Any, batch: PromptBatch, seed: int = 0) -> R:
        """The result of a given batch: one forward pass per ``batch_size`` prompts, every layer at once."""
        reps = collect(
            model,
            batch.inputs,
            batch.answer_pos,
            self.layers,
            self.site,
            attention_mask=batch.attention_mask,
            task_ids=batch.task_ids,
            batch_size=self.batch_size,
            progress=self.progress,
        )
        return self.compute(reps, task_names=batch.task_names, seed=seed)


@dataclass(frozen=True)
class LabelledStack:
    """Representations of every layer with one integer label per prompt, checked and in float64.

    Attributes:
        activations: ``[layer, prompt, d]``, finite, float64.
        labels: ``[prompt]``, int64 in ``0 .. len(task_names) - 1``.
        layers: Block index of each layer entry (-1 = embedding output).
        site: Residual site the rows were read at.
        task_names: Name of every label.
        prompt_ids: An id per prompt shared by exactly the identical prompts, when known.
    """

    activations: Float[Tensor, "layer prompt d"]
    labels: Int[Tensor, " prompt"]
    layers: tuple[int, ...]
    site: str
    task_names: tuple[str, ...]
    prompt_ids: Int[Tensor, " prompt"] | None = None


def labelled_stack(
    reps: RepsInput,
    labels: LabelsInput | None = None,
    *,
    layers: Sequence[int] | None = None,
    site: str | None = None,
    task_names: Sequence[str] | None = None,
    prompt_ids: LabelsInput | None = None,
) -> LabelledStack:
    """Check and normalise representation-analysis inputs.

    Args:
        reps: ``Representations``, or a tensor ``[layer, prompt, d]`` / ``[prompt, d]`` (one layer).
        labels: Task of each prompt; defaults to ``reps.task_ids`` for ``Representations``.
        layers: For ``Representations``, the collected layers to use (default: all). For a plain tensor, the
            block index of each layer entry (default ``0 .. n - 1``, positions in the stack).
        site: Residual site label of a plain tensor (default ``"resid_post"``).
        task_names: Name of every label (default ``"task 0"``, ``"task 1"`` ...).
        prompt_ids: An id per prompt shared by exactly the identical prompts; defaults to ``reps.prompt_ids``
            for ``Representations``.
    """
    if layers is not None:
        layers = _layer_labels(layers)
    if isinstance(reps, Representations):
        site = reps.site
        if layers is None:
            activations, layers = reps.activations, reps.layers
        else:
            activations = torch.stack([reps.at(layer) for layer in layers])
        labels = reps.task_ids if labels is None else labels
        prompt_ids = reps.prompt_ids if prompt_ids is None else prompt_ids
    elif isinstance(reps, Tensor):
        activations = reps[None] if reps.ndim == 2 else reps
    else:
        raise ShapeError(
            f"reps must be a tensor [layer, prompt, d] or [prompt, d], or a tv_lens Representations; got "
            f"{type(reps).__name__}. For a TransformerLens ActivationCache use Representations.from_cache(cache, "
            "answer_pos, task_ids=labels)."
        )
    check_tensor_data(activations, "reps")
    if activations.ndim != 3 or not activations.is_floating_point() or 0 in activations.shape:
        raise ShapeError(
            f"reps must be a non-empty float tensor [layer, prompt, d] or [prompt, d], got dtype "
            f"{activations.dtype} and shape {tuple(reps.shape if isinstance(reps, Tensor) else activations.shape)}."
        )
    layers = tuple(range(activations.shape[0])) if layers is None else layers
    if len(layers) != activations.shape[0]:
        raise ShapeError(f"layers has {len(layers)} entries but reps has {activations.shape[0]} layers; pass one each.")
    activations = activations.detach().to("cpu", torch.float64)
    check_finite_rows(
        activations,
        layers,
        "values in reps",
        "Drop those prompts or check the model (torch.isfinite) before the analysis.",
    )
    checked = _check_labels(labels, activations.shape[1])
    names = named_tasks(task_names, checked, "labels")
    copies = None if prompt_ids is None else _per_prompt(prompt_ids, "prompt_ids", "prompt id", len(checked))
    return LabelledStack(activations, checked, layers, site or "resid_post", names, copies)


MAX_UNNAMED_TASKS = 2**16
"""Without task names, task ids name ``0 .. max(id)`` tasks ``"task i"``: at most this many."""


def integer_ids(values: Any, what: str, meaning: str) -> Int[Tensor, " n"]:
    """``values`` (a tensor, list or array of ints, one per entry) as a 1-D long tensor on the CPU.

    Raises:
        ShapeError: Not a 1-D integer tensor (floats would be truncated, bools read as 0 / 1), or on ``meta``.
    """
    tensor = tensor_of(values, what, f"a 1-D integer tensor ({meaning}) such as torch.tensor([0, 1, 1])")
    if not is_integer_tensor(tensor) or tensor.ndim != 1:
        raise ShapeError(
            f"{what} must be a 1-D integer tensor ({meaning}), got {tensor.dtype} with shape {tuple(tensor.shape)}; "
            "pass integers, e.g. torch.tensor([0, 1, 1])."
        )
    return tensor.to("cpu", torch.long)


def named_tasks(task_names: Sequence[str] | None, ids: Int[Tensor, " n"], what: str) -> tuple[str, ...]:
    """The name of every task id in ``ids`` (ids >= 0, checked by the caller).

    ``task_names`` after checking that it is a sequence of strings naming each id, or ``"task 0"``, ``"task 1"``
    ... up to the largest id.
    """
    n_ids = int(ids.max()) + 1 if ids.numel() else 0
    if task_names is None:
        if n_ids > MAX_UNNAMED_TASKS:
            raise ShapeError(
                f"{what} go up to {n_ids - 1}: without task_names every id up to the largest names a task, "
                f"{n_ids} in all (at most {MAX_UNNAMED_TASKS}). Pass task_names, or number the tasks from 0 "
                "(torch.unique(ids, return_inverse=True))."
            )
        return tuple(f"task {i}" for i in range(n_ids))
    if isinstance(task_names, (str, bytes)) or not all(isinstance(name, str) for name in task_names):
        raise ShapeError(
            f"task_names must be a sequence of task names (strings), one per task id, got {task_names!r:.80}; "
            "pass e.g. ('task 0', 'task 1') or batch.task_names."
        )
    names = tuple(task_names)
    if len(names) < n_ids:
        raise ShapeError(
            f"{what} must lie in 0 .. {len(names) - 1} (one per task name), but go up to {n_ids - 1}: only "
            f"{len(names)} task_names were given; name each task."
        )
    return names


def _layer_labels(layers: Any) -> tuple[int, ...]:
    """``layers`` as a tuple of ints (block indices; -1 the embedding output)."""
    if isinstance(layers, (int, str, bytes)) or not isinstance(layers, Sequence):
        raise ShapeError(
            f"layers must be a sequence of block indices such as (0, 1), got {layers!r}; for a single layer pass a "
            f"one-element tuple, e.g. ({layers!r},)."
        )
    wrong = [layer for layer in layers if not is_int(layer)]
    if wrong:
        raise ShapeError(f"layers must be int block indices such as (0, 1), got {wrong[0]!r} in {tuple(layers)}.")
    return tuple(layers)


def _check_labels(labels: LabelsInput | None, n_prompts: int) -> Int[Tensor, " prompt"]:
    if labels is None:
        raise ShapeError(
            "No labels: pass labels= (the task of each prompt), or Representations with task_ids "
            "(collect(..., task_ids=batch.task_ids))."
        )
    tensor = _per_prompt(labels, "labels", "task id", n_prompts)
    if bool((tensor < 0).any()):
        raise ShapeError(f"labels must be task ids >= 0, got a minimum of {int(tensor.min())}.")
    return tensor


def _per_prompt(values: LabelsInput, what: str, meaning: str, n_prompts: int) -> Int[Tensor, " prompt"]:
    """``values`` as one integer id per prompt (a 1-D long tensor of ``n_prompts`` entries)."""
    tensor = integer_ids(values, what, f"one {meaning} per prompt")
    if len(tensor) != n_prompts:
        raise ShapeError(
            f"{what} has {len(tensor)} entries but reps has {n_prompts} prompts; pass one {meaning} per prompt "
            "(in the same order)."
        )
    return tensor
