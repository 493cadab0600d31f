"""Attention knockout resolved against a batch and applied in a hook: the keys each query may not attend to.

:func:`~tv_lens.interventions.knockout` names a block, the query (each prompt's answer position, a position, or every
later query) and the keys; :func:`knockout_hook_name` picks the hook point the model's attention is masked at
(:func:`~tv_lens.interventions.masking.knockout_strategy`), :func:`knockout_keys` puts the keys in the aligned layout
and checks them against the queries, and :func:`knocked_out` masks one pass's scores or pattern.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.errors import ModelNotSupportedError, PositionError, ShapeError
from tv_lens.interventions.masking import MASK_HOOKS, knockout_strategy, mask_attention
from tv_lens.interventions.specs import Intervention
from tv_lens.models.adapter import ModelAdapter
from tv_lens.positions import PreparedPrompts

__all__ = ["knocked_out", "knockout_hook_name", "knockout_keys"]


def knockout_hook_name(adapter: ModelAdapter, intervention: Intervention) -> str:
    """The hook point a knockout at ``intervention.layer`` masks (the model's scores, else its pattern).

    Raises:
        ModelNotSupportedError: Neither hook point feeds the model's attention (checked once per model).
    """
    layer = adapter.check_layer(intervention.layer)
    strategy = knockout_strategy(adapter)
    if strategy is None:
        raise ModelNotSupportedError(
            f"{intervention}: this model's attention cannot be knocked out through its hook points (blocking a "
            "position through attn.hook_attn_scores or attn.hook_pattern does not keep it from later positions: "
            "its attention is computed past them), so a knockout would silently change nothing; use a "
            "HookedTransformer where TransformerLens has one for this architecture, or another model."
        )
    return MASK_HOOKS[strategy].format(layer=layer)


def knockout_keys(
    prompts: PreparedPrompts, intervention: Intervention, selected: Int[Tensor, " rows"], queries: Tensor | None
) -> Bool[Tensor, "batch width"]:
    """The blocked keys of every prompt in the aligned layout (none for prompts not selected), checked.

    Raises:
        ShapeError: A per-prompt mask without one row per selected prompt.
        PositionError: A key on left padding or outside the prompt, after its query, or keys that leave a query
            nothing to attend to.
    """
    mask = intervention.values
    if mask is None or mask.dtype != torch.bool:
        raise ShapeError(f"{intervention}: the blocked keys must be a bool mask; make the knockout with knockout().")
    n_prompts, width = len(prompts), prompts.inputs.shape[1]
    if mask.ndim == 2 and mask.shape[0] != len(selected):
        raise ShapeError(
            f"{intervention} got keys of shape {tuple(mask.shape)}; expected [pos] for every prompt or "
            f"[{len(selected)}, pos] for each selected prompt."
        )
    given = mask.cpu().expand(len(selected), -1)
    span = max(width, given.shape[1])  # a mask wider than the prompts is checked like the rest, then cut
    full = torch.zeros(n_prompts, span, dtype=torch.bool)
    full[selected, : given.shape[1]] = given
    columns = torch.arange(span)
    padding = full & (columns[None, :] < prompts.shift[:, None])
    if bool(padding.any()):
        row, column = (int(i) for i in padding.nonzero()[0])
        raise PositionError(f"{intervention} blocks position {column} of prompt {row}, which is left padding.")
    source = columns[None, :] + prompts.shift[:, None]
    keys = full.gather(1, source.clamp(max=span - 1)) & (source < span)
    limit = prompts.ends - 1 if queries is None else queries
    after = keys & (columns[None, :] > limit[:, None])
    if bool(after.any()):
        row, column = (int(i) for i in after.nonzero()[0])
        where = (
            "outside the prompt"
            if queries is None
            else f"after its query (position {int(limit[row] + prompts.shift[row])})"
        )
        raise PositionError(
            f"{intervention} blocks position {column + int(prompts.shift[row])} of prompt {row}, {where}: a causal "
            "query cannot see it. Block keys at or before the query."
        )
    if queries is not None:
        seen = columns[None, :] <= queries[:, None]
        every = (keys | ~seen).all(1) & full.any(1)
        if bool(every.any()):
            row = int(every.nonzero()[0])
            raise PositionError(
                f"{intervention} blocks every position the query of prompt {row} attends to, which leaves its "
                "attention undefined; keep at least one (e.g. the query itself)."
            )
    return keys[:, :width]


def knocked_out(
    attention: Float[Tensor, "batch head query key"],
    hook_name: str,
    keys: Bool[Tensor, "rows width"],
    queries: Int[Tensor, " rows"] | None,
    head: int | None,
    local: Int[Tensor, " rows"],
) -> Float[Tensor, "batch head query key"]:
    """``attention`` with rows ``local`` kept from their ``keys`` at their query (every later query for ``None``).

    Raises:
        ModelNotSupportedError: The hooked tensor is not ``[batch, head, query, key]``.
    """
    if (
        attention.ndim != 4
        or attention.shape[2] != attention.shape[3]
        or (head is not None and head >= attention.shape[1])
    ):
        raise ModelNotSupportedError(
            f"The attention at {hook_name} has shape {tuple(attention.shape)}, not [batch, head, query, key]; a "
            "knockout masks one pattern per query head there."
        )
    width, device = attention.shape[-1], attention.device
    keys = keys[:, :width].to(device)
    columns = torch.arange(width, device=device)
    if queries is None:
        query_rows = columns[None, :, None] > columns[None, None, :]  # every query after the key
    else:
        query_rows = columns[None, :, None] == queries.to(device)[:, None, None]
    heads = 1 if head is None else attention.shape[1]  # every head alike, or one of them
    blocked = torch.zeros(len(attention), heads, width, width, dtype=torch.bool, device=device)
    blocked[local.to(device), 0 if head is None else head] = query_rows & keys[:, None, :]
    return mask_attention(attention, "scores" if hook_name.endswith("hook_attn_scores") else "pattern", blocked)
