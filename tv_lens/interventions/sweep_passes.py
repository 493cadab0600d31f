"""The passes of a sweep: cells stacked on the batch dimension or sharing a prefix, and the tally of their scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from tv_lens.errors import InterventionNotAppliedError
from tv_lens.interventions.cells import AlignedPrompts, Cell, Score, Sweep
from tv_lens.interventions.engine import run_with_interventions
from tv_lens.interventions.knockouts import HiddenKeysError
from tv_lens.interventions.masking import BlockedKeysPrecisionError, WindowedRowError
from tv_lens.interventions.specs import Intervention
from tv_lens.models.adapter import ModelAdapter
from tv_lens.models.row_logits import logits_at
from tv_lens.models.running import attached_hooks
from tv_lens.positions import (
    answer_columns,
    as_positions,
)

__all__ = [
    "Done",
    "SweepBatch",
    "Tally",
    "clean_pass",
    "copies_per_row",
    "run_shared",
    "run_stacked",
    "stack_groups",
    "writes_after_prefix",
]


@dataclass(frozen=True)
class SweepBatch:
    """Prompts of one pass (aligned, cut to their last answer token) and how their outputs are scored.

    ``n_answer`` is the answer columns every output has (the sweep's longest answer); ``lengths`` each
    prompt's own answer tokens.
    """

    adapter: ModelAdapter
    inputs: Tensor
    answer_pos: Tensor
    lengths: Tensor
    index: Tensor
    n_answer: int
    score: Score

    def part(self, rows: Tensor) -> SweepBatch:
        """The prompts ``rows`` of this batch, cut after their own last answer token."""
        width = int((self.answer_pos + self.lengths)[rows].max())
        inputs = self.inputs[rows.to(self.inputs.device), :width]
        return replace(
            self, inputs=inputs, answer_pos=self.answer_pos[rows], lengths=self.lengths[rows], index=self.index[rows]
        )

    def columns(self) -> Tensor:
        """Each prompt's answer columns ``[prompt, n_answer]`` (see :func:`~tv_lens.positions.answer_columns`)."""
        return answer_columns(self.answer_pos, self.lengths, self.n_answer)


Done = list[tuple[list[int], Tensor, list[list[int]]]]
"""Cells run together: (cell ids, output rows ``[cell, prompt, n_answer, d_vocab]`` (may be a strided view),
writes per cell)."""


class Tally:
    """Scores and write counts of a sweep, gathered pass by pass."""

    def __init__(self, cells: Sequence[Cell]) -> None:
        self.cells = cells
        self.clean_parts: list[tuple[Tensor, Tensor]] = []
        self.cell_parts: list[tuple[Tensor, list[int], Tensor]] = []
        self.writes = [[0] * len(cell.interventions) for cell in cells]
        self.n_passes = 0

    def clean(self, index: Tensor, scored: Tensor) -> None:
        """Keep the scores of the unpatched pass over prompts ``index``."""
        self.clean_parts.append((index, scored))
        self.n_passes += 1

    def add(self, batch: SweepBatch, done: Done) -> None:
        """Score the cells run together on ``batch`` and add up their writes."""
        for cell_ids, out, counts in done:
            # one cell at a time: scoring's temporaries (log-softmax) stay the size of one cell's rows
            scored = torch.stack([batch.score(out[j], batch.index) for j in range(len(cell_ids))])
            self.cell_parts.append((batch.index, cell_ids, scored))
            for c, cell_counts in zip(cell_ids, counts, strict=True):
                self.writes[c] = [a + b for a, b in zip(self.writes[c], cell_counts, strict=True)]
            self.n_passes += 1

    def sweep(self, n: int, rows_per_pass: int) -> Sweep:
        """The scores of every cell on all ``n`` prompts (every intervention must have written to each)."""
        _check_writes(self.cells, self.writes, n)
        clean = _assemble_clean(self.clean_parts, n)
        cells = _assemble_cells(self.cell_parts, clean, len(self.cells))
        return Sweep(clean, cells, _tuples(self.writes), self.n_passes, rows_per_pass)


def writes_after_prefix(cell: Cell, prompts: AlignedPrompts) -> bool:
    """Whether every intervention of ``cell`` writes only at the answer positions (it leaves the prefix clean).

    A knockout never does: the keys it blocks lie in the prefix, which a shared row holds once for every cell.
    """
    for intervention in cell.interventions:
        if intervention.kind == "knockout":
            return False
        if isinstance(intervention.pos, str):
            if intervention.pos != "answer":
                return False
            continue
        offset = as_positions(intervention.pos, len(prompts), "pos") - prompts.answer_pos
        if bool(((offset < 0) | (offset >= prompts.answer_lengths)).any()):
            return False
    return True


def copies_per_row(adapter: ModelAdapter, answer_pos: Tensor, n_answer: int, n_cells: int) -> int:
    """Cells whose answer positions fit in one row after the longest prefix, within the model's context."""
    return min(n_cells, (adapter.n_ctx - int(answer_pos.max())) // n_answer)


def run_shared(
    batch: SweepBatch, cells: Sequence[Cell], group: list[int], start: int, residual: Tensor, n_prompts: int
) -> Done | None:
    """One pass over rows that hold each prompt's prefix once and one copy of its answer positions per cell.

    Copy ``j`` occupies columns ``a + j * n .. a + (j + 1) * n - 1`` (``a``: the prompt's answer position,
    ``n``: answer tokens) and attends to the prefix and to itself only. None when blocked keys would be
    imprecise on this model, or its sliding window would hide the prefix from a copy packed far from it.
    """
    k, n = len(group), batch.n_answer
    answer_pos = batch.answer_pos
    shared = [cells[c] for c in group]
    width = int(answer_pos.max()) + k * n
    columns = torch.arange(width)[None, :]
    offset = columns - answer_pos[:, None]
    # a prompt with fewer answer tokens than n fills the rest of each copy with its last one (never scored)
    within = torch.minimum(offset.clamp(min=0) % n, batch.lengths[:, None] - 1)
    source = torch.where(offset < 0, columns, answer_pos[:, None] + within)
    copy = torch.where(offset < 0, -1, offset // n)
    blocked = (copy[:, :, None] >= 0) & (copy[:, None, :] >= 0) & (copy[:, :, None] != copy[:, None, :])
    gather = source.to(residual.device)[:, :, None].expand(-1, -1, residual.shape[-1])
    interventions: list[Intervention] = []
    for j, cell in enumerate(shared):
        interventions.extend(_for_shared_copy(i, batch.index, answer_pos, j * n, n_prompts) for i in cell.interventions)
    try:
        run = run_with_interventions(
            batch.adapter,
            residual.gather(1, gather),
            answer_pos,
            interventions,
            n_answer_tokens=k * n,
            residual_layer=start,
            blocked_keys=blocked,
        )
    except (BlockedKeysPrecisionError, WindowedRowError):
        return None
    logits = run.logits.view(len(answer_pos), k, n, -1).transpose(0, 1)  # [cell, prompt, n, d_vocab], no copy
    if bool((batch.lengths < n).any()):  # a shorter answer repeats its last column, as a separate run gives it
        own = answer_columns(torch.zeros_like(batch.lengths), batch.lengths, n).to(logits.device)
        rows = torch.arange(len(answer_pos), device=logits.device)[:, None]
        logits = logits[:, rows, own]
    return [(group, logits, _split(run.writes, [len(cell.interventions) for cell in shared]))]


def run_stacked(
    batch: SweepBatch,
    cells: Sequence[Cell],
    group: list[int],
    residual: Tensor | None,
    starts: list[int],
    per_pass: int,
) -> Done:
    """``group`` in passes of ``per_pass`` stacked copies, each from the residual entering the group's start."""
    done: Done = []
    for i in range(0, len(group), per_pass):
        part = group[i : i + per_pass]
        done.append((part, *_run_group(batch, [cells[c] for c in part], starts[group[0]], residual)))
    return done


def stack_groups(order: list[int], starts: list[int], per_pass: int) -> list[list[int]]:
    """Cells in passes of at most ``per_pass``; a pass holds cells of one start block only (it starts there)."""
    groups: list[list[int]] = []
    last = None
    for cell, start in zip(order, starts, strict=True):
        if groups and len(groups[-1]) < per_pass and start == last:
            groups[-1].append(cell)
        else:
            groups.append([cell])
        last = start
    return groups


def clean_pass(
    adapter: ModelAdapter, inputs: Tensor, columns: Tensor, blocks: list[int]
) -> tuple[Tensor, dict[int, Tensor]]:
    """Logits of the unpatched prompts at ``columns``, and the residual entering each of ``blocks`` (all positions).

    Each residual is read before the hooks already attached at ``blocks.{b}.hook_resid_pre`` (the user's): a pass
    started from it runs them itself, as the full pass does once.
    """
    residuals: dict[int, Tensor] = {}

    def keep(activation: Tensor, hook: Any, *, block: int) -> None:
        residuals[block] = activation.detach()

    hooks = [(adapter.hook_name("resid_pre", b), partial(keep, block=b)) for b in blocks]
    with torch.no_grad(), attached_hooks(adapter, hooks, prepend=True):
        logits = logits_at(adapter, inputs, columns)
    return logits, residuals


def _run_group(
    batch: SweepBatch, group: list[Cell], start: int, residual: Tensor | None
) -> tuple[Tensor, list[list[int]]]:
    """One engine pass over ``len(group)`` copies of the prompts, cell ``j`` writing to copy ``j``.

    Returns the output rows ``[cell, prompt, n_answer, d_vocab]`` and the writes per cell.
    """
    n, k = len(batch.index), len(group)
    interventions: list[Intervention] = []
    given: list[Intervention] = []  # the cell's own intervention behind each of its copy's
    for j, cell in enumerate(group):
        rows = torch.arange(j * n, (j + 1) * n)
        interventions.extend(_for_copy(i, batch.index, rows, k) for i in cell.interventions)
        given.extend(cell.interventions)
    inputs = batch.inputs
    stacked_inputs = inputs.repeat(k, *([1] * (inputs.ndim - 1)))
    residual = residual if start > 0 else None
    every_token = torch.ones(stacked_inputs.shape[:2], dtype=torch.long)  # aligned: no padding before a prompt
    try:
        run = run_with_interventions(
            batch.adapter,
            stacked_inputs,
            batch.answer_pos.repeat(k),
            interventions,
            attention_mask=every_token,
            n_answer_tokens=batch.lengths.repeat(k),
            clean_residual=None if residual is None else residual[:, : inputs.shape[1]].repeat(k, 1, 1),
            clean_residual_layer=None if residual is None else start,
        )
    except HiddenKeysError as error:  # name the prompt by its index in the sweep's prompts, the cell's knockout
        knockout = given[next(i for i, copy in enumerate(interventions) if copy is error.intervention)]
        raise HiddenKeysError(knockout, int(batch.index[error.prompt % n]), error.position) from None
    # every output has the sweep's n_answer columns; shorter answers repeat their last one
    logits = run.logits
    if logits.shape[1] != batch.n_answer:
        logits = logits[:, torch.arange(batch.n_answer).clamp(max=logits.shape[1] - 1).to(logits.device)]
    return logits.view(k, n, *logits.shape[1:]), _split(run.writes, [len(cell.interventions) for cell in group])


def _split(writes: tuple[int, ...], sizes: list[int]) -> list[list[int]]:
    """Per-intervention write counts of one run, split per cell."""
    counts, offset = [], 0
    for size in sizes:
        counts.append(list(writes[offset : offset + size]))
        offset += size
    return counts


def _for_shared_copy(
    intervention: Intervention, index: Tensor, answer_pos: Tensor, shift: int, n_prompts: int
) -> Intervention:
    """``intervention`` for the prompts ``index``, moved ``shift`` columns right (its copy of the answer positions)."""
    values, pos = _values_of(intervention, index), intervention.pos
    positions = answer_pos if isinstance(pos, str) else as_positions(pos, n_prompts, "pos")[index]
    return replace(intervention, values=values, pos=positions + shift, rows=None)


def _for_copy(intervention: Intervention, index: Tensor, rows: Tensor, k: int) -> Intervention:
    """``intervention`` restricted to the prompts ``index`` of one stacked copy (its rows ``rows``)."""
    values, pos = _values_of(intervention, index), intervention.pos
    if isinstance(pos, Tensor) or (not isinstance(pos, (str, int))):
        per_prompt = torch.as_tensor(pos)
        # one position (a 0-d tensor) and a knockout's query mask [pos] fit every prompt
        if (per_prompt.ndim == 1 and per_prompt.dtype != torch.bool) or per_prompt.ndim == 2:
            pos = per_prompt[index].repeat(k, *([1] * (per_prompt.ndim - 1)))
    return replace(intervention, values=values, pos=pos, rows=rows)


def _values_of(intervention: Intervention, index: Tensor) -> Tensor | None:
    """The values a cell intervention writes into the prompts ``index`` (per-prompt values are selected)."""
    values = intervention.values
    return values[index.to(values.device)] if values is not None and values.ndim == 2 else values


def _check_writes(cells: Sequence[Cell], writes: list[list[int]], n: int) -> None:
    for cell, counts in zip(cells, writes, strict=True):
        for intervention, count in zip(cell.interventions, counts, strict=True):
            if count != n:
                raise InterventionNotAppliedError(
                    f"{intervention} wrote to {count} of {n} prompts; every cell intervention must write to every "
                    "prompt. Check that the model calls its hook point on every forward pass."
                )


def _assemble_clean(parts: list[tuple[Tensor, Tensor]], n: int) -> Tensor:
    first = parts[0][1]
    out = torch.empty((n, *first.shape[1:]), dtype=first.dtype, device=first.device)
    for index, scored in parts:
        out[index.to(out.device)] = scored
    return out


def _assemble_cells(parts: list[tuple[Tensor, list[int], Tensor]], clean: Tensor, n_cells: int) -> Tensor:
    out = torch.empty((n_cells, *clean.shape), dtype=clean.dtype, device=clean.device)
    for index, group, scored in parts:
        cell_index = torch.tensor(group, device=out.device)
        out[cell_index[:, None], index.to(out.device)[None, :]] = scored
    return out


def _tuples(writes: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(counts) for counts in writes)
