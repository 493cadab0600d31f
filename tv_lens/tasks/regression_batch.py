"""``RegressionBatch``: a batch of continuous (regression) ICL prompts, the float twin of ``ICLBatch``.

Layout of prompt ``i`` (right-padded with zero vectors; ``attention_mask`` is 1 on the first ``lengths[i]``
positions), one vector of width ``d_in`` per position::

    x_0  y_0  x_1  y_1  ...  x_{n-1}  y_{n-1}  x_q  y_q  [0 ...]
    ^demo_start[i, 0] = demo_answer_pos[i, 0]  ^query_start[i] = answer_pos[i]

An output ``y`` is written as the vector ``[y, 0, ..., 0]`` (``d_out`` leading coordinates). The model predicts
``y_j`` at ``x_j``'s position, so ``demo_answer_pos[i, j]`` (= ``demo_start[i, j]``) is where demonstration
``j``'s answer is predicted and ``answer_pos[i]`` where the query's is: the position whose residual stream is
read as the task representation. ``y_q`` follows ``x_q`` in ``inputs`` (teacher forcing); a causal model cannot
see it from ``answer_pos``. Field names and methods match :class:`~tv_lens.tasks.batch.ICLBatch`, so probes,
interventions and analyses read both the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.errors import PositionError, ShapeError
from tv_lens.tasks.prompt_rows import PromptRows

__all__ = ["RegressionBatch"]


@dataclass(frozen=True, eq=False)
class RegressionBatch(PromptRows):
    """Continuous ICL prompts, their answers, latent task ids and per-prompt function weights.

    Attributes:
        inputs: Input vectors, right-padded with zeros.
        attention_mask: 1 on real positions, 0 on padding.
        answer_pos: Position of the query input ``x_q`` (where ``y_q`` is predicted).
        answers: The query's output ``y_q``.
        task_ids: Latent task of each prompt, an index into ``task_names``.
        task_names: Name of every task id (the Null task, when present, is ``"null"``).
        n_shots: Number of demonstrations of each prompt.
        demo_start: Position of each demonstration's ``x``; ``-1`` beyond ``n_shots``.
        demo_answer_pos: Position where each demonstration's ``y`` is predicted (its ``x``); ``-1`` beyond.
        demo_answer_end: One past each demonstration's ``y`` (the next ``x``); ``-1`` beyond.
        demo_noisy: Whether each demonstration's ``y`` was replaced by a random output (label noise).
        query_start: Position of ``x_q``.
        weights: The weight vector ``w ~ N(0, I)`` drawn for each prompt's function (masked to its basis for
            sparse tasks; before the task's mean is added for shifted ones); NaN for Null prompts, whose outputs
            follow no ``w``.
    """

    inputs: Float[Tensor, "batch pos d_in"]
    answers: Float[Tensor, "batch d_out"]
    weights: Float[Tensor, "batch d_w"]

    def _check_shapes(self) -> None:
        if self.inputs.ndim != 3 or not self.inputs.is_floating_point():
            raise ShapeError(
                f"RegressionBatch.inputs must be a float tensor [batch, pos, d_in], got dtype {self.inputs.dtype} "
                f"and shape {tuple(self.inputs.shape)}."
            )
        self._check_fields()
        b, d_in = self.inputs.shape[0], self.inputs.shape[2]
        if self.answers.ndim != 2 or self.answers.shape[0] != b or not 1 <= self.answers.shape[1] <= d_in:
            raise ShapeError(
                f"RegressionBatch.answers must be [batch={b}, d_out] with 1 <= d_out <= d_in={d_in}, got "
                f"{tuple(self.answers.shape)}; use answers[:, None] for scalar outputs."
            )
        if self.weights.ndim != 2 or self.weights.shape[0] != b:
            raise ShapeError(f"RegressionBatch.weights must be [batch={b}, d_w], got {tuple(self.weights.shape)}.")

    def _check_positions(self) -> None:
        self._check_demonstrations()
        lengths = self.lengths
        bad = (self.answer_pos < self.query_start) | (self.answer_pos + 1 >= lengths)
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise PositionError(
                f"Prompt {i}: answer_pos={int(self.answer_pos[i])} must lie at or after query_start="
                f"{int(self.query_start[i])} and before the prompt's last real position {int(lengths[i]) - 1} "
                "(which holds y_q)."
            )
        if not torch.equal(self._outputs_after(self.answer_pos), self.answers):
            raise PositionError("RegressionBatch.answers must equal the output vector right after answer_pos.")

    @classmethod
    def from_pairs(
        cls,
        x: Float[Tensor, "batch slot d_in"],
        y: Float[Tensor, "batch slot"],
        n_shots: Int[Tensor, " batch"],
        task_ids: Int[Tensor, " batch"],
        task_names: tuple[str, ...],
        demo_noisy: Bool[Tensor, "batch max_shots"],
        weights: Float[Tensor, "batch d_w"],
    ) -> RegressionBatch:
        """Interleave ``x`` and ``[y, 0, ...]`` into right-padded prompts.

        Args:
            x: Inputs of every pair slot; slot ``j < n_shots[i]`` is a demonstration, slot ``n_shots[i]`` the
                query, later slots are ignored (``slot = max_shots + 1``).
            y: Scalar outputs of every slot, aligned with ``x``.
            n_shots: Demonstrations per prompt.
            task_ids: Latent task of each prompt.
            task_names: Name of each task id.
            demo_noisy: Which demonstrations carry a corrupted output.
            weights: Weight vector of each prompt's function.
        """
        b, n_slot, d = x.shape
        pairs = torch.zeros(b, n_slot, 2, d, dtype=x.dtype)
        pairs[:, :, 0] = x
        pairs[:, :, 1, 0] = y
        mask = torch.arange(2 * n_slot)[None, :] < 2 * (n_shots + 1)[:, None]
        slot = torch.arange(n_slot - 1)[None, :]
        is_demo = slot < n_shots[:, None]
        demo_pos = torch.where(is_demo, 2 * slot, -1)
        return cls(
            inputs=torch.where(mask[..., None], pairs.flatten(1, 2), 0.0),
            attention_mask=mask.long(),
            answer_pos=2 * n_shots,
            answers=y[torch.arange(b), n_shots][:, None],
            task_ids=task_ids,
            task_names=task_names,
            n_shots=n_shots,
            demo_start=demo_pos,
            demo_answer_pos=demo_pos.clone(),
            demo_answer_end=torch.where(is_demo, demo_pos + 2, -1),
            demo_noisy=demo_noisy & is_demo,
            query_start=2 * n_shots,
            weights=weights,
        )

    def _outputs_after(self, positions: Int[Tensor, "*shape"]) -> Float[Tensor, "*shape d_out"]:
        """The first ``d_out`` coordinates of the vector right after each position (per prompt row)."""
        rows = torch.arange(len(self), device=self.inputs.device).view(-1, *([1] * (positions.ndim - 1)))
        cols = (positions + 1).clamp(0, self.inputs.shape[1] - 1)
        return self.inputs[rows, cols, : self.d_out]

    @property
    def d_in(self) -> int:
        """Width of the input vectors."""
        return self.inputs.shape[-1]

    @property
    def d_out(self) -> int:
        """Width of the outputs (1 for scalar regression)."""
        return self.answers.shape[-1]

    @property
    def n_answer_tokens(self) -> int:
        """Output positions read per prompt: always 1 (``y_q`` is predicted at ``answer_pos``)."""
        return 1

    @property
    def answer_lengths(self) -> Int[Tensor, " batch"]:
        """Output positions read per prompt, per prompt: all 1."""
        return torch.ones(len(self), dtype=torch.long, device=self.inputs.device)

    @property
    def demo_answers(self) -> Float[Tensor, "batch max_shots d_out"]:
        """Each demonstration's output ``y_j`` (zeros beyond ``n_shots``): the training target at ``x_j``."""
        is_demo = (self.demo_answer_pos >= 0)[..., None]
        return torch.where(is_demo, self._outputs_after(self.demo_answer_pos), 0.0)

    def select(self, indices: Int[Tensor, " n"] | Bool[Tensor, " n"] | Sequence[int] | slice) -> RegressionBatch:
        """A sub-batch of the given prompts, trimmed to its longest prompt; task ids keep their names."""
        idx = self._row_indices(indices)
        n_pos = int(self.lengths[idx].max()) if idx.numel() else 0
        return self._select_rows(idx, n_pos, answers=self.answers[idx], weights=self.weights[idx])

    def zero_shot(self) -> RegressionBatch:
        """The query-only twin ``x_q, y_q``: same queries, answers, task ids and weights, no demonstrations."""
        new_len = self.lengths - self.query_start
        pos = torch.arange(int(new_len.max()) if len(self) else 0, device=self.inputs.device)[None, :]
        mask = pos < new_len[:, None]
        src = torch.where(mask, self.query_start[:, None] + pos, 0)
        rows = torch.arange(len(self), device=self.inputs.device)[:, None]
        inputs = torch.where(mask[..., None], self.inputs[rows, src], 0.0)
        return self._without_demonstrations(
            inputs=inputs,
            attention_mask=mask.to(self.attention_mask.dtype),
            answer_pos=self.answer_pos - self.query_start,
            query_start=torch.zeros_like(self.query_start),
        )
