"""Many intervention cells in one forward pass: copies of the prompts stacked on the batch dimension.

A causal sweep runs the same prompts under many different interventions: one cell per (layer, target
task) for task-vector patching, per layer for task-vector prompting, per head for head ablation. Rows of
a batch never interact in a transformer, so instead of one forward pass per cell, :func:`run_sweep`
repeats the prompts once per cell along the batch dimension and gives every intervention of cell ``j``
``rows=`` the ``j``-th copy. One pass of the intervention engine
(:func:`tv_lens.interventions.run_with_interventions`) then evaluates many cells, each equal to a
separate run of that cell up to float rounding.

Two more savings, both exact:

- Prompts are aligned (left padding removed) and cut after their last answer position once; batches of
  prompts are formed by length, so padding columns are never computed.
- Where the model's forward supports ``start_at_layer``, cells whose interventions all write at blocks
  ``>= l`` run from the clean residual entering block ``l`` (captured in the one clean pass that also
  gives the unpatched outputs) instead of recomputing blocks ``< l``.
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
from tv_lens.interventions import Intervention, run_with_interventions
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.running import forward
from tv_lens.positions import Inputs, length_sorted_batches, prepare_prompts

__all__ = ["AlignedPrompts", "Cell", "Score", "Sweep", "align", "run_sweep"]

Score = Callable[[Tensor, Tensor], Tensor]
"""``score(logits [rows, n_answer, d_vocab], prompt_index [rows]) -> [rows, *m]``: what a sweep keeps per row."""


@dataclass(frozen=True)
class AlignedPrompts:
    """Prompts starting at column 0 and cut after their last answer token.

    Attributes:
        inputs: Tokens ``[prompt, pos]`` (or residual inputs ``[prompt, pos, d]``).
        answer_pos: Answer position of each prompt in this layout ``[prompt]``.
        n_answer_tokens: Answer tokens read per prompt.
    """

    inputs: Tensor
    answer_pos: Int[Tensor, " prompt"]
    n_answer_tokens: int = 1

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def align(
    model: Any,
    inputs: Inputs,
    answer_pos: int | Sequence[int] | Tensor,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    n_answer_tokens: int = 1,
) -> AlignedPrompts:
    """Validate prompts (see :func:`tv_lens.positions.prepare_prompts`) and put them in the aligned layout."""
    prepared = prepare_prompts(adapt(model), inputs, answer_pos, attention_mask, n_answer_tokens)
    width = int(prepared.answer_pos.max()) + n_answer_tokens
    return AlignedPrompts(prepared.inputs[:, :width], prepared.answer_pos, n_answer_tokens)


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
    """

    clean: Tensor
    cells: Tensor
    writes: tuple[tuple[int, ...], ...]
    n_passes: int


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
            per pass (at least one).
        progress: Show a progress bar over passes.
        desc: Label of the progress bar.

    Raises:
        InterventionNotAppliedError: An intervention wrote to fewer rows than it was given.
    """
    if isinstance(rows_per_pass, bool) or not isinstance(rows_per_pass, int) or rows_per_pass < 1:
        raise ShapeError(f"rows_per_pass must be an int >= 1, got {rows_per_pass!r}.")
    adapter = adapt(model)
    n = len(prompts)
    chunk = min(n, rows_per_pass)
    per_pass = max(1, rows_per_pass // chunk)
    can_start = adapter.supports_start_at_layer
    order = sorted(range(len(cells)), key=lambda c: cells[c].start if can_start else 0)
    groups = _groups(order, [cells[c].start if can_start else 0 for c in order], per_pass)
    chunks = length_sorted_batches(prompts.answer_pos + prompts.n_answer_tokens, chunk)
    clean_parts: list[tuple[Tensor, Tensor]] = []
    cell_parts: list[tuple[Tensor, list[int], Tensor]] = []
    writes = [[0] * len(cell.interventions) for cell in cells]
    n_passes = 0
    n_answer = prompts.n_answer_tokens
    total = len(chunks) * (1 + len(groups))
    with torch.no_grad(), tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for index in chunks:
            width = int(prompts.answer_pos[index].max()) + n_answer
            inputs = prompts.inputs[index.to(prompts.inputs.device), :width].to(adapter.device)
            answer_pos = prompts.answer_pos[index]
            blocks = sorted({cells[c].start for c in order if cells[c].start > 0}) if can_start else []
            logits, residuals = _clean_pass(adapter, inputs, blocks)
            clean_parts.append((index, score(_answer_rows(logits, answer_pos, n_answer), index)))
            n_passes += 1
            bar.update()
            for group in groups:
                start = min(cells[c].start for c in group)
                out, group_writes = _run_group(
                    adapter, inputs, answer_pos, index, [cells[c] for c in group], start, residuals, n_answer
                )
                k = len(group)
                scored = score(out, index.repeat(k))
                cell_parts.append((index, group, scored.view(k, len(index), *scored.shape[1:])))
                for c, counts in zip(group, group_writes, strict=True):
                    writes[c] = [a + b for a, b in zip(writes[c], counts, strict=True)]
                n_passes += 1
                bar.update()
    _check_writes(cells, writes, n)
    clean = _assemble_clean(clean_parts, n)
    return Sweep(clean, _assemble_cells(cell_parts, clean, len(cells)), _tuples(writes), n_passes)


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


def _clean_pass(adapter: ModelAdapter, inputs: Tensor, blocks: list[int]) -> tuple[Tensor, dict[int, Tensor]]:
    """Logits of the unpatched prompts, and the residual entering each of ``blocks`` (all positions)."""
    residuals: dict[int, Tensor] = {}

    def keep(activation: Tensor, hook: Any, *, block: int) -> None:
        residuals[block] = activation.detach()

    hooks = [(adapter.hook_name("resid_pre", b), partial(keep, block=b)) for b in blocks]
    with torch.no_grad():
        logits = forward(adapter, inputs, hooks=hooks)
    return logits, residuals


def _run_group(
    adapter: ModelAdapter,
    inputs: Tensor,
    answer_pos: Tensor,
    index: Tensor,
    group: list[Cell],
    start: int,
    residuals: dict[int, Tensor],
    n_answer_tokens: int,
) -> tuple[Tensor, list[list[int]]]:
    """One engine pass over ``len(group)`` copies of the prompts, cell ``j`` writing to copy ``j``."""
    n, k = len(index), len(group)
    interventions: list[Intervention] = []
    sizes: list[int] = []
    for j, cell in enumerate(group):
        rows = torch.arange(j * n, (j + 1) * n)
        interventions.extend(_for_copy(i, index, rows, k) for i in cell.interventions)
        sizes.append(len(cell.interventions))
    stacked_inputs = inputs.repeat(k, *([1] * (inputs.ndim - 1)))
    residual = residuals.get(start)
    run = run_with_interventions(
        adapter,
        stacked_inputs,
        answer_pos.repeat(k),
        interventions,
        n_answer_tokens=n_answer_tokens,
        clean_residual=None if residual is None else residual.repeat(k, 1, 1),
        clean_residual_layer=None if residual is None else start,
    )
    counts, offset = [], 0
    for size in sizes:
        counts.append(list(run.writes[offset : offset + size]))
        offset += size
    return run.logits, counts


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


def _answer_rows(logits: Tensor, answer_pos: Tensor, n_answer_tokens: int) -> Tensor:
    columns = (answer_pos[:, None] + torch.arange(n_answer_tokens)).to(logits.device)
    return logits[torch.arange(len(answer_pos), device=logits.device)[:, None], columns]


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
