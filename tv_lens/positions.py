"""Prompts of different lengths and the per-prompt positions read or written in them.

ICL prompts differ in length, so every prompt has its own answer position (the token right before the
answer). :func:`prepare_prompts` checks inputs and positions and puts every batch into one layout: each
prompt starts at column 0 (left-padded prompts are shifted left using their attention mask). In a causal
model a row depends only on the tokens up to it, so the rows at answer positions then equal those of the
unpadded prompts, whatever padding the caller used, and columns past the last needed position can be
dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tv_lens.checks import check_tensor_data, is_int, is_integer_tensor, single_index, tensor_of
from tv_lens.errors import PositionError, ShapeError
from tv_lens.models.adapter import ModelAdapter

__all__ = [
    "TOKEN_DTYPES",
    "AnswerLengths",
    "Inputs",
    "PreparedPrompts",
    "answer_columns",
    "answer_lengths",
    "as_positions",
    "check_batch_size",
    "check_tensor_data",
    "checked_mask",
    "length_sorted_batches",
    "prepare_prompts",
    "prompt_batches",
    "tensor_of",
]

Inputs = Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_input"]
#: Integer dtypes read as token ids (those an embedding takes); other integer, bool and complex inputs are refused.
TOKEN_DTYPES = (torch.long, torch.int32)


@dataclass(frozen=True)
class PreparedPrompts:
    """Prompts aligned to start at column 0, with validated per-prompt positions.

    Attributes:
        inputs: Tokens ``[batch, pos]`` or residual stream ``[batch, pos, d_model]``.
        answer_pos: Per-prompt answer position ``[batch]`` in the aligned layout.
        shift: How far each prompt was moved left ``[batch]`` (its number of left pads).
        answer_lengths: Answer tokens read from each prompt's answer position on ``[batch]``.
    """

    inputs: Tensor
    answer_pos: Int[Tensor, " batch"]
    shift: Int[Tensor, " batch"]
    answer_lengths: Int[Tensor, " batch"]

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def ends(self) -> Int[Tensor, " batch"]:
        """One past each prompt's last answer token: the columns a pass over the prompt must compute."""
        return self.answer_pos + self.answer_lengths

    def to_aligned(self, positions: Int[Tensor, " batch"]) -> Int[Tensor, " batch"]:
        """Map positions given in the caller's layout to the aligned layout."""
        return positions - self.shift


def as_positions(positions: int | Sequence[int] | Tensor, n_prompts: int, what: str) -> Int[Tensor, " batch"]:
    """A ``[batch]`` long tensor from an int (same for every prompt), a list or a tensor.

    One int may be a Python, NumPy or 0-d integer tensor one (``batch.answer_pos[0]``).
    """
    if isinstance(positions, Tensor):
        check_tensor_data(positions, what)
    one = single_index(positions)
    if one is not None:
        positions = one
    if is_int(positions):
        if not -(2**63) <= positions < 2**63:
            raise ShapeError(f"{what} must hold token positions (64-bit ints), got {positions}.")
        return torch.full((n_prompts,), positions, dtype=torch.long)
    tensor = tensor_of(positions, what, "an int or one int per prompt (a list or a tensor of ints)")
    if not is_integer_tensor(tensor):
        raise ShapeError(f"{what} must hold integer token positions, got dtype {tensor.dtype}.")
    if tensor.shape != (n_prompts,):
        raise ShapeError(f"{what} must have one position per prompt: shape ({n_prompts},), got {tuple(tensor.shape)}.")
    return tensor.long().cpu()


AnswerLengths = int | Sequence[int] | Tensor
"""Answer tokens read after each answer position: one int for every prompt, or one per prompt ``[batch]``."""


def answer_lengths(n_answer_tokens: AnswerLengths, n_prompts: int) -> Int[Tensor, " batch"]:
    """``n_answer_tokens`` as a ``[batch]`` long tensor of counts >= 1 (an int applies to every prompt)."""
    if isinstance(n_answer_tokens, bool) or (isinstance(n_answer_tokens, int) and n_answer_tokens < 1):
        raise ShapeError(
            f"n_answer_tokens must be an int >= 1 (answer tokens read per prompt), got {n_answer_tokens!r}; "
            "for answers of different lengths pass one count >= 1 per prompt."
        )
    if not isinstance(n_answer_tokens, (int, Tensor, Sequence)) or isinstance(n_answer_tokens, str):
        raise ShapeError(f"n_answer_tokens must be an int or one int per prompt, got {type(n_answer_tokens).__name__}.")
    lengths = as_positions(n_answer_tokens, n_prompts, "n_answer_tokens")
    if len(lengths) and int(lengths.min()) < 1:
        raise ShapeError(f"n_answer_tokens must be >= 1 for every prompt, got a minimum of {int(lengths.min())}.")
    return lengths


def answer_columns(
    answer_pos: Int[Tensor, " batch"], lengths: Int[Tensor, " batch"], n_columns: int
) -> Int[Tensor, "batch n_columns"]:
    """Columns ``answer_pos + k`` for ``k < n_columns``, each prompt's clamped to its own last answer token.

    Prompts with fewer answer tokens than ``n_columns`` repeat their last one, so reading the output at these
    columns never leaves a prompt; scores ignore the repeated columns (their answers are padded with ``-1``).
    """
    offsets = torch.arange(n_columns, device=answer_pos.device)
    return answer_pos[:, None] + torch.minimum(offsets[None, :], lengths.to(answer_pos.device)[:, None] - 1)


def prepare_prompts(
    adapter: ModelAdapter,
    inputs: Inputs,
    answer_pos: int | Sequence[int] | Tensor,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    n_answer_tokens: AnswerLengths = 1,
    *,
    residual: bool = False,
) -> PreparedPrompts:
    """Validate ``inputs`` and ``answer_pos`` and shift left-padded prompts to start at column 0.

    Args:
        adapter: The model the prompts are for (its ``d_model``, ``d_vocab``, ``d_in`` and ``n_ctx`` are
            checked).
        inputs: Tokens ``[batch, pos]``, a residual stream ``[batch, pos, d_model]``, or for a model that
            embeds continuous inputs itself (``adapter.d_in`` set) those inputs ``[batch, pos, d_in]``.
        answer_pos: Position of the token right before the answer, per prompt (or one int for all).
        attention_mask: ``[batch, pos]``, 1 on real tokens. Needed only for left-padded prompts; each
            prompt's real tokens must be contiguous. The ids of padding are never read (any id, such as a pad
            token the model's vocabulary lacks, runs as 0).
        n_answer_tokens: Positions ``answer_pos .. answer_pos + n_answer_tokens - 1`` are read; all must
            lie inside the prompt. One int for every prompt, or one per prompt (answers of different lengths).
        residual: Float ``inputs`` are a residual stream ``[batch, pos, d_model]`` whatever the model's
            inputs (e.g. a clean run's residual that a patched run starts from).

    Float inputs are cast to the model's dtype (a float16 residual given to a float32 model is widened, a
    float64 one rounded), as intervention values are cast to the activation's dtype. Token ids must be
    ``torch.long`` or ``torch.int32``; boolean, complex and other integer dtypes are refused.
    """
    if not isinstance(inputs, Tensor):
        raise ShapeError(f"inputs must be a torch.Tensor of tokens or residuals, got {type(inputs).__name__}.")
    check_tensor_data(inputs, "inputs")
    if not inputs.is_floating_point() and inputs.dtype not in TOKEN_DTYPES:
        raise ShapeError(
            f"inputs of dtype {inputs.dtype} are neither token ids nor a residual stream: token ids must be "
            f"torch.long or torch.int32 (convert with tokens.long()), residuals a float tensor."
        )
    if inputs.is_floating_point():
        if residual or adapter.d_in is None:
            width, what = adapter.d_model, "Residual-stream inputs must be Float[batch, pos, d_model"
        else:
            width, what = adapter.d_in, "This model embeds continuous inputs: pass Float[batch, pos, d_in"
        if inputs.ndim != 3 or inputs.shape[-1] != width:
            raise ShapeError(f"{what}={width}], got shape {tuple(inputs.shape)}.")
        inputs = inputs.to(adapter.dtype)  # float inputs follow the model's dtype, as written values do
    elif adapter.d_in is not None:
        raise ShapeError(
            f"This model embeds continuous inputs: pass Float[batch, pos, d_in={adapter.d_in}], not integer "
            f"tokens of shape {tuple(inputs.shape)}."
        )
    elif inputs.ndim != 2:
        raise ShapeError(f"Token inputs must be Int[batch, pos], got shape {tuple(inputs.shape)}.")
    if not inputs.is_floating_point() and attention_mask is not None:
        # padding is never read: its ids (a pad token added to the tokenizer, not to the model) become 0
        inputs = inputs.masked_fill(~checked_mask(attention_mask, tuple(inputs.shape)).to(inputs.device), 0)
    if not inputs.is_floating_point() and inputs.numel() and (inputs.min() < 0 or inputs.max() >= adapter.d_vocab):
        raise ShapeError(
            f"Token ids must lie in [0, {adapter.d_vocab}) for this model's vocabulary, got ids in "
            f"[{int(inputs.min())}, {int(inputs.max())}]. Build the model with a vocabulary the task needs (d_vocab >= "
            "pool.vocab_size), or tokenize text prompts with the model's own tokenizer."
        )
    n_prompts, width = int(inputs.shape[0]), int(inputs.shape[1])
    if n_prompts == 0:
        raise ShapeError("inputs hold no prompts (batch size 0); pass at least one prompt.")
    if width == 0:
        raise ShapeError(
            f"inputs hold prompts of no tokens (shape {tuple(inputs.shape)}); pass at least one token each."
        )
    n_answers = answer_lengths(n_answer_tokens, n_prompts)
    positions = as_positions(answer_pos, n_prompts, "answer_pos")
    shift = torch.zeros(n_prompts, dtype=torch.long)
    lengths = torch.full((n_prompts,), width, dtype=torch.long)
    if attention_mask is not None:
        inputs, shift, lengths = _align_left(inputs, attention_mask)
        positions = positions - shift
    elif not inputs.is_floating_point():
        _check_no_left_padding(adapter, inputs)
    last = positions + n_answers - 1
    outside = (positions < 0) | (positions >= lengths)
    bad = outside | (last >= lengths)  # the first two also catch an overflowed last
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        where = f"(positions {int(shift[row])}..{int(shift[row] + lengths[row]) - 1})"
        if not bool(outside[row]):
            raise PositionError(
                f"Prompt {row}'s answer has {int(n_answers[row])} tokens, but the prompt {where} stops "
                f"{int(last[row] - lengths[row]) + 1} token(s) short of them after answer_pos "
                f"{int(positions[row] + shift[row])}. An answer of several tokens is scored by teacher forcing: the "
                "model reads each answer token but the last from the prompt, so put the answer's tokens in the "
                "prompt right after answer_pos (tokenize the prompt with its answer), or score its first token only."
            )
        raise PositionError(
            f"answer_pos {int(positions[row] + shift[row])} of prompt {row} lies outside the prompt's tokens "
            f"{where}. Give the index of the token right before the answer, counted from the start of the padded row."
        )
    if int(last.max()) >= adapter.n_ctx:
        row = int(last.argmax())
        raise PositionError(
            f"Prompt {row} needs {int(last[row]) + 1} tokens but the model's context is n_ctx="
            f"{adapter.n_ctx}. Use fewer shots or shorter prompts, or a model with a longer context."
        )
    return PreparedPrompts(inputs, positions, shift, n_answers)


def _check_no_left_padding(adapter: ModelAdapter, tokens: Tensor) -> None:
    """Refuse unmasked prompts that start like left-padded ones (the model's pad token first; twice if it is BOS).

    Without a mask the pads would be read as part of the prompt, silently changing every row.
    """
    tokenizer = getattr(adapter.model, "tokenizer", None)
    pad, bos = getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "bos_token_id", None)
    if not isinstance(pad, int) or tokens.shape[1] < 2:
        return
    first = tokens[:, 0] == pad
    padded = first & (tokens[:, 1] == pad) if pad == bos else first
    if bool(padded.any()):
        row = int(padded.nonzero()[0])
        raise PositionError(
            f"Prompt {row} starts with the pad token (id {pad}{', twice' if pad == bos else ''}), so it looks "
            "left-padded, but no attention_mask was given. Pass attention_mask (1 on real tokens) so the padding is "
            "skipped; if these tokens really belong to the prompt, pass an all-ones attention_mask."
        )


def checked_mask(attention_mask: Any, shape: tuple[int, ...]) -> Bool[Tensor, "batch pos"]:
    """``attention_mask`` as a bool tensor on the CPU, after checking it has ``shape`` and holds only 0s and 1s."""
    mask = tensor_of(attention_mask, "attention_mask", "a [batch, pos] tensor of 0s and 1s").to(device="cpu")
    if tuple(mask.shape) != tuple(shape):
        raise ShapeError(f"attention_mask must have the shape of the prompts {tuple(shape)}, got {tuple(mask.shape)}.")
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ShapeError(
            "attention_mask must hold 1 on real tokens and 0 on padding only, got other values; build it as "
            "(tokens != pad_id).long() or take it from the tokenizer."
        )
    return mask.bool()


def _align_left(inputs: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Move each prompt's real tokens to start at column 0; returns (inputs, shift, lengths)."""
    mask = checked_mask(attention_mask, tuple(inputs.shape[:2]))
    lengths = mask.sum(dim=1)
    shift = mask.long().argmax(dim=1)
    columns = torch.arange(mask.shape[1])
    contiguous = (mask == ((columns >= shift[:, None]) & (columns < (shift + lengths)[:, None]))).all(dim=1)
    if not bool(contiguous.all()) or bool((lengths == 0).any()):
        row = int((~contiguous | (lengths == 0)).nonzero()[0])
        raise ShapeError(
            f"attention_mask row {row} is not one contiguous run of real tokens; pad only on the left or "
            "the right of each prompt."
        )
    if not bool(shift.any()):
        return inputs, shift, lengths
    gather = (columns[None, :] + shift[:, None]).clamp(max=mask.shape[1] - 1).to(inputs.device)
    if inputs.ndim == 3:
        gather = gather[..., None].expand(-1, -1, inputs.shape[-1])
    return inputs.gather(1, gather), shift, lengths


def length_sorted_batches(lengths: Int[Tensor, " batch"], batch_size: int) -> list[Int[Tensor, " chunk"]]:
    """Prompt indices in batches of similar length (shortest first), so little padding is computed.

    Prompts that fit in one batch stay in their own order (one batch computes the longest prompt's width anyway).
    """
    check_batch_size(batch_size)
    if batch_size >= len(lengths):
        return [torch.arange(len(lengths))]
    order = torch.argsort(lengths, stable=True)
    return list(order.split(batch_size))


def prompt_batches(
    inputs: Inputs,
    ends: Int[Tensor, " batch"],
    batch_size: int,
    device: torch.device | str,
    *,
    desc: str | None = None,
    progress: bool = False,
) -> Iterator[tuple[Int[Tensor, " chunk"], Tensor]]:
    """Per batch of :func:`length_sorted_batches` of ``ends``: its prompt indices ``[chunk]`` and its inputs.

    The inputs are those prompts' rows of ``inputs`` (aligned, starting at column 0) cut to the batch's longest
    ``end``, ``[chunk, width]`` or ``[chunk, width, d]``, on ``device``. No prompts give no batch. A tqdm bar
    labelled ``desc`` counts the batches when ``progress`` and there is more than one.
    """
    batches = [index for index in length_sorted_batches(ends, batch_size) if len(index)]
    for index in tqdm(batches, desc=desc, disable=not progress or len(batches) <= 1, leave=False):
        width = int(ends[index].max())
        yield index, inputs[index.to(inputs.device), :width].to(device)


def check_batch_size(batch_size: Any, *, all_at_once: bool = False) -> None:
    """Raise a :class:`ShapeError` unless ``batch_size`` (prompts per pass) is an int >= 1.

    Args:
        batch_size: The value to check.
        all_at_once: Also accept ``None``: every prompt in one pass.
    """
    if all_at_once and batch_size is None:
        return
    if not is_int(batch_size) or batch_size < 1:
        allowed = " or None for all" if all_at_once else ""
        raise ShapeError(f"batch_size must be an int ≥ 1 (prompts per pass){allowed}, got {batch_size!r}.")
