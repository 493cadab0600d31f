"""Attention knockout resolved against a batch and applied in a hook: the keys each query may not attend to.

:func:`~tv_lens.interventions.knockout` names a block, the queries (each prompt's answer position, a position, a mask
of positions, or every later query) and the keys; :func:`knockout_hook_name` picks the hook point the model's
attention is masked at (:func:`~tv_lens.interventions.masking.knockout_strategy`), :func:`query_mask` and
:func:`knockout_keys` put the queries and keys in the aligned layout and check them, and :func:`knocked_out` masks one
pass's scores or pattern, or raises :class:`HiddenKeysError` where the model's own mask (a sliding window) hides every
key the knockout leaves a query.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.errors import ModelNotSupportedError, PositionError, ShapeError
from tv_lens.interventions.masking import MASK_HOOKS, knockout_strategy, mask_attention, model_hidden
from tv_lens.interventions.specs import Intervention
from tv_lens.models.adapter import ModelAdapter
from tv_lens.positions import PreparedPrompts

__all__ = ["HiddenKeysError", "is_query_mask", "knocked_out", "knockout_hook_name", "knockout_keys", "query_mask"]


class HiddenKeysError(PositionError):
    """A knockout blocked every key a query sees, and the model's own mask hides the rest (a sliding window).

    Attributes:
        intervention: The knockout.
        prompt: The prompt's index (in the input of the call that raised it).
        position: The query's position in that prompt.
    """

    def __init__(self, intervention: Intervention, prompt: int, position: int) -> None:
        self.intervention, self.prompt, self.position = intervention, prompt, position
        super().__init__(
            f"{intervention} blocks every key the query at position {position} of prompt {prompt} sees in block "
            f"{intervention.layer}: the model masks the keys it leaves open (a sliding window or an attention chunk "
            "hides keys far before the query), which leaves that query's attention undefined; keep at least one key "
            "within the window (e.g. the query itself)."
        )


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


_OUTSIDE = "outside the prompt: a causal query cannot see it. Block keys within the prompt"
_AFTER = "after its query (position {query}): a causal query cannot see it. Block keys at or before the query"


def is_query_mask(pos: Any) -> bool:
    """Whether a knockout's ``pos`` is a bool mask of query positions (not ``"answer"``, ``"all"`` or positions)."""
    return isinstance(pos, Tensor) and pos.dtype == torch.bool


def query_mask(prompts: PreparedPrompts, intervention: Intervention) -> Bool[Tensor, "batch width"]:
    """A knockout's bool mask of query positions (``[pos]`` or ``[batch, pos]``, padded layout) in the aligned layout.

    Raises:
        ShapeError: A mask of another shape.
        PositionError: A query on left padding or after the prompt's last answer token.
    """
    pos = intervention.pos
    mask = cast(Tensor, pos).cpu()
    n_prompts = len(prompts)
    if mask.ndim not in (1, 2) or (mask.ndim == 2 and mask.shape[0] != n_prompts):
        raise ShapeError(
            f"{intervention} got a query mask of shape {tuple(mask.shape)}; expected [pos] for every prompt or "
            f"[{n_prompts}, pos], one row per prompt."
        )
    return _aligned(
        prompts,
        intervention,
        mask.expand(n_prompts, -1),
        prompts.ends - 1,
        "marks a query at position",
        "after the prompt's last answer token: mark queries within the prompt",
    )


def knockout_keys(
    prompts: PreparedPrompts, intervention: Intervention, selected: Int[Tensor, " rows"], queries: Tensor | None
) -> Bool[Tensor, "batch width"]:
    """The blocked keys of every prompt in the aligned layout (none for prompts not selected), checked.

    ``queries``: each prompt's query ``[batch]``, a mask of queries ``[batch, width]``, or None for every later query
    (all aligned).

    Raises:
        ShapeError: A per-prompt mask without one row per selected prompt.
        PositionError: A key on left padding or outside the prompt, after its (last) query, or keys that leave a
            query nothing to attend to.
    """
    mask = intervention.values
    if mask is None or mask.dtype != torch.bool:
        raise ShapeError(f"{intervention}: the blocked keys must be a bool mask; make the knockout with knockout().")
    if mask.ndim == 2 and mask.shape[0] != len(selected):
        raise ShapeError(
            f"{intervention} got keys of shape {tuple(mask.shape)}; expected [pos] for every prompt or "
            f"[{len(selected)}, pos] for each selected prompt."
        )
    given = mask.cpu().expand(len(selected), -1)
    full = torch.zeros(len(prompts), given.shape[1], dtype=torch.bool)
    full[selected] = given
    if queries is None or queries.dtype == torch.bool:  # keys anywhere in the prompt
        keys = _aligned(prompts, intervention, full, prompts.ends - 1, "blocks position", _OUTSIDE)
    else:
        keys = _aligned(prompts, intervention, full, queries, "blocks position", _AFTER)
    if queries is not None:
        seen = _query_rows(queries, keys.shape[1])  # [batch, query, key]: the keys each query sees
        open_keys = (seen & ~keys[:, None, :]).any(-1)
        stuck = seen.any(-1) & ~open_keys & keys.any(-1)[:, None]
        if bool(stuck.any()):
            row, query = (int(i) for i in stuck.nonzero()[0])
            raise PositionError(
                f"{intervention} blocks every position the query at {query + int(prompts.shift[row])} of prompt {row} "
                "attends to, which leaves its attention undefined; keep at least one (e.g. the query itself)."
            )
    return keys


def _aligned(
    prompts: PreparedPrompts, intervention: Intervention, mask: Tensor, last: Tensor, what: str, beyond: str
) -> Bool[Tensor, "batch width"]:
    """``mask`` ``[batch, pos]`` (padded layout) in the aligned layout, cut to the prompts' width.

    ``what`` and ``beyond`` word the errors (``beyond`` may name ``{query}``, the position ``last`` stands for).

    Raises:
        PositionError: A marked position on left padding, or after ``last`` (aligned, per prompt).
    """
    width = prompts.inputs.shape[1]
    span = max(width, mask.shape[1])  # a mask wider than the prompts is checked like the rest, then cut
    full = torch.zeros(len(prompts), span, dtype=torch.bool)
    full[:, : mask.shape[1]] = mask
    columns = torch.arange(span)
    padding = full & (columns[None, :] < prompts.shift[:, None])
    if bool(padding.any()):
        row, column = (int(i) for i in padding.nonzero()[0])
        raise PositionError(f"{intervention} {what} {column} of prompt {row}, which is left padding.")
    source = columns[None, :] + prompts.shift[:, None]
    aligned = full.gather(1, source.clamp(max=span - 1)) & (source < span)
    after = aligned & (columns[None, :] > last[:, None])
    if bool(after.any()):
        row, column = (int(i) for i in after.nonzero()[0])
        where = beyond.format(query=int(last[row] + prompts.shift[row]))
        raise PositionError(f"{intervention} {what} {column + int(prompts.shift[row])} of prompt {row}, {where}.")
    return aligned[:, :width]


def _query_rows(queries: Tensor | None, width: int, device: Any = None) -> Bool[Tensor, "batch query key"]:
    """The (query, key) pairs a knockout's queries may block ``[batch, query, key]``.

    Every key at or before each query (``[batch]`` positions or a ``[batch, width]`` mask), or every key before each
    later query (``None``: ``[1, query, key]``).
    """
    columns = torch.arange(width, device=device)
    if queries is None:
        return (columns[:, None] > columns[None, :])[None]
    causal = columns[:, None] >= columns[None, :]
    if queries.dtype == torch.bool:
        return queries[:, :width, None] & causal
    return (columns[None, :, None] == queries[:, None, None]) & causal


def knocked_out(
    attention: Float[Tensor, "batch head query key"],
    hook_name: str,
    intervention: Intervention,
    keys: Bool[Tensor, "rows width"],
    queries: Int[Tensor, " rows"] | Bool[Tensor, "rows width"] | None,
    local: Int[Tensor, " rows"],
    prompts: Int[Tensor, " rows"],
    shift: Int[Tensor, " rows"],
) -> Float[Tensor, "batch head query key"]:
    """``attention`` with rows ``local`` kept from their ``keys`` at their query (every later query for ``None``).

    ``prompts`` and ``shift``: each row's prompt index and left padding, which name a query in an error.

    Raises:
        ModelNotSupportedError: The hooked tensor is not ``[batch, head, query, key]``.
        HiddenKeysError: A query is left no key the model lets it see.
    """
    head = intervention.head
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
    pairs = _query_rows(None if queries is None else queries.to(device), width, device) & keys[:, None, :]
    heads = 1 if head is None else attention.shape[1]  # every head alike, or one of them
    blocked = torch.zeros(len(attention), heads, width, width, dtype=torch.bool, device=device)
    blocked[local.to(device), 0 if head is None else head] = pairs
    strategy = "scores" if hook_name.endswith("hook_attn_scores") else "pattern"
    stuck = blocked.any(-1) & ~(~model_hidden(attention, strategy) & ~blocked).any(-1)  # [batch, head, query]
    if bool(stuck.any()):  # the model's own mask (a sliding window) hides every key the knockout leaves
        row, _, query = (int(i) for i in stuck.nonzero()[0])
        i = int((local.to(device) == row).nonzero()[0])
        raise HiddenKeysError(intervention, int(prompts[i]), query + int(shift[i]))
    return mask_attention(attention, strategy, blocked)
