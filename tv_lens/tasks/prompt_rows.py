"""What token and regression ICL batches share: their prompt fields, checks, moves and row selection.

:class:`~tv_lens.tasks.ICLBatch` and :class:`~tv_lens.tasks.RegressionBatch` are both right-padded prompts
with ``attention_mask [batch, pos]``, per-prompt ``answer_pos``, ``task_ids``, ``n_shots``, ``query_start``
and per-demonstration ``demo_start``, ``demo_answer_pos``, ``demo_noisy`` (``-1`` / False beyond
``n_shots``). ``kind`` names the batch class in error messages. :class:`PromptRows` holds the methods both
classes share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any, TypeVar

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tv_lens.errors import PositionError, ShapeError, TaskError

__all__ = [
    "PromptRows",
    "check_demonstrations",
    "check_fields",
    "move",
    "row_indices",
    "select_rows",
    "without_demonstrations",
]

Batch = TypeVar("Batch")
Rows = TypeVar("Rows", bound="PromptRows")

PER_PROMPT = ("answer_pos", "task_ids", "n_shots", "query_start")
PER_DEMONSTRATION = ("demo_start", "demo_answer_pos", "demo_noisy")


class PromptRows(ABC):
    """Base of the batch dataclasses: checks on creation, length, prompt lengths, shot width and ``to``."""

    inputs: Tensor
    attention_mask: Tensor
    demo_start: Tensor

    def __post_init__(self) -> None:
        self._check_shapes()
        self._check_positions()

    @abstractmethod
    def _check_shapes(self) -> None:
        """Raise :class:`ShapeError` unless every field has a shape and type ``inputs`` implies."""

    @abstractmethod
    def _check_positions(self) -> None:
        """Raise :class:`PositionError` unless the padding, demonstrations and answers are consistent."""

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        """Number of real (non-pad) positions of each prompt."""
        return self.attention_mask.sum(-1)

    @property
    def max_shots(self) -> int:
        """Width of the per-demonstration arrays (the largest ``n_shots`` in the batch)."""
        return self.demo_start.shape[-1]

    def to(self: Rows, device: torch.device | str) -> Rows:
        """The same batch with every tensor on ``device``."""
        return move(self, device)


def check_fields(batch: Any, kind: str) -> None:
    """Every shared field has the shape ``inputs`` implies, and every tensor is on one device."""
    b, p = batch.inputs.shape[:2]
    n_demo = batch.demo_start.shape[-1] if batch.demo_start.ndim == 2 else -1
    expected = {"attention_mask": (b, p)} | {n: (b,) for n in PER_PROMPT} | {n: (b, n_demo) for n in PER_DEMONSTRATION}
    for name, shape in expected.items():
        got = tuple(getattr(batch, name).shape)
        if got != shape:
            raise ShapeError(f"{kind}.{name} has shape {got} but inputs [batch={b}, pos={p}] need {shape}.")
    devices = {value.device for value in _tensors(batch).values()}
    if len(devices) > 1:
        raise ShapeError(f"{kind} tensors are on several devices {devices}; move them with .to(device).")


def check_demonstrations(batch: Any, kind: str) -> None:
    """Right padding, shot counts, task ids and demonstration positions are consistent."""
    mask = batch.attention_mask
    lengths = mask.sum(-1)
    if not torch.equal(mask, (torch.arange(mask.shape[-1], device=mask.device) < lengths[:, None]).to(mask)):
        raise PositionError(f"{kind}.attention_mask must be right-padded: ones, then zeros, in every row.")
    max_shots = batch.demo_start.shape[-1]
    if (batch.n_shots < 0).any() or (batch.n_shots > max_shots).any():
        shots = batch.n_shots.tolist()
        raise TaskError(f"{kind}.n_shots must lie in 0 .. {max_shots} (the demo columns), got {shots}.")
    task_ids, names = batch.task_ids, batch.task_names
    if len(names) == 0 or (task_ids < 0).any() or (task_ids >= len(names)).any():
        raise TaskError(f"{kind}.task_ids must index task_names {names}.")
    is_demo = torch.arange(max_shots, device=mask.device) < batch.n_shots[:, None]
    for name in ("demo_start", "demo_answer_pos"):
        pos = getattr(batch, name)
        if (pos[~is_demo] != -1).any() or (pos[is_demo] < 0).any():
            raise PositionError(f"{kind}.{name} must be >= 0 on the first n_shots columns and -1 after.")
        if ((pos >= batch.query_start[:, None]) & is_demo).any():
            raise PositionError(f"{kind}.{name} must lie before query_start in every prompt.")


def move(batch: Batch, device: torch.device | str) -> Batch:
    """The same batch with every tensor on ``device``."""
    return replace(batch, **{name: value.to(device) for name, value in _tensors(batch).items()})  # type: ignore[type-var]


def row_indices(
    batch: Any, indices: Int[Tensor, " n"] | Bool[Tensor, " n"] | Sequence[int] | slice, kind: str
) -> Int[Tensor, " n"]:
    """Prompt indices from indices, a boolean mask over prompts or a slice, checked against the batch."""
    n = len(batch)
    if isinstance(indices, slice):
        idx = torch.arange(n)[indices]
    else:
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
    idx = idx.to(batch.inputs.device).long()
    if idx.numel() and (idx.min() < -n or idx.max() >= n):
        raise PositionError(f"{kind}.select got indices outside 0 .. {n - 1}.")
    return idx


def select_rows(batch: Batch, idx: Int[Tensor, " n"], n_pos: int, **other: Tensor) -> Batch:
    """``batch`` cut to the prompts ``idx``, ``n_pos`` positions and their largest ``n_shots``.

    ``other``: the fields only one batch class has, already selected.
    """
    b: Any = batch
    n_demo = int(b.n_shots[idx].max()) if idx.numel() else 0
    shared = {name: getattr(b, name)[idx] for name in PER_PROMPT}
    shared |= {name: getattr(b, name)[idx, :n_demo] for name in PER_DEMONSTRATION}
    return replace(  # type: ignore[type-var]
        b,
        inputs=b.inputs[idx, :n_pos],
        attention_mask=b.attention_mask[idx, :n_pos],
        **shared,
        **other,
    )


def without_demonstrations(batch: Batch, **changes: Tensor) -> Batch:
    """``batch`` with no shots and empty per-demonstration columns (a query-only twin), and ``changes``."""
    b: Any = batch
    return replace(  # type: ignore[type-var]
        b,
        n_shots=torch.zeros_like(b.n_shots),
        demo_start=b.demo_start[:, :0],
        demo_answer_pos=b.demo_answer_pos[:, :0].clone(),
        demo_noisy=b.demo_noisy[:, :0],
        **changes,
    )


def _tensors(batch: Any) -> dict[str, Tensor]:
    return {f.name: getattr(batch, f.name) for f in fields(batch) if isinstance(getattr(batch, f.name), Tensor)}
