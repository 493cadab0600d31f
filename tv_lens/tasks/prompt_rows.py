"""What token and regression ICL batches share: their prompt fields, checks, moves and row selection.

:class:`~tv_lens.tasks.ICLBatch` and :class:`~tv_lens.tasks.RegressionBatch` are both right-padded prompts
with ``attention_mask [batch, pos]``, per-prompt ``answer_pos``, ``task_ids``, ``n_shots``, ``query_start``
and per-demonstration ``demo_start``, ``demo_answer_pos``, ``demo_answer_end``, ``demo_noisy`` (``-1`` / False
beyond ``n_shots``). :class:`PromptRows` declares those fields and holds the methods both classes share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar, cast

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tv_lens.checks import tensor_of
from tv_lens.errors import PositionError, ShapeError, TaskError

__all__ = ["PromptRows"]

Rows = TypeVar("Rows", bound="PromptRows")

PER_PROMPT = ("answer_pos", "task_ids", "n_shots", "query_start")
PER_DEMONSTRATION = ("demo_start", "demo_answer_pos", "demo_answer_end", "demo_noisy")


@dataclass(frozen=True, eq=False)
class PromptRows(ABC):
    """Base of the batch dataclasses: the fields both share, checks on creation, length, prompt lengths, ``to``.

    Each batch class redeclares ``inputs`` and ``answers`` with its own types, adds a field of its own and
    documents every field as its prompts lay them out. Error messages name the batch class.
    """

    inputs: Tensor
    attention_mask: Int[Tensor, "batch pos"]
    answer_pos: Int[Tensor, " batch"]
    answers: Tensor
    task_ids: Int[Tensor, " batch"]
    task_names: tuple[str, ...]
    n_shots: Int[Tensor, " batch"]
    demo_start: Int[Tensor, "batch max_shots"]
    demo_answer_pos: Int[Tensor, "batch max_shots"]
    demo_noisy: Bool[Tensor, "batch max_shots"]
    query_start: Int[Tensor, " batch"]
    demo_answer_end: Int[Tensor, "batch max_shots"] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        self._check_shapes()
        self._default_answer_ends()
        self._check_positions()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, giving a batch pickled before ``demo_answer_end`` existed the default of :meth:`__post_init__`."""
        self.__dict__.update(state)
        self._default_answer_ends()

    def _default_answer_ends(self) -> None:
        """Where ``demo_answer_end`` was not given, every answer runs up to the next demonstration (or the query)."""
        if self.__dict__.get("demo_answer_end") is None:
            object.__setattr__(self, "demo_answer_end", self.demonstration_ends)

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

    @property
    def prefix_lengths(self) -> Int[Tensor, " batch"]:
        """Tokens before the first demonstration (before the query in a prompt without demonstrations), e.g. BOS."""
        first = self.demo_start[:, 0] if self.max_shots else self.query_start
        return torch.where(self.n_shots > 0, first, self.query_start)

    @property
    def demonstration_ends(self) -> Int[Tensor, "batch max_shots"]:
        """Where each demonstration's span ends: the next one's start, the query's after the last (-1 beyond)."""
        following = torch.cat([self.demo_start[:, 1:], torch.full_like(self.demo_start[:, :1], -1)], dim=1)
        ends = torch.where(following >= 0, following, self.query_start[:, None])
        return torch.where(self.demo_start >= 0, ends, -1)

    def to(self: Rows, device: torch.device | str) -> Rows:
        """The same batch with every tensor on ``device``."""
        moved: dict[str, Any] = {name: value.to(device) for name, value in self._tensors().items()}
        return replace(self, **moved)

    def _check_fields(self) -> None:
        """Every shared field has the shape ``inputs`` implies, and every tensor is on one device."""
        kind = type(self).__name__
        b, p = self.inputs.shape[:2]
        n_demo = self.demo_start.shape[-1] if self.demo_start.ndim == 2 else -1
        expected = {"attention_mask": (b, p)} | {n: (b,) for n in PER_PROMPT}
        expected |= {n: (b, n_demo) for n in PER_DEMONSTRATION if getattr(self, n) is not None}
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ShapeError(f"{kind}.{name} has shape {got} but inputs [batch={b}, pos={p}] need {shape}.")
        devices = {value.device for value in self._tensors().values()}
        if len(devices) > 1:
            raise ShapeError(f"{kind} tensors are on several devices {devices}; move them with .to(device).")

    def _check_demonstrations(self) -> None:
        """Right padding, shot counts, task ids and demonstration positions are consistent."""
        kind, mask = type(self).__name__, self.attention_mask
        if not torch.equal(mask, (torch.arange(mask.shape[-1], device=mask.device) < self.lengths[:, None]).to(mask)):
            raise PositionError(f"{kind}.attention_mask must be right-padded: ones, then zeros, in every row.")
        max_shots = self.max_shots
        if (self.n_shots < 0).any() or (self.n_shots > max_shots).any():
            shots = self.n_shots.tolist()
            raise TaskError(f"{kind}.n_shots must lie in 0 .. {max_shots} (the demo columns), got {shots}.")
        task_ids, names = self.task_ids, self.task_names
        if len(names) == 0 or (task_ids < 0).any() or (task_ids >= len(names)).any():
            raise TaskError(f"{kind}.task_ids must index task_names {names}.")
        is_demo = torch.arange(max_shots, device=mask.device) < self.n_shots[:, None]
        for name in ("demo_start", "demo_answer_pos", "demo_answer_end"):
            pos = getattr(self, name)
            if (pos[~is_demo] != -1).any() or (pos[is_demo] < 0).any():
                raise PositionError(f"{kind}.{name} must be >= 0 on the first n_shots columns and -1 after.")
        for name in ("demo_start", "demo_answer_pos"):
            if ((getattr(self, name) >= self.query_start[:, None]) & is_demo).any():
                raise PositionError(f"{kind}.{name} must lie before query_start in every prompt.")
        answer_end = cast(Tensor, self.demo_answer_end)  # set by __post_init__
        inside = (self.demo_answer_pos < answer_end) & (answer_end <= self.demonstration_ends)
        if (is_demo & ~inside).any():
            raise PositionError(
                f"{kind}.demo_answer_end must lie after demo_answer_pos and at most at the next demonstration's start "
                "(the query's after the last): one past each demonstration's last answer token."
            )

    def _row_indices(
        self, indices: Int[Tensor, " n"] | Bool[Tensor, " n"] | Sequence[int] | slice
    ) -> Int[Tensor, " n"]:
        """Prompt indices from indices, a boolean mask over prompts or a slice, checked against the batch."""
        n = len(self)
        if isinstance(indices, slice):
            idx = torch.arange(n)[indices]
        else:
            name = f"{type(self).__name__}.select indices"
            expected = f"a sequence of prompt indices, a bool mask of {n} prompts or a slice (one prompt: [i])"
            idx = tensor_of(indices, name, expected)
            if idx.dtype == torch.bool and idx.shape != (n,):
                raise PositionError(
                    f"{name} are a bool mask of shape {tuple(idx.shape)}; it needs one entry per prompt: ({n},)."
                )
            if idx.ndim != 1 or (idx.numel() and (idx.is_floating_point() or idx.is_complex())):  # [] is a float tensor
                raise PositionError(f"{name} must be {expected}, got {idx.dtype} of shape {tuple(idx.shape)}.")
            if idx.dtype == torch.bool:
                idx = idx.nonzero().flatten()
        idx = idx.to(self.inputs.device).long()
        if idx.numel() and (idx.min() < -n or idx.max() >= n):
            raise PositionError(f"{type(self).__name__}.select got indices outside 0 .. {n - 1}.")
        return idx

    def _select_rows(self: Rows, idx: Int[Tensor, " n"], n_pos: int, **other: Any) -> Rows:
        """The batch cut to the prompts ``idx``, ``n_pos`` positions and their largest ``n_shots``.

        ``other``: the tensor fields only one batch class has, already selected.
        """
        n_demo = int(self.n_shots[idx].max()) if idx.numel() else 0
        shared: dict[str, Any] = {name: getattr(self, name)[idx] for name in PER_PROMPT}
        shared |= {name: getattr(self, name)[idx, :n_demo] for name in PER_DEMONSTRATION}
        return replace(
            self,
            inputs=self.inputs[idx, :n_pos],
            attention_mask=self.attention_mask[idx, :n_pos],
            **shared,
            **other,
        )

    def _without_demonstrations(self: Rows, **changes: Any) -> Rows:
        """The batch with no shots and empty per-demonstration columns (a query-only twin), and tensor ``changes``."""
        return replace(
            self,
            n_shots=torch.zeros_like(self.n_shots),
            demo_start=self.demo_start[:, :0],
            demo_answer_pos=self.demo_answer_pos[:, :0].clone(),
            demo_answer_end=None,
            demo_noisy=self.demo_noisy[:, :0],
            **changes,
        )

    def _tensors(self) -> dict[str, Tensor]:
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if isinstance(value, Tensor)}
