"""Layer-restricted finetuning: train only a chosen set of blocks, fully or through LoRA adapters.

Han et al. (§4.4) finetune the first or the last layers of a model with LoRA and compare how task
decodability and ICL accuracy change: finetuning early layers sharpens task representations, late
layers do not. Here a :class:`~tv_lens.training.config.FinetuneConfig` names the blocks (``(0, 1)``,
``"first:2"``, ``"last:2"``); :func:`prepare_model` freezes everything else (embeddings, other blocks,
final norm, unembedding) and returns the parameters to train. Training checks at the end that every
frozen parameter is bit-identical to its value at the start (:class:`FrozenCheck`), and gives every parameter
back the ``requires_grad`` it had before the run, however the run ends (:func:`restore_point`).

>>> select_blocks("last:2", n_layers=3)
(1, 2)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from tv_lens.errors import ConfigError, LayerOutOfRangeError, TvLensError
from tv_lens.models import adapt
from tv_lens.training.finetune_config import FinetuneConfig
from tv_lens.training.lora import apply_lora, has_lora, lora_parameters, model_blocks, remove_lora

__all__ = [
    "FrozenCheck",
    "adapters_removed_after",
    "attach_lora",
    "parameter_digest",
    "prepare_model",
    "restore_point",
    "select_blocks",
]


def select_blocks(blocks: tuple[int, ...] | str, n_layers: int) -> tuple[int, ...]:
    """Resolve a block selection (indices, ``"first:k"``, ``"last:k"`` or ``"all"``) to sorted indices.

    Raises:
        ConfigError: ``blocks`` is no block selection (``"middle:2"``, ``(1.5,)``, ``()`` ...).
        LayerOutOfRangeError: A block index or count outside the model's ``n_layers`` blocks.
    """
    blocks = FinetuneConfig(blocks).blocks  # the one check of a selection's form
    if isinstance(blocks, str):
        if blocks == "all":
            return tuple(range(n_layers))
        head, _, count = blocks.partition(":")
        k = int(count)
        if not 1 <= k <= n_layers:
            raise LayerOutOfRangeError(
                f"Block selection {blocks!r} asks for {k} blocks but the model has {n_layers}; use a count in "
                f"1 .. {n_layers}."
            )
        return tuple(range(k)) if head == "first" else tuple(range(n_layers - k, n_layers))
    bad = [b for b in blocks if not 0 <= b < n_layers]
    if bad:
        raise LayerOutOfRangeError(
            f"Block(s) {bad} out of range: the model has {n_layers} blocks, so finetune blocks in "
            f"[0, {n_layers - 1}] (or use 'first:k' / 'last:k')."
        )
    return tuple(sorted(set(blocks)))


def prepare_model(model: Any, config: FinetuneConfig | None) -> list[nn.Parameter]:
    """Make only the chosen part of ``model`` trainable (attaching LoRA adapters if asked); return it.

    With ``config=None`` every parameter is trained. Otherwise every parameter gets
    ``requires_grad=False`` except those of the chosen blocks (full finetuning) or the LoRA ``A``/``B``
    matrices attached to them.
    """
    if config is None:
        return list(model.parameters())
    blocks = select_blocks(config.blocks, adapt(model).n_layers)
    attach_lora(model, config)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if config.lora is not None:
        trainable = lora_parameters(model)
    else:
        trainable = [p for block in blocks for p in model_blocks(model)[block].parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    return trainable


@contextmanager
def adapters_removed_after(model: Any) -> Iterator[None]:
    """After the block, however it ends, remove the LoRA adapters it attached and restore ``requires_grad``.

    A LoRA finetuning run inside it leaves the model's weights as they were (the adapters are removed, not merged).

    Raises:
        ConfigError: The model already carries LoRA adapters (they would be removed too).
    """
    if has_lora(model):
        raise ConfigError(
            "The model already has LoRA adapters; merge them first (merge_lora(model)) or start from a fresh model."
        )
    restore = restore_point(model)
    try:
        yield
    finally:
        restore()


def restore_point(model: Any) -> Callable[..., None]:
    """A call that gives back every ``requires_grad`` of this point and removes the LoRA adapters attached after it.

    ``restore(adapters=False)`` keeps the adapters (a run that trained them); they stay trainable.
    """
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    had_lora = has_lora(model)

    def restore(*, adapters: bool = True) -> None:
        if adapters and not had_lora:
            remove_lora(model)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)

    return restore


def attach_lora(model: Any, config: FinetuneConfig | None) -> None:
    """Attach the LoRA adapters ``config`` asks for (nothing for full finetuning or ``None``); freezes nothing."""
    if config is not None and config.lora is not None:
        apply_lora(model, select_blocks(config.blocks, adapt(model).n_layers), config.lora)


class FrozenCheck:
    """A fingerprint of every frozen parameter, to prove after training that none of them moved.

    The fingerprint is a BLAKE2b digest of the parameter's bytes (with its dtype and shape), read one parameter at a
    time: the check holds no copy of the model (a frozen 8B model would otherwise need its size again in memory while
    it trains), and any change of a bit changes the digest.
    """

    def __init__(self, model: Any, trainable: list[nn.Parameter], known: dict[str, str] | None = None) -> None:
        """Fingerprint the parameters of ``model`` not in ``trainable``.

        ``known``: digests already checked against this model (a resumed run's checkpoint), used as they are when
        they name exactly the frozen parameters, so that an 8B model is not read twice.
        """
        trained = {id(p) for p in trainable}
        self._model = model
        frozen = {name: p for name, p in model.named_parameters() if id(p) not in trained}
        if known is not None and known.keys() == frozen.keys():
            self._frozen = {name: known[name] for name in frozen}
        else:
            self._frozen = {name: parameter_digest(p) for name, p in frozen.items()}

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the frozen parameters."""
        return tuple(self._frozen)

    @property
    def digests(self) -> dict[str, str]:
        """Name → :func:`parameter_digest` of every frozen parameter, as the check was made."""
        return dict(self._frozen)

    def verify(self) -> None:
        """Raise if any frozen parameter differs (bitwise) from its value when the check was made."""
        current = dict(self._model.named_parameters())
        moved = [name for name, digest in self._frozen.items() if parameter_digest(current[name]) != digest]
        if moved:
            raise TvLensError(
                f"Frozen parameters changed during layer-restricted finetuning: {moved[:5]}. Something outside "
                "the optimiser wrote to the model; run the finetuning on a model nothing else modifies."
            )


def parameter_digest(parameter: Tensor) -> str:
    """Hex BLAKE2b digest of a tensor's dtype, shape and bytes (read on the CPU, one tensor at a time)."""
    data = parameter.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy()
    digest = hashlib.blake2b(f"{parameter.dtype}{tuple(parameter.shape)}".encode(), digest_size=32)
    digest.update(data.data)
    return digest.hexdigest()
