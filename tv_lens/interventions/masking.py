"""Attention masking through hook points: several continuations of one prefix share a row; attention knockout.

Each continuation attends to the prefix and to itself only: ``blocked_keys`` marks, per prompt, the (query, key)
pairs masked on top of the causal mask. A packed row is exact only where the model's own mask hides no key that
``blocked_keys`` leaves open: a sliding window shorter than the row (GPT-Neo's local attention) would hide the
prefix from a continuation packed far from it, so the pass raises :class:`WindowedRowError` instead. How a model's
attention can be masked is probed once per model: for packing continuations (:func:`masking_strategy`, which also
needs attention that does not depend on absolute positions) and for knocking out attention edges in place
(:func:`knockout_strategy`, any attention that reads its scores or pattern from the hook points;
:func:`~tv_lens.interventions.knockout`).
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tv_lens.checks import tensor_of
from tv_lens.errors import (
    HookNotFoundError,
    ModelNotSupportedError,
    NonFiniteError,
    ShapeError,
)
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.running import forward
from tv_lens.positions import (
    PreparedPrompts,
)

__all__ = [
    "BlockedKeysPrecisionError",
    "WindowedRowError",
    "knockout_strategy",
    "mask_attention",
    "mask_hooks",
    "masking_strategy",
    "model_hidden",
    "supports_blocked_keys",
    "validated_blocked_keys",
]

#: How a model's attention is masked through hooks: scores set to -inf before the softmax, or the
#: softmax output with blocked keys zeroed and each row renormalised.
MASK_HOOKS = {"scores": "blocks.{layer}.attn.hook_attn_scores", "pattern": "blocks.{layer}.attn.hook_pattern"}


class BlockedKeysPrecisionError(NonFiniteError):
    """Blocked keys held (nearly) all of a query's attention, so the renormalised pattern is imprecise."""


class WindowedRowError(ModelNotSupportedError):
    """The model's own attention mask (a sliding window) hides a key that ``blocked_keys`` leaves a query open."""


def validated_blocked_keys(
    adapter: ModelAdapter, prompts: PreparedPrompts, blocked_keys: Tensor | None
) -> tuple[Tensor, str] | None:
    """Validated ``blocked_keys`` and the way this model's attention is masked, or None."""
    if blocked_keys is None:
        return None
    n_prompts, width = prompts.inputs.shape[:2]
    blocked = tensor_of(blocked_keys, "blocked_keys", f"a bool tensor [batch={n_prompts}, pos={width}, pos={width}]")
    if blocked.dtype != torch.bool or blocked.shape != (n_prompts, width, width):
        raise ShapeError(
            f"blocked_keys must be a bool tensor [batch={n_prompts}, pos={width}, pos={width}], got "
            f"{blocked.dtype} of shape {tuple(blocked.shape)}."
        )
    if bool(prompts.shift.any()):
        raise ShapeError("blocked_keys needs prompts that start at column 0; right-pad them instead of left-padding.")
    strategy = masking_strategy(adapter)
    if strategy is None:
        raise ModelNotSupportedError(
            "This model's attention cannot be masked through its hook points (neither attn.hook_attn_scores "
            "nor attn.hook_pattern feeds its softmax output); run the continuations as separate rows."
        )
    return blocked, strategy


def supports_blocked_keys(model: Any) -> bool:
    """Whether ``run_with_interventions(..., blocked_keys=...)`` works for ``model`` (see :func:`masking_strategy`)."""
    return masking_strategy(adapt(model)) is not None


def masking_strategy(adapter: ModelAdapter) -> str | None:
    """How hooks mask this model's attention: ``"scores"``, ``"pattern"`` or None (detected once per model).

    The check packs two 5-position runs that share a 3-position prefix into one 7-position row, blocks
    the second run's last two positions from the first's, and compares the outputs with the two runs
    (positional information rides in the residual input, so a model whose attention itself depends on
    positions, e.g. rotary, fails it and is not masked).
    """
    return adapter.capability("attention_masking", _detect_masking)


def _detect_masking(adapter: ModelAdapter) -> str | None:
    if adapter.n_ctx < 7 or adapter.dtype not in (torch.float32, torch.float64):
        return None
    generator = torch.Generator().manual_seed(0)
    runs = torch.randn(2, 5, adapter.d_model, generator=generator).to(adapter.device, adapter.dtype)
    runs[1, :3] = runs[0, :3]
    packed = torch.cat([runs[0], runs[1, 3:]])[None]
    blocked = torch.zeros(1, 7, 7, dtype=torch.bool, device=adapter.device)
    blocked[0, 5:, 3:5] = True
    with torch.no_grad():
        try:
            expected = forward(adapter, runs, start_at_layer=0)[:, 3:].reshape(1, 4, -1)
        except Exception:  # a model that cannot start from residual rows (Gemma-4 reads its token ids per layer)
            return None
        tolerance = 1e-4 * (1 + float(expected.abs().max()))
        for strategy in MASK_HOOKS:
            try:
                with warnings.catch_warnings():  # a bridge warns that a post-hoc hook's edit is discarded
                    warnings.simplefilter("ignore", UserWarning)
                    output = forward(adapter, packed, start_at_layer=0, hooks=mask_hooks(adapter, strategy, blocked, 0))
            except (HookNotFoundError, _MaskNotApplied, BlockedKeysPrecisionError, WindowedRowError):
                continue
            if torch.allclose(output[:, 3:], expected, rtol=1e-4, atol=tolerance):
                return strategy
    return None


def knockout_strategy(adapter: ModelAdapter) -> str | None:
    """How hooks knock out attention edges of this model: ``"scores"``, ``"pattern"`` or None (detected once per model).

    The check blocks one position from every later query in every block and changes that position's input: the
    outputs after it must not change (they do without the block). It runs the model as it is, on tokens (or on the
    continuous inputs of a model that embeds them), so rotary and other position-dependent attention pass it.
    """
    return adapter.capability("attention_knockout", _detect_knockout)


def _detect_knockout(adapter: ModelAdapter) -> str | None:
    if adapter.n_ctx < 6:
        return None
    generator = torch.Generator().manual_seed(0)
    if adapter.d_in is not None:
        inputs = torch.randn(1, 6, adapter.d_in, generator=generator).to(adapter.dtype)
        changed = inputs.clone()
        changed[0, 2] = -changed[0, 2] + 1
    else:
        inputs = torch.randint(adapter.d_vocab, (1, 6), generator=generator)
        changed = inputs.clone()
        changed[0, 2] = (changed[0, 2] + 1) % adapter.d_vocab
    pair = torch.cat([inputs, changed]).to(adapter.device)
    blocked = torch.zeros(2, 6, 6, dtype=torch.bool, device=adapter.device)
    blocked[:, 3:, 2] = True  # every later query is blocked from position 2, in every block
    with torch.no_grad():
        free = forward(adapter, pair)[:, 3:].double()
        tolerance = 1e-3 * (1 + float(free.abs().max()))
        if bool(((free[0] - free[1]).abs() <= tolerance).all()):
            return None  # the change does not reach the outputs: the check cannot tell
        for strategy in MASK_HOOKS:
            try:
                with warnings.catch_warnings():  # a bridge warns that a post-hoc hook's edit is discarded
                    warnings.simplefilter("ignore", UserWarning)
                    output = forward(adapter, pair, hooks=mask_hooks(adapter, strategy, blocked, 0, packed=False))
                output = output[:, 3:].double()
            except (HookNotFoundError, _MaskNotApplied, BlockedKeysPrecisionError):
                continue
            if bool(((output[0] - output[1]).abs() <= tolerance * 1e-2).all()) and (
                strategy == "scores" or _rows_sum_to_one(adapter, pair)
            ):
                return strategy
    return None


def _rows_sum_to_one(adapter: ModelAdapter, inputs: Tensor) -> bool:
    """Whether every attention row sums to one over the positions (no attention sink takes a share).

    Renormalising a pattern after blocking keys is exact only then; with a sink, only the scores can be masked.
    """
    sums: list[Tensor] = []

    def keep(pattern: Tensor, hook: Any) -> None:
        sums.append(pattern.detach().double().sum(-1))

    hooks = [(MASK_HOOKS["pattern"].format(layer=layer), keep) for layer in range(adapter.n_layers)]
    forward(adapter, inputs, hooks=hooks)
    return bool(sums) and all(bool(((total - 1).abs() < 1e-3).all()) for total in sums)


def mask_attention(
    attention: Float[Tensor, "batch head query key"], strategy: str, blocked: Bool[Tensor, "..."]
) -> Float[Tensor, "batch head query key"]:
    """``attention`` (scores or pattern, by ``strategy``) with the ``blocked`` (query, key) pairs masked."""
    return (_mask_scores if strategy == "scores" else _mask_pattern)(attention, None, blocked=blocked)


def mask_hooks(
    adapter: ModelAdapter, strategy: str, blocked: Tensor, first_block: int, *, packed: bool = True
) -> list[tuple[str, Any]]:
    """Hooks applying ``blocked`` ``[batch, query, key]`` to the attention of blocks ``>= first_block``.

    ``packed``: the rows pack continuations, so every key ``blocked`` leaves a query (at or before it) must be one the
    model's own mask lets it see (:class:`WindowedRowError` otherwise).
    """
    if packed:  # the (query, key) pairs a packed row leaves open, found once for every block's hook
        width = blocked.shape[-1]
        earlier = torch.ones(width, width, dtype=torch.bool, device=blocked.device).tril()
        open_pairs = (earlier & ~blocked)[:, None]
        fn = partial(_packed_mask, strategy=strategy, blocked=blocked[:, None], open_pairs=open_pairs)
    else:
        fn = partial(_mask_scores if strategy == "scores" else _mask_pattern, blocked=blocked[:, None])
    names = [MASK_HOOKS[strategy].format(layer=layer) for layer in range(first_block, adapter.n_layers)]
    for name in names:
        adapter.hook_point(name)
    return [(name, fn) for name in names]


class _MaskNotApplied(Exception):
    """An attention hook whose tensor is not ``[batch, head, query, key]`` like the mask."""


def _check_mask_shape(attention: Tensor, blocked: Tensor) -> None:
    if attention.ndim != 4 or attention.shape[0] != blocked.shape[0] or attention.shape[2:] != blocked.shape[2:]:
        raise _MaskNotApplied


def _packed_mask(attention: Tensor, hook: Any, *, strategy: str, blocked: Tensor, open_pairs: Tensor) -> Tensor:
    """Hook body: ``blocked`` masked in a packed row, once the model's own mask is seen to hide no ``open_pairs``."""
    _check_mask_shape(attention, blocked)
    if bool((model_hidden(attention, strategy) & open_pairs).any()):
        raise WindowedRowError(
            "The model's own attention mask hides keys a packed row leaves its continuations (a sliding window "
            "shorter than the row), so the row would differ from its continuations run alone; run these "
            "continuations as separate rows."
        )
    return mask_attention(attention, strategy, blocked)


def model_hidden(attention: Float[Tensor, "*batch query key"], strategy: str) -> Bool[Tensor, "*batch query key"]:
    """The (query, key) pairs the model's own mask hides in its ``"scores"`` or ``"pattern"``.

    A score of -inf (TransformerLens) or of the dtype's lowest value (HuggingFace), a weight of 0.
    """
    return attention <= torch.finfo(attention.dtype).min / 2 if strategy == "scores" else attention <= 0


def _mask_scores(scores: Tensor, hook: Any, *, blocked: Tensor) -> Tensor:
    """Hook body: blocked keys get score -inf before the softmax (exact)."""
    _check_mask_shape(scores, blocked)
    return scores.masked_fill(blocked, float("-inf"))


def _mask_pattern(pattern: Tensor, hook: Any, *, blocked: Tensor) -> Tensor:
    """Hook body: blocked keys get weight 0 after the softmax; each row with a blocked key is renormalised to sum to 1.

    Rows without a blocked key are left as they are (not divided by their sum, which is 1 up to rounding).
    """
    _check_mask_shape(pattern, blocked)
    kept = pattern.masked_fill(blocked, 0.0)
    total = kept.sum(-1, keepdim=True)
    touched = blocked.any(-1, keepdim=True).expand_as(total)
    if bool((touched & (total < torch.finfo(total.dtype).tiny ** 0.5)).any()):
        raise BlockedKeysPrecisionError(
            "Blocked keys held nearly all of a query's attention weight, so renormalising the rest is "
            "imprecise on this model; run these continuations as separate rows."
        )
    return torch.where(touched, kept / total, pattern)
