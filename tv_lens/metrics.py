"""Per-prompt scores of the model's output at the answer positions: the one scorer of answers.

Every function takes the output at the answer positions, ``[batch, n_answer, d_vocab]`` as returned by
:func:`tv_lens.interventions.run_with_interventions` (or :func:`answer_logits` of a full output), and
returns one number per prompt, so analyses can average, bootstrap or split by task. Multi-token answers
are scored by teacher forcing: the answer tokens are in the prompt, and the output at
``answer_pos + i`` predicts answer token ``i``. Answers of different token lengths are right-padded with
``-1`` (as in :class:`~tv_lens.tasks.ICLBatch`); each prompt is scored over its own answer tokens only.

:func:`answer_correct`, :func:`answer_loss` and :func:`answer_scores` score a batch's answers of either kind, and
are what analyses and training use: token answers (integer ids) by exact match of every token's argmax and by
cross-entropy (:func:`token_accuracy`, :func:`token_cross_entropy`), continuous answers (floats ``[batch, d_out]``,
as in ``RegressionBatch``) by their squared error (:func:`squared_error`), correct when it is at most a tolerance.

>>> logits = torch.tensor([[[0.0, 2.0, 0.0]], [[3.0, 0.0, 0.0]]])
>>> token_accuracy(logits, torch.tensor([[1], [1]]))
tensor([1., 0.])
>>> answer_scores(torch.tensor([[[0.5]], [[2.0]]]), torch.tensor([[0.4], [1.0]]), tolerance=0.1)
(tensor([1., 0.]), tensor([0.0100, 1.0000]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.checks import is_integer_tensor, is_number, is_right_padded, tensor_of
from tv_lens.errors import ShapeError
from tv_lens.positions import AnswerLengths, answer_columns, answer_lengths, as_positions

__all__ = [
    "TOLERANCE",
    "Answers",
    "answer_correct",
    "answer_logits",
    "answer_loss",
    "answer_scores",
    "checked_answers",
    "continuous_answers",
    "mse",
    "squared_error",
    "token_accuracy",
    "token_cross_entropy",
    "tolerance_problem",
]

TOLERANCE = 0.1
"""A continuous answer counts as correct when its squared error (mean over output coordinates) is at most this."""

Answers = Int[Tensor, "batch n_answer"] | Int[Tensor, " batch"] | Float[Tensor, " batch *d_answer"]
"""Token ids (``-1`` right-padded; ``[batch]`` for one token each) or continuous answers (floats)."""


def answer_logits(
    logits: Float[Tensor, "batch pos d_vocab"],
    answer_pos: int | Sequence[int] | Tensor,
    n_answer_tokens: AnswerLengths = 1,
) -> Float[Tensor, "batch n_answer d_vocab"]:
    """The rows ``answer_pos .. answer_pos + n_answer_tokens - 1`` of a full output, per prompt.

    ``n_answer_tokens`` may hold one count per prompt; shorter answers then repeat their last row (see
    :func:`tv_lens.positions.answer_columns`).
    """
    if logits.ndim != 3:
        raise ShapeError(f"logits must be [batch, pos, d_vocab], got shape {tuple(logits.shape)}.")
    positions = as_positions(answer_pos, int(logits.shape[0]), "answer_pos").to(logits.device)
    lengths = answer_lengths(n_answer_tokens, len(positions))
    columns = answer_columns(positions, lengths, int(lengths.max()))
    if int(columns.min()) < 0 or int(columns.max()) >= logits.shape[1]:
        raise ShapeError(f"answer positions (+ {n_answer_tokens} answer tokens) must lie in [0, {logits.shape[1]}).")
    return logits[torch.arange(len(positions), device=logits.device)[:, None], columns]


def token_accuracy(
    logits: Float[Tensor, "batch n_answer d_vocab"],
    answers: Int[Tensor, "batch n_answer"] | Int[Tensor, " batch"],
    first_token_only: bool = False,
) -> Float[Tensor, " batch"]:
    """1.0 where the argmax prediction matches every answer token (or the first, if asked), else 0.0."""
    logits, answers = _check_tokens(logits, answers, first_token_only)
    return ((logits.argmax(dim=-1) == answers) | (answers < 0)).all(dim=-1).float()


def token_cross_entropy(
    logits: Float[Tensor, "batch n_answer d_vocab"],
    answers: Int[Tensor, "batch n_answer"] | Int[Tensor, " batch"],
    first_token_only: bool = False,
) -> Float[Tensor, " batch"]:
    """Cross-entropy of the answer tokens (mean over each prompt's own answer tokens), per prompt."""
    logits, answers = _check_tokens(logits, answers, first_token_only)
    flat = logits.flatten(0, 1)
    real = answers >= 0
    losses = F.cross_entropy(
        flat if flat.dtype == torch.float64 else flat.float(), answers.clamp(min=0).flatten(), reduction="none"
    )
    return (losses.view(answers.shape) * real).sum(dim=-1) / real.sum(dim=-1)


def mse(
    predictions: Float[Tensor, " batch *dims"],
    targets: Float[Tensor, " batch *dims"],
) -> Float[Tensor, " batch"]:
    """Mean squared error per prompt, for continuous answers (regression tasks)."""
    if predictions.shape != targets.shape or predictions.ndim < 1:
        raise ShapeError(
            f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} must have the same shape "
            "[batch, ...]; for a scalar output take predictions[..., 0]."
        )
    return (predictions - targets).pow(2).flatten(1).mean(dim=-1)


def continuous_answers(answers: Tensor) -> bool:
    """Whether ``answers`` are continuous values (floats, scored by squared error) rather than token ids."""
    return torch.as_tensor(answers).is_floating_point()


def squared_error(
    outputs: Float[Tensor, " batch *outputs"], answers: Float[Tensor, " batch *d_answer"]
) -> Float[Tensor, " batch"]:
    """Squared error of continuous answers per prompt, averaged over output coordinates.

    Answers ``[batch, d_answer]`` are compared with the first ``d_answer`` outputs at the first answer position
    of ``outputs [batch, n_answer, d_out]``; outputs and answers of one shape are compared as they are.
    """
    if not continuous_answers(answers):
        raise ShapeError(
            f"The squared error scores continuous answers (floats, as in a RegressionBatch), got {answers.dtype} "
            "token ids; score tokens by token_accuracy / token_cross_entropy (metric 'accuracy' or 'cross_entropy')."
        )
    targets = answers.to(outputs.device, outputs.dtype)
    if targets.ndim == 2 and outputs.ndim == 3:  # the first answer position's outputs
        outputs = outputs[:, 0, : targets.shape[-1]]
    return mse(outputs, targets)


def answer_loss(
    outputs: Float[Tensor, "batch n_answer d_out"],
    answers: Answers,
) -> Float[Tensor, " batch"]:
    """Each prompt's answer loss: cross-entropy of token answers, squared error of continuous ones."""
    if continuous_answers(answers):
        return squared_error(outputs, answers)
    return token_cross_entropy(outputs, answers)


def answer_correct(
    outputs: Float[Tensor, "batch n_answer d_out"],
    answers: Answers,
    tolerance: float = TOLERANCE,
) -> Float[Tensor, " batch"]:
    """1.0 where a prompt is answered right, else 0.0.

    Token answers: the argmax of every answer token is right (:func:`token_accuracy`). Continuous answers: the
    squared error is at most ``tolerance`` (in the outputs' dtype).
    """
    if continuous_answers(answers):
        return _within(squared_error(outputs, answers), tolerance, outputs.dtype)
    return token_accuracy(outputs, answers)


def answer_scores(
    outputs: Float[Tensor, "batch n_answer d_out"],
    answers: Answers,
    tolerance: float = TOLERANCE,
) -> tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """``(correct, loss)`` of each prompt: :func:`answer_correct` and :func:`answer_loss` (squared errors once)."""
    loss = answer_loss(outputs, answers)
    if continuous_answers(answers):
        return _within(loss, tolerance, outputs.dtype), loss
    return token_accuracy(outputs, answers), loss


def _within(errors: Float[Tensor, " batch"], tolerance: float, dtype: torch.dtype) -> Float[Tensor, " batch"]:
    """1.0 where a continuous answer's squared error is at most ``tolerance``."""
    return (errors <= tolerance).to(dtype)


def tolerance_problem(tolerance: Any) -> str | None:
    """Why ``tolerance`` cannot be a squared-error tolerance (a finite number > 0), or ``None`` if it can."""
    if not is_number(tolerance) or not 0 < tolerance < float("inf"):
        return (
            f"tolerance must be a finite number > 0 (the squared error up to which a continuous answer counts as "
            f"correct), got {tolerance!r}; e.g. tolerance={TOLERANCE}."
        )
    return None


def checked_answers(
    answers: Any, n_prompts: int | None = None, *, continuous: bool = False
) -> Int[Tensor, "batch n_answer"] | Float[Tensor, "batch d_answer"]:
    """``answers`` as ``[batch, n_answer]`` long token ids (a ``[batch]`` tensor is one token per prompt), checked.

    Token ids are integers, at least one per prompt, ``-1`` only as right padding after a prompt's own tokens. With
    ``continuous``, float answers pass too (``[batch, d_out]``; ``[batch]`` is one output each). ``n_prompts``, when
    given, is the batch the answers must have. The one check of answers before they are scored; any other input is
    a :class:`ShapeError`.
    """
    batch = "batch" if n_prompts is None else f"batch={n_prompts}"
    kinds = f"integer token ids [{batch}, n_answer]" + (
        f" or continuous answers [{batch}, d_out]" if continuous else ""
    )
    expected = f"{kinds} (batch.answers; -1 right-pads shorter token answers)"
    answers = tensor_of(answers, "answers", expected)
    answers = answers[:, None] if answers.ndim == 1 else answers
    floats = continuous and answers.is_floating_point()
    if (
        answers.ndim != 2
        or answers.shape[1] == 0
        or (n_prompts is not None and answers.shape[0] != n_prompts)
        or not (floats or is_integer_tensor(answers))
    ):
        raise ShapeError(
            f"answers must be {expected}, got {answers.dtype} {tuple(answers.shape)}; pass the answers of these "
            "prompts."
        )
    if floats:
        return answers
    if not is_right_padded(answers):
        raise ShapeError(
            "answers must be token ids >= 0, at least one per prompt, with -1 only as right padding after a "
            "prompt's own answer tokens; pass batch.answers."
        )
    return answers.long()


def _check_tokens(logits: Tensor, answers: Tensor, first_token_only: bool) -> tuple[Tensor, Tensor]:
    logits = tensor_of(logits, "logits", "a [batch, n_answer, d_vocab] tensor (the logits at the answer positions)")
    answers = checked_answers(answers)
    if logits.ndim != 3 or logits.shape[:2] != answers.shape:
        raise ShapeError(
            f"logits must be [batch, n_answer, d_vocab] and answers [batch, n_answer] with matching batch and "
            f"n_answer; got {tuple(logits.shape)} and {tuple(answers.shape)}. Pass n_answer_tokens= to the run "
            "that produced the logits."
        )
    if not logits.is_floating_point():
        raise ShapeError(f"logits must be floating point, got {logits.dtype}; pass the model's logits.")
    if answers.numel() and int(answers.max()) >= logits.shape[-1]:
        raise ShapeError(f"answers must be token ids in [0, {logits.shape[-1]}) (the model's vocabulary).")
    answers = answers.to(logits.device)
    return (logits[:, :1], answers[:, :1]) if first_token_only else (logits, answers)
