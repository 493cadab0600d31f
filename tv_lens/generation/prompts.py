"""What :func:`~tv_lens.generation.generate` accepts, checked: prompts and their positions, stop tokens, options."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from tv_lens.checks import is_int, is_number, tensor_of
from tv_lens.errors import PositionError, ShapeError
from tv_lens.models.adapter import ModelAdapter
from tv_lens.positions import checked_mask
from tv_lens.tasks.batch import ICLBatch
from tv_lens.tasks.pool import seeded_generator

__all__ = ["StopTokens", "check_context", "check_count", "check_sampling", "prompt_inputs", "stop_token_ids"]


StopTokens = Literal["eos"] | int | Sequence[int] | None


def check_count(value: Any, name: str, meaning: str) -> None:
    """Raise a ShapeError unless ``value`` is an int >= 1."""
    if not is_int(value) or value < 1:
        raise ShapeError(f"{name} must be an int >= 1 ({meaning}), got {value!r}.")


def check_sampling(do_sample: bool, temperature: float, top_k: int | None, seed: int, adapter: ModelAdapter) -> None:
    """Raise a ShapeError on a sampling option outside its range."""
    if not isinstance(do_sample, bool):
        raise ShapeError(f"do_sample must be True or False, got {do_sample!r}.")
    if not is_number(temperature) or not 0 < temperature < math.inf:
        raise ShapeError(
            f"temperature must be a finite number > 0 (1.0 samples the model's distribution), got {temperature!r}."
        )
    if top_k is not None:
        check_count(top_k, "top_k", f"tokens sampled among, at most d_vocab={adapter.d_vocab}; None for all")
    seeded_generator(seed)


def prompt_inputs(
    prompts: Tensor | ICLBatch, answer_pos: Any, attention_mask: Tensor | None, caller: str = "generate"
) -> tuple[Tensor, Any, Tensor | None]:
    """Tokens, answer positions and mask of ``prompts`` (an ``ICLBatch`` brings its own) for ``caller``."""
    if isinstance(prompts, ICLBatch):
        if answer_pos is not None or attention_mask is not None:
            raise ShapeError(
                "An ICLBatch brings its own answer_pos and attention_mask; pass the batch alone, or pass its "
                "tokens (batch.inputs) with the positions you want."
            )
        return prompts.inputs, prompts.answer_pos, prompts.attention_mask
    if not isinstance(prompts, Tensor) or prompts.is_floating_point() or prompts.ndim != 2:
        shape = tuple(prompts.shape) if isinstance(prompts, Tensor) else type(prompts).__name__
        raise ShapeError(
            f"{caller} needs integer tokens Int[batch, pos] or an ICLBatch, got {shape}"
            f"{' (float)' if isinstance(prompts, Tensor) and prompts.is_floating_point() else ''}."
        )
    if answer_pos is None:
        if attention_mask is None:
            answer_pos = prompts.shape[1] - 1
        else:
            mask = checked_mask(attention_mask, tuple(prompts.shape))
            answer_pos = torch.where(mask, torch.arange(mask.shape[1]), -1).max(dim=1).values
    return prompts, answer_pos, attention_mask


def check_context(adapter: ModelAdapter, lengths: Tensor, max_new_tokens: int) -> None:
    """Each prompt and all but its last generated token must fit the model's context."""
    needed = lengths + max_new_tokens - 1
    if int(needed.max()) > adapter.n_ctx:
        row = int(needed.argmax())
        raise PositionError(
            f"Prompt {row} has {int(lengths[row])} tokens, so generating {max_new_tokens} more needs "
            f"{int(needed[row])} positions but the model's context is n_ctx={adapter.n_ctx}. Lower max_new_tokens "
            f"to at most {adapter.n_ctx - int(lengths.max()) + 1} or use shorter prompts."
        )


def stop_token_ids(stop_tokens: StopTokens, tokenizer: Any, adapter: ModelAdapter) -> Tensor:
    """The ids that end a prompt's generation (``"eos"``: the tokenizer's EOS, if it has one)."""
    if stop_tokens is None:
        return torch.zeros(0, dtype=torch.long)
    if isinstance(stop_tokens, str):
        if stop_tokens != "eos":
            raise ShapeError(f"stop_tokens must be 'eos', a token id, a list of ids or None, got {stop_tokens!r}.")
        eos = _eos_id(tokenizer)
        return torch.tensor([] if eos is None else [eos], dtype=torch.long)
    ids = tensor_of(stop_tokens, "stop_tokens", "'eos', a token id, a list of ids or None").reshape(-1)
    if not ids.numel():  # an empty list holds no ids (torch reads it as float): no stop token, as None
        return torch.zeros(0, dtype=torch.long)
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.min() < 0 or ids.max() >= adapter.d_vocab:
        raise ShapeError(
            f"stop_tokens must be token ids in [0, {adapter.d_vocab}) (an int or a list), got {stop_tokens!r}."
        )
    return ids.long()


def _eos_id(tokenizer: Any) -> int | None:
    """The tokenizer's EOS id: ``eos_token_id``, else a ``tiktoken`` encoding's ``eot_token``; ``None``: none."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        try:
            eos = getattr(tokenizer, "eot_token", None)
        except KeyError:  # a tiktoken encoding without <|endoftext|>
            eos = None
    return eos if is_int(eos) else None
