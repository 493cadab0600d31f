"""Write a bridge's LoRA adapters as a PEFT adapter: the small files ``PeftModel.from_pretrained`` reads.

Each adapted layer's update ``(alpha / rank) · A B`` becomes PEFT's ``lora_A`` / ``lora_B`` of the same Hugging Face
layer (GPT-2's ``Conv1D`` layers with ``fan_in_fan_out``). Adapters on the pieces of a layer the bridge splits
(GPT-NeoX's ``query_key_value``, GPT-2's ``c_attn``, Phi-3's ``qkv_proj`` / ``gate_up_proj``) become one adapter of
the fused layer: their ``A`` stacked, their ``B`` placed in the rows (GPT-2: columns) the pieces come from, so its
rank is the sum of theirs (``rank_pattern``), with ``alpha`` scaled alike (``alpha_pattern``) so the update keeps
its scale. Before anything is written, every adapted layer's base weight plus the adapter's update must equal the
weight of the checked Hugging Face model :func:`~tv_lens.training.export.huggingface_model` builds.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tv_lens.errors import ConfigError, ModelNotSupportedError
from tv_lens.models.exclusive import evaluating, user_hooks_detached
from tv_lens.training.export import (
    SplitLayer,
    check_new_folder,
    empty_model,
    huggingface_model,
    huggingface_name,
    huggingface_source,
    split_layers,
    write_new_folder,
)
from tv_lens.training.lora import LoRAUpdate, layer_layout, lora_updates

__all__ = [
    "PEFT_PREFIX",
    "base_weight",
    "check_adapter_weight",
    "export_lora_adapter",
    "fused_rows",
    "huggingface_layers",
]

#: What PEFT puts before a layer's name in an adapter's weights file.
PEFT_PREFIX = "base_model.model."
# Largest |difference| between base + update and the checked model's weight, relative to the largest |weight|.
_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
_HALF_TOLERANCE = 1e-2
_NOT_WRITTEN = (
    "weights besides the adapters were finetuned, or the base model changed. Write the whole model with "
    "export_huggingface; nothing was written."
)


@dataclass
class _Adapter:
    """One Hugging Face layer's PEFT adapter as it is assembled: ``B @ A`` is the update in ``[out, in]``."""

    base: Float[Tensor, "out in"]
    fan_in_fan_out: bool
    a: list[Tensor] = field(default_factory=list)  # each [rank, in]
    b: list[Tensor] = field(default_factory=list)  # each [out, rank]
    scales: list[float] = field(default_factory=list)  # each alpha / rank

    def matrices(self) -> tuple[Float[Tensor, "rank in"], Float[Tensor, "out rank"], float]:
        """``A``, ``B`` and the scale of the layer's one adapter (differing scales folded into ``B``)."""
        if len(set(self.scales)) == 1:
            return torch.cat(self.a), torch.cat(self.b, dim=1), self.scales[0]
        return torch.cat(self.a), torch.cat([b * s for b, s in zip(self.b, self.scales, strict=True)], dim=1), 1.0


def export_lora_adapter(model: Any, folder: Path | str) -> Path:
    """Save the LoRA adapters of a ``TransformerBridge`` as a PEFT adapter folder; returns it.

    The folder holds ``adapter_config.json`` and ``adapter_model.safetensors``;
    ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)`` gives the finetuned model, where
    ``base`` is the model the bridge was booted from (recorded as ``base_model_name_or_path``). Only the adapters are
    written: weights finetuned in full are not (:func:`~tv_lens.training.export_huggingface` writes the whole model).

    Raises:
        ModelNotSupportedError: ``model`` is not a bridge, or its adapters are not what it computes with.
        ConfigError: The model has no LoRA adapters, or ``folder`` exists and is not an empty folder.
    """
    source = huggingface_source(model)
    found = lora_updates(model)
    if not found:
        raise ConfigError(
            "The model has no LoRA adapters to export; finetune it with a LoRAConfig (finetune(..., lora=...)), or "
            "write the whole model with export_huggingface."
        )
    folder = check_new_folder(folder)
    with user_hooks_detached(model), evaluating(model), torch.no_grad():
        exported = huggingface_model(model, source)
        adapters = _adapters(source, found, split_layers(model))
        weights = dict(exported.named_parameters())
        tensors: dict[str, Tensor] = {}
        settings: dict[str, tuple[int, float]] = {}  # per layer: rank and alpha
        for name, adapter in adapters.items():
            a, b, scale = adapter.matrices()
            weight = weights[f"{name}.weight"]
            check_adapter_weight(
                name, adapter.base, a, b, scale, weight.T if adapter.fan_in_fan_out else weight, _NOT_WRITTEN
            )
            tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.contiguous()
            tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.contiguous()
            settings[name] = (a.shape[0], scale * a.shape[0])
        rank, alpha = Counter(settings.values()).most_common(1)[0][0]
        others = {_escaped(name): setting for name, setting in settings.items() if setting != (rank, alpha)}
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": getattr(source.config, "_name_or_path", None),
            "r": rank,
            "lora_alpha": alpha,
            "lora_dropout": found[0][2].dropout,
            "target_modules": sorted(adapters),
            "fan_in_fan_out": any(adapter.fan_in_fan_out for adapter in adapters.values()),
            "bias": "none",
            "rank_pattern": {pattern: r for pattern, (r, _) in others.items()},
            "alpha_pattern": {pattern: a for pattern, (_, a) in others.items()},
            "inference_mode": True,
        }
    return write_new_folder(folder, lambda staging: _write_adapter(config, tensors, staging))


def _adapters(
    source: nn.Module, found: list[tuple[nn.Module, str, LoRAUpdate]], splits: list[SplitLayer]
) -> dict[str, _Adapter]:
    """The PEFT adapter of every Hugging Face layer that an update adapts, itself or through a piece of it."""
    names = {id(layer): name for name, layer in huggingface_layers(source).items()}
    pieces = {id(piece): (split, index) for split in splits for index, piece in enumerate(split.pieces)}
    adapters: dict[str, _Adapter] = {}
    for layer, _, update in found:
        a, b = update.lora_A.detach().T, update.lora_B.detach().T  # [rank, in], [out, rank]
        if id(layer) in names:
            name, rows = names[id(layer)], None
            adapted = layer
        elif id(layer) in pieces:
            split, index = pieces[id(layer)]
            name, adapted = names[id(split.fused)], split.fused
            rows = fused_rows(split, index)
        else:
            raise ModelNotSupportedError(
                f"A LoRA adapter sits on a {type(layer).__name__} that is neither a Hugging Face layer of the model "
                "nor a piece of one the bridge splits; it cannot be written as a PEFT adapter."
            )
        if name not in adapters:
            base = base_weight(adapted)
            fan_in_fan_out = layer_layout(adapted) == "in_out"
            adapters[name] = _Adapter(base.T if fan_in_fan_out else base, fan_in_fan_out)
        adapter = adapters[name]
        if rows is not None:  # a piece's B, placed in the fused layer's rows it feeds
            placed = b.new_zeros(adapter.base.shape[0], b.shape[1])
            placed[rows.to(b.device)] = b
            b = placed
        adapter.a.append(a)
        adapter.b.append(b)
        adapter.scales.append(update.scale)
    return adapters


def huggingface_layers(source: nn.Module) -> dict[str, nn.Module]:
    """Each module of the wrapped model by its Hugging Face name (``_original_component`` dropped from its path)."""
    names = set(dict(empty_model(source).named_modules()))
    layers: dict[str, nn.Module] = {}
    for path, module in source.named_modules(remove_duplicate=False):
        name = huggingface_name(path)
        if name in names:  # a bridge component standing where the Hugging Face module was: the module it wraps
            layers.setdefault(name, getattr(module, "original_component", module))
    return layers


def fused_rows(split: SplitLayer, index: int) -> Tensor:
    """The fused layer's output rows (``[out, in]`` view) that piece ``index`` of ``split`` computes, in its order.

    Raises:
        ModelNotSupportedError: The piece is not whole rows of the fused layer.
    """
    positions = split.positions["weight"][index]  # [out_piece, in]: flat positions in the fused weight
    n_rows, n_columns = _weight(split.fused).shape
    if layer_layout(split.fused) == "in_out":  # Conv1D [in, out]: a piece row is a fused column
        rows = positions[:, 0] % n_columns
        expected = torch.arange(n_rows)[None, :] * n_columns + rows[:, None]
    else:
        rows = positions[:, 0] // n_columns
        expected = rows[:, None] * n_columns + torch.arange(n_columns)[None, :]
    if not torch.equal(positions, expected):
        raise ModelNotSupportedError(
            f"A piece of the {type(split.fused).__name__} the bridge splits is not whole rows of it; its LoRA "
            "adapter cannot be written as one of the fused layer (export the whole model with export_huggingface)."
        )
    return rows


def _weight(layer: nn.Module) -> Tensor:
    return cast(Tensor, layer.weight)


def base_weight(layer: nn.Module) -> Tensor:
    """The weight of ``layer`` without its LoRA update."""
    if parametrize.is_parametrized(layer, "weight"):
        return cast(Any, layer).parametrizations.weight.original.detach()
    return _weight(layer).detach()


def check_adapter_weight(
    name: str, base: Tensor, a: Tensor, b: Tensor, scale: float, weight: Tensor, consequence: str
) -> None:
    """Refuse unless ``base + scale · b a`` is ``weight`` (``[out, in]`` both) within its dtype's rounding.

    Raises:
        ModelNotSupportedError: It is not; ``consequence`` ends the message (what the user should do).
    """
    expected = base.double() + scale * (b.double() @ a.double()).to(base.device)
    allowed = _TOLERANCE.get(weight.dtype, _HALF_TOLERANCE) * max(expected.abs().max().item(), 1.0)
    difference = (weight.double() - expected).abs().max().item()
    if not difference <= allowed:
        raise ModelNotSupportedError(
            f"The weight the bridge computes {name} with is not its base weight plus (alpha / r) · B A of the "
            f"adapter (largest difference {difference:.3g}, allowed {allowed:.3g}); {consequence}"
        )


def _escaped(name: str) -> str:
    """``name`` as the regular expression PEFT matches pattern keys with (its dots taken literally)."""
    return name.replace(".", r"\.")


def _write_adapter(config: dict[str, Any], tensors: dict[str, Tensor], staging: Path) -> None:
    from safetensors.torch import save_file

    (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({key: value.cpu() for key, value in tensors.items()}, str(staging / "adapter_model.safetensors"))
