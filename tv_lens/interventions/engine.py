"""One engine for every intervention: write to a hook point, per prompt, and check that it happened.

Task-vector patching, task-vector prompting and head ablation are all "write this at that hook for these
prompts at these positions". Each is a small :class:`Intervention` made by :func:`replace`, :func:`add` or
:func:`ablate_head`; :func:`run_with_interventions` runs a batch under a list of them and returns the
model's output at the answer positions.

Guarantees:

- Every intervention counts the prompts it wrote to; one that wrote nothing raises
  :class:`~tv_lens.errors.InterventionNotAppliedError` instead of returning an unchanged result.
- Hooks are attached for the pass only and removed also when an error is raised inside it; hooks the
  user attached before are left alone.
- Positions are per prompt (``"answer"`` = each prompt's own answer position), left- or right-padded.
- Given the clean residual entering block ``l`` and a model whose forward supports ``start_at_layer``, a
  run whose interventions are all at blocks ≥ ``l`` starts there instead of recomputing blocks ``< l``.
- ``blocked_keys`` masks attention on top of the causal mask (through the attention hook points, where the
  model's softmax reads them: :func:`supports_blocked_keys`), so that several continuations of one prefix
  can share a row, each attending to the prefix and to itself only.

>>> from tv_lens.models import ModelConfig, build_model
>>> model = build_model(ModelConfig(d_vocab=16, n_layers=2, d_model=32, n_heads=4, n_ctx=32))
>>> tokens = torch.randint(0, 16, (3, 8))
>>> from tv_lens.interventions import ablate_head, add
>>> run = run_with_interventions(model, tokens, 7, [ablate_head(1, 0), add(0, torch.ones(32))])
>>> run.logits.shape, run.writes
(torch.Size([3, 1, 16]), (3, 3))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.checks import is_int
from tv_lens.errors import (
    InterventionNotAppliedError,
    LayerOutOfRangeError,
    NonFiniteError,
    PositionError,
    ShapeError,
)
from tv_lens.interventions.masking import mask_hooks, validated_blocked_keys
from tv_lens.interventions.specs import Intervention, _check_values
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.block_skipping import supports_block_skipping
from tv_lens.models.memory import fitting
from tv_lens.models.row_logits import logits_at
from tv_lens.positions import (
    AnswerLengths,
    Inputs,
    PreparedPrompts,
    answer_columns,
    as_positions,
    check_batch_size,
    check_tensor_data,
    prepare_prompts,
    prompt_batches,
    tensor_of,
)

__all__ = ["InterventionRun", "WritePlan", "resolve", "run_with_interventions"]


@dataclass(frozen=True)
class InterventionRun:
    """Output of :func:`run_with_interventions`.

    Attributes:
        logits: Model output at ``answer_pos + i`` for ``i < n_answer_tokens``: ``[batch, n_answer, d_out]``.
            With one count per prompt, ``n_answer`` is the largest and a prompt with fewer answer tokens repeats
            the output at its own last one in the columns after it.
        writes: Number of prompts each intervention wrote to, in the order given.
    """

    logits: Float[Tensor, "batch n_answer d_vocab"]
    writes: tuple[int, ...]


@dataclass(frozen=True)
class WritePlan:
    """An intervention resolved against a batch: hook name, target rows, positions and values."""

    intervention: Intervention
    hook_name: str
    block: int
    rows: Tensor  # Bool[batch]
    positions: Tensor | None  # Long[batch] aligned, or None for every position
    values: Tensor  # [width] for every prompt, or [batch, width]


def run_with_interventions(
    model: Any,
    inputs: Inputs,
    answer_pos: int | Sequence[int] | Tensor,
    interventions: Sequence[Intervention],
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    n_answer_tokens: AnswerLengths = 1,
    clean_residual: Float[Tensor, "batch pos d_model"] | None = None,
    clean_residual_layer: int | None = None,
    residual_layer: int | None = None,
    blocked_keys: Bool[Tensor, "batch pos pos"] | None = None,
    batch_size: int | None = None,
) -> InterventionRun:
    """Run ``inputs`` with ``interventions`` applied and return the output at the answer positions.

    Args:
        model: A TransformerLens model.
        inputs: Tokens ``[batch, pos]`` or the residual stream entering block 0.
        answer_pos: Index of the token right before each prompt's answer.
        interventions: What to write where (an empty list gives the clean run).
        attention_mask: ``[batch, pos]``, 1 on real tokens; needed for left-padded prompts.
        n_answer_tokens: Read the output at this many positions from ``answer_pos`` (teacher forcing): one
            int, or one count per prompt ``[batch]`` for answers of different token lengths.
        clean_residual: The unpatched residual entering block ``clean_residual_layer`` (e.g.
            ``model(tokens, stop_at_layer=l)``), in the layout of ``inputs``. Used to skip blocks below
            ``l`` when the model supports ``start_at_layer`` and every intervention is at a block ≥ ``l``.
        clean_residual_layer: The block ``clean_residual`` enters.
        residual_layer: ``inputs`` are the residual stream entering this block (not tokens): the run
            starts there, and every intervention must write at this block or later.
        blocked_keys: ``[batch, pos, pos]``, True where query position ``q`` must not attend to key
            position ``k``, on top of the causal mask. Needs prompts that start at column 0 (right
            padding) and a model whose attention can be masked through hooks
            (:func:`supports_blocked_keys`).
        batch_size: Prompts per forward pass (``None``: all at once).

    Raises:
        InterventionNotAppliedError: An intervention wrote to no prompt.
        ModelNotSupportedError: ``blocked_keys`` for a model whose attention hooks cannot mask it.
        BlockedKeysPrecisionError: Blocked keys took (nearly) all of a query's attention weight, which
            the renormalising mask of some models cannot represent precisely.
    """
    adapter = adapt(model)
    if isinstance(interventions, Intervention):
        raise ShapeError("interventions must be a list of interventions; wrap a single one: [intervention].")
    check_batch_size(batch_size, all_at_once=True)
    residual = residual_layer is not None
    prompts = prepare_prompts(adapter, inputs, answer_pos, attention_mask, n_answer_tokens, residual=residual)
    lengths = prompts.answer_lengths
    n_answer = int(lengths.max())
    plans = [resolve(adapter, prompts, intervention) for intervention in interventions]
    if residual_layer is not None:
        _check_entry(adapter, plans, residual_layer, clean_residual)
        start: tuple[int, Tensor] | None = (residual_layer, prompts.inputs)
    else:
        start = _start_layer(adapter, prompts, plans, clean_residual, clean_residual_layer, attention_mask)
    masking = validated_blocked_keys(adapter, prompts, blocked_keys)
    source = prompts.inputs if start is None else start[1]

    def passes(size: int) -> tuple[Tensor, list[int]]:
        writes = [0] * len(plans)
        outputs: list[Tensor] = []
        batches: list[Tensor] = []
        for index, batch_inputs in prompt_batches(source, prompts.ends, size, adapter.device):
            batches.append(index)
            width = batch_inputs.shape[1]
            hooks = [
                (plan.hook_name, partial(_write, adapter=adapter, plan=plan, index=index, writes=writes, slot=i))
                for i, plan in enumerate(plans)
            ]
            if masking is not None:
                blocked = masking[0][index.to(masking[0].device)][:, :width, :width].to(adapter.device)
                hooks += mask_hooks(adapter, masking[1], blocked, 0 if start is None else start[0])
            columns = answer_columns(prompts.answer_pos[index], lengths[index], n_answer)
            outputs.append(
                logits_at(
                    adapter,
                    batch_inputs,
                    columns,
                    start_at_layer=None if start is None else start[0],
                    hooks=hooks,
                )
            )
        return _in_prompt_order(outputs, batches), writes

    (logits, writes), _ = fitting(passes, batch_size or len(prompts), "batch_size")
    bad = _non_finite_rows(logits)
    if bad:
        raise NonFiniteError(
            f"The model's outputs at the answer positions are NaN or infinite for {bad} prompt(s) under "
            f"{[str(i) for i in interventions] or 'no intervention'}; check the model's weights and the values "
            "written (a huge scale?) with torch.isfinite."
        )
    for plan, count in zip(plans, writes, strict=True):
        if count == 0:
            raise InterventionNotAppliedError(
                f"{plan.intervention} wrote to no prompt: hook {plan.hook_name!r} never ran on a selected "
                "row. Check its rows= selection and that the model calls this hook point in its forward pass."
            )
    return InterventionRun(logits, tuple(writes))


def _in_prompt_order(outputs: list[Tensor], batches: list[Tensor]) -> Tensor:
    """The passes' output rows put back in prompt order, copying them once (a single pass in order: not at all)."""
    order = torch.cat(batches)
    if len(outputs) == 1 and bool((order == torch.arange(len(order))).all()):
        return outputs[0]
    first = outputs[0]
    result = first.new_empty((len(order), *first.shape[1:]))
    for index, output in zip(batches, outputs, strict=True):
        result[index.to(result.device)] = output
    return result


def _non_finite_rows(logits: Float[Tensor, "batch ... d"], rows_per_check: int = 64) -> int:
    """Prompts whose ``logits`` hold a NaN or infinity, checked a few output rows at a time (small temporaries)."""
    flat = logits.reshape(-1, logits.shape[-1])
    finite = torch.cat([torch.isfinite(part).all(-1) for part in flat.split(rows_per_check)])
    return int((~finite).view(len(logits), -1).any(-1).sum())


def resolve(adapter: ModelAdapter, prompts: PreparedPrompts, intervention: Intervention) -> WritePlan:
    """Check an intervention against the model and batch; expand rows, positions and values per prompt."""
    if not isinstance(intervention, Intervention):
        raise ShapeError(
            f"interventions must be made by replace(), add() or ablate_head(), got {type(intervention).__name__}."
        )
    n_prompts = len(prompts)
    if intervention.kind not in ("replace", "add", "ablate_head"):
        raise ShapeError(
            f"Unknown intervention kind {intervention.kind!r}; make interventions with replace(), add() or "
            "ablate_head()."
        )
    head_site = intervention.site == "attn.hook_z"
    if head_site != (intervention.kind == "ablate_head") or (intervention.head is None) == head_site:
        raise ShapeError(
            f"{intervention}: head ablations write at site 'attn.hook_z' with a head index, replace() and add() at a "
            "residual site without one; make interventions with replace(), add() or ablate_head()."
        )
    hook_name = adapter.hook_name(intervention.site, intervention.layer)
    adapter.hook_point(hook_name)
    if intervention.head is not None and not is_int(intervention.head):
        raise LayerOutOfRangeError(
            f"Head must be an int index, got {intervention.head!r} ({type(intervention.head).__name__}); use a head "
            f"in [0, {adapter.n_heads - 1}], e.g. ablate_head(layer, 0)."
        )
    if intervention.head is not None and not 0 <= intervention.head < adapter.n_heads:
        raise LayerOutOfRangeError(
            f"Head {intervention.head} is out of range: blocks have {adapter.n_heads} heads, so use a head in "
            f"[0, {adapter.n_heads - 1}]."
        )
    selected = torch.arange(n_prompts)
    if intervention.rows is not None:
        selected = _selected_rows(intervention, n_prompts)
        if selected.numel() and (int(selected.min()) < -n_prompts or int(selected.max()) >= n_prompts):
            raise PositionError(f"rows= selects prompts outside the batch of {n_prompts}: {selected.tolist()}.")
        selected = selected % n_prompts
        if len(selected.unique()) != len(selected):
            raise PositionError(f"rows= selects a prompt twice: {selected.tolist()}; give each prompt once.")
    rows = torch.zeros(n_prompts, dtype=torch.bool)
    rows[selected] = True
    positions = _positions(prompts, intervention)
    values = _values(adapter, intervention, selected, n_prompts)
    block = max(intervention.layer, 0)
    return WritePlan(intervention, hook_name, block, rows, positions, values)


def _selected_rows(intervention: Intervention, n_prompts: int) -> Tensor:
    """``rows=`` as prompt indices: integer indices, or a boolean mask with one entry per prompt."""
    rows = tensor_of(intervention.rows, f"{intervention}: rows=", "prompt indices or a boolean mask over prompts")
    check_tensor_data(rows, f"{intervention}: rows=")
    if rows.numel() == 0:  # an empty list (no prompt selected) is read as no index, whatever its dtype
        return torch.zeros(0, dtype=torch.long)
    if rows.dtype == torch.bool:
        if rows.shape != (n_prompts,):
            raise PositionError(
                f"{intervention}: a boolean rows= mask needs one entry per prompt ({n_prompts}), got shape "
                f"{tuple(rows.shape)}; or pass prompt indices."
            )
        return rows.nonzero().flatten().cpu()
    if rows.is_floating_point() or rows.is_complex() or rows.ndim > 1:
        raise PositionError(
            f"{intervention}: rows= must be integer prompt indices (or a boolean mask over prompts), got "
            f"{rows.dtype} of shape {tuple(rows.shape)}."
        )
    return rows.long().reshape(-1).cpu()


def _positions(prompts: PreparedPrompts, intervention: Intervention) -> Tensor | None:
    pos = intervention.pos
    if isinstance(pos, str):
        if pos not in ("answer", "all"):
            raise PositionError(f"pos must be 'answer', 'all', an int or one int per prompt, got {pos!r}.")
        return prompts.answer_pos.clone() if pos == "answer" else None
    positions = prompts.to_aligned(as_positions(pos, len(prompts), "pos"))
    bad = (positions < 0) | (positions >= prompts.ends)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise PositionError(
            f"{intervention} writes at position {int(positions[row] + prompts.shift[row])} of prompt {row}, "
            "which is outside the prompt or after its answer position (a causal model's answer cannot see "
            "it). Use a position at or before answer_pos."
        )
    return positions


def _values(adapter: ModelAdapter, intervention: Intervention, selected: Tensor, n_prompts: int) -> Tensor:
    """Values as ``[width]`` (every prompt) or ``[batch, width]`` (row ``selected[i]`` gets ``values[i]``)."""
    head_site = intervention.site == "attn.hook_z"
    width, name = (adapter.d_head, "d_head") if head_site else (adapter.d_model, "d_model")
    values = intervention.values
    if values is None:  # zero ablation
        return torch.zeros(width, device=adapter.device, dtype=adapter.dtype)
    _check_values(values, str(intervention))
    n_rows = len(selected)
    if values.shape[-1:] != (width,) or values.ndim > 2 or (values.ndim == 2 and values.shape[0] != n_rows):
        raise ShapeError(
            f"{intervention} got values of shape {tuple(values.shape)}; expected [{name}={width}] for every "
            f"prompt or [{n_rows}, {width}] for each selected prompt."
        )
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteError(f"{intervention} got NaN or infinite values; pass a finite vector.")
    values = values.to(adapter.device, adapter.dtype)
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteError(
            f"{intervention} got values too large for the model's dtype {adapter.dtype} (they overflow to infinity "
            f"when cast to it, up to {torch.finfo(adapter.dtype).max:.3g}); pass a vector within that range."
        )
    if values.ndim == 1:
        return values
    full = torch.zeros(n_prompts, width, device=values.device, dtype=values.dtype)
    return full.index_copy(0, selected.to(values.device), values)


def _start_layer(
    adapter: ModelAdapter,
    prompts: PreparedPrompts,
    plans: list[WritePlan],
    clean_residual: Tensor | None,
    layer: int | None,
    attention_mask: Tensor | None,
) -> tuple[int, Tensor] | None:
    """(block, aligned residual) to start from, when that is possible and saves work; else None."""
    if clean_residual is None:
        return None
    if layer is None:
        raise ShapeError("clean_residual needs clean_residual_layer: the block whose input it is.")
    adapter.check_layer(layer)
    if clean_residual.shape[:2] != prompts.inputs.shape[:2]:
        raise ShapeError(
            f"clean_residual must be [batch, pos, d_model] like the inputs {tuple(prompts.inputs.shape[:2])}, "
            f"got {tuple(clean_residual.shape)}."
        )
    can_start = adapter.supports_start_at_layer or supports_block_skipping(adapter)
    if not can_start or layer == 0 or any(plan.block < layer for plan in plans):
        return None
    aligned = prepare_prompts(
        adapter, clean_residual, prompts.answer_pos + prompts.shift, attention_mask, residual=True
    )
    return layer, aligned.inputs


def _check_entry(adapter: ModelAdapter, plans: list[WritePlan], layer: int, clean_residual: Tensor | None) -> None:
    """Inputs that are the residual entering block ``layer``: no intervention may write below it."""
    adapter.check_layer(layer)
    if clean_residual is not None:
        raise ShapeError("Give residual_layer (the inputs are a residual) or clean_residual, not both.")
    early = [plan.intervention for plan in plans if plan.block < layer]
    if early:
        raise LayerOutOfRangeError(
            f"{early[0]} writes before block {layer}, where the residual inputs enter; write at block "
            f">= {layer} or pass the tokens instead."
        )


def _write(
    activation: Tensor,
    hook: Any,
    *,
    adapter: ModelAdapter,
    plan: WritePlan,
    index: Tensor,
    writes: list[int],
    slot: int,
) -> Tensor:
    """Hook body: apply ``plan`` to this batch's activation (out of place, so gradients flow)."""
    if plan.intervention.kind == "ablate_head":
        adapter.check_head_outputs(activation, hook.name)
    device = activation.device
    local = plan.rows[index].nonzero()[:, 0].to(device)
    writes[slot] += len(local)
    if not len(local):
        return activation
    source = index.to(device)[local]
    values = plan.values.to(device, activation.dtype)
    new = values if values.ndim == 1 else values[source]
    if plan.positions is None:
        target: tuple[Tensor, ...] = (local,)
        new = new if new.ndim == 1 else new[:, None]
    else:
        target = (local, plan.positions.to(device)[source])
    selected = activation[target]
    if plan.intervention.kind == "ablate_head":
        head = torch.tensor([plan.intervention.head], device=device)
        new = selected.index_copy(-2, head, _broadcast_head(new, selected))
    accumulate = plan.intervention.kind == "add"
    return activation.index_put(target, new.expand_as(selected), accumulate=accumulate)


def _broadcast_head(new: Tensor, selected: Tensor) -> Tensor:
    """Values for one head, shaped like ``selected[..., head:head+1, :]``."""
    return new.unsqueeze(-2).expand(*selected.shape[:-2], 1, selected.shape[-1])
