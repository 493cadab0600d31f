"""Attention masking through hook points: several continuations of one prefix share a row.

Each continuation attends to the prefix and to itself only: ``blocked_keys`` marks, per prompt, the (query, key)
pairs masked on top of the causal mask. How a model's attention can be masked is probed once per model
(:func:`masking_strategy`).
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import torch
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
    "mask_hooks",
    "masking_strategy",
    "supports_blocked_keys",
    "validated_blocked_keys",
]

#: How a model's attention is masked through hooks: scores set to -inf before the softmax, or the
#: softmax output with blocked keys zeroed and each row renormalised.
_MASK_HOOKS = {"scores": "blocks.{layer}.attn.hook_attn_scores", "pattern": "blocks.{layer}.attn.hook_pattern"}


class BlockedKeysPrecisionError(NonFiniteError):
    """Blocked keys held (nearly) all of a query's attention, so the renormalised pattern is imprecise."""


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
        for strategy in _MASK_HOOKS:
            try:
                with warnings.catch_warnings():  # a bridge warns that a post-hoc hook's edit is discarded
                    warnings.simplefilter("ignore", UserWarning)
                    output = forward(adapter, packed, start_at_layer=0, hooks=mask_hooks(adapter, strategy, blocked, 0))
            except (HookNotFoundError, _MaskNotApplied, BlockedKeysPrecisionError):
                continue
            if torch.allclose(output[:, 3:], expected, rtol=1e-4, atol=tolerance):
                return strategy
    return None


def mask_hooks(adapter: ModelAdapter, strategy: str, blocked: Tensor, first_block: int) -> list[tuple[str, Any]]:
    """Hooks applying ``blocked`` ``[batch, query, key]`` to the attention of blocks ``>= first_block``."""
    fn = partial(_mask_scores if strategy == "scores" else _mask_pattern, blocked=blocked[:, None])
    names = [_MASK_HOOKS[strategy].format(layer=layer) for layer in range(first_block, adapter.n_layers)]
    for name in names:
        adapter.hook_point(name)
    return [(name, fn) for name in names]


class _MaskNotApplied(Exception):
    """An attention hook whose tensor is not ``[batch, head, query, key]`` like the mask."""


def _check_mask_shape(attention: Tensor, blocked: Tensor) -> None:
    if attention.ndim != 4 or attention.shape[0] != blocked.shape[0] or attention.shape[2:] != blocked.shape[2:]:
        raise _MaskNotApplied


def _mask_scores(scores: Tensor, hook: Any, *, blocked: Tensor) -> Tensor:
    """Hook body: blocked keys get score -inf before the softmax (exact)."""
    _check_mask_shape(scores, blocked)
    return scores.masked_fill(blocked, float("-inf"))


def _mask_pattern(pattern: Tensor, hook: Any, *, blocked: Tensor) -> Tensor:
    """Hook body: blocked keys get weight 0 after the softmax; each row is renormalised to sum to 1."""
    _check_mask_shape(pattern, blocked)
    kept = pattern.masked_fill(blocked, 0.0)
    total = kept.sum(-1, keepdim=True)
    if bool((total < torch.finfo(total.dtype).tiny ** 0.5).any()):
        raise BlockedKeysPrecisionError(
            "Blocked keys held nearly all of a query's attention weight, so renormalising the rest is "
            "imprecise on this model; run these continuations as separate rows."
        )
    return kept / total
