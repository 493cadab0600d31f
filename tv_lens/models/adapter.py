"""What tv_lens needs of a TransformerLens model, read off by structure.

tv_lens never subclasses or ``isinstance``-checks TransformerLens classes: ``HookedTransformer``
(TransformerLens ≤ 3) and ``TransformerBridge`` (TransformerLens ≥ 3) both expose a ``cfg`` with the
model's sizes, a ``hook_dict`` of ``HookPoint`` objects and a forward that accepts ``stop_at_layer``.
:class:`ModelAdapter` reads those once, names the hook points we use, and detects at run time what the
forward can do (``start_at_layer`` raises on TransformerLens 3.9's bridge).

A model whose forward embeds continuous inputs itself (the continuous-input wrapper of
:mod:`tv_lens.models.continuous`) declares their width as an integer attribute ``d_in``; the adapter
records it, and float inputs of such a model are read as those inputs rather than as a residual stream.

What a model's forward can do is found by running it on a probe input, once per model object, through
:meth:`ModelAdapter.capability` (the one cache of such findings, with weak keys: a deleted model drops out).
The capabilities tv_lens probes, and where each probe lives:

- ``start_at_layer``: the forward accepts ``start_at_layer`` (:attr:`ModelAdapter.supports_start_at_layer`);
- ``block_skipping``: tv_lens can skip the blocks below a layer itself
  (:func:`tv_lens.models.block_skipping.supports_block_skipping`);
- ``start_skips_blocks``: a pass from a layer really skips the blocks below it
  (:func:`tv_lens.interventions.sweep.start_skips_blocks`);
- ``attention_masking``: hooks can block keys from queries (:func:`tv_lens.interventions.masking_strategy`);
- ``kv_cache``: a KV cache reproduces the full pass (:func:`tv_lens.generation.kv_cache_support`);
- ``row_unembedding``: final norm + unembedding of residual rows gives the model's logits
  (:func:`tv_lens.models.row_logits.supports_row_unembedding`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from tv_lens.checks import is_int
from tv_lens.errors import HookNotFoundError, LayerOutOfRangeError, ModelNotSupportedError
from tv_lens.models.exclusive import evaluating, user_hooks_detached

__all__ = [
    "EMBED_LAYER",
    "HEAD_SITE",
    "PATTERN_SITE",
    "RESIDUAL_SITES",
    "SUPPORTED_MODELS",
    "ModelAdapter",
    "adapt",
]

SUPPORTED_MODELS = (
    "a TransformerLens HookedTransformer or TransformerBridge (or any module with a TransformerLens `cfg`, "
    "a `hook_dict` of HookPoints and a forward accepting `stop_at_layer`)"
)

#: Residual-stream sites (each ``Float[batch, pos, d_model]``) and the hook name of each, per block.
RESIDUAL_SITES = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
}
#: Per-head attention output (``Float[batch, pos, n_heads, d_head]``).
HEAD_SITE = "blocks.{layer}.attn.hook_z"
#: Attention weights of every query head (``Float[batch, head, query_pos, key_pos]``).
PATTERN_SITE = "blocks.{layer}.attn.hook_pattern"
#: Layer index that stands for the embedding output (the residual stream entering block 0).
EMBED_LAYER = -1

_CFG_FIELDS = ("n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab")
# Per model object (weak keys: a model that is deleted drops out): its checked sizes, and what its forward can do.
_SIZES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_CAPABILITIES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_Found = TypeVar("_Found")


@dataclass(eq=False)
class ModelAdapter:
    """A TransformerLens model seen through the few things tv_lens uses.

    Build with :meth:`from_model` (or :func:`adapt`, which caches one adapter per model).

    Attributes:
        model: The wrapped model, unchanged.
        n_layers: Number of transformer blocks.
        n_heads: Attention heads per block.
        d_model: Width of the residual stream.
        d_head: Width of one head's output (``attn.hook_z``).
        n_ctx: Longest sequence the model accepts.
        d_vocab: Vocabulary size (input tokens), or the output width of a continuous-input model.
        d_in: Width of the continuous inputs the model embeds itself (``Float[batch, pos, d_in]``), or
            ``None`` for a token model, whose float inputs are the residual stream entering block 0.
    """

    model: Any
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    n_ctx: int
    d_vocab: int
    d_in: int | None = None
    _hook_dict: dict[str, Any] | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_model(cls, model: Any) -> ModelAdapter:
        """Read the sizes and check the hook points of a TransformerLens model.

        Raises:
            ModelNotSupportedError: The object has no TransformerLens ``cfg``/``hook_dict``, or lacks a
                residual-stream hook point of some block.
        """
        cfg = getattr(model, "cfg", None)
        hook_dict = getattr(model, "hook_dict", None)
        if cfg is None or not isinstance(hook_dict, dict) or not callable(model):
            raise ModelNotSupportedError(
                f"tv_lens cannot use a {type(model).__name__}: it has no TransformerLens `cfg` and "
                f"`hook_dict`. Pass {SUPPORTED_MODELS}; for a HuggingFace model, load it with "
                "`TransformerBridge.boot_transformers(name)`."
            )
        missing_cfg = [name for name in _CFG_FIELDS if not isinstance(getattr(cfg, name, None), int)]
        if missing_cfg:
            raise ModelNotSupportedError(
                f"The model's cfg lacks integer field(s) {missing_cfg}; tv_lens supports {SUPPORTED_MODELS}."
            )
        d_in = getattr(model, "d_in", None)
        if d_in is not None and (not is_int(d_in) or d_in < 1):
            raise ModelNotSupportedError(
                f"The model's `d_in` (width of the continuous inputs it embeds) must be a positive int or absent, "
                f"got {d_in!r}."
            )
        sizes = {name: int(getattr(cfg, name)) for name in _CFG_FIELDS}
        adapter = cls(model=model, d_in=d_in, **sizes)
        adapter._hook_dict = hook_dict
        try:
            for layer in range(adapter.n_layers):
                for site in ("resid_pre", "resid_post"):
                    adapter.hook_point(adapter.hook_name(site, layer))
        except HookNotFoundError as error:
            raise ModelNotSupportedError(str(error)) from error
        return adapter

    def check_layer(self, layer: int, *, allow_embed: bool = False) -> int:
        """Return ``layer`` if it is a block index of this model (or ``EMBED_LAYER`` when allowed)."""
        if not is_int(layer):
            raise LayerOutOfRangeError(f"Layer must be an int block index, got {layer!r}.")
        low = EMBED_LAYER if allow_embed else 0
        if not low <= layer < self.n_layers:
            embed_note = f" ({EMBED_LAYER} = the embedding output)" if allow_embed else ""
            raise LayerOutOfRangeError(
                f"Layer {layer} is out of range: this model has {self.n_layers} blocks, so use a layer in "
                f"[{low}, {self.n_layers - 1}]{embed_note}."
            )
        return layer

    def check_layers(self, layers: Iterable[int], *, allow_embed: bool = False) -> tuple[int, ...]:
        """Return ``layers`` as a non-empty tuple of block indices of this model (see :meth:`check_layer`)."""
        if isinstance(layers, (int, str, bytes)) or not isinstance(layers, Iterable):
            raise LayerOutOfRangeError(
                f"layers must be a sequence of block indices such as (0, 1), got {layers!r}; for a single layer "
                f"pass a one-element tuple, e.g. ({layers!r},)."
            )
        checked = tuple(self.check_layer(layer, allow_embed=allow_embed) for layer in layers)
        if not checked:
            raise LayerOutOfRangeError("layers is empty; pass at least one block index (or None for every block).")
        return checked

    def hook_name(self, site: str, layer: int) -> str:
        """TransformerLens hook name at ``layer`` of a residual ``site``, ``"attn.hook_z"`` or ``"attn.hook_pattern"``.

        ``layer == EMBED_LAYER`` names the embedding output (``blocks.0.hook_resid_pre``) for any residual
        site.
        """
        if site == "attn.hook_z" or site == "z":
            return HEAD_SITE.format(layer=self.check_layer(layer))
        if site == "attn.hook_pattern":
            return PATTERN_SITE.format(layer=self.check_layer(layer))
        if site not in RESIDUAL_SITES:
            raise HookNotFoundError(
                f"Unknown site {site!r}. Use one of {[*RESIDUAL_SITES, 'attn.hook_z', 'attn.hook_pattern']} "
                "(residual-stream sites are read at d_model width, `attn.hook_z` per head)."
            )
        if self.check_layer(layer, allow_embed=True) == EMBED_LAYER:
            return RESIDUAL_SITES["resid_pre"].format(layer=0)
        return RESIDUAL_SITES[site].format(layer=layer)

    def hook_point(self, name: str) -> Any:
        """The model's ``HookPoint`` called ``name`` (aliases such as ``hook_resid_post`` resolve)."""
        if self._hook_dict is None:  # read once per adapter: a bridge builds its hook_dict on every access
            self._hook_dict = self.model.hook_dict
        hook_point = self._hook_dict.get(name)
        if hook_point is None or not hasattr(hook_point, "add_hook"):
            head_site = next((site for site in (".attn.hook_z", ".attn.hook_pattern") if name.endswith(site)), None)
            if head_site is not None:
                with_site = [key for key in self._hook_dict if key.endswith(head_site)]
                if with_site:
                    which = (
                        "that block has no attention heads, though other blocks have (a linear-attention or "
                        "state-space layer of a hybrid model)"
                    )
                elif any(key.endswith(".attn.hook_z") for key in self._hook_dict):
                    which = "its attention gives no attention weights (no attn.hook_pattern in any block)"
                else:
                    which = "no block of this model has attention heads (a state-space model such as Mamba)"
                if head_site == ".attn.hook_z":
                    fix = (
                        "Head ablation, attribution and function vectors read the heads of every block, so they do "
                        "not apply to this model; the residual-stream analyses do."
                    )
                elif with_site:
                    blocks = sorted(int(key.split(".")[1]) for key in with_site)
                    fix = f"Head attention reads the blocks of its layers: pass layers={tuple(blocks)} (with heads)."
                else:
                    fix = "Head attention does not apply to this model; the residual-stream analyses do."
                raise HookNotFoundError(f"The model has no hook point {name!r}: {which}. {fix}")
            raise HookNotFoundError(
                f"The model has no hook point {name!r}. tv_lens reads `blocks.{{l}}.hook_resid_pre/mid/post`, "
                f"`blocks.{{l}}.hook_attn_out/mlp_out` and `blocks.{{l}}.attn.hook_z`; it supports "
                f"{SUPPORTED_MODELS}."
            )
        return hook_point

    def check_head_outputs(self, activation: Tensor, hook_name: str) -> None:
        """Raise unless ``activation``, read at ``attn.hook_z``, holds one output per head: ``[batch, pos, head, d]``.

        Raises:
            ModelNotSupportedError: Another shape: attention whose heads are not the config's ``n_heads`` outputs of
                ``d_head`` (multi-head latent attention, layers with their own head sizes).
        """
        if activation.ndim != 4 or tuple(activation.shape[2:]) != (self.n_heads, self.d_head):
            raise ModelNotSupportedError(
                f"The heads' output (attn.hook_z, here {hook_name}) has shape {tuple(activation.shape)}, not "
                f"[batch, pos, n_heads={self.n_heads}, d_head={self.d_head}] (one output per query head). Head "
                "ablation, attribution and function vectors read and write each head there; this model's attention "
                "heads differ from its config (multi-head latent attention, or layers with their own head sizes), so "
                "these analyses do not apply to it."
            )

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters (CPU for a parameterless model)."""
        parameter = next(iter(self.model.parameters()), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters."""
        parameter = next(iter(self.model.parameters()), None)
        return parameter.dtype if parameter is not None else torch.float32

    @property
    def supports_start_at_layer(self) -> bool:
        """Whether ``model(residual, start_at_layer=l)`` works (detected once, by trying it).

        The check runs only the last block on a single zero vector, so no hook before that block fires.
        """
        return self.capability("start_at_layer", _accepts_start_at_layer)

    def capability(self, name: str, detect: Callable[[ModelAdapter], _Found]) -> _Found:
        """What ``detect(self)`` finds, run once per model object and ``name`` and then remembered.

        ``detect`` runs without gradients, in eval mode and with the user's hooks set aside (all restored
        afterwards), so the finding does not depend on the state the model happens to be in.
        """
        found = _CAPABILITIES.setdefault(self.model, {})
        if name not in found:
            with torch.no_grad(), evaluating(self.model), user_hooks_detached(self.model):
                found[name] = detect(self)
        return found[name]  # type: ignore[no-any-return]


def _accepts_start_at_layer(adapter: ModelAdapter) -> bool:
    """Run only the last block on a single zero vector, so that no hook before that block fires."""
    probe = torch.zeros(1, 1, adapter.d_model, device=adapter.device, dtype=adapter.dtype)
    try:
        adapter.model(probe, start_at_layer=adapter.n_layers - 1)
    except (NotImplementedError, TypeError, ValueError, RuntimeError):
        return False
    return True


def adapt(model: Any) -> ModelAdapter:
    """The :class:`ModelAdapter` of ``model`` (an adapter is passed through unchanged).

    The sizes and hook points are checked on a model's first ``adapt`` and remembered for that model object.
    """
    if isinstance(model, ModelAdapter):
        return model
    try:
        sizes = _SIZES.get(model)
    except TypeError:  # not weakly referenceable, so not a model: from_model says what is expected
        sizes = None
    if sizes is not None:
        return ModelAdapter(model=model, **sizes)
    adapter = ModelAdapter.from_model(model)
    with contextlib.suppress(TypeError):  # a model object that cannot be weakly referenced is checked every time
        _SIZES[model] = {name: getattr(adapter, name) for name in (*_CFG_FIELDS, "d_in")}
    return adapter
