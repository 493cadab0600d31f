"""The KV cache of generation: which cache a model has that reproduces its full pass, and stepping on it."""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Literal

import torch
from torch import Tensor

from tv_lens.errors import ModelNotSupportedError, ShapeError, TvLensError
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.exclusive import hooks_attached
from tv_lens.models.running import check_no_positioned_writes, forward

__all__ = ["CacheKind", "CacheRunner", "cache_kind", "kv_cache_support"]


CacheKind = Literal["hooked", "hf"]


def cache_kind(adapter: ModelAdapter, use_cache: bool | str) -> CacheKind | None:
    """The cache a generation runs on under ``use_cache`` (``None``: recompute the prefix at every step)."""
    if use_cache not in (True, False, "auto"):
        raise ShapeError(f"use_cache must be 'auto', True or False, got {use_cache!r}.")
    if use_cache is False or (use_cache == "auto" and hooks_attached(adapter.model)):
        return None
    kind = kv_cache_support(adapter.model)
    if kind is None and use_cache is True:
        raise ModelNotSupportedError(
            "use_cache=True, but this model has no KV cache that reproduces its full forward pass (a native "
            "TransformerBridge has none; a bridge over HuggingFace may ignore the cache). Use use_cache='auto' "
            "or False to recompute the prefix at every step."
        )
    return kind


def kv_cache_support(model: Any) -> CacheKind | None:
    """The KV cache :func:`generate` can use on ``model``: ``"hooked"``, ``"hf"`` or ``None`` (detected once).

    ``"hooked"``: TransformerLens's own cache (``model(tokens, past_kv_cache=...)``, ``HookedTransformer``).
    ``"hf"``: the HuggingFace cache through a ``TransformerBridge``
    (``model(tokens, return_type="logits_and_cache", past_key_values=...)``). A cache counts only if, on a short
    random prompt, a prefix pass and two one-token steps give the logits of one full pass; some bridges accept
    the cache but never fill it (the attention wrappers of several architectures read a keyword that
    ``transformers`` 5 no longer passes), which this check catches.
    """
    return adapt(model).capability("kv_cache", _detect_cache)


def _detect_cache(adapter: ModelAdapter) -> CacheKind | None:
    if adapter.d_in is not None or adapter.n_ctx < 3:
        return None
    try:
        parameters = inspect.signature(adapter.model.forward).parameters
    except (TypeError, ValueError):
        return None
    arguments: dict[CacheKind, str] = {"hooked": "past_kv_cache", "hf": "past_key_values"}
    kinds = [kind for kind, name in arguments.items() if name in parameters]
    width = min(6, adapter.n_ctx)
    tokens = torch.randint(0, adapter.d_vocab, (2, width), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(adapter.device)
    with torch.no_grad():
        full = forward(adapter, tokens)
        for kind in kinds:
            try:
                runner = CacheRunner(adapter, kind, 2)
                cached = torch.cat(
                    [runner(tokens[:, : width - 2]), runner(tokens[:, -2:-1]), runner(tokens[:, -1:])], 1
                )
            except (
                ImportError,
                TypeError,
                ValueError,
                RuntimeError,
                AttributeError,
                NotImplementedError,
                _NoCacheError,
            ):
                continue
            eps = torch.finfo(full.dtype).eps if full.is_floating_point() else 0.0
            tolerance = max(1e-4, 16 * eps) * (1 + float(full.abs().max()))
            if cached.shape == full.shape and torch.allclose(cached, full, rtol=1e-3, atol=tolerance):
                return kind
    return None


class _NoCacheError(TvLensError):
    """The model returned no KV cache (caught while detecting whether its cache works)."""


class CacheRunner:
    """Runs successive chunks of a batch of rows through the model, each step extending its KV cache."""

    def __init__(self, adapter: ModelAdapter, kind: CacheKind, n_rows: int) -> None:
        self.adapter, self.kind, self.n_rows, self.seen = adapter, kind, n_rows, 0
        self.cache: Any = None
        if kind == "hooked":
            self.cache = _tl_cache_class().init_cache(adapter.model.cfg, adapter.device, n_rows)

    def __call__(self, tokens: Tensor) -> Tensor:
        """Logits ``[rows, new, d_vocab]`` of ``tokens`` ``[rows, new]`` following every token run before."""
        check_no_positioned_writes(self.adapter)
        model, width = self.adapter.model, tokens.shape[1]
        self.seen += width
        if self.kind == "hooked":
            mask = torch.ones(tokens.shape, dtype=torch.long, device=tokens.device)
            return model(tokens, past_kv_cache=self.cache, attention_mask=mask)
        mask = torch.ones(self.n_rows, self.seen, dtype=torch.long, device=tokens.device)
        extra = {} if self.cache is None else {"past_key_values": self.cache}
        with warnings.catch_warnings():
            # The bridge hands HuggingFace the cache as `past_key_values`, which transformers 5 deprecates: a
            # warning about tv_lens's call, not the user's (and an error where warnings are errors).
            warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
            output = model(tokens, return_type="logits_and_cache", attention_mask=mask, **extra)
        if not isinstance(output, tuple) or output[1] is None:
            raise _NoCacheError("the model returned no KV cache")
        logits, self.cache = output
        return logits


def _tl_cache_class() -> Any:
    """TransformerLens's KV-cache class (its module moved between versions)."""
    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache
    except ImportError:
        from transformer_lens.past_key_value_caching import (  # type: ignore[import-not-found,no-redef]
            HookedTransformerKeyValueCache,
        )

        return HookedTransformerKeyValueCache
