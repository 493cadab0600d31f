"""Forward passes with temporary hooks: the one place tv_lens calls a model.

:func:`attached_hooks` adds forward hooks through each ``HookPoint``'s own ``add_hook`` (so the bridge's
shape conversions apply, e.g. ``attn.hook_z`` as ``[batch, pos, n_heads, d_head]``) and removes exactly
those handles on exit, also when an exception is raised mid-pass. Hooks the user attached before are never
touched (unlike ``reset_hooks``, which clears every non-permanent hook).

:func:`forward` runs tokens or a residual stream, starting at a block (``start_at_layer`` where the model
supports it, else by overwriting that block's input). :func:`read_pass` runs hooks that only read and stops
the pass as soon as each of them has run, so nothing after the last activation read is computed (neither the
rest of the blocks nor the unembedding); :func:`read_batches` runs it over prompts in batches of similar length.

Token inputs are always passed unpadded (tv_lens aligns prompts to start at column 0 and cuts them after the
last position needed), so the model must not mask any of them. HookedTransformer (TransformerLens ≤ 3) builds
its own attention mask from pad tokens when its tokenizer pads on the left, and masks the BOS token out when
BOS and pad share an id (Qwen2 tokenizers); :func:`forward` passes an all-ones ``attention_mask`` there.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.errors import HookNotFoundError, PositionError, ShapeError, TvLensError
from tv_lens.models.adapter import ModelAdapter
from tv_lens.models.block_skipping import skipping_blocks, supports_block_skipping
from tv_lens.models.exclusive import evaluating, model_lock
from tv_lens.models.memory import fitting
from tv_lens.positions import Inputs, prompt_batches

__all__ = [
    "HookFn",
    "attached_hooks",
    "check_no_positioned_writes",
    "forward",
    "positioned_writes",
    "read_batches",
    "read_pass",
]

#: Per model, the hook points holding a hook that writes at one position of every pass (an open ``steering`` block).
_POSITIONED: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()

HookFn = Callable[..., Any]


@contextmanager
def attached_hooks(
    adapter: ModelAdapter, hooks: Sequence[tuple[str, HookFn]], *, prepend: bool = False
) -> Iterator[None]:
    """Attach ``(hook_name, fn)`` forward hooks for the duration of the block, then remove just those.

    ``fn(activation, hook)`` follows TransformerLens's convention: return a tensor to replace the
    activation, or ``None`` to leave it. ``prepend=True`` runs them before the hooks already attached.

    One model, several threads: the block holds the model's lock (one per model, re-entrant), so tv_lens
    passes from different threads on one model run one after the other and never see each other's hooks.
    """
    added: list[tuple[Any, Any]] = []
    with model_lock(adapter.model):
        try:
            for name, fn in hooks:
                hook_point = adapter.hook_point(name)
                before = list(hook_point.fwd_hooks)
                hook_point.add_hook(fn, dir="fwd", prepend=prepend)
                added.extend(
                    (hook_point, handle) for handle in hook_point.fwd_hooks if not any(handle is old for old in before)
                )
            yield
        finally:
            for hook_point, handle in reversed(added):
                handle.hook.remove()
                hook_point.fwd_hooks = [h for h in hook_point.fwd_hooks if h is not handle]


@contextmanager
def positioned_writes(adapter: ModelAdapter, hook_name: str) -> Iterator[None]:
    """Record for the block that ``hook_name`` holds a hook writing at one position of every pass.

    tv_lens's own passes refuse to run while such a hook is attached (:func:`forward`): they batch prompts by
    length and pad them, so one column of a pass is not each prompt's own token, and the numbers would depend on
    the batch size.
    """
    names = _POSITIONED.setdefault(adapter.model, [])
    names.append(hook_name)
    try:
        yield
    finally:
        names.remove(hook_name)


def check_no_positioned_writes(adapter: ModelAdapter) -> None:
    """Raise if a hook that writes at one position of every pass is attached (see :func:`positioned_writes`)."""
    for name in _POSITIONED.get(adapter.model, ()):
        if adapter.hook_point(name).fwd_hooks:  # set aside while tv_lens probes what the model can do
            raise PositionError(
                f"A steering block writes at one position of every pass ({name}), but tv_lens batches prompts by "
                "length and pads them, so that column is not each prompt's own token and the numbers would depend "
                "on batch_size. Run tv_lens's analyses, probes and generation outside the block, or steer them with "
                "steering(..., pos='all'), or write at each prompt's own position with steer(model, vector, "
                "prompts) or run_with_interventions(model, tokens, answer_pos, [add(layer, vector)])."
            )


def forward(
    adapter: ModelAdapter,
    inputs: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"],
    *,
    start_at_layer: int | None = None,
    stop_at_layer: int | None = None,
    hooks: Sequence[tuple[str, HookFn]] = (),
    require_hooks: bool = False,
) -> Tensor:
    """One forward pass of ``adapter.model`` with temporary ``hooks``.

    Args:
        adapter: The model.
        inputs: Tokens, or the residual stream entering block ``start_at_layer`` (0 when not given), or
            for a model that embeds continuous inputs itself (``adapter.d_in`` set) those inputs.
        start_at_layer: Block at which a residual input enters. The blocks below it are skipped where the model
            allows it (:mod:`tv_lens.models.block_skipping`: bridges, HookedTransformer); otherwise the model's
            own ``start_at_layer`` is used, or dummy tokens run and ``blocks.{l}.hook_resid_pre`` is overwritten
            before any other hook there sees it (the same result, without the saving).
        stop_at_layer: Return the residual stream entering this block instead of logits (``None`` or
            ``n_layers`` for the full pass).
        hooks: ``(hook_name, fn)`` pairs attached for this pass only.
        require_hooks: Check that the pass called every one of ``hooks`` (for hooks that read activations, so
            that a hook point the model never calls cannot leave a read silently empty).

    Returns:
        Logits ``[batch, pos, d_vocab]``, or the residual ``[batch, pos, d_model]`` when stopping early.

    Raises:
        HookNotFoundError: With ``require_hooks``, a hook the pass never called.
        PositionError: A ``steering`` block that writes at one position of every pass is open on the model.
    """
    check_no_positioned_writes(adapter)
    residual_input = inputs.is_floating_point()
    if residual_input and start_at_layer is None and adapter.d_in is None:
        start_at_layer = 0
    if stop_at_layer is not None and stop_at_layer >= adapter.n_layers:
        stop_at_layer = None
    kwargs: dict[str, Any] = {} if stop_at_layer is None else {"stop_at_layer": stop_at_layer}
    hooks = list(hooks)
    names = [name for name, _ in hooks]
    calls = [0] * len(hooks)
    if require_hooks:
        hooks = [(name, partial(_counted, fn=fn, calls=calls, slot=i)) for i, (name, fn) in enumerate(hooks)]
    skip_from: int | None = None  # the block a pass that skips the blocks below it starts at
    entry: list[tuple[str, HookFn]] = []  # overwrites the input of the start block, before any other hook there
    if start_at_layer is not None:
        if not residual_input:
            raise ShapeError(
                "start_at_layer needs the residual stream Float[batch, pos, d_model] as input, got integer "
                "tokens; pass tokens without start_at_layer."
            )
        if start_at_layer > 0 and supports_block_skipping(adapter):
            skip_from = start_at_layer
        elif adapter.supports_start_at_layer:
            kwargs["start_at_layer"] = start_at_layer
        else:
            residual = inputs
            entry.append((adapter.hook_name("resid_pre", start_at_layer), lambda act, hook: residual))
            inputs = torch.zeros(inputs.shape[:2], dtype=torch.long, device=inputs.device)
    with ExitStack() as stack:
        if skip_from is not None:
            inputs = stack.enter_context(skipping_blocks(adapter, skip_from, inputs, stop_at_layer=stop_at_layer))
        if not inputs.is_floating_point() and _masks_left_padding(adapter.model):
            kwargs["attention_mask"] = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        stack.enter_context(attached_hooks(adapter, hooks))
        stack.enter_context(attached_hooks(adapter, entry, prepend=True))
        output = adapter.model(inputs, **kwargs)
    silent = sorted({name for name, n in zip(names, calls, strict=True) if require_hooks and n == 0})
    if silent:
        raise HookNotFoundError(
            f"The forward pass never called hook point(s) {silent}, so nothing was read there. tv_lens needs a "
            "model that calls these hook points in its forward pass (every TransformerLens model does); check the "
            "model's hook_dict and forward."
        )
    return output


def read_pass(
    adapter: ModelAdapter,
    inputs: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"],
    hooks: Sequence[tuple[str, HookFn]],
) -> None:
    """Run ``hooks`` that read activations (their return value is ignored) and stop once each has run.

    The pass ends right after the last of the hooks to fire, so the blocks after it and the unembedding are
    never computed.

    Raises:
        HookNotFoundError: A hook the pass never called.
    """
    hooks = list(hooks)
    pending = set(range(len(hooks)))
    reads = [(name, partial(_read_then_stop, fn=fn, pending=pending, slot=i)) for i, (name, fn) in enumerate(hooks)]
    try:
        with evaluating(adapter.model):
            forward(adapter, inputs, hooks=reads, require_hooks=True)
    except _AllRead:
        return


def read_batches(
    adapter: ModelAdapter,
    inputs: Inputs,
    ends: Int[Tensor, " batch"],
    batch_size: int,
    hooks_for: Callable[[Int[Tensor, " chunk"]], Sequence[tuple[str, HookFn]]],
    *,
    stores: Sequence[Tensor] = (),
    desc: str | None = None,
    progress: bool = False,
) -> None:
    """:func:`read_pass` without gradients over the batches of :func:`~tv_lens.positions.prompt_batches`.

    A pass that runs out of memory starts the reading again with half the prompts per pass
    (:func:`~tv_lens.models.memory.fitting`), after zeroing ``stores``.

    Args:
        adapter: The model.
        inputs: Aligned prompts ``[batch, pos]`` or ``[batch, pos, d]``, each read up to its ``end``.
        ends: One past the last position read in each prompt ``[batch]``.
        batch_size: Prompts per pass.
        hooks_for: ``hooks_for(index)``: the read hooks of the batch of prompts ``index`` ``[chunk]``.
        stores: The tensors the hooks add into (zeroed before each attempt); hooks that only assign rows
            ``store[index] = ...`` need not list theirs.
        desc: Label of the progress bar.
        progress: Show a progress bar over batches (when there is more than one).
    """

    def every_batch(size: int) -> None:
        for store in stores:
            store.zero_()
        for index, batch in prompt_batches(inputs, ends, size, adapter.device, desc=desc, progress=progress):
            hooks = hooks_for(index)
            with torch.no_grad():
                read_pass(adapter, batch, hooks)

    fitting(every_batch, batch_size, "batch_size")


class _AllRead(TvLensError):
    """Raised inside a read pass once every read hook has run (caught by :func:`read_pass`)."""


def _read_then_stop(activation: Tensor, hook: Any, *, fn: HookFn, pending: set[int], slot: int) -> None:
    """Hook body: read, then end the pass if this was the last hook still to run."""
    fn(activation, hook)
    pending.discard(slot)
    if not pending:
        raise _AllRead("every read hook has run")


def _masks_left_padding(model: Any) -> bool:
    """Whether the model may build its own attention mask from pad tokens when given none.

    HookedTransformer does when its tokenizer pads on the left. tv_lens's token inputs never hold padding, so
    for any model whose tokenizer pads on the left and whose forward takes ``attention_mask``, an all-ones mask
    is passed (it changes nothing where the model would not have masked).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if getattr(tokenizer, "padding_side", None) != "left":
        return False
    try:
        return "attention_mask" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _counted(activation: Tensor, hook: Any, *, fn: HookFn, calls: list[int], slot: int) -> Any:
    """Hook body: count the call, then run ``fn``."""
    calls[slot] += 1
    return fn(activation, hook)
