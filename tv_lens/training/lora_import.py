"""Put a PEFT LoRA adapter (trained anywhere) on a ``TransformerBridge`` as tv_lens LoRA adapters.

Each adapted Hugging Face layer gets a :class:`~tv_lens.training.lora.LoRAUpdate` holding PEFT's ``lora_A`` and
``lora_B`` (and its ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` for rsLoRA, ``rank_pattern`` and
``alpha_pattern`` included); an adapter of a layer the bridge splits into pieces (GPT-NeoX's ``query_key_value``,
GPT-2's ``c_attn``, Phi-3's ``qkv_proj`` / ``gate_up_proj``) goes to the pieces, each with the whole ``A`` and the
rows of ``B`` that feed it. The bridge then computes the finetuned model, and :func:`~tv_lens.training.remove_lora`
gives the base model back, with one copy of the weights in memory: analyses of the base and the finetuned model side
by side. Before returning, every adapted layer's weight as the bridge computes with it is checked against
``base + scale · B A``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from tv_lens.errors import ArtefactError, ConfigError, MissingFileError, ModelNotSupportedError
from tv_lens.models.exclusive import evaluating, user_hooks_detached
from tv_lens.training.export import SplitLayer, fused_from, huggingface_model, huggingface_source, split_layers
from tv_lens.training.finetune_config import LoRAConfig
from tv_lens.training.lora import LoRAUpdate, has_lora, layer_layout, register_update, remove_lora
from tv_lens.training.lora_export import (
    PEFT_PREFIX,
    base_weight,
    check_adapter_weight,
    fused_rows,
    huggingface_layers,
)

__all__ = ["adapter_files", "load_lora_adapter"]

_KEY = re.compile(rf"^{re.escape(PEFT_PREFIX)}(.+)\.lora_([AB])\.weight$")
# PEFT options whose adapters compute something else than base + scale · B A (scale: alpha / r, or alpha / sqrt(r)).
_OTHER_KINDS = (
    "use_dora",
    "lora_bias",
    "alora_invocation_tokens",  # active only after the invocation tokens
    "layer_replication",  # a stack of repeated layers
    "use_bdlora",  # block-diagonal A or B, saved as their blocks
    "arrow_config",  # routing among several adapters
    "kasa_config",  # B diag A
    "use_qalora",  # A reads pooled groups of inputs
)
# PEFT initialisations that move part of the base weights into B A: such an adapter needs the base they left.
_BASE_CHANGING_STARTS = ("pissa", "olora", "corda", "loftq", "lora_ga")


def load_lora_adapter(model: Any, folder: Path | str) -> list[LoRAUpdate]:
    """Attach the PEFT LoRA adapter in ``folder`` to the bridge ``model`` (in place); returns the updates made.

    ``folder`` holds ``adapter_config.json`` and ``adapter_model.safetensors``, as ``PeftModel.save_pretrained``
    (or :func:`~tv_lens.training.export_lora_adapter`) writes them, for the model the bridge was booted from.

    Raises:
        ModelNotSupportedError: ``model`` is not a bridge, the adapter names a layer it lacks or that is not a
            linear layer, or the adapted bridge would not compute ``base + scale · B A``.
        ConfigError: The model already has LoRA adapters, or the adapter is not a plain LoRA of the original
            weights (DoRA, LoRA biases and other variants; PiSSA, OLoRA, CorDA, LoftQ and LoRA-GA adapters
            not converted by PEFT).
        MissingFileError, ArtefactError: The folder lacks the files, or they are not a PEFT LoRA adapter.
    """
    source = huggingface_source(model)
    if has_lora(model):
        raise ConfigError(
            "The model already has LoRA adapters; merge them (merge_lora) or remove them (remove_lora) first."
        )
    config, tensors = _read(Path(folder))
    by_name = huggingface_layers(source)
    splits = {id(split.fused): split for split in split_layers(model)}
    updates: list[LoRAUpdate] = []
    scales: dict[str, float] = {}  # per adapted layer: alpha / r
    try:
        with torch.no_grad():
            for name, (a, b) in tensors.items():
                layer = by_name.get(name)
                layout = None if layer is None else layer_layout(layer)
                if layer is None or layout is None:
                    raise ModelNotSupportedError(
                        f"The adapter adapts {name}, which is not a linear layer of this "
                        f"{type(source).__name__}; load it on the model it was trained for."
                    )
                n_out, n_in = cast(Tensor, layer.weight).shape[:: 1 if layout == "out_in" else -1]
                if (b.shape[0], a.shape[1]) != (n_out, n_in):
                    raise ModelNotSupportedError(
                        f"The adapter's matrices of {name} map {a.shape[1]} features to {b.shape[0]}, and the layer "
                        f"maps {n_in} to {n_out}: it was trained for another model."
                    )
                alpha = _pattern(config, "alpha_pattern", name, config.get("lora_alpha", 8))
                if config.get("use_rslora"):  # rsLoRA scales by alpha / sqrt(r): the same as alpha·sqrt(r) / r
                    alpha = alpha * math.sqrt(a.shape[0])
                lora = LoRAConfig(rank=a.shape[0], alpha=alpha, dropout=config.get("lora_dropout", 0.0))
                scales[name] = lora.alpha / lora.rank
                split = splits.get(id(layer))
                if split is None:
                    updates.append(_attach(layer, layout, a, b, lora))
                else:  # the pieces, each with the rows of B that feed it (a piece is an nn.Linear)
                    for index, piece in enumerate(split.pieces):
                        updates.append(_attach(piece, "out_in", a, b[fused_rows(split, index)], lora))
            with user_hooks_detached(model), evaluating(model):
                _check(model, source, tensors, scales, splits, by_name)
    except BaseException:
        remove_lora(model)
        raise
    return updates


def adapter_files(folder: Path | str) -> tuple[Path, Path]:
    """``adapter_config.json`` and ``adapter_model.safetensors`` of a PEFT adapter folder.

    Raises:
        MissingFileError: One of them does not exist.
    """
    files = Path(folder) / "adapter_config.json", Path(folder) / "adapter_model.safetensors"
    for path in files:
        if not path.is_file():
            raise MissingFileError(
                f"{path} does not exist; a PEFT adapter folder holds adapter_config.json and "
                "adapter_model.safetensors (PeftModel.save_pretrained writes them)."
            )
    return files


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, tuple[Tensor, Tensor]]]:
    """The adapter's config and, per adapted layer, PEFT's ``(lora_A [r, in], lora_B [out, r])``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_file, weights_file = adapter_files(folder)
    try:
        config = json.loads(config_file.read_text())
        weights = load_file(str(weights_file))
    except (ValueError, SafetensorError, OSError) as error:
        raise ArtefactError(f"{folder} does not hold a readable PEFT adapter ({error}).") from error
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ArtefactError(f"{config_file} is not the config of a PEFT LoRA adapter (peft_type is not 'LORA').")
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict) or not all(isinstance(key, str) for key in patterns):
        raise ArtefactError(f"{config_file} has an alpha_pattern that is not a dict of layer patterns to alphas.")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ArtefactError(
                f"{config_file} has an alpha_pattern key {pattern!r} that is no pattern ({error})."
            ) from error
    other = [option for option in _OTHER_KINDS if config.get(option)]
    if other:
        raise ConfigError(
            f"The adapter uses {other}, which compute something else than base + scale · B A; tv_lens "
            "attaches plain LoRA adapters. Merge it with PEFT (merge_and_unload) and boot the merged model instead."
        )
    start = str(config.get("init_lora_weights", True))
    if start.lower().startswith(_BASE_CHANGING_STARTS):
        raise ConfigError(
            f"The adapter was started with init_lora_weights={start!r}, which moves part of the base weights into the "
            "adapter: it computes its model only with the base weights that start left, not the original ones. "
            "Save it with PEFT's save_pretrained(..., path_initial_model_for_weight_conversion=...), which makes "
            "it a plain LoRA of the original weights, or merge it (merge_and_unload) and boot the merged model."
        )
    parts: dict[str, dict[str, Tensor]] = {}
    for key, tensor in weights.items():
        match = _KEY.match(key)
        if match is None:
            raise ArtefactError(
                f"{weights_file} holds {key!r}, which is not a LoRA matrix of a linear layer "
                f"({PEFT_PREFIX}<layer>.lora_A.weight / lora_B.weight); tv_lens attaches those only."
            )
        parts.setdefault(match.group(1), {})[match.group(2)] = tensor
    tensors = {}
    for name, pair in parts.items():
        a, b = pair.get("A"), pair.get("B")
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise ArtefactError(f"{weights_file} does not hold matching lora_A [r, in] and lora_B [out, r] of {name}.")
        tensors[name] = (a.double(), b.double())
    if not tensors:
        raise ArtefactError(f"{weights_file} holds no LoRA matrices.")
    return config, tensors


def _pattern(config: dict[str, Any], key: str, name: str, default: Any) -> Any:
    """PEFT's per-layer setting (``rank_pattern`` / ``alpha_pattern``) of layer ``name``, else ``default``."""
    for pattern, value in (config.get(key) or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default


def _attach(layer: nn.Module, layout: str, a: Tensor, b: Tensor, config: LoRAConfig) -> LoRAUpdate:
    """A LoRA update of ``layer``'s weight (laid out as ``layout``) with PEFT's ``a [r, in]`` and ``b [out, r]``."""
    update = register_update(layer, "weight", layout, config, seed=0)
    update.lora_A.copy_(a.T.to(update.lora_A.dtype))
    update.lora_B.copy_(b.T.to(update.lora_B.dtype))
    return update


def _check(
    model: Any,
    source: nn.Module,
    tensors: dict[str, tuple[Tensor, Tensor]],
    scales: dict[str, float],
    splits: dict[int, SplitLayer],
    by_name: dict[str, nn.Module],
) -> None:
    """Refuse unless each adapted layer's weight, as the bridge now computes with it, is base + scale · B A."""
    exported = dict(huggingface_model(model, source).named_parameters())
    for name, (a, b) in tensors.items():
        layer = by_name[name]
        base, weight = _base(layer, splits.get(id(layer))), exported[f"{name}.weight"]
        if layer_layout(layer) == "in_out":  # Conv1D [in, out]
            base, weight = base.T, weight.T
        check_adapter_weight(name, base, a, b, scales[name], weight, "nothing was attached.")


def _base(layer: nn.Module, split: SplitLayer | None) -> Tensor:
    """The weight of ``layer`` before the adapter: the fused weight rebuilt from its pieces' base weights."""
    if split is None:
        return base_weight(layer)
    return fused_from(split, "weight", [base_weight(piece) for piece in split.pieces])
