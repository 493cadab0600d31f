"""What analyses sample and read: prompt batches and pools, as protocols, and the checks that a value is one.

Analyses read prompts through :class:`PromptBatch` / :class:`PromptPool`, the fields and methods that
token batches (:class:`~tv_lens.tasks.ICLBatch`) and continuous batches (``RegressionBatch``) share, so
they run on either without knowing how a task renders. The causal functions (head importance, patching,
prompting, indirect effects) read only :class:`LabelledPrompts`: a batch, or :class:`Prompts` of tokens a user has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.analyses.answers import answer_counts, answer_tokens, prompt_count
from tv_lens.errors import PositionError, TaskError
from tv_lens.interventions.sweep import AlignedPrompts, align
from tv_lens.metrics import checked_answers, continuous_answers

__all__ = [
    "LabelledPrompts",
    "PromptBatch",
    "PromptPool",
    "Prompts",
    "align_answers",
    "aligned_with_answers",
    "check_batch",
    "check_pool",
    "check_prompts",
    "sample_batch",
]

LABELLED_FIELDS = ("inputs", "attention_mask", "answer_pos", "answers", "task_ids", "task_names")


@runtime_checkable
class LabelledPrompts(Protocol):
    """Prompts with their answers and tasks, what the causal functions read (a batch, or :class:`Prompts`)."""

    @property
    def inputs(self) -> Tensor:
        """Prompt tokens ``[batch, pos]`` (or continuous inputs ``[batch, pos, d_in]``)."""
        ...

    @property
    def attention_mask(self) -> Tensor | None:
        """1 for real positions, 0 for padding ``[batch, pos]`` (``None``: every position is real)."""
        ...

    @property
    def answer_pos(self) -> Tensor:
        """Position whose output predicts the first answer token ``[batch]``."""
        ...

    @property
    def answers(self) -> Tensor | None:
        """Answer tokens ``[batch, n_answer]`` (``-1`` padded) or values (``None`` where none are read)."""
        ...

    @property
    def task_ids(self) -> Tensor:
        """Task index of each prompt ``[batch]``."""
        ...

    @property
    def task_names(self) -> Sequence[str]:
        """Name of each task index."""
        ...


@dataclass(frozen=True, eq=False)
class Prompts:
    """Prompts you tokenised yourself, with their answers and tasks, for the causal functions.

    A container: the functions check its fields as they check a batch's (an ``ICLBatch`` or ``RegressionBatch``
    serves in its place).

    Attributes:
        inputs: Prompt tokens ``[batch, pos]`` (or continuous inputs ``[batch, pos, d_in]``), right- or
            left-padded.
        answer_pos: Token right before each prompt's first answer token ``[batch]``.
        answers: Answer tokens ``[batch, n_answer]`` (``-1`` pads shorter answers; the tokens follow
            ``answer_pos`` in ``inputs``), or continuous answers ``[batch, d_out]``; ``None`` only for
            :func:`~tv_lens.analyses.mean_head_activations` and :func:`~tv_lens.analyses.role_attention`, which read
            no answers.
        task_ids: Task of each prompt ``[batch]``, indexing ``task_names``.
        task_names: Name of every task id (stored as a tuple).
        attention_mask: 1 on real tokens ``[batch, pos]``; needed for left-padded prompts (``None``: all real).
    """

    inputs: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_in"]
    answer_pos: Int[Tensor, " batch"]
    answers: Int[Tensor, "batch n_answer"] | Float[Tensor, "batch d_out"] | None
    task_ids: Int[Tensor, " batch"]
    task_names: tuple[str, ...]
    attention_mask: Int[Tensor, "batch pos"] | None = None

    def __post_init__(self) -> None:
        names = self.task_names
        if isinstance(names, Sequence) and not isinstance(names, (str, bytes)):  # a string is refused where read
            object.__setattr__(self, "task_names", tuple(names))


@runtime_checkable
class PromptBatch(LabelledPrompts, Protocol):
    """A batch of rendered ICL prompts (``ICLBatch`` for tokens, ``RegressionBatch`` for vectors)."""

    @property
    def attention_mask(self) -> Tensor:
        """1 for real positions, 0 for padding ``[batch, pos]``."""
        ...

    @property
    def answers(self) -> Tensor:
        """Answer tokens ``[batch, n_answer]`` (``-1`` padded) or values."""
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


def check_pool(pool: Any, model: Any = None) -> None:
    """Raise :class:`TaskError` unless ``pool`` can sample prompts (has ``sample(n_per_task, n_shots, seed)``).

    With ``model``, a :class:`~tv_lens.tasks.TextPool` must tokenize as the model's tokenizer does
    (:meth:`~tv_lens.tasks.TextPool.check_tokenizer`).
    """
    if not callable(getattr(pool, "sample", None)) or not hasattr(pool, "task_names"):
        raise TaskError(
            f"Cannot sample prompts from a {type(pool).__name__}; pass a task pool such as "
            "tv_lens.tasks.offset_pool() (a TaskPool, RegressionPool or TextPool), or use run_batch for a batch."
        )
    check_tokenizer = getattr(pool, "check_tokenizer", None)
    if model is not None and callable(check_tokenizer):
        check_tokenizer(getattr(model, "tokenizer", None))


def check_batch(batch: Any) -> None:
    """Raise :class:`TaskError` unless ``batch`` is a batch of prompts (has the :class:`LabelledPrompts` fields)."""
    _check_fields(batch, "batch", "a batch of prompts", "or a selection of one (batch.select(rows))")


def check_prompts(prompts: Any, name: str = "prompts") -> None:
    """Raise :class:`TaskError` unless ``prompts`` (the argument ``name``) are :class:`LabelledPrompts`."""
    _check_fields(
        prompts,
        name,
        "a batch of prompts or tv_lens.Prompts",
        "or prompts you tokenised as tv_lens.Prompts(inputs, answer_pos, answers, task_ids, task_names)",
    )


def _check_fields(value: Any, name: str, expected: str, alternative: str) -> None:
    missing = [field for field in LABELLED_FIELDS if not hasattr(value, field)]
    if missing:
        raise TaskError(
            f"{name} must be {expected}, got a {type(value).__name__} without {missing}; pass "
            f"pool.sample(n_per_task, n_shots, seed) (an ICLBatch) {alternative}."
        )


def sample_batch(
    pool: PromptPool, n_per_task: int, n_shots: Any, seed: int, label_noise: float = 0.0, *, model: Any = None
) -> PromptBatch:
    """``pool.sample`` typed as a :class:`PromptBatch` (the pool is checked first, for ``model`` where given)."""
    check_pool(pool, model)
    if label_noise:
        batch: PromptBatch = pool.sample(n_per_task, n_shots, seed, label_noise=label_noise)
    else:  # a pool of the user's own need not know label noise
        batch = pool.sample(n_per_task, n_shots, seed)
    return batch


def aligned_with_answers(
    model: Any, prompts: LabelledPrompts, *, continuous: bool = False
) -> tuple[AlignedPrompts, Int[Tensor, "batch n_answer"] | Float[Tensor, "batch d_out"]]:
    """``prompts`` checked and aligned for a sweep (:func:`~tv_lens.interventions.sweep.align`), and their answers.

    ``continuous``: the caller scores continuous answers too (a regression batch's floats ``[batch, d_out]``, read at
    the answer position).

    Raises:
        TaskError: ``prompts`` without a field of :class:`LabelledPrompts`.
        ShapeError: Answers that are not integer tokens ``[batch, n_answer]`` (nor, with ``continuous``, floats
            ``[batch, d_out]``; ``None`` included).
    """
    check_prompts(prompts)
    n_prompts = prompt_count(prompts.inputs)
    if continuous and isinstance(prompts.answers, Tensor) and continuous_answers(prompts.answers):
        answers = checked_answers(prompts.answers, n_prompts, continuous=True).cpu()
    else:
        answers = answer_tokens(prompts.answers, n_prompts)
    return align_answers(model, prompts.inputs, prompts.answer_pos, prompts.attention_mask, answers), answers


def align_answers(
    model: Any,
    inputs: Tensor,
    answer_pos: Any,
    attention_mask: Int[Tensor, "batch pos"] | None,
    answers: Int[Tensor, "batch n_answer"] | Float[Tensor, "batch d_out"],
) -> AlignedPrompts:
    """Prompts aligned to read ``answers`` (:func:`~tv_lens.interventions.sweep.align`), checked to hold them.

    An answer of several tokens is scored by teacher forcing: the model reads each of its tokens but the last from
    the prompt, right after ``answer_pos``, so those must be the prompt's own tokens there.

    Raises:
        PositionError: A token the model reads that is not the answer's (an answer tokenized apart from its prompt).
    """
    aligned = align(model, inputs, answer_pos, attention_mask, answer_counts(answers))
    if continuous_answers(answers):
        return aligned
    read = aligned.answer_lengths - 1  # answer tokens the model reads from the prompt
    offsets = torch.arange(int(read.max()) if len(read) else 0)
    columns = (aligned.answer_pos[:, None] + 1 + offsets).clamp(max=aligned.inputs.shape[1] - 1)
    held = aligned.inputs.gather(1, columns.to(aligned.inputs.device)).cpu()
    wrong = (offsets < read[:, None]) & (held != answers[:, : len(offsets)].to("cpu", held.dtype))
    if bool(wrong.any()):
        row, token = (int(i) for i in wrong.nonzero()[0])
        raise PositionError(
            f"Prompt {row}'s answer token {token} is id {int(answers[row, token])}, but the prompt holds id "
            f"{int(held[row, token])} in its place ({token + 1} after answer_pos). An answer of several tokens is "
            "scored by teacher forcing: the model reads each answer token but the last from the prompt, so the "
            "answers must be the prompt's own tokens after answer_pos. Take them from the tokens of the prompt with "
            "its answer (an answer tokenized alone can split otherwise, e.g. without the space before it)."
        )
    return aligned
