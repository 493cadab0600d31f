"""Write a finetuned ``TransformerBridge`` back as Hugging Face files, checked to compute what the bridge computes.

A bridge runs the Hugging Face model it wraps, so its weights are Hugging Face's, with two exceptions this module
undoes: LoRA adapters (their update ``W + (alpha / rank) · A B`` is written into the weight, the model keeps its
adapters) and fused layers the bridge splits into pieces of its own (GPT-NeoX's head-interleaved
``query_key_value``, GPT-2's ``c_attn``, Phi-3's ``qkv_proj`` and ``gate_up_proj``): a finetuned piece lives in
the bridge's copy, so the fused weight is rebuilt from the pieces. Where the pieces come from in the fused
weight is read off the bridge's own split function, run once on a weight of position numbers.

The weights are loaded (sharing the bridge's tensors where unchanged) into a Hugging Face model of the same class
built without memory of its own, which is run beside the bridge on a probe batch: only a model whose logits
agree is written. A bridge whose weights are not Hugging Face's (compatibility mode folds norms and centres
weights on some architectures) is refused there, nothing written.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor, nn

from tv_lens.errors import ConfigError, ModelNotSupportedError
from tv_lens.models.exclusive import evaluating, user_hooks_detached
from tv_lens.training.lora import own_weights

__all__ = [
    "SplitLayer",
    "check_new_folder",
    "empty_model",
    "export_huggingface",
    "fused_from",
    "huggingface_model",
    "huggingface_name",
    "huggingface_source",
    "split_layers",
    "write_new_folder",
]

# The bridge's split functions -> the pieces they return, as children of the bridge component that holds them.
_SPLITS = {"split_qkv_matrix": ("q", "k", "v"), "split_gate_up_matrix": ("gate", "in")}
# Largest |logit difference| between the exported model and the bridge, relative to the largest |logit|.
_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
_HALF_TOLERANCE = 2e-2
_PROBE_SHAPE = (2, 16)


def export_huggingface(model: Any, folder: Path | str) -> Path:
    """Save a ``TransformerBridge`` (finetuned, LoRA adapters included) as a Hugging Face folder; returns it.

    The folder holds the config, the weights (safetensors) and the tokenizer, and loads with
    ``AutoModelForCausalLM.from_pretrained`` and ``TransformerBridge.boot_transformers``. LoRA updates are
    written merged; ``model`` is left as it is. Before anything is written, the Hugging Face model those files
    hold is run on a probe batch (two rows of 16 seeded random token ids) and must give the bridge's logits.

    Args:
        model: A ``TransformerBridge`` (without compatibility mode on the architectures where it processes the
            weights).
        folder: A new folder, or an empty one: export never writes over files.

    Raises:
        ModelNotSupportedError: ``model`` is not a bridge, holds weights that are not in memory, or the written
            model would not compute what the bridge computes.
        ConfigError: ``folder`` exists and is not an empty folder.
    """
    source = huggingface_source(model)
    folder = check_new_folder(folder)
    with user_hooks_detached(model), evaluating(model), torch.no_grad():
        exported = huggingface_model(model, source)
        tokenizer = getattr(model, "tokenizer", None)

        def write(staging: Path) -> None:
            exported.save_pretrained(staging)
            if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
                tokenizer.save_pretrained(staging)

        return write_new_folder(folder, write)


def huggingface_source(model: Any) -> nn.Module:
    """The Hugging Face model a ``TransformerBridge`` wraps (``model.original_model``).

    Raises:
        ModelNotSupportedError: ``model`` wraps none (a ``HookedTransformer``, a model tv_lens built).
    """
    source = getattr(model, "original_model", None)
    if not isinstance(source, nn.Module) or not hasattr(source, "save_pretrained"):
        raise ModelNotSupportedError(
            f"Export writes the Hugging Face model a TransformerBridge wraps, and this "
            f"{type(model).__name__} wraps none. A HookedTransformer holds TransformerLens's processed weights "
            "(folded norms, centred weights), which Hugging Face files do not describe: load the model with "
            "TransformerBridge.boot_transformers, finetune it, then export it. A model tv_lens trained from "
            "scratch is saved by its training checkpoints."
        )
    return source


def check_new_folder(folder: Path | str) -> Path:
    """``folder`` as a path, if it does not exist or is an empty folder.

    Raises:
        ConfigError: It exists and is not an empty folder.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(
            f"{folder} exists and is not an empty folder; export writes a new folder and never writes over "
            "files. Pass a new path."
        )
    return folder


def huggingface_model(model: Any, source: nn.Module) -> Any:
    """A Hugging Face model of ``source``'s class holding the bridge's weights as they act now, checked on a probe.

    LoRA updates are merged and split layers fused again from their pieces; tensors the bridge holds unchanged are
    shared, not copied. Call with the bridge in eval mode, without gradients and with the user's hooks set aside.

    Raises:
        ModelNotSupportedError: A weight is missing or not in memory, or the model does not give the bridge's logits.
    """
    exported = empty_model(source)
    wanted = {name for name, _ in (*exported.named_parameters(), *exported.named_buffers())}
    weights = _effective_tensors(source, wanted | set(exported.state_dict()))
    for split in split_layers(model):
        _fuse(split, weights)
    _fill(exported, weights)
    _check_same_logits(model, exported)
    return exported


def huggingface_name(path: str) -> str:
    """The Hugging Face name of a path in the wrapped model: the bridge's ``_original_component`` steps dropped."""
    return ".".join(step for step in path.split(".") if step and step != "_original_component")


def _effective_tensors(source: nn.Module, wanted: set[str]) -> dict[str, Tensor]:
    """The ``wanted`` parameters and buffers of the wrapped model, by Hugging Face name, LoRA updates applied.

    The bridge puts its components where the Hugging Face modules were and keeps each original as
    ``_original_component``: dropping that name from a path gives the Hugging Face one.
    """
    found: dict[str, Tensor] = {}
    for path, module in source.named_modules(remove_duplicate=False):
        if "parametrizations" in path.split("."):
            continue
        for attribute in (*own_weights(module), *module._buffers):
            name = huggingface_name(f"{path}.{attribute}")
            if name in wanted and name not in found:
                value = getattr(module, attribute)  # a LoRA-parametrised weight is computed here
                if isinstance(value, Tensor):
                    found[name] = value.detach()
    return found


class _PositionProbe:
    """Stands in for a module whose fused layer a bridge splits.

    Each layer it is asked for has weights that hold their own flat positions (float64), so the pieces the split
    returns say where they came from.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = module
        self.read: dict[str, nn.Module] = {}

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        layer = getattr(value, "original_component", value)
        weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
        if not isinstance(layer, nn.Module) or not isinstance(weight, Tensor):
            return value
        self.read[name] = layer
        return types.SimpleNamespace(
            weight=_positions(weight), bias=_positions(bias) if isinstance(bias, Tensor) else None
        )


def _positions(tensor: Tensor) -> Tensor:
    return torch.arange(tensor.numel(), dtype=torch.float64).reshape(tensor.shape)


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return (a.data_ptr(), a.shape, a.stride()) == (b.data_ptr(), b.shape, b.stride())


@dataclass(frozen=True)
class SplitLayer:
    """A fused Hugging Face layer that a bridge component splits into layers of its own (the pieces).

    Attributes:
        fused: The Hugging Face layer (``nn.Linear``, or GPT-2's ``Conv1D``).
        pieces: The bridge's layers, in the order the split returns them (``q, k, v`` or ``gate, in``).
        positions: For ``"weight"`` (and ``"bias"`` where the layer has one), each piece's entries' flat positions
            in the fused tensor, in the piece's shape.
    """

    fused: nn.Module
    pieces: tuple[nn.Module, ...]
    positions: dict[str, tuple[Tensor, ...]]


def split_layers(model: Any) -> list[SplitLayer]:
    """Every fused layer the bridge ``model`` splits, read off the bridge's own split functions.

    Raises:
        ModelNotSupportedError: A split reads more than one layer, or takes its pieces from other than distinct
            entries of the fused one.
    """
    found = []
    for component in model.modules():
        for split_name, piece_names in _SPLITS.items():
            split = getattr(component, split_name, None)
            original = getattr(component, "original_component", None)
            if not callable(split) or not isinstance(original, nn.Module):
                continue
            probe = _PositionProbe(original)
            position_pieces = split(probe)
            if len(probe.read) != 1:
                raise ModelNotSupportedError(
                    f"The bridge's {split_name} of {type(original).__name__} read {sorted(probe.read)}, not one "
                    "fused layer; its pieces cannot be written back."
                )
            (fused,) = probe.read.values()
            positions = {}
            for attribute in ("weight", "bias"):
                if isinstance(getattr(fused, attribute, None), Tensor):
                    positions[attribute] = _checked_positions(
                        [getattr(piece, attribute).detach() for piece in position_pieces],
                        f"{split_name} of {type(original).__name__}",
                    )
            pieces = tuple(getattr(component, name).original_component for name in piece_names)
            found.append(SplitLayer(fused, pieces, positions))
    return found


def _checked_positions(position_tensors: list[Tensor], what: str) -> tuple[Tensor, ...]:
    """The pieces' positions as integers, refused unless every one is a distinct entry of the fused tensor."""
    flat = torch.cat([positions.flatten() for positions in position_tensors])
    index = flat.long()
    if not torch.equal(index.double(), flat) or len(index.unique()) < len(index):
        raise ModelNotSupportedError(
            f"The bridge's {what} does not take its pieces from distinct entries of the fused weight; they cannot "
            "be written back."
        )
    return tuple(positions.long() for positions in position_tensors)


def fused_from(split: SplitLayer, attribute: str, pieces: list[Tensor]) -> Tensor:
    """``split``'s fused ``attribute`` (``"weight"`` / ``"bias"``) with each piece's entries taken from ``pieces``."""
    fused = getattr(split.fused, attribute).detach().clone()
    for values, index in zip(pieces, split.positions[attribute], strict=True):
        fused.view(-1)[index.flatten().to(fused.device)] = values.detach().flatten()
    return fused


def _fuse(split: SplitLayer, weights: dict[str, Tensor]) -> None:
    """Rebuild ``split``'s fused weight (and bias) in ``weights`` from its pieces as they act now."""
    for attribute in split.positions:
        target = getattr(split.fused, attribute)
        rebuilt = fused_from(split, attribute, [getattr(piece, attribute) for piece in split.pieces])
        for name, value in weights.items():
            if _same_tensor(value, target):
                weights[name] = rebuilt


def empty_model(source: nn.Module) -> Any:
    """A Hugging Face model of ``source``'s class, config and generation settings on the meta device (no memory)."""
    with torch.device("meta"):
        exported = type(source)(copy.deepcopy(source.config))
    if getattr(source, "generation_config", None) is not None:
        exported.generation_config = copy.deepcopy(source.generation_config)
    return exported


def _fill(exported: Any, weights: dict[str, Tensor]) -> None:
    """Give the empty ``exported`` model ``weights`` (those tensors, not copies), in eval mode."""
    names = list(exported.state_dict())
    absent = [name for name in names if name not in weights]
    if absent:
        raise ModelNotSupportedError(
            f"The bridge holds no weight for {absent[:3]} of {type(exported).__name__} ({len(absent)} in all); it "
            "cannot be written back as this Hugging Face model."
        )
    exported.load_state_dict({name: weights[name] for name in names}, strict=True, assign=True)
    for name, buffer in list(exported.named_buffers()):
        if buffer.is_meta and name in weights:  # buffers left out of the state dict (rotary frequencies)
            owner, _, attribute = name.rpartition(".")
            exported.get_submodule(owner)._buffers[attribute] = weights[name]
    empty = [name for name, t in (*exported.named_parameters(), *exported.named_buffers()) if t.is_meta]
    if empty:
        raise ModelNotSupportedError(
            f"{empty[:3]} of the model are not in memory (offloaded to disk?): load the bridge with every weight "
            "on one device to export it."
        )
    exported.eval()


def _check_same_logits(model: Any, exported: Any) -> None:
    """Refuse unless ``exported`` gives the bridge's logits on a probe batch of seeded random token ids."""
    generator = torch.Generator().manual_seed(0)
    probe: Int[Tensor, "batch pos"] = torch.randint(0, int(model.cfg.d_vocab), _PROBE_SHAPE, generator=generator)
    tokens = probe.to(next(exported.parameters()).device)
    expected = model(tokens).double()
    found = exported(tokens).logits.double()
    difference = (found - expected).abs().max().item()
    dtype = next(exported.parameters()).dtype
    allowed = _TOLERANCE.get(dtype, _HALF_TOLERANCE) * max(expected.abs().max().item(), 1.0)
    if not difference <= allowed:
        hint = (
            " Compatibility mode processed the bridge's weights (folded norms, centred weights): load the model "
            "without it to finetune and export."
            if getattr(model, "compatibility_mode", False)
            else ""
        )
        raise ModelNotSupportedError(
            f"The Hugging Face model these weights make does not compute what the bridge computes (largest logit "
            f"difference {difference:.3g}, allowed {allowed:.3g}); nothing was written.{hint}"
        )


def write_new_folder(folder: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a new folder beside ``folder``, then move it into place (an empty ``folder`` is replaced).

    What fails on the way leaves nothing behind.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(staging)
        if folder.exists():
            folder.rmdir()  # empty: checked before
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
