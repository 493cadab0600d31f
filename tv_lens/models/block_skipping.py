"""Start a forward pass at block ``l`` without running the blocks below it, on models whose loop calls ``blocks``.

A ``TransformerBridge`` hands the forward pass to the wrapped model (a HuggingFace model, or TransformerLens's
native one), which embeds the tokens, builds the attention masks, rotary position embeddings and cache positions,
then calls every decoder layer in turn; the bridge's ``blocks[i]`` are the modules that loop calls. TransformerLens
4.3's bridge accepts ``start_at_layer`` but still runs the blocks below it and discards their output; TransformerLens
3.9's bridge raises. :func:`skipping_blocks` gives such a model a real start-from-layer path: during the ``with``
block, a forward pass of the model on dummy token ids

- runs the embedding and everything the model computes before its layer loop as usual (masks, positions, ...),
- makes every block below ``l`` return its input hidden states unchanged without calling anything inside it
  (no hook point of those blocks fires, no weight is used), in the output structure the real block returns,
- replaces the hidden states entering block ``l`` with the given residual, before anything in block ``l`` (so
  ``blocks.{l}.hook_resid_pre`` sees the residual, as with ``start_at_layer`` on ``HookedTransformer``),
- runs blocks ``l`` and above, the final norm and the unembedding exactly as a full pass does.

The blocks' ``forward`` is replaced on the block objects only for the duration of the ``with`` block and restored
on exit, also when the pass raises. :func:`supports_block_skipping` checks once per model, on a probe input, that a
skipped pass equals the full pass and that nothing inside the blocks below ran.

>>> from tv_lens.models import ModelConfig, build_model
>>> model = build_model(ModelConfig(d_vocab=16, n_layers=3, d_model=32, n_heads=4, n_ctx=32, backend="bridge"))
>>> supports_block_skipping(model)
True
>>> residual = torch.randn(2, 5, 32)  # the residual stream entering block 2
>>> with skipping_blocks(model, 2, residual) as tokens:
...     logits = model(tokens)
>>> tokens.shape, logits.shape
(torch.Size([2, 5]), torch.Size([2, 5, 16]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from tv_lens.errors import LayerOutOfRangeError, ModelNotSupportedError, ShapeError
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.exclusive import model_lock

__all__ = ["skipping_blocks", "supports_block_skipping"]

#: Batch and length of the probe input of :func:`supports_block_skipping` (longer than a short sliding window).
_PROBE_BATCH, _PROBE_POS = 2, 12


@dataclass(frozen=True)
class _Layout:
    """How the model's layer loop calls its blocks.

    Attributes:
        tuple_output: Per block, the length of the tuple it returns with the hidden states first:
            ``(hidden_states,)`` from TransformerLens's native blocks, ``(hidden_states, attention_weights)`` from
            GPT-Neo's; 0 for the bare hidden states (HuggingFace decoder layers in transformers ≥ 5).
    """

    tuple_output: tuple[int, ...]


def supports_block_skipping(model: Any) -> bool:
    """Whether :func:`skipping_blocks` works on ``model`` (detected once per model, then cached).

    The check runs the model on a probe input of ``[2, 12]`` token ids twice, in eval mode, without gradients and
    with the user's hooks set aside (all restored afterwards): a full pass, recording what each block returns and the
    hidden states entering the last block, then a pass that skips every block below the last one and feeds it those
    hidden states. It holds when the model has one block module per layer in ``model.blocks``, the model's loop calls
    each of them once, with the hidden states ``[batch, pos, d_model]`` first (or as ``hidden_states=``), and they
    return the hidden states bare or as a one-element tuple; when no module inside the skipped blocks ran (but those
    the model also holds outside its blocks, such as a rotary embedding its attention shares); and when both passes
    give the same logits. Any error in the probe means ``False``.

    Args:
        model: A TransformerLens model (``TransformerBridge`` booted from HuggingFace weights or natively,
            ``HookedTransformer``) or its :class:`~tv_lens.models.adapter.ModelAdapter`.

    Returns:
        ``True`` when a skipped pass can stand for the full pass.

    Raises:
        ModelNotSupportedError: ``model`` is not a TransformerLens model at all.
    """
    return _layout(adapt(model)) is not None


@contextmanager
def skipping_blocks(
    model: Any,
    layer: int,
    residual: Float[Tensor, "batch pos d_model"],
    *,
    stop_at_layer: int | None = None,
) -> Iterator[Int[Tensor, "batch pos"]]:
    """Within the ``with`` block, a pass of the model starts at ``layer`` from ``residual``; yields the tokens to run.

    Run the model on the yielded dummy token ids (zeros ``[batch, pos]``, on the model's device) with whatever else a
    full pass gets (``stop_at_layer``, ``attention_mask``, hooks attached through the hook points): the model embeds
    them and builds its masks and positions from their shape as usual, the blocks below ``layer`` pass their input
    through without running anything, and block ``layer`` receives ``residual`` as its input hidden states (before
    ``blocks.{layer}.hook_resid_pre``). The result equals a full pass on the real tokens whose residual entering
    ``layer`` is ``residual``: token ids matter to a pass only through the embedding, which the skipped blocks'
    output no longer carries (any ids of that shape would do). Hooks on the embedding (``hook_embed``,
    ``hook_pos_embed``) still fire, on the dummy tokens; no hook point inside the blocks below ``layer`` fires
    (``blocks.0.hook_resid_pre`` fires only when ``layer == 0``, on ``residual``).

    ``residual`` is handed to block ``layer`` as it is (not copied, gradients flow through it). Every pass inside
    the ``with`` block skips, so run nothing else on the model there; the block holds the model's tv_lens lock
    (:func:`~tv_lens.models.exclusive.model_lock`), so tv_lens passes from other threads wait for it.

    Args:
        model: A model for which :func:`supports_block_skipping` holds, or its adapter.
        layer: The block that ``residual`` enters (``0`` skips nothing and only replaces the embedding output).
        residual: The residual stream entering ``layer`` ``[batch, pos, d_model]``; its batch and length set the
            dummy tokens' shape.
        stop_at_layer: The ``stop_at_layer`` the pass will be given, if any: it must be ``>= layer``, since the
            skipped blocks cannot stop the pass (with ``stop_at_layer == layer`` the pass returns ``residual`` after
            the hooks on ``blocks.{layer}.hook_resid_pre``).

    Yields:
        The token ids to pass to the model, ``Int[Tensor, "batch pos"]`` (zeros).

    Raises:
        ModelNotSupportedError: The model fails :func:`supports_block_skipping`.
        LayerOutOfRangeError: ``layer`` is not a block index, or ``stop_at_layer < layer``.
        ShapeError: ``residual`` is not ``[batch, pos, d_model]`` floats, or (raised by the pass) the hidden states
            entering ``layer`` have another shape.
    """
    adapter = adapt(model)
    layer = adapter.check_layer(layer)
    if stop_at_layer is not None and stop_at_layer < layer:
        raise LayerOutOfRangeError(
            f"stop_at_layer={stop_at_layer} is below the start block {layer}: the blocks below the start are "
            "skipped, so the pass cannot stop there. Use stop_at_layer >= start layer."
        )
    if residual.ndim != 3 or residual.shape[-1] != adapter.d_model or not residual.is_floating_point():
        raise ShapeError(
            f"The residual entering block {layer} must be Float[batch, pos, d_model={adapter.d_model}], got "
            f"{residual.dtype} {tuple(residual.shape)}."
        )
    layout = _layout(adapter)
    blocks = _blocks(adapter)
    if layout is None or blocks is None:
        raise ModelNotSupportedError(
            f"A {type(adapter.model).__name__} cannot start a pass at a block by skipping the blocks below it (its "
            "forward does not call `model.blocks` in a loop whose skipped pass equals the full pass); check "
            "supports_block_skipping(model) first and use start_at_layer or a hook on hook_resid_pre instead."
        )
    tokens = torch.zeros(residual.shape[:2], dtype=torch.long, device=adapter.device)
    with model_lock(adapter.model), _patched(blocks, layer, residual, layout):
        yield tokens


def _layout(adapter: ModelAdapter) -> _Layout | None:
    """The model's cached :class:`_Layout`, probed on first use (``None``: skipping not supported)."""
    return adapter.capability("block_skipping", _probe)


def _blocks(adapter: ModelAdapter) -> list[nn.Module] | None:
    """The model's ``blocks``, one module per layer, or ``None``."""
    blocks = getattr(adapter.model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, Sequence)) or len(blocks) != adapter.n_layers:
        return None
    listed = list(blocks)
    return listed if all(isinstance(block, nn.Module) for block in listed) else None


def _probe(adapter: ModelAdapter) -> _Layout | None:
    """Check skipping on the model (see :func:`supports_block_skipping`); the layout, or ``None``."""
    blocks = _blocks(adapter)
    if blocks is None:
        return None
    try:
        return _probe_passes(adapter, blocks)
    except Exception:  # any failure of the probe means: not supported
        return None


def _probe_passes(adapter: ModelAdapter, blocks: list[nn.Module]) -> _Layout | None:
    """The full and the skipped probe pass (see :func:`supports_block_skipping`)."""
    model, layer = adapter.model, adapter.n_layers - 1
    pos = min(_PROBE_POS, adapter.n_ctx)
    tokens = (torch.arange(_PROBE_BATCH * pos).view(_PROBE_BATCH, pos) * 7 + 1) % adapter.d_vocab
    outputs: list[list[Any]] = [[] for _ in blocks]
    entering: list[Tensor] = []
    with ExitStack() as stack:
        for index, block in enumerate(blocks):
            stack.callback(block.register_forward_hook(partial(_record_output, outputs=outputs[index])).remove)
        capture = partial(_record_input, inputs=entering)
        stack.callback(blocks[layer].register_forward_pre_hook(capture, with_kwargs=True).remove)
        full = model(tokens.to(adapter.device))
    kinds = [_tuple_output(calls[0]) if len(calls) == 1 else None for calls in outputs]
    if len(entering) != 1 or any(kind is None for kind in kinds):
        return None
    layout = _Layout(tuple_output=tuple(int(kind or 0) for kind in kinds))

    block_calls, inner_calls = [0] * (layer + 1), [0]
    shared = _shared_modules(model, blocks)
    with ExitStack() as stack:
        for index, block in enumerate(blocks[: layer + 1]):
            stack.callback(block.register_forward_pre_hook(partial(_count, calls=block_calls, slot=index)).remove)
            inside = (
                [module for module in block.modules() if module is not block and id(module) not in shared]
                if index < layer
                else []
            )
            for module in inside:
                stack.callback(module.register_forward_pre_hook(partial(_count, calls=inner_calls, slot=0)).remove)
        with _patched(blocks, layer, entering[0], layout):
            skipped = model(torch.zeros_like(tokens).to(adapter.device))
    if inner_calls[0] or block_calls != [1] * (layer + 1):
        return None
    if not isinstance(full, Tensor) or not isinstance(skipped, Tensor) or full.shape != skipped.shape:
        return None
    atol, rtol = (1e-5, 1e-5) if full.dtype in (torch.float32, torch.float64) else (1e-2, 1e-2)
    return layout if torch.allclose(skipped, full, atol=atol, rtol=rtol) else None


def _shared_modules(model: nn.Module, blocks: list[nn.Module]) -> set[int]:
    """Ids of the modules a block holds that the model also holds outside its blocks.

    Such a module runs at the model's level, before the layer loop, when the blocks below the start are skipped too:
    GPT-OSS's attention keeps a reference to the model's rotary embedding, which computes every layer's positions
    once.
    """
    in_blocks = {id(module) for block in blocks for module in block.modules()}
    block_ids = {id(block) for block in blocks}
    shared: set[int] = set()
    for child in model.children():
        ids = {id(module) for module in child.modules()}
        if not ids & block_ids:  # not the blocks' container
            shared |= ids & in_blocks
    return shared


@contextmanager
def _patched(blocks: list[nn.Module], layer: int, residual: Tensor, layout: _Layout) -> Iterator[None]:
    """Blocks below ``layer`` pass their input through; block ``layer`` takes ``residual`` as its input.

    Sets ``forward`` in each block's instance ``__dict__`` (bypassing ``__setattr__``, which TransformerLens's
    bridge components forward to the wrapped module) and restores what was there on exit, also on errors.
    """
    missing = object()
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for index, block in enumerate(blocks[: layer + 1]):
            saved.append((block, block.__dict__.get("forward", missing)))
            if index < layer:
                block.__dict__["forward"] = _pass_through(layout.tuple_output[index])
            else:
                block.__dict__["forward"] = _injecting(block.forward, residual, layer)
        yield
    finally:
        for block, previous in reversed(saved):
            if previous is missing:
                block.__dict__.pop("forward", None)
            else:
                block.__dict__["forward"] = previous


def _pass_through(length: int) -> Callable[..., Any]:
    """A block forward returning its input hidden states: bare (``length`` 0) or first of ``length`` (the rest None)."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        hidden = _hidden_states(args, kwargs)
        if hidden is None:
            raise ModelNotSupportedError(
                "A skipped block was called without hidden states [batch, pos, d_model] as its first argument or "
                "`hidden_states=`; this model cannot skip blocks."
            )
        return (hidden, *(None,) * (length - 1)) if length else hidden

    return forward


def _injecting(forward: Callable[..., Any], residual: Tensor, layer: int) -> Callable[..., Any]:
    """Block ``layer``'s ``forward``, called with ``residual`` in place of its input hidden states."""

    def injected(*args: Any, **kwargs: Any) -> Any:
        hidden = _hidden_states(args, kwargs)
        if hidden is None:
            raise ModelNotSupportedError(
                f"Block {layer} was called without hidden states [batch, pos, d_model] as its first argument or "
                "`hidden_states=`; this model cannot start a pass there by skipping blocks."
            )
        if hidden.shape != residual.shape:
            raise ShapeError(
                f"The residual entering block {layer} has shape {tuple(residual.shape)}, but the model's pass on the "
                f"dummy tokens has hidden states {tuple(hidden.shape)} there."
            )
        if args and isinstance(args[0], Tensor):
            return forward(residual, *args[1:], **kwargs)
        return forward(*args, **{**kwargs, "hidden_states": residual})

    return injected


def _record_output(module: nn.Module, args: tuple[Any, ...], output: Any, *, outputs: list[Any]) -> None:
    """Forward hook of the probe: keep what a block returned."""
    outputs.append(output)


def _record_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *, inputs: list[Tensor]) -> None:
    """Forward pre-hook of the probe: keep a copy of the hidden states entering a block."""
    hidden = _hidden_states(args, kwargs)
    if hidden is not None:
        inputs.append(hidden.detach().clone())


def _count(module: nn.Module, args: tuple[Any, ...], *, calls: list[int], slot: int) -> None:
    """Forward pre-hook of the probe: count a module's calls."""
    calls[slot] += 1


def _hidden_states(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """The hidden states a block was called with: its first positional tensor, else ``hidden_states=``."""
    if args and isinstance(args[0], Tensor):
        return args[0]
    hidden = kwargs.get("hidden_states")
    return hidden if isinstance(hidden, Tensor) else None


def _tuple_output(output: Any) -> int | None:
    """The length of a block's output tuple, hidden states first (0: bare hidden states; ``None``: neither)."""
    if isinstance(output, Tensor):
        return 0
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return len(output)
    return None
