"""One model, used safely: a lock per model, capability checks unseen by user hooks, analyses in eval mode.

Two analyses on one model from two threads would attach hooks to the same hook points and read each other's
rows. Every tv_lens pass holds :func:`model_lock` while its hooks are attached, so passes from different
threads run one after the other (a pass the user runs without tv_lens takes no lock).

tv_lens checks once per model what its forward can do (``start_at_layer``, attention masking through hooks,
a KV cache) by running it on a probe input. :func:`user_hooks_detached` keeps the user's own hooks out of
those runs: they neither see the probe nor, by raising, change what is detected. The user's hooks are those on
TransformerLens's hook points, and plain PyTorch forward hooks and pre-hooks on any other module (a block's
``register_forward_hook``, as steering libraries attach them), the source model a bridge wraps included; the hooks
TransformerLens, HuggingFace ``transformers``, ``accelerate`` and tv_lens install on modules themselves are part of
the model.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
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


#: Packages whose PyTorch hooks on modules are the model's own machinery (a bridge's and HuggingFace's capture hooks,
#: tv_lens's probes), not hooks of the user's.
_LIBRARY_PACKAGES = frozenset({"accelerate", "torch", "transformer_lens", "transformers", "tv_lens"})


@contextmanager
def user_hooks_detached(model: Any) -> Iterator[None]:
    """Hold the model's lock and set aside the user's forward hooks and pre-hooks for the block; then restore them.

    Every hook of a hook point, and a plain PyTorch hook of the user's on any module (see the module docstring). The
    hooks' handles stay valid: the same entries are put back into each module's hook dictionaries, in their order.
    """
    with model_lock(model):
        saved = []
        try:
            for hooks, keys in _user_hooks(model):
                saved.append((hooks, dict(hooks), keys))
                for key in keys:
                    del hooks[key]
            yield
        finally:
            for hooks, before, keys in saved:
                now = dict(hooks)
                hooks.clear()
                hooks.update((key, fn) for key, fn in before.items() if key in keys or key in now)
                hooks.update((key, fn) for key, fn in now.items() if key not in before)


def hooks_attached(model: Any, within: Sequence[Any] | None = None) -> bool:
    """Whether hooks of the user's are attached to ``model`` (``within``: to those modules only).

    Any hook of a hook point counts, and a plain PyTorch forward hook or pre-hook of the user's on any other module
    (which would, like a hook point's, see one token per step of a KV-cache pass).
    """
    inside = None if within is None else {id(module) for part in within for module in part.modules()}
    return any(inside is None or id(module) in inside for module, _, _ in _user_hook_entries(model))


def _user_hooks(model: Any) -> list[tuple[dict[Any, Any], set[Any]]]:
    """Each hook dictionary of ``model``'s modules that holds hooks of the user's, with their keys."""
    found: dict[int, tuple[dict[Any, Any], set[Any]]] = {}
    for _, hooks, key in _user_hook_entries(model):
        found.setdefault(id(hooks), (hooks, set()))[1].add(key)
    return list(found.values())


def _user_hook_entries(model: Any) -> Iterator[tuple[Any, dict[Any, Any], Any]]:
    """``(module, hook dictionary, key)`` of every hook of the user's on ``model``'s modules."""
    points = {id(point): point for point in (getattr(model, "hook_dict", None) or {}).values()}
    modules = {id(module): module for module in _modules(model)} | points
    for key_module, module in modules.items():
        for name in ("_forward_hooks", "_forward_pre_hooks"):
            hooks: dict[Any, Any] = getattr(module, name, None) or {}
            for key, fn in list(hooks.items()):
                if key_module in points or _users_hook(fn):
                    yield module, hooks, key


def _users_hook(fn: Any) -> bool:
    """Whether a PyTorch hook function is the user's, not installed by a library the model is made of."""
    while isinstance(fn, partial):
        fn = fn.func
    module = getattr(fn, "__module__", None)
    return not isinstance(module, str) or module.split(".")[0] not in _LIBRARY_PACKAGES


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
