"""``ICLBatch``: a batch of rendered in-context-learning prompts with their labels and boundaries.

Everything downstream (probes, interventions, metrics, training) reads prompts through this one type,
so it carries positions rather than rendering rules: analyses never need to know how a task renders.

Layout of prompt ``i`` (right-padded; ``attention_mask`` is 1 on the first ``lengths[i]`` tokens)::

    [prefix, e.g. BOS] [demo 0] [demo 1] ... [demo n_shots[i]-1] [query ... answer tokens] [pad ...]
                        ^demo_start[i, 0]                         ^query_start[i]

Within the query, ``answer_pos[i]`` is the token right before the first answer token: the position
whose logits predict ``answers[i, 0]`` and whose residual stream is read as the task representation.
The answer tokens follow it (``inputs[i, answer_pos[i] + 1 + k] == answers[i, k]``), so one teacher-forced
pass scores multi-token answers: logits at ``answer_pos + k`` predict ``answers[:, k]``. Each
demonstration has the same structure: ``demo_answer_pos[i, j]`` is the token before its answer and
``demo_answer_end[i, j]`` the token after it (any delimiter up to the next demonstration follows).
Per-demonstration arrays are padded with ``-1`` beyond ``n_shots[i]``.

Answers of different token counts (text tasks) are right-padded with ``-1`` in ``answers``
(``answer_lengths`` counts the real ones); ``inputs`` is then at least ``answer_pos + n_answer_tokens``
columns wide, so reading the output at every answer column stays inside every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tv_lens.checks import is_right_padded
from tv_lens.errors import PositionError, ShapeError
from tv_lens.tasks.prompt_rows import PromptRows

__all__ = ["ICLBatch"]


@dataclass(frozen=True, eq=False)
class ICLBatch(PromptRows):
    """Rendered ICL prompts, their answers, latent task ids and the span of every demonstration.

    Attributes:
        inputs: Token ids, right-padded with ``pad_token``.
        attention_mask: 1 on real tokens, 0 on padding.
        answer_pos: Index of the token right before the query's first answer token.
        answers: The query's answer tokens (one column per answer token; ``-1`` pads shorter answers).
        task_ids: Latent task of each prompt, an index into ``task_names``.
        task_names: Name of every task id (the Null task, when present, is ``"null"``).
        n_shots: Number of demonstrations of each prompt.
        demo_start: First token of each demonstration; ``-1`` beyond ``n_shots``.
        demo_answer_pos: Token right before each demonstration's answer; ``-1`` beyond ``n_shots``.
        demo_answer_end: One past each demonstration's last answer token (a delimiter after the answer, such as a
            newline, lies from there to the next demonstration); ``-1`` beyond ``n_shots``. Keyword-only; not
            given, each answer runs up to the next demonstration (the query after the last).
        demo_noisy: Whether each demonstration's label was corrupted by label noise.
        query_start: First token of the query.
        pad_token: The padding token id.
    """

    inputs: Int[Tensor, "batch pos"]
    answers: Int[Tensor, "batch n_answer"]
    pad_token: int

    def _check_shapes(self) -> None:
        if self.inputs.ndim != 2 or self.inputs.is_floating_point():
            raise ShapeError(
                f"ICLBatch.inputs must be an integer tensor [batch, pos], got dtype {self.inputs.dtype} "
                f"and shape {tuple(self.inputs.shape)}."
            )
        self._check_fields()
        b = self.inputs.shape[0]
        if self.answers.ndim != 2 or self.answers.shape[0] != b or self.answers.shape[1] < 1:
            raise ShapeError(
                f"ICLBatch.answers must have shape [batch={b}, n_answer>=1], got "
                f"{tuple(self.answers.shape)}; use answers[:, None] for single-token answers."
            )

    def _check_positions(self) -> None:
        self._check_demonstrations()
        lengths = self.lengths
        n_answer = self.answers.shape[-1]
        if not is_right_padded(self.answers):
            raise ShapeError("ICLBatch.answers must hold at least one token id per prompt, right-padded with -1.")
        real = self.answers >= 0
        bad = (self.answer_pos < self.query_start) | (self.answer_pos + real.sum(-1) >= lengths)
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise PositionError(
                f"Prompt {i}: answer_pos={int(self.answer_pos[i])} with {n_answer} answer token(s) must lie "
                f"after query_start={int(self.query_start[i])} and before the end of its "
                f"{int(lengths[i])} real tokens."
            )
        cols = self.answer_pos[:, None] + 1 + torch.arange(n_answer, device=self.inputs.device)
        in_inputs = self.inputs.gather(1, cols.clamp(max=self.inputs.shape[-1] - 1))
        if not torch.equal(torch.where(real, in_inputs, -1), self.answers):
            raise PositionError("ICLBatch.answers must equal the tokens right after answer_pos in inputs.")

    @property
    def n_answer_tokens(self) -> int:
        """Number of answer columns (1 for single-token answers; the longest answer when they differ)."""
        return self.answers.shape[-1]

    @property
    def answer_lengths(self) -> Int[Tensor, " batch"]:
        """Number of real (not ``-1``) answer tokens of each prompt."""
        return (self.answers >= 0).sum(-1)

    @staticmethod
    def _width(lengths: Tensor, answer_pos: Tensor, n_answer: int) -> int:
        """Columns that hold every prompt and ``n_answer`` answer columns after each ``answer_pos``."""
        return max(int(lengths.max()), int((answer_pos + n_answer).max())) if len(lengths) else 0

    def select(self, indices: Int[Tensor, " n"] | Bool[Tensor, " n"] | Sequence[int] | slice) -> ICLBatch:
        """A sub-batch of the given prompts, trimmed to its longest prompt; task ids keep their names.

        Args:
            indices: Prompt indices (tensor, list or slice), or a boolean mask over prompts.
        """
        idx = self._row_indices(indices)
        n_answer = int(self.answer_lengths[idx].max()) if idx.numel() else self.n_answer_tokens
        n_pos = self._width(self.lengths[idx], self.answer_pos[idx], n_answer)
        return self._select_rows(idx, n_pos, answers=self.answers[idx, :n_answer])

    def zero_shot(self) -> ICLBatch:
        """The query-only twin: same queries, answers and task ids, no demonstrations.

        Tokens before the first demonstration (e.g. BOS) are kept; the query and its answer follow them.
        This is the prompt task-vector prompting injects into.
        """
        if len(self) == 0:
            return self
        first = self.prefix_lengths
        prefix = int(first[0])
        if not (first == prefix).all():
            raise PositionError(
                "zero_shot() needs the same number of tokens before the first demonstration (e.g. one BOS) "
                f"in every prompt, got {sorted(set(first.tolist()))}."
            )
        new_len = prefix + self.lengths - self.query_start
        new_answer_pos = self.answer_pos - self.query_start + prefix
        width = self._width(new_len, new_answer_pos, self.n_answer_tokens)
        pos = torch.arange(width, device=self.inputs.device)[None, :]
        src = torch.where(pos < prefix, pos, self.query_start[:, None] + pos - prefix)
        mask = pos < new_len[:, None]
        src = torch.where(mask, src, torch.zeros_like(src))
        inputs = torch.where(mask, self.inputs.gather(1, src), torch.full_like(src, self.pad_token))
        return self._without_demonstrations(
            inputs=inputs,
            attention_mask=mask.to(self.attention_mask.dtype),
            answer_pos=new_answer_pos,
            query_start=torch.full_like(self.query_start, prefix),
        )
