"""What an intervention is: a write of values at a hook point, for some prompts at some positions.

:func:`replace`, :func:`add` and :func:`ablate_head` make the :class:`Intervention` s that
:func:`tv_lens.interventions.run_with_interventions` applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tv_lens.checks import check_tensor_data, single_index, tensor_of
from tv_lens.errors import PositionError, ShapeError

__all__ = ["Intervention", "Positions", "Rows", "ablate_head", "add", "intervention_list", "knockout", "replace"]

Positions = Literal["answer", "all"] | int | Sequence[int] | Tensor


Rows = Sequence[int] | Tensor | None


@dataclass(frozen=True)
class Intervention:
    """What to write at one hook point: made by :func:`replace`, :func:`add`, :func:`ablate_head` or :func:`knockout`.

    Attributes:
        kind: ``"replace"``, ``"add"``, ``"ablate_head"`` or ``"knockout"``.
        layer: TransformerLens block index (``-1`` = embedding output, residual sites only).
        site: Residual site (``"resid_post"`` ...), ``"attn.hook_z"`` for head ablations, ``"attn"`` for knockouts
            (written where the model's attention can be masked: its scores or its pattern).
        values: ``[width]`` for every prompt or ``[n_rows, width]`` per selected prompt; ``None`` writes 0. For a
            knockout, the blocked keys: a bool mask ``[pos]`` or ``[n_rows, pos]``.
        pos: ``"answer"`` (each prompt's answer position), ``"all"``, an int, or ``[batch]`` per prompt
            (in the caller's padded layout; only the prompts ``rows`` selects need a position inside them). For a
            knockout, the query positions.
        rows: Prompts (batch indices) to write to; ``None`` = all.
        head: Head index for head ablations (and a knockout of one head; ``None``: every head).
    """

    kind: Literal["replace", "add", "ablate_head", "knockout"]
    layer: int
    site: str
    values: Tensor | None
    pos: Positions
    rows: Rows = None
    head: int | None = None

    def __str__(self) -> str:
        head = f" head {self.head}" if self.head is not None else ""
        return f"{self.kind}(layer {self.layer}{head}, {self.site}, pos={_short(self.pos)})"


def replace(
    layer: int,
    vector: Float[Tensor, "*rows d_model"],
    pos: Positions = "answer",
    site: str = "resid_post",
    rows: Rows = None,
) -> Intervention:
    """Overwrite the residual stream at ``site`` of block ``layer`` with ``vector`` at ``pos``."""
    return _residual_write("replace", layer, vector, pos, site, rows)


def add(
    layer: int,
    vector: Float[Tensor, "*rows d_model"],
    pos: Positions = "answer",
    site: str = "resid_post",
    rows: Rows = None,
) -> Intervention:
    """Add ``vector`` to the residual stream at ``site`` of block ``layer`` at ``pos``."""
    return _residual_write("add", layer, vector, pos, site, rows)


def _residual_write(
    kind: Literal["replace", "add"], layer: int, vector: Any, pos: Positions, site: str, rows: Rows
) -> Intervention:
    """The :func:`replace` or :func:`add` of ``vector`` (checked to be real numbers) at ``site`` of block ``layer``."""
    return Intervention(kind, layer, site, _as_values(vector, kind, "d_model"), pos, rows)


def ablate_head(
    layer: int,
    head: int,
    mode: Literal["zero", "mean"] = "zero",
    mean: Float[Tensor, "*rows d_head"] | None = None,
    pos: Positions = "all",
    rows: Rows = None,
) -> Intervention:
    """Zero- or mean-ablate head ``head`` of block ``layer`` (its ``attn.hook_z`` output) at ``pos``.

    ``mode="mean"`` needs ``mean``: the head's mean ``hook_z`` (``[d_head]``, or per prompt).
    """
    if mode not in ("zero", "mean"):
        raise ShapeError(f"ablate_head mode must be 'zero' or 'mean', got {mode!r}.")
    if (mode == "mean") != (mean is not None):
        raise ShapeError(
            "mode='mean' needs mean= (the head's mean attn.hook_z, shape [d_head]); mode='zero' takes no mean."
        )
    values = None if mean is None else _as_values(mean, "ablate_head mean", "d_head")
    return Intervention("ablate_head", layer, "attn.hook_z", values, pos, rows, head)


def knockout(
    layer: int,
    keys: Bool[Tensor, "*rows pos"] | Sequence[int],
    pos: Literal["answer", "all"] | int | Sequence[int] | Tensor = "answer",
    head: int | None = None,
    rows: Rows = None,
) -> Intervention:
    """Block attention from the queries at ``pos`` to the ``keys`` positions in block ``layer`` (attention knockout).

    The blocked keys get no attention weight (their scores are set to -inf before the softmax, or, on a model whose
    scores cannot be edited, their weights are zeroed and the rest renormalised), in every head or in ``head`` only.
    A query must keep a key it sees: one before the query, and in a block with a sliding window (Gemma-2, Mistral ...)
    or attention chunks, one within its window (:class:`~tv_lens.interventions.knockouts.HiddenKeysError` otherwise,
    raised during the pass, where the model's mask shows; a key outside the window is hidden already).

    Args:
        layer: The block.
        keys: Key positions to block, in the caller's padded layout: a bool mask ``[pos]`` for every prompt or
            ``[n_rows, pos]`` per selected prompt, or a list of positions.
        pos: The queries: ``"answer"`` (each prompt's answer position), an int, ``[batch]`` one per prompt, or a bool
            mask of query positions (``[pos]`` for every prompt or ``[batch, pos]``: each marked query is kept from
            the keys at or before it); ``"all"``: every query after each blocked key (the keys' information reaches
            no later position in this block).
        head: Block the keys for this head only (``None``: every head).
        rows: Prompts (batch indices) to apply it to; ``None`` = all.
    """
    mask = tensor_of(keys, "knockout keys", "a bool mask of key positions [pos] (or [n_rows, pos]), or a list of them")
    if mask.numel() == 0:  # an empty list blocks no key
        mask = torch.zeros(mask.shape, dtype=torch.bool)
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex() or mask.ndim != 1:
            raise ShapeError(
                f"knockout keys must be a bool mask of key positions [pos] or [n_rows, pos], or a list of positions, "
                f"got {mask.dtype} of shape {tuple(mask.shape)}."
            )
        positions = mask.long()
        if bool((positions < 0).any()):
            raise PositionError(f"knockout key positions must be >= 0 (from the start), got {positions.tolist()}.")
        mask = torch.zeros(int(positions.max()) + 1, dtype=torch.bool)
        mask[positions] = True
    if mask.ndim not in (1, 2):
        raise ShapeError(f"knockout keys must be a mask [pos] or [n_rows, pos], got shape {tuple(mask.shape)}.")
    return Intervention("knockout", layer, "attn", mask, pos, rows, head)


def intervention_list(interventions: Any) -> list[Any]:
    """``interventions`` as a list, after checking it is a collection of them (its items are checked when resolved).

    Raises:
        ShapeError: A single intervention, or what is no collection (a number passed in its place).
    """
    if isinstance(interventions, Intervention):
        raise ShapeError("interventions must be a list of interventions; wrap a single one: [intervention].")
    if not isinstance(interventions, Iterable):
        raise ShapeError(
            f"interventions must be a list of interventions (replace(), add(), ablate_head(), knockout()), got "
            f"{type(interventions).__name__} {interventions!r:.40}; pass [] for none, and the options after it by "
            "keyword (e.g. max_new_tokens=5)."
        )
    return list(interventions)


def _as_values(vector: Any, what: str, width: str) -> Tensor:
    """``vector`` (a tensor, array or nested list of real numbers) as a tensor; anything else is refused.

    Integer values are numbers too; the dtype is not changed here: values are cast to the activation's
    dtype when written (a float16 vector written into a float32 model is widened, a float64 one rounded).
    """
    values = tensor_of(vector, f"{what}'s vector", f"a vector of numbers (a float tensor [{width}])")
    _check_values(values, what)
    return values


def _check_values(values: Any, what: str) -> None:
    if not isinstance(values, Tensor):
        raise ShapeError(f"{what} values must be a tensor of numbers, got {type(values).__name__}.")
    check_tensor_data(values, f"{what}'s vector")
    if values.dtype == torch.bool or values.is_complex():
        raise ShapeError(
            f"{what} got a {values.dtype} vector; values are real numbers written into the activations, so pass a "
            "float tensor (a boolean mask or complex numbers have no meaning there)."
        )


def _short(pos: Positions) -> str:
    if isinstance(pos, str):
        return pos
    one = single_index(pos)  # one position for every prompt
    return "per-prompt" if one is None else str(one)
