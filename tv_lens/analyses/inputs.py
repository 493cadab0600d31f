"""What analyses take: prompt batches and pools (as protocols), and checked representation inputs.

Analyses read prompts through :class:`PromptBatch` / :class:`PromptPool`, the fields and methods that
token batches (:class:`~tv_lens.tasks.ICLBatch`) and continuous batches (``RegressionBatch``) share, so
they run on either without knowing how a task renders.

Every analysis on representations (decodability, geometry) accepts the same things, validated here once:
a ``[layer, prompt, d]`` or ``[prompt, d]`` tensor with a label per prompt, or a ``Representations``
(from :func:`tv_lens.probes.collect`, or from a TransformerLens ``ActivationCache`` through
``Representations.from_cache``) whose ``task_ids`` serve as labels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.analyses.options import N_PER_TASK
from tv_lens.errors import NonFiniteError, ShapeError, TaskError
from tv_lens.metrics import TOLERANCE, Answers, continuous_answers
from tv_lens.metrics import answer_scores as scored_answers
from tv_lens.positions import check_tensor_data, tensor_of
from tv_lens.probes import Representations, collect

__all__ = [
    "MAX_UNNAMED_TASKS",
    "LabelledStack",
    "LabelsInput",
    "PromptBatch",
    "PromptPool",
    "RepresentationAnalysis",
    "RepsInput",
    "answer_counts",
    "answer_scores",
    "answer_tokens",
    "check_batch",
    "check_pool",
    "finite_outputs",
    "integer_ids",
    "labelled_stack",
    "named_tasks",
    "prompt_count",
    "prompt_task_ids",
    "sample_batch",
]


@runtime_checkable
class PromptBatch(Protocol):
    """A batch of rendered ICL prompts (``ICLBatch`` for tokens, ``RegressionBatch`` for vectors)."""

    @property
    def inputs(self) -> Tensor:
        """Prompt tokens ``[batch, pos]`` (or continuous inputs ``[batch, pos, d_in]``)."""
        ...

    @property
    def attention_mask(self) -> Tensor:
        """1 for real positions, 0 for padding ``[batch, pos]``."""
        ...

    @property
    def answer_pos(self) -> Tensor:
        """Position whose output predicts the first answer token ``[batch]``."""
        ...

    @property
    def answers(self) -> Tensor:
        """Answer tokens ``[batch, n_answer]`` (``-1`` padded) or values."""
        ...

    @property
    def task_ids(self) -> Tensor:
        """Task index of each prompt ``[batch]``."""
        ...

    @property
    def task_names(self) -> tuple[str, ...]:
        """Name of each task index."""
        ...

    @property
    def n_shots(self) -> Tensor:
        """Demonstrations per prompt ``[batch]``."""
        ...

    def __len__(self) -> int: ...

    @property
    def n_answer_tokens(self) -> int:
        """Answer columns per prompt (the longest answer)."""
        ...

    @property
    def answer_lengths(self) -> Tensor:
        """Each prompt's own answer positions ``[batch]``."""
        ...


@runtime_checkable
class PromptPool(Protocol):
    """A pool of confusable tasks that samples :class:`PromptBatch` es (``TaskPool``, ``RegressionPool``)."""

    @property
    def task_names(self) -> tuple[str, ...]:
        """Name of every task id."""
        ...

    def __len__(self) -> int: ...

    def sample(self, n_per_task: int, n_shots: Any, seed: int, label_noise: float = 0.0) -> Any:
        """``n_per_task`` prompts of every task, seeded."""
        ...


R = TypeVar("R")


class RepresentationAnalysis(ABC, Generic[R]):
    """Base of analyses that read representations at the answer positions in one pass, then compute on them.

    Subclasses are dataclasses with ``layers``, ``site``, ``batch_size`` and ``progress`` fields, and define
    :meth:`compute` on given representations (``Representations``, e.g. from a cache, or a plain tensor).
    """

    layers: tuple[int, ...] | None
    site: str
    batch_size: int
    progress: bool

    @abstractmethod
    def compute(
        self,
        reps: RepsInput,
        labels: LabelsInput | None = None,
        task_names: Sequence[str] | None = None,
        seed: int = 0,
    ) -> R:
        """The result of given representations."""

    def run(self, model: Any, pool: PromptPool, n_per_task: int = N_PER_TASK, n_shots: Any = 4, seed: int = 0) -> R:
        """Sample ``n_per_task`` prompts of every task of ``pool`` (seeded) and compute on their representations."""
        return self.run_batch(model, sample_batch(pool, n_per_task, n_shots, seed), seed=seed)

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


def check_pool(pool: Any) -> None:
    """Raise :class:`TaskError` unless ``pool`` can sample prompts (has ``sample(n_per_task, n_shots, seed)``)."""
    if not callable(getattr(pool, "sample", None)) or not hasattr(pool, "task_names"):
        raise TaskError(
            f"Cannot sample prompts from a {type(pool).__name__}; pass a task pool such as "
            "tv_lens.tasks.offset_pool() (a TaskPool, RegressionPool or TextPool), or use run_batch for a batch."
        )


def check_batch(batch: Any) -> None:
    """Raise :class:`TaskError` unless ``batch`` is a batch of prompts (has the :class:`PromptBatch` fields)."""
    fields = ("inputs", "attention_mask", "answer_pos", "answers", "task_ids", "task_names")
    missing = [name for name in fields if not hasattr(batch, name)]
    if missing:
        raise TaskError(
            f"batch must be a batch of prompts, got a {type(batch).__name__} without {missing}; pass "
            "pool.sample(n_per_task, n_shots, seed) (an ICLBatch) or a selection of one (batch.select(rows))."
        )


def sample_batch(pool: PromptPool, n_per_task: int, n_shots: Any, seed: int, label_noise: float = 0.0) -> PromptBatch:
    """``pool.sample`` typed as a :class:`PromptBatch` (the pool is checked first)."""
    check_pool(pool)
    if label_noise:
        batch: PromptBatch = pool.sample(n_per_task, n_shots, seed, label_noise=label_noise)
    else:  # a pool of the user's own need not know label noise
        batch = pool.sample(n_per_task, n_shots, seed)
    return batch


def answer_tokens(answers: Int[Tensor, "batch ..."], n_prompts: int) -> Int[Tensor, "batch n_answer"]:
    """Answer tokens as ``[batch, n_answer]`` (a ``[batch]`` tensor is one token per prompt), long, on the CPU.

    Answers of different lengths are right-padded with ``-1``; :func:`answer_counts` gives each one's length.
    Columns that are padding in every row (e.g. a batch selected out of a pool with longer answers) are dropped:
    they hold no answer token.
    """
    answers = tensor_of(answers, "answers", f"integer tokens [batch={n_prompts}, n_answer] (batch.answers)")
    check_tensor_data(answers, "answers")
    if answers.ndim == 1:
        answers = answers[:, None]
    integer = not (answers.is_floating_point() or answers.is_complex() or answers.dtype == torch.bool)
    if answers.ndim != 2 or answers.shape[0] != n_prompts or not integer:
        raise ShapeError(
            f"answers must be integer tokens [batch={n_prompts}, n_answer], got {answers.dtype} "
            f"{tuple(answers.shape)}; pass the answers of these prompts (batch.answers)."
        )
    answers = answers.cpu().long()
    used = (answers >= 0).any(0).nonzero()  # columns holding a token in some row
    return answers[:, : int(used.max()) + 1] if len(used) else answers


def prompt_count(inputs: Any, what: str = "inputs") -> int:
    """The number of prompts of ``inputs`` (a tensor ``[batch, pos]`` or ``[batch, pos, d]``; fully checked later)."""
    if not isinstance(inputs, Tensor) or inputs.ndim < 2:
        got = f"shape {tuple(inputs.shape)}" if isinstance(inputs, Tensor) else f"a {type(inputs).__name__}"
        raise ShapeError(
            f"{what} must be a torch.Tensor of prompts, tokens [batch, pos] or residuals [batch, pos, d], got {got}; "
            "pass batch.inputs (for one prompt, tokens[None])."
        )
    return int(inputs.shape[0])


def answer_counts(answers: Int[Tensor, "batch n_answer"] | Float[Tensor, "batch d_answer"]) -> Int[Tensor, " batch"]:
    """Each prompt's own answer positions: its tokens before the ``-1`` padding of :func:`answer_tokens`.

    A continuous answer (floats ``[batch, d_out]``) is one output vector, read at the answer position: 1.
    """
    if continuous_answers(answers):
        return torch.ones(len(answers), dtype=torch.long, device=answers.device)
    return (answers >= 0).sum(-1)


def prompt_task_ids(
    task_ids: Int[Tensor, " batch"], task_names: Sequence[str], n_prompts: int
) -> Int[Tensor, " batch"]:
    """``task_ids`` as long on the CPU, after checking one integer per prompt, each indexing ``task_names``."""
    if isinstance(task_names, (str, bytes)) or not all(isinstance(name, str) for name in task_names):
        raise TaskError(
            f"task_names must be a sequence of task names (strings), one per task id, got {task_names!r}; pass "
            "batch.task_names."
        )
    ids = tensor_of(task_ids, "task_ids", f"one integer task id per prompt ({n_prompts},) (batch.task_ids)")
    check_tensor_data(ids, "task_ids")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ShapeError(f"task_ids must be integer indices into task_names, got {ids.dtype}; pass batch.task_ids.")
    ids = ids.cpu().long()
    if ids.shape != (n_prompts,):
        raise ShapeError(f"task_ids must have one entry per prompt ({n_prompts},), got {tuple(ids.shape)}.")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(task_names)):
        raise TaskError(f"task_ids must index task_names {tuple(task_names)}.")
    return ids


def finite_outputs(outputs: Float[Tensor, "batch n_answer d_out"]) -> Float[Tensor, "batch n_answer d_out"]:
    """``outputs`` (a model's outputs at answer positions), after checking that none is NaN or infinite."""
    finite = torch.isfinite(outputs).flatten(1).all(-1)
    if not bool(finite.all()):
        raise NonFiniteError(
            f"The model's outputs at the answer positions are NaN or infinite for {int((~finite).sum())} of "
            f"{len(finite)} prompt(s): its weights, inputs or intervention values are not finite (a diverged "
            "checkpoint?). Check them with torch.isfinite."
        )
    return outputs


def answer_scores(
    logits: Float[Tensor, "batch n_answer d_vocab"],
    answers: Answers,
    tolerance: float = TOLERANCE,
) -> tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """Correctness and answer loss of each prompt (float64, on the logits' device); logits checked finite.

    Token answers: exact match and cross-entropy; continuous answers: squared error at most ``tolerance`` and the
    squared error (:func:`tv_lens.metrics.answer_scores`).
    """
    logits = finite_outputs(logits)
    correct, loss = scored_answers(logits, answers.to(logits.device), tolerance)
    return correct.double(), loss.double()


RepsInput = Representations | Float[Tensor, "layer prompt d"] | Float[Tensor, "prompt d"]
LabelsInput = Int[Tensor, " prompt"] | Sequence[int] | np.ndarray


@dataclass(frozen=True)
class LabelledStack:
    """Representations of every layer with one integer label per prompt, checked and in float64.

    Attributes:
        activations: ``[layer, prompt, d]``, finite, float64.
        labels: ``[prompt]``, int64 in ``0 .. len(task_names) - 1``.
        layers: Block index of each layer entry (-1 = embedding output).
        site: Residual site the rows were read at.
        task_names: Name of every label.
    """

    activations: Float[Tensor, "layer prompt d"]
    labels: Int[Tensor, " prompt"]
    layers: tuple[int, ...]
    site: str
    task_names: tuple[str, ...]


def labelled_stack(
    reps: RepsInput,
    labels: LabelsInput | None = None,
    *,
    layers: Sequence[int] | None = None,
    site: str | None = None,
    task_names: Sequence[str] | None = None,
) -> LabelledStack:
    """Check and normalise representation-analysis inputs.

    Args:
        reps: ``Representations``, or a tensor ``[layer, prompt, d]`` / ``[prompt, d]`` (one layer).
        labels: Task of each prompt; defaults to ``reps.task_ids`` for ``Representations``.
        layers: For ``Representations``, the collected layers to use (default: all). For a plain tensor, the
            block index of each layer entry (default ``0 .. n - 1``, positions in the stack).
        site: Residual site label of a plain tensor (default ``"resid_post"``).
        task_names: Name of every label (default ``"task 0"``, ``"task 1"`` ...).
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
    _check_finite(activations, layers)
    checked = _check_labels(labels, activations.shape[1])
    names = named_tasks(task_names, checked, "labels")
    return LabelledStack(activations, checked, layers, site or "resid_post", names)


MAX_UNNAMED_TASKS = 2**16
"""Without task names, task ids name ``0 .. max(id)`` tasks ``"task i"``: at most this many."""


def integer_ids(values: Any, what: str, meaning: str) -> Int[Tensor, " n"]:
    """``values`` (a tensor, list or array of ints, one per entry) as a 1-D long tensor on the CPU.

    Raises:
        ShapeError: Not a 1-D integer tensor (floats would be truncated, bools read as 0 / 1), or on ``meta``.
    """
    tensor = tensor_of(values, what, f"a 1-D integer tensor ({meaning}) such as torch.tensor([0, 1, 1])")
    check_tensor_data(tensor, what)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool or tensor.ndim != 1:
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
    wrong = [layer for layer in layers if not isinstance(layer, int) or isinstance(layer, bool)]
    if wrong:
        raise ShapeError(f"layers must be int block indices such as (0, 1), got {wrong[0]!r} in {tuple(layers)}.")
    return tuple(layers)


def _check_labels(labels: LabelsInput | None, n_prompts: int) -> Int[Tensor, " prompt"]:
    if labels is None:
        raise ShapeError(
            "No labels: pass labels= (the task of each prompt), or Representations with task_ids "
            "(collect(..., task_ids=batch.task_ids))."
        )
    tensor = integer_ids(labels, "labels", "one task id per prompt")
    if len(tensor) != n_prompts:
        raise ShapeError(
            f"labels has {len(tensor)} entries but reps has {n_prompts} prompts; pass one task id per prompt "
            "(in the same order)."
        )
    if bool((tensor < 0).any()):
        raise ShapeError(f"labels must be task ids >= 0, got a minimum of {int(tensor.min())}.")
    return tensor


def _check_finite(activations: Tensor, layers: tuple[int, ...]) -> None:
    finite = torch.isfinite(activations).all(dim=-1)
    if not bool(finite.all()):
        bad = [layers[i] for i in range(len(layers)) if not bool(finite[i].all())]
        n_bad = int((~finite).any(dim=0).sum())
        raise NonFiniteError(
            f"reps hold NaN or infinite values at layers {bad} in {n_bad} prompt(s); drop those prompts or "
            "check the model (torch.isfinite) before the analysis."
        )
