"""The per-prompt inputs of causal analyses, checked: prompt counts, answers, task ids, and the answers' scores.

Patching, prompting, head ablation and the indirect effects take prompts, answers and task ids as tensors; the
helpers here check them once (one answer row and task id per prompt) and score a model's outputs against the
answers (:func:`tv_lens.metrics.answer_scores`), refusing outputs that are NaN or infinite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.checks import is_integer_tensor, tensor_of
from tv_lens.errors import AnalysisError, NonFiniteError, ShapeError, TaskError
from tv_lens.metrics import TOLERANCE, Answers, checked_answers, continuous_answers
from tv_lens.metrics import answer_scores as scored_answers
from tv_lens.results.shared import real_prompts

__all__ = [
    "answer_counts",
    "answer_scores",
    "answer_tokens",
    "finite_outputs",
    "prompt_count",
    "prompt_task_ids",
    "real_task_prompts",
]


def answer_tokens(answers: Int[Tensor, "batch ..."] | None, n_prompts: int) -> Int[Tensor, "batch n_answer"]:
    """Answer tokens as ``[batch, n_answer]`` (:func:`~tv_lens.metrics.checked_answers`), long, on the CPU.

    Answers of different lengths are right-padded with ``-1``; :func:`answer_counts` gives each one's length.
    Columns that are padding in every row (e.g. a batch selected out of a pool with longer answers) are dropped:
    they hold no answer token. ``None`` (prompts without answers) is a :class:`ShapeError`.
    """
    answers = checked_answers(answers, n_prompts).cpu()
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
    if not is_integer_tensor(ids):
        raise ShapeError(f"task_ids must be integer indices into task_names, got {ids.dtype}; pass batch.task_ids.")
    ids = ids.cpu().long()
    if ids.shape != (n_prompts,):
        raise ShapeError(f"task_ids must have one entry per prompt ({n_prompts},), got {tuple(ids.shape)}.")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(task_names)):
        raise TaskError(f"task_ids must index task_names {tuple(task_names)}.")
    return ids


def real_task_prompts(
    ids: Int[Tensor, " batch"], task_names: Sequence[str], null_task: str, analysis: str
) -> Bool[Tensor, " batch"]:
    """Which prompts are of a task other than ``null_task`` (:func:`~tv_lens.results.shared.real_prompts`).

    Raises:
        AnalysisError: Every prompt is of the Null task, so the overall numbers ``analysis`` reports, means over the
            other tasks' prompts, would be NaN (and the heads or layers ranked by them in block order).
    """
    real = real_prompts(ids, task_names, null_task)
    if len(real) and not bool(real.any()):
        raise AnalysisError(
            f"Every prompt is of the Null task {null_task!r} (random answers), and {analysis} reports means over the "
            "prompts of the other tasks: there are none. Pass prompts of at least one other task; to read the Null "
            "task's prompts as a task of their own, pass null_task='' (no task is then left out)."
        )
    return real


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
