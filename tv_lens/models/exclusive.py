"""One model, used safely: a lock per model, capability checks unseen by user hooks, analyses in eval mode.

Two analyses on one model from two threads would attach hooks to the same hook points and read each other's
rows. Every tv_lens pass holds :func:`model_lock` while its hooks are attached, so passes from different
threads run one after the other (a pass the user runs without tv_lens takes no lock).

tv_lens checks once per model what its forward can do (``start_at_layer``, attention masking through hooks,
a KV cache) by running it on a probe input. :func:`user_hooks_detached` keeps the user's own hooks out of
those runs: they neither see the probe nor, by raising, change what is detected.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch

__all__ = ["evaluating", "hooks_attached", "in_mode", "model_lock", "user_hooks_detached"]

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The re-entrant lock tv_lens holds on ``model`` while its hooks are attached (one per model object)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def user_hooks_detached(model: Any) -> Iterator[None]:
    """Hold the model's lock and set aside every forward hook of its hook points for the block; then restore them.

    The hooks' handles stay valid: the same entries are put back into each hook point's hook dictionary.
    """
    hook_dict = getattr(model, "hook_dict", None) or {}
    with model_lock(model):
        saved = []
        try:
            for hook_point in {id(point): point for point in hook_dict.values()}.values():
                hooks = getattr(hook_point, "_forward_hooks", None)
                if hooks:
                    saved.append((hooks, dict(hooks)))
                    hooks.clear()
            yield
        finally:
            for hooks, entries in saved:
                hooks.update(entries)


def hooks_attached(model: Any, within: Sequence[Any] | None = None) -> bool:
    """Whether forward hooks are attached to any hook point of ``model`` (``within``: of those modules only)."""
    points = {id(point): point for point in (getattr(model, "hook_dict", None) or {}).values()}
    if within is not None:
        inside = {id(module) for part in within for module in part.modules()}
        points = {key: point for key, point in points.items() if key in inside}
    return any(getattr(point, "fwd_hooks", None) for point in points.values())


def evaluating(model: Any) -> AbstractContextManager[None]:
    """Run the block with ``model`` in eval mode (no dropout), then give every submodule back its own mode.

    Analyses measure the model, so a model left in train mode (dropout, LoRA dropout) must not make them random.
    """
    return in_mode(model, training=False)


@contextmanager
def in_mode(model: Any, *, training: bool) -> Iterator[None]:
    """Run the block with every submodule of ``model`` in train or eval mode, then give each its own mode back.

    A model whose modules had different modes (dropout switched off by hand) keeps them.
    """
    modules = _modules(model)
    modes = [module.training for module in modules]
    try:
        for module in modules:
            module.training = training
        yield
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.training = mode


def _modules(model: Any) -> list[Any]:
    """Every submodule of ``model``, and of the source model a bridge wraps outside its module tree."""
    found: dict[int, Any] = {}
    for root in (model, getattr(model, "original_model", None)):
        if isinstance(root, torch.nn.Module):
            found.update((id(module), module) for module in root.modules())
    return list(found.values())
