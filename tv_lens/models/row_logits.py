"""Logits at the answer positions only: stop after the last block, unembed just the rows that are scored.

Analyses score a few positions per prompt (the answer tokens), yet a plain forward pass unembeds every
position: ``[batch, pos, d_vocab]`` logits, 0.5 GB for 34 prompts of 77 tokens at GPT-2's vocabulary, and
about 30% of the pass's time. :func:`logits_at` ends the pass at the last block's ``hook_resid_post``,
gathers the answer rows and applies the model's final norm, unembedding and output soft-cap to them alone.

Whether a model's logits are exactly that composition is checked once per model, by running a short probe
both ways (the user's hooks set aside); a model where they differ, or that lacks a piece, gets the full pass
and the same rows gathered from its logits, and so does a pass while hooks are attached to the final norm or the
unembedding (they see every position, as in a plain forward pass). Either way the rows equal the full pass's at
those positions.

>>> from tv_lens.models import ModelConfig, build_model
>>> model = build_model(ModelConfig(d_vocab=16, n_layers=2, d_model=32, n_heads=4, n_ctx=32))
>>> from tv_lens.models.adapter import adapt
>>> supports_row_unembedding(adapt(model))
True
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.errors import HookNotFoundError, TvLensError
from tv_lens.models.adapter import ModelAdapter
from tv_lens.models.exclusive import hooks_attached
from tv_lens.models.running import forward

__all__ = ["logits_at", "supports_row_unembedding", "unembed_rows"]


def unembed_rows(
    adapter: ModelAdapter, residual: Float[Tensor, "*rows d_model"], *, soft_cap: bool = True
) -> Float[Tensor, "*rows d_vocab"]:
    """The model's head on residual rows: final norm (if the model has one), unembedding, then the output soft-cap.

    ``soft_cap=False`` leaves out the soft-cap of a model that has one (Gemma-2's): it is monotonic, so the logit
    lens ranks tokens the same without it.
    """
    model = adapter.model
    rows = residual.reshape(-1, 1, residual.shape[-1])  # [rows, pos=1, d]: the shape the modules expect
    norm = getattr(model, "ln_final", None)
    logits = model.unembed(norm(rows) if callable(norm) else rows)
    cap = soft_cap and _soft_cap(model)
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return logits.reshape(*residual.shape[:-1], logits.shape[-1])


def logits_at(
    adapter: ModelAdapter,
    inputs: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"],
    columns: Int[Tensor, "batch n"],
    **forward_options: Any,
) -> Float[Tensor, "batch n d_vocab"]:
    """Logits of one :func:`~tv_lens.models.running.forward` pass at ``columns`` of each row only.

    Args:
        adapter: The model.
        inputs: As for ``forward``.
        columns: The positions of each row whose logits are wanted.
        **forward_options: ``start_at_layer`` and ``hooks`` of ``forward``.
    """
    rows = torch.arange(inputs.shape[0], device=columns.device)[:, None]
    if not supports_row_unembedding(adapter) or _head_hooked(adapter):
        logits = forward(adapter, inputs, **forward_options)
        return logits[rows.to(logits.device), columns.to(logits.device)]
    last: list[Tensor] = []

    def keep_and_stop(activation: Tensor, hook: Any) -> None:
        last.append(activation[rows.to(activation.device), columns.to(activation.device)])
        raise _LastBlockDone

    hooks = [*forward_options.pop("hooks", ()), (adapter.hook_name("resid_post", adapter.n_layers - 1), keep_and_stop)]
    with contextlib.suppress(_LastBlockDone):
        forward(adapter, inputs, hooks=hooks, **forward_options)
    if len(last) != 1:
        raise HookNotFoundError(
            "The forward pass never reached the last block's hook_resid_post, so no logits were computed; tv_lens "
            "needs a model that calls it (every TransformerLens model does)."
        )
    return unembed_rows(adapter, last[0])


def _head_hooked(adapter: ModelAdapter) -> bool:
    """Whether hooks are attached inside the final norm or the unembedding (they must see the full pass's shapes)."""
    head = [getattr(adapter.model, name, None) for name in ("ln_final", "unembed")]
    return hooks_attached(adapter.model, [part for part in head if isinstance(part, torch.nn.Module)])


class _LastBlockDone(TvLensError):
    """Raised by the hook that ends a pass after the last block (caught by :func:`logits_at`)."""


def supports_row_unembedding(adapter: ModelAdapter) -> bool:
    """Whether :func:`unembed_rows` of the last block's output equals the model's logits (checked once).

    The probe runs three tokens through the model in eval mode without the user's hooks, both ways, and
    compares to the dtype's rounding. Continuous-input models (``adapter.d_in``) always take the full pass.
    """
    return adapter.d_in is None and adapter.capability("row_unembedding", _probe)


def _probe(adapter: ModelAdapter) -> bool:
    model = adapter.model
    if not all(callable(getattr(model, name, None)) for name in ("ln_final", "unembed")):
        return False
    tokens = torch.arange(3, device=adapter.device)[None] % adapter.d_vocab
    captured: list[Tensor] = []

    def keep(activation: Tensor, hook: Any) -> None:
        captured.append(activation.detach())

    try:
        with torch.no_grad():
            expected = forward(adapter, tokens, hooks=[(adapter.hook_name("resid_post", adapter.n_layers - 1), keep)])
            if len(captured) != 1 or not isinstance(expected, Tensor):
                return False
            got = unembed_rows(adapter, captured[0])
    except Exception:  # a model whose pieces do not compose this way takes the full pass
        return False
    if got.shape != expected.shape:
        return False
    tolerance = 1e-5 if expected.dtype in (torch.float32, torch.float64) else 2e-2
    scale = float(expected.abs().max()) + 1.0
    return bool(((got - expected).abs() <= tolerance * scale).all())


def _soft_cap(model: Any) -> float:
    """The output logits' soft-cap of the model (Gemma-2), 0 where it has none."""
    cap = getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0
    original = getattr(model, "original_model", None)
    if not cap and original is not None:
        cap = getattr(getattr(original, "config", None), "final_logit_softcapping", None) or 0.0
    return float(cap) if isinstance(cap, (int, float)) and cap > 0 else 0.0
