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

from tv_lens.errors import (
    InterventionNotAppliedError,
    LayerOutOfRangeError,
    NonFiniteError,
    ShapeError,
)
from tv_lens.interventions.masking import mask_hooks, validated_blocked_keys
from tv_lens.interventions.plans import WritePlan, apply_plan, resolve
from tv_lens.interventions.specs import Intervention, intervention_list
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.block_skipping import supports_block_skipping
from tv_lens.models.memory import fitting
from tv_lens.models.row_logits import logits_at
from tv_lens.positions import (
    AnswerLengths,
    Inputs,
    PreparedPrompts,
    answer_columns,
    check_batch_size,
    prepare_prompts,
    prompt_batches,
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
            ``model(tokens, stop_at_layer=l)``; for left-padded prompts pass the same ``attention_mask`` to that
            call), in the layout of ``inputs``. Used to skip blocks below ``l`` when the model supports
            ``start_at_layer`` and every intervention is at a block ≥ ``l``.
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
        WindowedRowError: The model's own mask (a sliding window) hides a key that ``blocked_keys`` leaves open.
    """
    adapter = adapt(model)
    interventions = intervention_list(interventions)
    check_batch_size(batch_size, all_at_once=True)
    residual = residual_layer is not None
    prompts = prepare_prompts(adapter, inputs, answer_pos, attention_mask, n_answer_tokens, residual=residual)
    lengths = prompts.answer_lengths
    n_answer = int(lengths.max())
    plans = [resolve(adapter, prompts, intervention) for intervention in interventions]
    if residual_layer is not None:
        _check_entry(adapter, plans, residual_layer, clean_residual, prompts.inputs)
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
                (plan.hook_name, partial(apply_plan, adapter=adapter, plan=plan, index=index, writes=writes, slot=i))
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
    if isinstance(clean_residual, Tensor) and not clean_residual.is_floating_point():
        raise ShapeError(
            f"clean_residual must be the float residual stream entering block {layer} ([batch, pos, d_model], e.g. "
            f"model(tokens, stop_at_layer={layer})), got {clean_residual.dtype} values of shape "
            f"{tuple(clean_residual.shape)}; pass that residual, or leave clean_residual out to run every block."
        )
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


def _check_entry(
    adapter: ModelAdapter, plans: list[WritePlan], layer: int, clean_residual: Tensor | None, inputs: Tensor
) -> None:
    """Inputs that are the residual entering block ``layer``: float, and no intervention may write below it."""
    adapter.check_layer(layer)
    if clean_residual is not None:
        raise ShapeError("Give residual_layer (the inputs are a residual) or clean_residual, not both.")
    if not inputs.is_floating_point():
        raise ShapeError(
            f"residual_layer={layer} says the inputs are the residual stream entering block {layer}, but they are "
            f"{inputs.dtype} token ids; pass that residual (e.g. model(tokens, stop_at_layer={layer})), or leave "
            "residual_layer out to run the tokens from the start."
        )
    early = [plan.intervention for plan in plans if plan.block < layer]
    if early:
        raise LayerOutOfRangeError(
            f"{early[0]} writes before block {layer}, where the residual inputs enter; write at block "
            f">= {layer} or pass the tokens instead."
        )
