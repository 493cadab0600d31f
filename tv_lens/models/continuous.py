"""Continuous-input models: a linear read-in, a TransformerLens model's blocks, a linear read-out.

Regression prompts (Garg et al.) are sequences of vectors, not tokens. :class:`ContinuousModel` wraps a
TransformerLens model so it reads them:

1. a learned linear read-in maps each input vector to the residual stream (hook point ``hook_embed``);
2. the TL model's own positional embedding is added (``hook_pos_embed``; nothing for rotary models);
3. the sum enters block 0 and the TL model runs from there (``start_at_layer=0``, or on models without it
   the fallback of :func:`tv_lens.models.running.forward`: dummy tokens, block 0's input overwritten);
4. the TL model's final LayerNorm and unembedding read out, so the inner model is built with
   ``d_vocab = d_out``: its unembedding *is* the linear read-out ``d_model → d_out`` (as Garg et al.
   read out GPT-2's final, layer-normed hidden state).

The wrapper's ``hook_dict`` is the TL model's own (``blocks.{l}.hook_resid_post``, ``blocks.{l}.attn.hook_z``,
``ln_final.*`` ...) with the token-embedding hook points replaced by the two above, and its ``cfg`` is the TL
model's, so :func:`tv_lens.probes.collect`, :func:`tv_lens.interventions.run_with_interventions`, ``adapt`` and
TransformerLens's ``run_with_hooks`` / ``run_with_cache`` work on it unchanged. The wrapper declares
``d_in``; the adapter then reads float inputs as ``Float[batch, pos, d_in]`` vectors (and a residual stream
only together with ``start_at_layer``).

>>> from tv_lens.models import ModelConfig
>>> model = build_continuous_model(ModelConfig(d_vocab=1, n_layers=2, d_model=32, n_ctx=16), d_in=5, d_out=1)
>>> model(torch.randn(3, 8, 5)).shape
torch.Size([3, 8, 1])
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from tv_lens.checks import is_int
from tv_lens.errors import ModelNotSupportedError, PositionError, ShapeError
from tv_lens.models.adapter import adapt
from tv_lens.models.builders import ModelConfig, build_model
from tv_lens.models.running import attached_hooks

try:  # TransformerLens ≥ 4 exports it at top level only; 3.x keeps it in hook_points.
    from transformer_lens import HookedRootModule
except ImportError:  # pragma: no cover - depends on the installed TransformerLens
    from transformer_lens.hook_points import HookedRootModule  # type: ignore[no-redef]

__all__ = ["ContinuousModel", "build_continuous_model"]

# Hook points of the token embedding, which a continuous-input pass never uses.
_TOKEN_EMBEDDING_HOOKS = {"hook_embed", "hook_pos_embed", "hook_tokens"}
_TOKEN_EMBEDDING_MODULES = {"embed", "pos_embed"}
_NO_ADDITIVE_POSITION = {"rotary", "alibi"}


class ContinuousModel(HookedRootModule):
    """A TransformerLens model that reads ``Float[batch, pos, d_in]`` vectors instead of tokens.

    Attributes:
        model: The wrapped TransformerLens model (its unembedding is the read-out).
        d_in: Width of the input vectors.
        read_in: Linear map ``d_in → d_model``.
        cfg: The wrapped model's config (``d_vocab`` is the output width ``d_out``).
        hook_embed: Read-in output ``[batch, pos, d_model]``.
        hook_pos_embed: Positional embedding added to it ``[batch, pos, d_model]``.
    """

    def __init__(self, model: Any, d_in: int, *, seed: int = 0) -> None:
        """Wrap ``model`` with a fresh read-in of width ``d_in``, initialised from ``seed``.

        Raises:
            ModelNotSupportedError: ``model`` is not a TransformerLens model, is already continuous, or has a
                positional embedding the wrapper cannot add (e.g. shortformer).
        """
        super().__init__()
        inner = adapt(model)
        if inner.d_in is not None:
            raise ModelNotSupportedError("The model already embeds continuous inputs; wrap a token model instead.")
        if not is_int(d_in) or d_in < 1:
            raise ShapeError(f"d_in must be a positive int (the width of the input vectors), got {d_in!r}.")
        self.model = model
        self.d_in = d_in
        self.cfg = model.cfg
        self._inner = inner
        # Detected once, here, while no hook is attached (detection runs the last block); a plain attribute, so
        # copies of the wrapper keep it and never detect again inside a hooked pass.
        self._start_at_layer_works = inner.supports_start_at_layer
        self._positional = _check_positional(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.read_in = nn.Linear(d_in, inner.d_model, device=inner.device, dtype=inner.dtype)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.setup()

    def setup(self) -> None:
        """Name the hook points: the TL model's own, with the token-embedding ones replaced by the wrapper's."""
        own = {"hook_embed": self.hook_embed, "hook_pos_embed": self.hook_pos_embed}
        for name, hook_point in own.items():
            hook_point.name = name
        inner = {
            name: hook_point
            for name, hook_point in self.model.hook_dict.items()
            if name not in _TOKEN_EMBEDDING_HOOKS and name.split(".")[0] not in _TOKEN_EMBEDDING_MODULES
        }
        self.hook_dict = {**inner, **own}
        self.mod_dict = dict(self.hook_dict)

    @property
    def d_out(self) -> int:
        """Width of the output vectors (the wrapped model's ``d_vocab``)."""
        return self._inner.d_vocab

    def embed(self, inputs: Float[Tensor, "batch pos d_in"]) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream entering block 0: read-in of ``inputs`` plus the positional embedding."""
        if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.ndim != 3:
            raise ShapeError(
                f"ContinuousModel takes Float[batch, pos, d_in={self.d_in}] input vectors, got "
                f"{getattr(inputs, 'dtype', type(inputs).__name__)} of shape {tuple(getattr(inputs, 'shape', ()))}."
            )
        if inputs.shape[-1] != self.d_in:
            raise ShapeError(
                f"Input vectors have width {inputs.shape[-1]} but this model's read-in expects d_in={self.d_in}; "
                "build the model with the task pool's d_in."
            )
        n_pos = inputs.shape[1]
        if n_pos > self._inner.n_ctx:
            raise PositionError(
                f"Prompts of {n_pos} positions exceed the model's context n_ctx={self._inner.n_ctx}; use fewer "
                "shots or a model with a longer context."
            )
        embedded = self.hook_embed(self.read_in(inputs.to(self.read_in.weight.dtype)))
        if not self._positional:
            return embedded
        positions = self.model.pos_embed.W_pos[:n_pos].expand(inputs.shape[0], -1, -1)
        return embedded + self.hook_pos_embed(positions)

    def forward(
        self,
        inputs: Float[Tensor, "batch pos d_in"] | Float[Tensor, "batch pos d_model"],
        *,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
    ) -> Tensor:
        """Predictions ``[batch, pos, d_out]`` (or the residual stream when stopping early).

        Args:
            inputs: Input vectors, or with ``start_at_layer`` the residual stream entering that block.
            start_at_layer: Block at which a residual input enters (skips the read-in).
            stop_at_layer: Return the residual stream entering this block instead of predictions.
        """
        if start_at_layer is None:
            residual, start_at_layer = self.embed(inputs), 0
        elif inputs.ndim != 3 or inputs.shape[-1] != self._inner.d_model:
            raise ShapeError(
                f"With start_at_layer the input is the residual stream Float[batch, pos, "
                f"d_model={self._inner.d_model}], got shape {tuple(inputs.shape)}."
            )
        else:
            residual = inputs.to(self._inner.dtype)
        return self._run_blocks(residual, start_at_layer, stop_at_layer)

    def _run_blocks(self, residual: Tensor, start_at_layer: int, stop_at_layer: int | None) -> Tensor:
        """The inner model from block ``start_at_layer``: its own ``start_at_layer``, or the hook fallback.

        The fallback (TransformerLens 3.9's bridge) runs dummy tokens and overwrites the block's input with a
        hook that runs before any other hook there, so hooks of probes and interventions see ``residual``.
        """
        kwargs = (
            {} if stop_at_layer is None or stop_at_layer >= self._inner.n_layers else {"stop_at_layer": stop_at_layer}
        )
        if self._start_at_layer_works:
            return self.model(residual, start_at_layer=start_at_layer, **kwargs)
        overwrite = [(self._inner.hook_name("resid_pre", start_at_layer), lambda act, hook: residual)]
        with attached_hooks(self._inner, overwrite, prepend=True):
            return self.model(torch.zeros(residual.shape[:2], dtype=torch.long, device=residual.device), **kwargs)

    def run_with_cache(self, *model_args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """TransformerLens's ``run_with_cache``; the cache also answers to alias names.

        A TransformerBridge's hook points carry canonical names (``blocks.{l}.hook_out``); the cache holds
        them under every name of ``hook_dict`` too (``blocks.{l}.hook_resid_post``), as the bridge's own does.
        """
        output, cache = super().run_with_cache(*model_args, **kwargs)
        store = getattr(cache, "cache_dict", cache)
        for name, hook_point in self.hook_dict.items():
            if name not in store and hook_point.name in store:
                store[name] = store[hook_point.name]
        return output, cache


def _check_positional(model: Any) -> bool:
    """Whether the model adds a learned positional embedding ``pos_embed.W_pos`` to the residual stream."""
    kind = getattr(model.cfg, "positional_embedding_type", "standard")
    if kind in _NO_ADDITIVE_POSITION:
        return False
    if kind != "standard" or getattr(getattr(model, "pos_embed", None), "W_pos", None) is None:
        raise ModelNotSupportedError(
            f"ContinuousModel adds the model's positional embedding `pos_embed.W_pos` to the read-in; this model "
            f"has positional_embedding_type={kind!r} and no such table. Use a model with standard (learned), "
            "rotary or alibi positions."
        )
    return True


def build_continuous_model(
    config: ModelConfig, d_in: int, d_out: int = 1, device: str | torch.device = "cpu"
) -> ContinuousModel:
    """A randomly initialised :class:`ContinuousModel` of ``config``'s shape.

    The inner TransformerLens model is built with ``d_vocab = d_out`` (``config.d_vocab`` is ignored), so its
    unembedding is the read-out; the read-in is initialised from ``config.seed``.

    Args:
        config: Shape and backend of the inner model.
        d_in: Width of the input vectors.
        d_out: Width of the predictions (1 for scalar regression).
        device: Where to put the model.
    """
    if not is_int(d_out) or d_out < 1:
        raise ShapeError(f"d_out must be a positive int (the width of the predictions), got {d_out!r}.")
    inner = build_model(replace(config, d_vocab=d_out), device=device)
    return ContinuousModel(inner, d_in, seed=config.seed).eval()
