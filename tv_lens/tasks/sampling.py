"""What every pool's ``sample`` shares: its seeded generator, the shot counts it draws, and argument checks.

A pool draws all its randomness from :func:`seeded_generator` (never the global RNG), draws shot counts from a
:data:`ShotSpec` (:func:`_shot_choices`), and refuses, before anything is allocated, arguments out of range
(:func:`check_sample_arguments`) and batches that cannot fit in memory (:func:`check_batch_fits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from tv_lens.checks import SEED_RANGE, is_int, is_number, is_seed
from tv_lens.environment import available_memory
from tv_lens.errors import TaskError

__all__ = [
    "SEED_RANGE",
    "ShotSpec",
    "available_memory",
    "check_batch_fits",
    "check_sample_arguments",
    "seeded_generator",
]

ShotSpec = int | tuple[int, int] | range
"""Shots per prompt: a fixed int, an inclusive ``(min, max)`` tuple, or a ``range`` of allowed values."""


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the only source of randomness of a pool's ``sample``.

    Raises:
        TaskError: ``seed`` is not an int in ``[0, 2**64)`` (a negative seed would be wrapped around silently).
    """
    if not is_seed(seed):
        raise TaskError(
            f"seed must be an int in [0, 2**64), got {seed!r}; pass a non-negative int such as seed=0 "
            "(the same seed gives the same result)."
        )
    return torch.Generator().manual_seed(seed)


def check_sample_arguments(n_per_task: Any, label_noise: Any, shuffle_labels: Any = False) -> None:
    """Raise a :class:`TaskError` unless the sampling arguments are valid (``shuffle_labels`` a bool)."""
    if not is_int(n_per_task) or n_per_task < 1:
        raise TaskError(f"n_per_task must be an int >= 1, got {n_per_task!r}.")
    if not is_number(label_noise) or not 0 <= label_noise < 1:
        raise TaskError(f"label_noise must lie in [0, 1), got {label_noise!r}; 0 means clean labels.")
    if not isinstance(shuffle_labels, bool):
        raise TaskError(f"shuffle_labels must be True or False, got {shuffle_labels!r}.")


def check_batch_fits(n_per_task: int, n_prompts: int, max_shots: int, bytes_per_slot: int) -> None:
    """Raise a :class:`TaskError` when the prompts cannot fit in memory, before anything is allocated.

    Args:
        n_per_task: Prompts per task asked for.
        n_prompts: Prompts of the batch, every task included.
        max_shots: The largest shot count a prompt may get.
        bytes_per_slot: A lower bound of the bytes one demonstration (or the query) of a prompt takes, so a
            request is refused only when it certainly does not fit (the allocation would fail, or the process
            be killed, part-way through sampling).
    """
    needed = n_prompts * (max_shots + 1) * bytes_per_slot
    available = available_memory()
    if available is not None and needed > available:
        raise TaskError(
            f"n_per_task={n_per_task} with up to {max_shots} shots asks for {n_prompts} prompts of up to "
            f"{max_shots + 1} examples, which need at least {needed / 2**30:.3g} GiB, but only "
            f"{available / 2**30:.3g} GiB of memory is available; sample fewer prompts per task or fewer shots "
            "(several calls with different seeds give more prompts)."
        )


@dataclass(frozen=True)
class _ShotChoices:
    """The allowed shot counts ``start + step * i`` for ``i`` in ``0 .. count - 1`` (never materialised)."""

    start: int
    step: int
    count: int

    @property
    def last(self) -> int:
        """The shot count drawn for ``i = count - 1``."""
        return self.start + self.step * (self.count - 1)

    @property
    def max(self) -> int:
        """The largest allowed shot count."""
        return max(self.start, self.last)

    def draw(self, n: int, gen: torch.Generator) -> Int[Tensor, " n"]:
        """``n`` shot counts drawn uniformly among the allowed ones."""
        return self.start + self.step * torch.randint(self.count, (n,), generator=gen)


def _shot_choices(n_shots: ShotSpec) -> _ShotChoices:
    """Allowed shot counts of a :data:`ShotSpec`, validated."""
    choices = None
    if is_int(n_shots):
        choices = _ShotChoices(n_shots, 1, 1)  # type: ignore[arg-type]
    elif isinstance(n_shots, tuple) and len(n_shots) == 2 and all(is_int(v) for v in n_shots):
        choices = _ShotChoices(n_shots[0], 1, n_shots[1] - n_shots[0] + 1)
    elif isinstance(n_shots, range) and len(n_shots):
        choices = _ShotChoices(n_shots.start, n_shots.step, len(n_shots))
    if choices is None or choices.count < 1 or min(choices.start, choices.last) < 0:
        raise TaskError(
            f"n_shots must be an int >= 0, an inclusive (min, max) tuple with 0 <= min <= max, or a "
            f"non-empty range of ints >= 0; got {n_shots!r}."
        )
    return choices
