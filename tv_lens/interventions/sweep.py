"""Many intervention cells in one forward pass: copies of the prompts stacked on the batch dimension.

A causal sweep runs the same prompts under many different interventions: one cell per (layer, target
task) for task-vector patching, per layer for task-vector prompting, per head for head ablation. Rows of
a batch never interact in a transformer, so instead of one forward pass per cell, :func:`run_sweep`
repeats the prompts once per cell along the batch dimension and gives every intervention of cell ``j``
``rows=`` the ``j``-th copy. One pass of the intervention engine
(:func:`tv_lens.interventions.run_with_interventions`) then evaluates many cells, each equal to a
separate run of that cell up to float rounding.

More savings, all exact:

- Prompts are aligned (left padding removed) and cut after their last answer position once; batches of
  prompts are formed by length, so padding columns are never computed.
- Where the model's forward really skips the blocks below ``start_at_layer``, cells whose interventions
  all write at blocks ``>= l`` run from the clean residual entering block ``l`` (captured in the one
  clean pass that also gives the unpatched outputs) instead of recomputing blocks ``< l``.
- Cells that write only at the answer positions (task-vector patching and prompting) leave every earlier
  position as in the clean run, so they share it: a row holds a prompt's prefix once, followed by one
  copy of its answer positions per cell, and each copy attends to the prefix and to itself only
  (``blocked_keys`` of the intervention engine, where the model's attention hooks allow it). A sweep of
  ``k`` such cells then costs about one pass over ``prefix + k`` positions instead of ``k`` passes over
  the whole prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from tv_lens.errors import InterventionNotAppliedError, ShapeError
from tv_lens.interventions.engine import run_with_interventions
from tv_lens.interventions.masking import BlockedKeysPrecisionError, supports_blocked_keys
from tv_lens.interventions.specs import Intervention
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.block_skipping import supports_block_skipping
from tv_lens.models.exclusive import evaluating
from tv_lens.models.memory import fitting
from tv_lens.models.row_logits import logits_at
from tv_lens.models.running import forward
from tv_lens.positions import (
    AnswerLengths,
    Inputs,
    answer_columns,
    as_positions,
    length_sorted_batches,
    prepare_prompts,
)

__all__ = ["AlignedPrompts", "Cell", "Score", "Sweep", "align", "run_sweep", "start_skips_blocks"]

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


def run_sweep(
    model: Any,
    prompts: AlignedPrompts,
    cells: Sequence[Cell],
    score: Score,
    *,
    rows_per_pass: int = 512,
    progress: bool = False,
    desc: str = "sweep",
) -> Sweep:
    """Run the clean prompts once and every cell, several cells per forward pass.

    Args:
        model: A TransformerLens model.
        prompts: Aligned prompts (:func:`align`).
        cells: The cells; each is run on every prompt.
        score: Reduces the output rows of a run to what is kept per prompt.
        rows_per_pass: Rows (prompt copies) per forward pass; cells per pass = rows_per_pass // prompts
            per pass (at least one). A pass of cells sharing their prompts' prefix holds as many
            positions as ``rows_per_pass`` rows of the prompts would.
        progress: Show a progress bar over cells.
        desc: Label of the progress bar.

    Raises:
        InterventionNotAppliedError: An intervention wrote to fewer rows than it was given.
        OutOfMemoryError: Not even one row per pass fits (smaller sizes are tried first, see
            :func:`tv_lens.models.memory.fitting`).
    """
    if isinstance(rows_per_pass, bool) or not isinstance(rows_per_pass, int) or rows_per_pass < 1:
        raise ShapeError(f"rows_per_pass must be an int >= 1, got {rows_per_pass!r}.")
    adapter = adapt(model)
    with evaluating(adapter.model):
        sweep, used = fitting(
            lambda size: _sweep(adapter, prompts, cells, score, size, progress, desc), rows_per_pass, "rows_per_pass"
        )
    return replace(sweep, rows_per_pass=used)


def _sweep(
    adapter: ModelAdapter,
    prompts: AlignedPrompts,
    cells: Sequence[Cell],
    score: Score,
    rows_per_pass: int,
    progress: bool,
    desc: str,
) -> Sweep:
    """One attempt at :func:`run_sweep` with ``rows_per_pass`` rows per pass."""
    n = len(prompts)
    chunk = min(n, rows_per_pass)
    per_pass = max(1, rows_per_pass // chunk)
    skips = start_skips_blocks(adapter)
    starts = [cell.start if skips else 0 for cell in cells]
    order = sorted(range(len(cells)), key=lambda c: starts[c])
    shared = [c for c in order if _writes_after_prefix(cells[c], prompts)] if order else []
    if shared and not supports_blocked_keys(adapter):
        shared = []
    chunks = length_sorted_batches(prompts.ends, chunk)
    tally = _Tally(cells)
    n_answer = prompts.n_answer_tokens
    total = len(chunks) * (1 + len(cells))
    with torch.no_grad(), tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for index in chunks:
            width = int(prompts.ends[index].max())
            inputs = prompts.inputs[index.to(prompts.inputs.device), :width].to(adapter.device)
            lengths = prompts.answer_lengths[index]
            batch = _Batch(adapter, inputs, prompts.answer_pos[index], lengths, index, n_answer, score)
            per_row = _copies_per_row(adapter, batch.answer_pos, n_answer, len(shared))
            packed = [shared[i : i + per_row] for i in range(0, len(shared), per_row)] if per_row > 1 else []
            rest = [c for c in order if not any(c in group for group in packed)]
            stacked = _groups(rest, [starts[c] for c in rest], per_pass)
            blocks = {starts[group[0]] for group in packed} | ({starts[group[0]] for group in stacked} - {0})
            logits, residuals = _clean_pass(adapter, inputs, batch.columns(), sorted(blocks))
            tally.clean(index, score(logits, index))
            bar.update()
            # a block whose entering residual was never seen (its hook never ran) cannot share a prefix
            stacked += [group for group in packed if starts[group[0]] not in residuals]
            packed = [group for group in packed if starts[group[0]] in residuals]
            for group in packed:
                # rows of prefix + one answer copy per cell, as many positions per pass as rows_per_pass rows
                rows = max(1, rows_per_pass * width // (int(batch.answer_pos.max()) + len(group) * n_answer))
                for part in torch.arange(len(index)).split(rows):
                    sub = batch.part(part)
                    residual = residuals[starts[group[0]]][part.to(inputs.device)]
                    done = _run_shared(sub, cells, group, starts[group[0]], residual, n)
                    if done is None:  # blocked keys would be imprecise on this model: separate rows instead
                        done = _run_stacked(sub, cells, group, residual, starts, per_pass)
                    tally.add(sub, done)
                    del done  # its logits go before the next pass makes its own
                bar.update(len(group))
            for group in stacked:
                start = starts[group[0]]
                tally.add(batch, _run_stacked(batch, cells, group, residuals.get(start), starts, len(group)))
                bar.update(len(group))
    return tally.sweep(n, rows_per_pass)


def start_skips_blocks(model: Any) -> bool:
    """Whether ``model(residual, start_at_layer=l)`` really skips blocks below ``l`` (detected once per model).

    tv_lens skips them itself where it can (:mod:`tv_lens.models.block_skipping`); otherwise it relies on the
    model's ``start_at_layer``, which TransformerLens 4.3's bridge accepts but implements by running the blocks
    below anyway and discarding their output (no saving).
    """
    return adapt(model).capability("start_skips_blocks", _start_skips_blocks)


def _start_skips_blocks(adapter: ModelAdapter) -> bool:
    if adapter.n_layers < 2:
        return False
    if supports_block_skipping(adapter):
        return True
    if not adapter.supports_start_at_layer:
        return False
    calls: list[int] = []
    probe = torch.zeros(1, 1, adapter.d_model, device=adapter.device, dtype=adapter.dtype)
    hooks = [(adapter.hook_name("resid_pre", 0), lambda activation, hook: calls.append(1))]
    forward(adapter, probe, start_at_layer=adapter.n_layers - 1, hooks=hooks)
    return not calls


@dataclass(frozen=True)
class _Batch:
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

    def part(self, rows: Tensor) -> _Batch:
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


class _Tally:
    """Scores and write counts of a sweep, gathered pass by pass."""

    def __init__(self, cells: Sequence[Cell]) -> None:
        self.cells = cells
        self.clean_parts: list[tuple[Tensor, Tensor]] = []
        self.cell_parts: list[tuple[Tensor, list[int], Tensor]] = []
        self.writes = [[0] * len(cell.interventions) for cell in cells]
        self.n_passes = 0

    def clean(self, index: Tensor, scored: Tensor) -> None:
        self.clean_parts.append((index, scored))
        self.n_passes += 1

    def add(self, batch: _Batch, done: Done) -> None:
        for cell_ids, out, counts in done:
            # one cell at a time: scoring's temporaries (log-softmax) stay the size of one cell's rows
            scored = torch.stack([batch.score(out[j], batch.index) for j in range(len(cell_ids))])
            self.cell_parts.append((batch.index, cell_ids, scored))
            for c, cell_counts in zip(cell_ids, counts, strict=True):
                self.writes[c] = [a + b for a, b in zip(self.writes[c], cell_counts, strict=True)]
            self.n_passes += 1

    def sweep(self, n: int, rows_per_pass: int) -> Sweep:
        _check_writes(self.cells, self.writes, n)
        clean = _assemble_clean(self.clean_parts, n)
        cells = _assemble_cells(self.cell_parts, clean, len(self.cells))
        return Sweep(clean, cells, _tuples(self.writes), self.n_passes, rows_per_pass)


def _writes_after_prefix(cell: Cell, prompts: AlignedPrompts) -> bool:
    """Whether every intervention of ``cell`` writes only at the answer positions (it leaves the prefix clean)."""
    for intervention in cell.interventions:
        if isinstance(intervention.pos, str):
            if intervention.pos != "answer":
                return False
            continue
        offset = as_positions(intervention.pos, len(prompts), "pos") - prompts.answer_pos
        if bool(((offset < 0) | (offset >= prompts.answer_lengths)).any()):
            return False
    return True


def _copies_per_row(adapter: ModelAdapter, answer_pos: Tensor, n_answer: int, n_cells: int) -> int:
    """Cells whose answer positions fit in one row after the longest prefix, within the model's context."""
    return min(n_cells, (adapter.n_ctx - int(answer_pos.max())) // n_answer)


def _run_shared(
    batch: _Batch, cells: Sequence[Cell], group: list[int], start: int, residual: Tensor, n_prompts: int
) -> Done | None:
    """One pass over rows that hold each prompt's prefix once and one copy of its answer positions per cell.

    Copy ``j`` occupies columns ``a + j * n .. a + (j + 1) * n - 1`` (``a``: the prompt's answer position,
    ``n``: answer tokens) and attends to the prefix and to itself only. None when blocked keys would be
    imprecise on this model.
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
    except BlockedKeysPrecisionError:
        return None
    logits = run.logits.view(len(answer_pos), k, n, -1).transpose(0, 1)  # [cell, prompt, n, d_vocab], no copy
    return [(group, logits, _split(run.writes, [len(cell.interventions) for cell in shared]))]


def _run_stacked(
    batch: _Batch, cells: Sequence[Cell], group: list[int], residual: Tensor | None, starts: list[int], per_pass: int
) -> Done:
    """``group`` in passes of ``per_pass`` stacked copies, each from the residual entering the group's start."""
    done: Done = []
    for i in range(0, len(group), per_pass):
        part = group[i : i + per_pass]
        done.append((part, *_run_group(batch, [cells[c] for c in part], starts[group[0]], residual)))
    return done


def _groups(order: list[int], starts: list[int], per_pass: int) -> list[list[int]]:
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


def _clean_pass(
    adapter: ModelAdapter, inputs: Tensor, columns: Tensor, blocks: list[int]
) -> tuple[Tensor, dict[int, Tensor]]:
    """Logits of the unpatched prompts at ``columns``, and the residual entering each of ``blocks`` (all positions)."""
    residuals: dict[int, Tensor] = {}

    def keep(activation: Tensor, hook: Any, *, block: int) -> None:
        residuals[block] = activation.detach()

    hooks = [(adapter.hook_name("resid_pre", b), partial(keep, block=b)) for b in blocks]
    with torch.no_grad():
        logits = logits_at(adapter, inputs, columns, hooks=hooks)
    return logits, residuals


def _run_group(batch: _Batch, group: list[Cell], start: int, residual: Tensor | None) -> tuple[Tensor, list[list[int]]]:
    """One engine pass over ``len(group)`` copies of the prompts, cell ``j`` writing to copy ``j``.

    Returns the output rows ``[cell, prompt, n_answer, d_vocab]`` and the writes per cell.
    """
    n, k = len(batch.index), len(group)
    interventions: list[Intervention] = []
    for j, cell in enumerate(group):
        rows = torch.arange(j * n, (j + 1) * n)
        interventions.extend(_for_copy(i, batch.index, rows, k) for i in cell.interventions)
    inputs = batch.inputs
    stacked_inputs = inputs.repeat(k, *([1] * (inputs.ndim - 1)))
    residual = residual if start > 0 else None
    every_token = torch.ones(stacked_inputs.shape[:2], dtype=torch.long)  # aligned: no padding before a prompt
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
    if intervention.rows is not None:
        raise ShapeError("Cell interventions apply to every prompt; build them with rows=None.")
    values = intervention.values
    if values is not None and values.ndim == 2:
        values = values[index.to(values.device)]
    pos = intervention.pos
    positions = answer_pos if isinstance(pos, str) else as_positions(pos, n_prompts, "pos")[index]
    return replace(intervention, values=values, pos=positions + shift, rows=None)


def _for_copy(intervention: Intervention, index: Tensor, rows: Tensor, k: int) -> Intervention:
    """``intervention`` restricted to the prompts ``index`` of one stacked copy (its rows ``rows``)."""
    if intervention.rows is not None:
        raise ShapeError("Cell interventions apply to every prompt; build them with rows=None.")
    values = intervention.values
    if values is not None and values.ndim == 2:
        values = values[index.to(values.device)]
    pos = intervention.pos
    if isinstance(pos, Tensor) or (not isinstance(pos, (str, int))):
        pos = torch.as_tensor(pos)[index].repeat(k)
    return replace(intervention, values=values, pos=pos, rows=rows)


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
