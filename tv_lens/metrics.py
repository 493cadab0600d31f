"""Per-prompt scores of the model's output at the answer positions.

Every function takes the output at the answer positions, ``[batch, n_answer, d_vocab]`` as returned by
:func:`tv_lens.interventions.run_with_interventions` (or :func:`answer_logits` of a full output), and
returns one number per prompt, so analyses can average, bootstrap or split by task. Multi-token answers
are scored by teacher forcing: the answer tokens are in the prompt, and the output at
``answer_pos + i`` predicts answer token ``i``. Answers of different token lengths are right-padded with
``-1`` (as in :class:`~tv_lens.tasks.ICLBatch`); each prompt is scored over its own answer tokens only.

>>> logits = torch.tensor([[[0.0, 2.0, 0.0]], [[3.0, 0.0, 0.0]]])
>>> token_accuracy(logits, torch.tensor([[1], [1]]))
tensor([1., 0.])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.errors import ShapeError
from tv_lens.positions import AnswerLengths, answer_columns, answer_lengths, as_positions

__all__ = ["answer_logits", "mse", "token_accuracy", "token_cross_entropy"]


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


def _check_tokens(logits: Tensor, answers: Tensor, first_token_only: bool) -> tuple[Tensor, Tensor]:
    answers = torch.as_tensor(answers)
    if answers.ndim == 1:
        answers = answers[:, None]
    if logits.ndim != 3 or answers.ndim != 2 or logits.shape[:2] != answers.shape:
        raise ShapeError(
            f"logits must be [batch, n_answer, d_vocab] and answers [batch, n_answer] with matching batch and "
            f"n_answer; got {tuple(logits.shape)} and {tuple(answers.shape)}. Pass n_answer_tokens= to the run "
            "that produced the logits."
        )
    if answers.is_floating_point() or int(answers.max()) >= logits.shape[-1] or int(answers[:, 0].min()) < 0:
        raise ShapeError(
            f"answers must be integer token ids in [0, {logits.shape[-1]}), at least one per prompt, right-padded "
            "with -1 where answers have different lengths."
        )
    real = answers >= 0
    if bool((answers < -1).any()) or bool((real[:, 1:] & ~real[:, :-1]).any()):
        raise ShapeError("answers may hold -1 only as right padding after a prompt's own answer tokens.")
    answers = answers.to(logits.device)
    return (logits[:, :1], answers[:, :1]) if first_token_only else (logits, answers)
