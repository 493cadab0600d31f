"""What a sweep runs: aligned prompts, cells of interventions, how outputs are scored, and the :class:`Sweep`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jaxtyping import Int
from torch import Tensor

from tv_lens.interventions.specs import Intervention
from tv_lens.models.adapter import adapt
from tv_lens.positions import (
    AnswerLengths,
    Inputs,
    prepare_prompts,
)

__all__ = ["AlignedPrompts", "Cell", "Score", "Sweep", "align"]


Score = Callable[[Tensor, Tensor], Tensor]
"""``score(logits [rows, n_answer, d_vocab], prompt_index [rows]) -> [rows, *m]``: what a sweep keeps per row."""


@dataclass(frozen=True)
class AlignedPrompts:
    """Prompts starting at column 0 and cut after their last answer token.

    Attributes:
        inputs: Tokens ``[prompt, pos]`` (or residual inputs ``[prompt, pos, d]``).
        answer_pos: Answer position of each prompt in this layout ``[prompt]``.
        answer_lengths: Answer tokens read from each prompt's answer position on ``[prompt]``.
    """

    inputs: Tensor
    answer_pos: Int[Tensor, " prompt"]
    answer_lengths: Int[Tensor, " prompt"]

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def n_answer_tokens(self) -> int:
        """Answer columns read per prompt: the longest answer (shorter ones repeat their last column)."""
        return int(self.answer_lengths.max())

    @property
    def ends(self) -> Int[Tensor, " prompt"]:
        """One past each prompt's last answer token."""
        return self.answer_pos + self.answer_lengths


def align(
    model: Any,
    inputs: Inputs,
    answer_pos: int | Sequence[int] | Tensor,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    n_answer_tokens: AnswerLengths = 1,
) -> AlignedPrompts:
    """Validate prompts (see :func:`tv_lens.positions.prepare_prompts`) and put them in the aligned layout.

    ``n_answer_tokens``: one count for every prompt, or one per prompt (answers of different lengths).
    """
    prepared = prepare_prompts(adapt(model), inputs, answer_pos, attention_mask, n_answer_tokens)
    width = int(prepared.ends.max())
    return AlignedPrompts(prepared.inputs[:, :width], prepared.answer_pos, prepared.answer_lengths)


@dataclass(frozen=True)
class Cell:
    """The interventions of one cell, for every prompt.

    Each intervention is made by :func:`~tv_lens.interventions.replace`, :func:`~tv_lens.interventions.add`
    or :func:`~tv_lens.interventions.ablate_head` with ``rows=None`` (it applies to every prompt), values
    ``[width]`` or ``[prompt, width]`` (one row per prompt) and ``pos`` ``"answer"``, ``"all"``, an int or
    ``[prompt]`` positions in the aligned layout.
    """

    interventions: tuple[Intervention, ...]

    @property
    def start(self) -> int:
        """The lowest block any of the cell's interventions writes to (where a pass may start)."""
        return min((max(i.layer, 0) for i in self.interventions), default=0)


@dataclass(frozen=True)
class Sweep:
    """Scores of a sweep.

    Attributes:
        clean: ``score`` of the unpatched run ``[prompt, *m]``.
        cells: ``score`` of every cell ``[cell, prompt, *m]``.
        writes: Rows each intervention of each cell wrote to, summed over passes (one tuple per cell).
        n_passes: Forward passes run (the clean passes included).
        rows_per_pass: Rows per pass used (smaller than asked for when a pass ran out of memory).
    """

    clean: Tensor
    cells: Tensor
    writes: tuple[tuple[int, ...], ...]
    n_passes: int
    rows_per_pass: int
