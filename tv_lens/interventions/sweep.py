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

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm.auto import tqdm

from tv_lens.checks import is_int
from tv_lens.errors import ShapeError
from tv_lens.interventions.cells import AlignedPrompts, Cell, Score, Sweep, align
from tv_lens.interventions.masking import supports_blocked_keys
from tv_lens.interventions.plans import resolve
from tv_lens.interventions.specs import Intervention
from tv_lens.interventions.sweep_passes import (
    SweepBatch,
    Tally,
    clean_pass,
    copies_per_row,
    run_shared,
    run_stacked,
    stack_groups,
    writes_after_prefix,
)
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.block_skipping import supports_block_skipping
from tv_lens.models.exclusive import evaluating
from tv_lens.models.memory import fitting
from tv_lens.models.running import forward
from tv_lens.positions import prepare_prompts, prompt_batches

__all__ = ["AlignedPrompts", "Cell", "Score", "Sweep", "align", "run_sweep", "start_skips_blocks"]


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
        PositionError, ShapeError: An intervention that does not fit the prompts (checked before any pass; the
            error names the prompt by its index in ``prompts``).
        InterventionNotAppliedError: An intervention wrote to fewer rows than it was given.
        OutOfMemoryError: Not even one row per pass fits (smaller sizes are tried first, see
            :func:`tv_lens.models.memory.fitting`).
    """
    if not is_int(rows_per_pass) or rows_per_pass < 1:
        raise ShapeError(f"rows_per_pass must be an int >= 1, got {rows_per_pass!r}.")
    adapter = adapt(model)
    _check_cells(adapter, prompts, cells)
    with evaluating(adapter.model):
        sweep, used = fitting(
            lambda size: _sweep(adapter, prompts, cells, score, size, progress, desc), rows_per_pass, "rows_per_pass"
        )
    return replace(sweep, rows_per_pass=used)


def _check_cells(adapter: ModelAdapter, prompts: AlignedPrompts, cells: Sequence[Cell]) -> None:
    """Check every cell's interventions against all the prompts before any pass.

    A pass holds some of the prompts (and copies of them); checked here, an error names the prompt's index in
    ``prompts`` and comes before any compute.

    Raises:
        ShapeError: An intervention with ``rows=`` (cell interventions apply to every prompt).
        PositionError: A position outside a prompt or after its answer position (and the engine's other checks).
    """
    every_token = torch.ones(prompts.inputs.shape[:2], dtype=torch.long)  # aligned: no padding before a prompt
    prepared = prepare_prompts(adapter, prompts.inputs, prompts.answer_pos, every_token, prompts.answer_lengths)
    distinct = {id(intervention): intervention for cell in cells for intervention in cell.interventions}
    for intervention in distinct.values():
        if isinstance(intervention, Intervention) and intervention.rows is not None:
            raise ShapeError(f"{intervention}: cell interventions apply to every prompt; build them with rows=None.")
        resolve(adapter, prepared, intervention)


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
    shared = [c for c in order if writes_after_prefix(cells[c], prompts)] if order else []
    if shared and not supports_blocked_keys(adapter):
        shared = []
    tally = Tally(cells)
    n_answer = prompts.n_answer_tokens
    n_batches = -(-len(prompts.ends) // chunk)  # the batches prompt_batches gives (none empty)
    total = n_batches * (1 + len(cells))  # a clean pass and the cells per batch
    with torch.no_grad(), tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for index, inputs in prompt_batches(prompts.inputs, prompts.ends, chunk, adapter.device):
            width = inputs.shape[1]
            lengths = prompts.answer_lengths[index]
            batch = SweepBatch(adapter, inputs, prompts.answer_pos[index], lengths, index, n_answer, score)
            per_row = copies_per_row(adapter, batch.answer_pos, n_answer, len(shared))
            packed = [shared[i : i + per_row] for i in range(0, len(shared), per_row)] if per_row > 1 else []
            rest = [c for c in order if not any(c in group for group in packed)]
            stacked = stack_groups(rest, [starts[c] for c in rest], per_pass)
            blocks = {starts[group[0]] for group in packed} | ({starts[group[0]] for group in stacked} - {0})
            logits, residuals = clean_pass(adapter, inputs, batch.columns(), sorted(blocks))
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
                    done = run_shared(sub, cells, group, starts[group[0]], residual, n)
                    if done is None:  # imprecise or windowed on this model: separate rows instead
                        done = run_stacked(sub, cells, group, residual, starts, per_pass)
                    tally.add(sub, done)
                    del done  # its logits go before the next pass makes its own
                bar.update(len(group))
            for group in stacked:
                start = starts[group[0]]
                tally.add(batch, run_stacked(batch, cells, group, residuals.get(start), starts, len(group)))
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
