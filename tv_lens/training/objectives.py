"""What a training run optimises and how it scores held-out prompts, per kind of task pool.

An ICL prompt holds several (input, answer) pairs; the model should answer every demonstration from
the ones before it, so the training loss is taken at the answer of *every* demonstration and of the
query (Garg et al.'s "prefix" loss), not only at the query. Evaluation scores the query only.

:class:`TokenObjective` serves token task pools (cross-entropy on answer tokens, exact-match accuracy);
:class:`TextObjective` serves text pools, i.e. finetuning a pretrained model: the loss is taken on the query's
answer tokens only (Han et al. §4.4), each prompt over its own answer length;
:class:`RegressionObjective` serves regression pools through the continuous-input wrapper
(:func:`tv_lens.models.build_continuous_model`): mean squared error of the prediction at every answer
position. The loop talks to an objective through :class:`Objective` only; :func:`objective_for` picks one
by the kind of pool, and ``train(..., objective=...)`` takes any object with the same methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.errors import ConfigError, PositionError, TaskError
from tv_lens.metrics import TOLERANCE, answer_correct, answer_logits, answer_loss, tolerance_problem
from tv_lens.models.adapter import ModelAdapter
from tv_lens.models.running import HookFn, forward
from tv_lens.tasks import ICLBatch, RegressionBatch, RegressionPool, TaskPool, TextPool

__all__ = ["Objective", "RegressionObjective", "TextObjective", "TokenObjective", "check_objective", "objective_for"]


@runtime_checkable
class Objective(Protocol):
    """The loss and the scores of one kind of task pool."""

    def check(self, adapter: ModelAdapter, pool: Any, batch: Any) -> None:
        """Raise a clear error if the model cannot take the pool's prompts (vocabulary, context length)."""

    def context_loss(self, adapter: ModelAdapter, batch: Any, hooks: Sequence[tuple[str, HookFn]] = ()) -> Tensor:
        """Mean loss over the answers of every demonstration and of the query, in one forward pass."""

    def answer_loss(self, outputs: Tensor, batch: Any) -> Float[Tensor, " batch"]:
        """Per-prompt loss of the query answer from the outputs at the answer positions."""

    def answer_accuracy(self, outputs: Tensor, batch: Any) -> Float[Tensor, " batch"]:
        """Per-prompt score of the query answer (1.0 = correct) from the outputs at the answer positions."""

    def query_outputs(self, adapter: ModelAdapter, batch: Any) -> Tensor:
        """Outputs at the query's answer positions, ``[batch, n_answer, d_out]`` (no hooks)."""

    # Optional: ``loss_terms(batch) -> int``, how many terms context_loss averages over. With it, a training step
    # can be split into micro-batches (DataConfig.micro_batch; tv_lens.training.accumulation).


class TokenObjective:
    """Cross-entropy on answer tokens and exact-match accuracy, for token :class:`~tv_lens.tasks.TaskPool` s."""

    def check(self, adapter: ModelAdapter, pool: TaskPool, batch: ICLBatch) -> None:
        """Check the model's vocabulary and context length against the pool's prompts."""
        if pool.vocab_size > adapter.d_vocab:
            raise TaskError(
                f"The pool's vocabulary does not fit the model: its prompts use {pool.vocab_size} token ids but "
                f"the model has d_vocab={adapter.d_vocab}. Build the model with "
                f"ModelConfig(d_vocab=pool.vocab_size) (= {pool.vocab_size}) or larger."
            )
        _check_length(adapter, batch)

    def context_loss(
        self, adapter: ModelAdapter, batch: ICLBatch, hooks: Sequence[tuple[str, HookFn]] = ()
    ) -> Float[Tensor, ""]:
        """Mean cross-entropy over every answer token of every clean demonstration and of the query.

        Demonstrations whose label was corrupted (``batch.demo_noisy``) are left out: their answer is
        unpredictable by construction.
        """
        rows, columns, targets = answer_targets(batch)
        picked = _outputs_at(adapter, batch, hooks, rows, columns)
        return F.cross_entropy(picked, targets.to(picked.device))

    def loss_terms(self, batch: ICLBatch) -> int:
        """Answer tokens :meth:`context_loss` averages over."""
        return len(answer_targets(batch)[2])

    def answer_loss(self, outputs: Float[Tensor, "batch n_answer d_vocab"], batch: ICLBatch) -> Float[Tensor, " batch"]:
        """Per-prompt cross-entropy of the query's answer tokens."""
        return answer_loss(outputs, batch.answers)

    def answer_accuracy(
        self, outputs: Float[Tensor, "batch n_answer d_vocab"], batch: ICLBatch
    ) -> Float[Tensor, " batch"]:
        """Per-prompt exact match of all the query's answer tokens."""
        return answer_correct(outputs, batch.answers)

    def query_outputs(self, adapter: ModelAdapter, batch: ICLBatch) -> Float[Tensor, "batch n_answer d_vocab"]:
        """Logits at the query's answer positions (teacher-forced for multi-token answers)."""
        return answer_logits(_run_batch(adapter, batch), batch.answer_pos, batch.answer_lengths)


def model_tokens(batch: ICLBatch) -> Int[Tensor, "batch pos"]:
    """The batch's tokens as the model runs them: padding (right of each prompt, never read) as id 0.

    So a pad token added to a tokenizer and not to the model (an id past its vocabulary) can pad text prompts, as
    in the analyses (:func:`tv_lens.positions.prepare_prompts`).
    """
    return batch.inputs.masked_fill(batch.attention_mask == 0, 0)


def answer_targets(batch: ICLBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Where every answer token of a batch is predicted, and what it is.

    Returns:
        ``(rows, columns, targets)``, flat and aligned: the logits at ``[rows[i], columns[i]]`` predict the
        token ``targets[i] = inputs[rows[i], columns[i] + 1]``. Covers each clean demonstration's answer
        and the query's answer.
    """
    pre_answer, valid = _scored_answers(batch)
    offsets = torch.arange(batch.n_answer_tokens, device=pre_answer.device)
    columns = pre_answer[:, :, None] + offsets  # [batch, shots + 1, n_answer]
    rows = torch.arange(len(batch), device=pre_answer.device)[:, None, None].expand_as(columns)
    keep = valid[:, :, None].expand_as(columns)
    rows, columns = rows[keep], columns[keep]
    return rows, columns, batch.inputs[rows, columns + 1]


class TextObjective(TokenObjective):
    """Cross-entropy on the query's answer tokens, for :class:`~tv_lens.tasks.TextPool` s (pretrained models).

    A pretrained model already reads demonstrations as text; as in Han et al.'s finetuning (§4.4, "loss on
    answer tokens only") the loss is taken on the query's answer tokens, teacher-forced, each prompt over its
    own answer length, and every other token is context. Scores are those of :class:`TokenObjective`: exact
    match of every answer token, per-prompt cross-entropy.
    """

    def check(self, adapter: ModelAdapter, pool: Any, batch: ICLBatch) -> None:
        """Check the tokenizer's ids and the prompts' lengths against the model."""
        # padding is never read: a pad token added to the tokenizer (past the model's vocabulary) is no problem
        padding_past = 1 if adapter.d_vocab <= batch.pad_token < pool.vocab_size else 0
        if pool.vocab_size - padding_past > adapter.d_vocab:
            raise TaskError(
                f"The pool's tokenizer has {pool.vocab_size} token ids but the model has d_vocab={adapter.d_vocab}; "
                "build the TextPool with the model's own tokenizer: TextPool(tasks, model.tokenizer, ...)."
            )
        pool.check_tokenizer(getattr(adapter.model, "tokenizer", None))
        _check_length(adapter, batch)

    def context_loss(
        self, adapter: ModelAdapter, batch: ICLBatch, hooks: Sequence[tuple[str, HookFn]] = ()
    ) -> Float[Tensor, ""]:
        """Mean cross-entropy over every answer token of the query (the demonstrations are context)."""
        rows, columns, targets = query_targets(batch)
        picked = _outputs_at(adapter, batch, hooks, rows, columns)
        return F.cross_entropy(picked, targets.to(picked.device))

    def loss_terms(self, batch: ICLBatch) -> int:
        """Query answer tokens :meth:`context_loss` averages over."""
        return len(query_targets(batch)[2])


def query_targets(batch: ICLBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Where every answer token of each query is predicted, and what it is (``-1`` padding left out).

    Returns:
        ``(rows, columns, targets)``, flat and aligned as in :func:`answer_targets`: the logits at
        ``[rows[i], columns[i]]`` predict ``targets[i]``, prompt ``rows[i]``'s answer token.
    """
    answers = batch.answers
    offsets = torch.arange(answers.shape[1], device=answers.device)
    columns = batch.answer_pos.to(answers.device)[:, None] + offsets
    rows = torch.arange(len(batch), device=answers.device)[:, None].expand_as(columns)
    real = answers >= 0
    return rows[real], columns[real], answers[real]


class RegressionObjective:
    """Mean squared error on continuous answers, for :class:`~tv_lens.tasks.RegressionPool` s.

    The model is a :class:`~tv_lens.models.ContinuousModel` (``d_in`` = the pool's input width, ``d_out``
    = its output width); its output at a demonstration's or the query's ``x`` predicts that ``y``.

    Args:
        tolerance: A query counts as answered (``accuracy`` 1.0) when its squared error, averaged over
            output coordinates, is at most this. The MSE itself is the run's ``loss``. Both are
            :func:`tv_lens.metrics.answer_scores`, the scorer the analyses use.
    """

    def __init__(self, tolerance: float = TOLERANCE) -> None:
        problem = tolerance_problem(tolerance)
        if problem:
            raise ConfigError(problem)
        self.tolerance = tolerance

    def check(self, adapter: ModelAdapter, pool: RegressionPool, batch: RegressionBatch) -> None:
        """Check the model's input and output widths and context length against the pool's prompts."""
        if adapter.d_in is None:
            raise TaskError(
                "Regression prompts are sequences of vectors, and this model reads tokens. Wrap it: "
                f"build_continuous_model(config, d_in={pool.d_in}, d_out={pool.d_out}) from tv_lens.models."
            )
        if (adapter.d_in, adapter.d_vocab) != (pool.d_in, pool.d_out):
            raise TaskError(
                f"The pool's vectors do not fit the model: the pool has d_in={pool.d_in}, d_out={pool.d_out}, the "
                f"model d_in={adapter.d_in}, d_out={adapter.d_vocab}. Build the model with "
                f"build_continuous_model(config, d_in={pool.d_in}, d_out={pool.d_out})."
            )
        _check_length(adapter, batch)

    def context_loss(
        self, adapter: ModelAdapter, batch: RegressionBatch, hooks: Sequence[tuple[str, HookFn]] = ()
    ) -> Float[Tensor, ""]:
        """Mean squared error of the prediction of every clean demonstration's ``y`` and of the query's."""
        positions, valid = _scored_answers(batch)
        targets = torch.cat([batch.demo_answers, batch.answers[:, None]], dim=1)  # [batch, shots + 1, d_out]
        rows = torch.arange(len(batch), device=positions.device)[:, None].expand_as(positions)
        picked = _outputs_at(adapter, batch, hooks, rows[valid], positions[valid])
        return F.mse_loss(picked, targets[valid].to(picked.device, picked.dtype))

    def loss_terms(self, batch: RegressionBatch) -> int:
        """Predictions :meth:`context_loss` averages over (each a mean over the same output width)."""
        return int(_scored_answers(batch)[1].sum())

    def answer_loss(self, outputs: Float[Tensor, "batch 1 d_out"], batch: RegressionBatch) -> Float[Tensor, " batch"]:
        """Per-prompt squared error of the query's prediction (mean over output coordinates)."""
        return answer_loss(outputs, batch.answers)

    def answer_accuracy(
        self, outputs: Float[Tensor, "batch 1 d_out"], batch: RegressionBatch
    ) -> Float[Tensor, " batch"]:
        """1.0 where the query's squared error is at most ``tolerance``."""
        return answer_correct(outputs, batch.answers, self.tolerance)

    def query_outputs(self, adapter: ModelAdapter, batch: RegressionBatch) -> Float[Tensor, "batch 1 d_out"]:
        """Predictions at the query's ``x``."""
        return answer_logits(_run_batch(adapter, batch), batch.answer_pos, 1)


def _scored_answers(
    batch: ICLBatch | RegressionBatch,
) -> tuple[Int[Tensor, "batch slots"], Bool[Tensor, "batch slots"]]:
    """Where each demonstration's answer and the query's is predicted, and which of them the loss scores.

    ``slots`` = shots + 1 (the query last); padding slots (position ``-1``) and noisy demonstrations are not scored.
    """
    positions = torch.cat([batch.demo_answer_pos, batch.answer_pos[:, None]], dim=1)
    scored = positions >= 0
    scored[:, :-1] &= ~batch.demo_noisy
    return positions, scored


def _outputs_at(
    adapter: ModelAdapter,
    batch: ICLBatch | RegressionBatch,
    hooks: Sequence[tuple[str, HookFn]],
    rows: Int[Tensor, " n"],
    columns: Int[Tensor, " n"],
) -> Float[Tensor, "n d_out"]:
    """The model's outputs on ``batch`` (run with ``hooks``) at ``[rows[i], columns[i]]``, in float32 or float64.

    Raises:
        PositionError: The batch's prompts are longer than the model's context (a text pool's prompts vary in
            length, so a training batch can be longer than those checked before the run).
    """
    outputs = _run_batch(adapter, batch, hooks)
    picked = outputs[rows.to(outputs.device), columns.to(outputs.device)]
    return picked if picked.dtype == torch.float64 else picked.float()


def _run_batch(
    adapter: ModelAdapter, batch: ICLBatch | RegressionBatch, hooks: Sequence[tuple[str, HookFn]] = ()
) -> Float[Tensor, "batch pos d_out"]:
    """The model's outputs on ``batch``'s prompts (run with ``hooks``), token padding as id 0 (:func:`model_tokens`).

    Raises:
        PositionError: The batch's prompts are longer than the model's context.
    """
    _check_length(adapter, batch)
    inputs = model_tokens(batch) if isinstance(batch, ICLBatch) else batch.inputs
    return forward(adapter, inputs.to(adapter.device), hooks=hooks)


def _check_length(adapter: ModelAdapter, batch: ICLBatch | RegressionBatch) -> None:
    length = int(batch.lengths.max())
    if length > adapter.n_ctx:
        raise PositionError(
            f"Prompts of {length} positions do not fit the model's context n_ctx={adapter.n_ctx}; use fewer "
            "shots (DataConfig.n_shots / eval_n_shots) or a model with a larger n_ctx."
        )


def objective_for(pool: Any) -> Objective:
    """The objective of a pool: :class:`TokenObjective`, :class:`TextObjective` or :class:`RegressionObjective`."""
    if isinstance(pool, TextPool):
        return TextObjective()
    if isinstance(pool, TaskPool):
        return TokenObjective()
    if isinstance(pool, RegressionPool):
        return RegressionObjective()
    raise ConfigError(
        f"train() does not know how to train on a {type(pool).__name__}: token TaskPools (tv_lens.tasks.offset_pool, "
        "bitwise_pool, ...), TextPools and RegressionPools (regression_pool, sparse_linear_pool) are supported. For "
        "another kind of pool, pass objective= an object with the methods of tv_lens.training.objectives.Objective."
    )


def check_objective(objective: Any) -> Objective:
    """``objective``, checked to have the methods of :class:`Objective`.

    Raises:
        ConfigError: An object without them (a loss name such as ``"cross_entropy"``, a function).
    """
    if not isinstance(objective, Objective):
        raise ConfigError(
            f"objective must have the methods of tv_lens.training.Objective (check, context_loss, answer_loss, "
            f"answer_accuracy, query_outputs), got {objective!r:.60}; pass None (the pool's own, "
            "objective_for(pool)) or e.g. RegressionObjective(tolerance=0.05)."
        )
    return objective
