"""Interventions resolved against a batch of prompts, and the hook body that applies them.

:func:`resolve` checks an :class:`~tv_lens.interventions.specs.Intervention` against the model and the prepared
prompts and expands it to a :class:`WritePlan`: its hook point, the prompts it writes to, the (aligned) position
in each and the values; :func:`apply_plan` is the hook that writes a plan into one batch's activation and counts
the prompts it reached. :mod:`tv_lens.interventions.engine` runs the passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tv_lens.checks import is_int, tensor_of
from tv_lens.errors import LayerOutOfRangeError, NonFiniteError, PositionError, ShapeError
from tv_lens.interventions.knockouts import is_query_mask, knocked_out, knockout_hook_name, knockout_keys, query_mask
from tv_lens.interventions.specs import Intervention, _check_values
from tv_lens.models.adapter import ModelAdapter
from tv_lens.positions import PreparedPrompts, as_positions

__all__ = ["WritePlan", "apply_plan", "resolve"]


@dataclass(frozen=True)
class WritePlan:
    """An intervention resolved against a batch: hook name, target rows, positions and values (a knockout's keys)."""

    intervention: Intervention
    hook_name: str
    block: int
    rows: Tensor  # Bool[batch]
    positions: Tensor | None  # Long[batch] aligned, None for every position; a knockout's may be Bool[batch, pos]
    values: Tensor  # [width] for every prompt, or [batch, width]; a knockout's keys: Bool[batch, pos] aligned
    shift: Tensor  # Long[batch]: each prompt's left padding (aligned column + shift = the position as given)


def resolve(adapter: ModelAdapter, prompts: PreparedPrompts, intervention: Intervention) -> WritePlan:
    """Check an intervention against the model and batch; expand rows, positions and values per prompt."""
    if not isinstance(intervention, Intervention):
        raise ShapeError(
            f"interventions must be made by replace(), add(), ablate_head() or knockout(), got "
            f"{type(intervention).__name__}."
        )
    n_prompts = len(prompts)
    if intervention.kind not in ("replace", "add", "ablate_head", "knockout"):
        raise ShapeError(
            f"Unknown intervention kind {intervention.kind!r}; make interventions with replace(), add(), "
            "ablate_head() or knockout()."
        )
    _check_site(intervention)
    if intervention.kind == "knockout":
        hook_name = knockout_hook_name(adapter, intervention)
    else:
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
    if intervention.kind == "knockout":
        positions = (
            query_mask(prompts, intervention)
            if is_query_mask(intervention.pos)
            else _positions(prompts, intervention, rows)
        )
        values = knockout_keys(prompts, intervention, selected, positions)
    else:
        positions = _positions(prompts, intervention, rows)
        values = _values(adapter, intervention, selected, n_prompts)
    block = max(intervention.layer, 0)
    return WritePlan(intervention, hook_name, block, rows, positions, values, prompts.shift)


def _check_site(intervention: Intervention) -> None:
    """Each kind writes at its own site: residual writes at a residual site, head ablations at ``attn.hook_z``."""
    kind, site, head = intervention.kind, intervention.site, intervention.head
    if kind == "knockout":
        if site != "attn":
            raise ShapeError(f"{intervention}: a knockout masks attention at site 'attn'; make it with knockout().")
        return
    head_site = site == "attn.hook_z"
    if head_site != (kind == "ablate_head") or (head is None) == head_site:
        raise ShapeError(
            f"{intervention}: head ablations write at site 'attn.hook_z' with a head index, replace() and add() at a "
            "residual site without one; make interventions with replace(), add() or ablate_head()."
        )


def _selected_rows(intervention: Intervention, n_prompts: int) -> Tensor:
    """``rows=`` as prompt indices: integer indices, or a boolean mask with one entry per prompt."""
    rows = tensor_of(intervention.rows, f"{intervention}: rows=", "prompt indices or a boolean mask over prompts")
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


def _positions(prompts: PreparedPrompts, intervention: Intervention, rows: Tensor) -> Tensor | None:
    """Each prompt's aligned position, checked on the prompts ``rows`` selects (the others are never written)."""
    pos = intervention.pos
    if isinstance(pos, str):
        if pos not in ("answer", "all"):
            raise PositionError(f"pos must be 'answer', 'all', an int or one int per prompt, got {pos!r}.")
        return prompts.answer_pos.clone() if pos == "answer" else None
    positions = prompts.to_aligned(as_positions(pos, len(prompts), "pos"))
    bad = ((positions < 0) | (positions >= prompts.ends)) & rows
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise PositionError(
            f"{intervention} writes at position {int(positions[row] + prompts.shift[row])} of prompt {row}, "
            "which is outside the prompt or after its answer position (a causal model's answer cannot see "
            "it). Use a position at or before answer_pos."
        )
    return torch.where(rows, positions, prompts.answer_pos)  # a prompt not written keeps a position inside it


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


def apply_plan(
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
    if plan.intervention.kind == "knockout":
        queries = None if plan.positions is None else plan.positions.to(device)[source]
        keys, prompts = plan.values.to(device)[source], source.cpu()
        return knocked_out(
            activation, plan.hook_name, plan.intervention, keys, queries, local, prompts, plan.shift[prompts]
        )
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
