"""LoRA: train a low-rank update ``W + (alpha / rank) · A B`` of chosen weight matrices, then merge it.

Each adapted weight is re-parametrised with :func:`torch.nn.utils.parametrize.register_parametrization`:
the module still reads its weight under the same attribute name, now computed as the frozen original
plus the low-rank update. That works unchanged on both TransformerLens backends, which hold the weights
differently:

==========  =================================================  ==============================================
target      HookedTransformer (``blocks.{l}...``)                TransformerBridge (the layer a bridge wraps)
==========  =================================================  ==============================================
W_Q/K/V     ``attn.W_Q`` ``[n_heads, d_model, d_head]``           ``attn.q/k/v`` ``[n_heads·d_head, d_model]``
W_O         ``attn.W_O`` ``[n_heads, d_head, d_model]``           ``attn.o`` ``[d_model, n_heads·d_head]``
W_in        ``mlp.W_in`` ``[d_model, d_mlp]``                     ``mlp.in`` ``[d_mlp, d_model]``
W_gate      ``mlp.W_gate`` ``[d_model, d_mlp]``                   ``mlp.gate`` ``[d_mlp, d_model]``
W_out       ``mlp.W_out`` ``[d_mlp, d_model]``                    ``mlp.out`` ``[d_model, d_mlp]``
==========  =================================================  ==============================================

The bridge's layers are those of the Hugging Face model: ``nn.Linear`` (``[out, in]``, as above) or GPT-2's
``Conv1D`` (``[in, out]``); keys and values of grouped-query attention have ``n_key_value_heads`` heads
(``_W_K`` / ``_W_V`` in a HookedTransformer). ``W_gate`` exists in gated MLPs only (Llama, Qwen, Gemma).

Every weight is seen as a map from ``d_in`` input features to ``d_out`` outputs (heads concatenated), so
an update of a given rank means the same on both backends. ``A`` (``[d_in, rank]``) starts uniform in
``±1/sqrt(d_in)`` and ``B`` (``[rank, d_out]``) at zero, so the adapted model starts equal to the base one.

Precision: the adapters of a float16 or bfloat16 weight are float32 (the optimiser updates them in full
precision), and the update is cast to the weight's dtype when added; other weights keep adapters of their dtype.

Dropout: a parametrisation acts on weights, not activations, so LoRA dropout here zeroes input features
of the update (rows of ``A``), with one mask per evaluation of the weight (i.e. per forward pass, shared
by all tokens), rescaled by ``1 / (1 - p)``; standard LoRA draws a mask per token. Off in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tv_lens.errors import ConfigError, ModelNotSupportedError
from tv_lens.models.continuous import ContinuousModel
from tv_lens.training.finetune_config import LoRAConfig

__all__ = [
    "LoRAUpdate",
    "apply_lora",
    "has_lora",
    "layer_layout",
    "lora_parameters",
    "lora_updates",
    "merge_lora",
    "own_weights",
    "register_update",
    "remove_lora",
    "weight_targets",
]

# Each weight LoRA can target -> where a block holds it. HookedTransformer: the module and the parameter (grouped-query
# attention keeps its shared key/value weights as _W_K / _W_V), in the given layout. TransformerBridge: the LinearBridge
# at that path, whose wrapped layer is an nn.Linear ([out, in]) or a GPT-2 style Conv1D ([in, out]).
_WEIGHTS = {
    "W_Q": ("attn", ("W_Q",), "heads_in_out", "attn.q"),
    "W_K": ("attn", ("W_K", "_W_K"), "heads_in_out", "attn.k"),
    "W_V": ("attn", ("W_V", "_W_V"), "heads_in_out", "attn.v"),
    "W_O": ("attn", ("W_O",), "in_out", "attn.o"),
    "W_in": ("mlp", ("W_in",), "in_out", "mlp.in"),
    "W_gate": ("mlp", ("W_gate",), "in_out", "mlp.gate"),
    "W_out": ("mlp", ("W_out",), "in_out", "mlp.out"),
}
# The matrices every block's attention has (an MLP may be gated, or a mixture of experts with none of its own).
_ATTENTION_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O")
# Weight dtypes whose adapters are kept in float32 (the update is cast to the weight's dtype when added).
_HALF = (torch.float16, torch.bfloat16)
# Layer classes a LinearBridge may wrap -> the layout of their weight.
_BRIDGED_LAYOUTS = {"Linear": "out_in", "Conv1D": "in_out"}


@dataclass(frozen=True)
class WeightTarget:
    """One weight matrix of a block: the module holding it, the attribute name and its layout."""

    module: nn.Module
    attribute: str
    layout: str


def weight_targets(model: Any, block: int) -> dict[str, WeightTarget]:
    """The attention and MLP weight matrices of ``model.blocks[block]``, keyed ``W_Q ... W_out`` (and ``W_gate``).

    A mixture-of-experts MLP (Mixtral, Qwen3-MoE) has no single ``W_in`` / ``W_out``: only the attention's
    matrices are found there.

    Raises:
        ModelNotSupportedError: An attention matrix (``W_Q``, ``W_K``, ``W_V``, ``W_O``) was not found.
    """
    found: dict[str, WeightTarget] = {}
    module = model_blocks(model)[block]
    for name, (part, parameters, layout, bridged) in _WEIGHTS.items():
        target = _bridged_target(module, bridged) or _hooked_target(getattr(module, part, None), parameters, layout)
        if target is not None:
            found[name] = target
    missing = [name for name in _ATTENTION_WEIGHTS if name not in found]
    if missing:
        raise ModelNotSupportedError(
            f"Could not find the weight(s) {missing} of block {block} (a {type(module).__name__}). LoRA "
            "adapts HookedTransformer weights and the nn.Linear / Conv1D layers of a TransformerBridge's attention "
            "(attn.q, attn.k, attn.v, attn.o) and MLP (mlp.in, mlp.out, mlp.gate); finetune this model without "
            "LoRA (lora=None) instead."
        )
    return found


def model_blocks(model: Any) -> nn.ModuleList:
    """The blocks of ``model``: its own, or those of the TransformerLens model a continuous-input model wraps."""
    return (model.model if isinstance(model, ContinuousModel) else model).blocks


def _bridged_target(block: nn.Module, path: str) -> WeightTarget | None:
    """The weight of the layer a TransformerBridge block wraps at ``path`` (e.g. ``attn.q``), if it has one."""
    bridge: Any = block
    for step in path.split("."):
        bridge = getattr(bridge, step, None)
    layer = getattr(bridge, "original_component", None)
    if not isinstance(layer, nn.Module) or "weight" not in own_weights(layer):
        return None
    layout = layer_layout(layer)
    return None if layout is None else WeightTarget(layer, "weight", layout)


def layer_layout(layer: nn.Module) -> str | None:
    """``"out_in"`` for an ``nn.Linear``, ``"in_out"`` for GPT-2's ``Conv1D`` (LoRA-adapted or not), else ``None``."""
    kind = type(layer).__bases__[0] if parametrize.is_parametrized(layer) else type(layer)  # a parametrised copy
    return _BRIDGED_LAYOUTS.get(kind.__name__)


def _hooked_target(module: nn.Module | None, parameters: tuple[str, ...], layout: str) -> WeightTarget | None:
    """The first of ``parameters`` that a HookedTransformer attention or MLP module holds itself."""
    if not isinstance(module, nn.Module):
        return None
    own = own_weights(module)
    for parameter in parameters:
        if parameter in own:
            return WeightTarget(module, parameter, layout)
    return None


def own_weights(module: nn.Module) -> list[str]:
    """Names of the weights held directly by ``module`` (parametrised ones included)."""
    names = [name for name, _ in module.named_parameters(recurse=False)]
    holder = _parametrizations(module)
    if holder is not None:
        names += list(holder.keys())
    return names


def _parametrizations(module: nn.Module) -> nn.ModuleDict | None:
    """The module's own ``parametrizations`` dict (not one a wrapper forwards from a wrapped module)."""
    holder = module.__dict__.get("_modules", {}).get("parametrizations")
    return holder if isinstance(holder, nn.ModuleDict) else None


class LoRAUpdate(nn.Module):
    """Parametrisation ``W ↦ W + (alpha / rank) · A B`` (reshaped to ``W``'s layout).

    Attributes:
        lora_A: ``[d_in, rank]``.
        lora_B: ``[rank, d_out]`` (zero at the start).
        generator: Source of the dropout masks (its state is saved in training checkpoints).
    """

    def __init__(self, weight: Tensor, layout: str, config: LoRAConfig, seed: int) -> None:
        super().__init__()
        self.shape = tuple(weight.shape)
        self.layout = layout
        d_in, d_out = _in_out(self.shape, layout)
        self.generator = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(d_in)
        initial = (torch.rand(d_in, config.rank, generator=self.generator, dtype=torch.float64) * 2 - 1) * bound
        dtype = torch.float32 if weight.dtype in _HALF else weight.dtype
        self.lora_A = nn.Parameter(initial.to(device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(config.rank, d_out, device=weight.device, dtype=dtype))
        self.scale = config.alpha / config.rank
        self.dropout = config.dropout
        #: Names of the adapted module's parameters before any adapter, in order (restored on removal).
        self.order: tuple[str, ...] = ()

    def delta(self) -> Tensor:
        """The update in the weight's own layout (dropout applied in training mode)."""
        a: Tensor = self.lora_A
        if self.training and self.dropout > 0:
            keep = (torch.rand(a.shape[0], generator=self.generator) >= self.dropout).to(a.device, a.dtype)
            a = a * (keep / (1.0 - self.dropout))[:, None]
        update = (a @ self.lora_B) * self.scale  # [d_in, d_out]
        if self.layout == "out_in":
            return update.T
        if self.layout == "heads_in_out":  # [n_heads, d_in, d_head]
            return update.reshape(self.shape[1], self.shape[0], self.shape[2]).permute(1, 0, 2)
        return update.reshape(self.shape)

    def forward(self, weight: Tensor) -> Tensor:
        """The adapted weight, in the weight's dtype."""
        return weight + self.delta().to(weight.dtype)


def _in_out(shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    if layout == "out_in":
        return shape[1], shape[0]
    if layout == "heads_in_out":
        return shape[1], shape[0] * shape[2]
    return math.prod(shape[:-1]), shape[-1]


def apply_lora(model: Any, blocks: tuple[int, ...], config: LoRAConfig) -> list[LoRAUpdate]:
    """Attach LoRA updates to ``config.targets`` of each block in ``blocks``; returns them in order.

    The base weights are left as they are (freezing is the caller's job, see
    :func:`tv_lens.training.finetune.prepare_model`).
    """
    if has_lora(model):
        raise ConfigError(
            "The model already has LoRA adapters; merge them first (merge_lora(model)) or start from a fresh model."
        )
    per_block = {block: weight_targets(model, block) for block in blocks}
    for block, targets in per_block.items():
        absent = [name for name in config.targets if name not in targets]
        if absent:
            why = (
                "its MLP is not gated"
                if "W_in" in targets
                else "no MLP weight was found in it: a mixture of experts has none"
            )
            kept = tuple(name for name in config.targets if name in targets)
            raise ConfigError(
                f"Block {block} has no {', '.join(absent)} ({why}); LoRA targets of this model are among "
                f"{list(targets)}" + (f": pass LoRAConfig(targets={kept!r})." if kept else ".")
            )
    updates: list[LoRAUpdate] = []
    orders: dict[nn.Module, tuple[str, ...]] = {}
    for block, targets in per_block.items():
        for index, name in enumerate(config.targets):
            target = targets[name]
            seed = config.seed * 1_000_003 + block * 64 + index
            order = orders.setdefault(target.module, tuple(target.module._parameters))
            updates.append(register_update(target.module, target.attribute, target.layout, config, seed, order))
    return updates


def register_update(
    module: nn.Module,
    attribute: str,
    layout: str,
    config: LoRAConfig,
    seed: int,
    order: tuple[str, ...] | None = None,
) -> LoRAUpdate:
    """A new LoRA update of ``module.attribute`` (laid out as ``layout``), registered as its parametrisation.

    ``order``: the module's parameter names before any of its adapters (default: as they are now), which
    :func:`remove_lora` and :func:`merge_lora` put back.
    """
    update = LoRAUpdate(getattr(module, attribute), layout, config, seed)
    update.order = tuple(module._parameters) if order is None else order
    parametrize.register_parametrization(module, attribute, update)
    return update


def lora_updates(model: Any) -> list[tuple[nn.Module, str, LoRAUpdate]]:
    """``(module, attribute, update)`` of every LoRA parametrisation in the model."""
    found = []
    for module in model.modules():
        holder = _parametrizations(module)
        for attribute, chain in (holder or {}).items():
            found += [(module, attribute, p) for p in chain.children() if isinstance(p, LoRAUpdate)]
    return found


def has_lora(model: Any) -> bool:
    """Whether any weight of the model carries a LoRA update."""
    return bool(lora_updates(model))


def lora_parameters(model: Any) -> list[nn.Parameter]:
    """The ``A`` and ``B`` matrices of every LoRA update."""
    return [p for _, _, update in lora_updates(model) for p in (update.lora_A, update.lora_B)]


def remove_lora(model: Any) -> Any:
    """Remove every LoRA adapter without merging it: the weights are the base weights again (in place)."""
    found = lora_updates(model)
    for module, attribute in {(module, attribute) for module, attribute, _ in found}:
        parametrize.remove_parametrizations(module, attribute, leave_parametrized=False)
    _restore_orders(found)
    return model


def merge_lora(model: Any) -> Any:
    """Fold every LoRA update into its base weight and remove the adapters (in place; returns the model).

    The merged model has the parameters (same names and objects) of the model before :func:`apply_lora`,
    with values ``W + (alpha / rank) · A B``, and computes what the adapted model computes in eval mode.
    """
    found = lora_updates(model)
    for module, attribute, update in found:
        with torch.no_grad():
            chain: Any = _parametrizations(module)
            original = chain[attribute].original
            was_training = update.training
            update.eval()
            merged = update(original)
            update.train(was_training)
        parametrize.remove_parametrizations(module, attribute, leave_parametrized=False)
        with torch.no_grad():
            getattr(module, attribute).copy_(merged)
    _restore_orders(found)
    return model


def _restore_orders(found: list[tuple[nn.Module, str, LoRAUpdate]]) -> None:
    """Put each adapted module's parameters back in their order before the adapters (removal appends them)."""
    for module, _, update in found:
        parameters = module._parameters
        ordered = {name: parameters[name] for name in update.order if name in parameters} | parameters
        parameters.clear()
        parameters.update(ordered)
