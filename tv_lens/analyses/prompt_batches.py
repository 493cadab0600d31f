"""What analyses sample and read: prompt batches and pools, as protocols, and the checks that a value is one.

Analyses read prompts through :class:`PromptBatch` / :class:`PromptPool`, the fields and methods that
token batches (:class:`~tv_lens.tasks.ICLBatch`) and continuous batches (``RegressionBatch``) share, so
they run on either without knowing how a task renders.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from tv_lens.errors import TaskError

__all__ = ["PromptBatch", "PromptPool", "check_batch", "check_pool", "sample_batch"]


@runtime_checkable
class PromptBatch(Protocol):
    """A batch of rendered ICL prompts (``ICLBatch`` for tokens, ``RegressionBatch`` for vectors)."""

    @property
    def inputs(self) -> Tensor:
        """Prompt tokens ``[batch, pos]`` (or continuous inputs ``[batch, pos, d_in]``)."""
        ...

    @property
    def attention_mask(self) -> Tensor:
        """1 for real positions, 0 for padding ``[batch, pos]``."""
        ...

    @property
    def answer_pos(self) -> Tensor:
        """Position whose output predicts the first answer token ``[batch]``."""
        ...

    @property
    def answers(self) -> Tensor:
        """Answer tokens ``[batch, n_answer]`` (``-1`` padded) or values."""
        ...

    @property
    def task_ids(self) -> Tensor:
        """Task index of each prompt ``[batch]``."""
        ...

    @property
    def task_names(self) -> tuple[str, ...]:
        """Name of each task index."""
        ...

    @property
    def n_shots(self) -> Tensor:
        """Demonstrations per prompt ``[batch]``."""
        ...

    def __len__(self) -> int: ...

    @property
    def n_answer_tokens(self) -> int:
        """Answer columns per prompt (the longest answer)."""
        ...

    @property
    def answer_lengths(self) -> Tensor:
        """Each prompt's own answer positions ``[batch]``."""
        ...


@runtime_checkable
class PromptPool(Protocol):
    """A pool of confusable tasks that samples :class:`PromptBatch` es (``TaskPool``, ``RegressionPool``)."""

    @property
    def task_names(self) -> tuple[str, ...]:
        """Name of every task id."""
        ...

    def __len__(self) -> int: ...

    def sample(self, n_per_task: int, n_shots: Any, seed: int, label_noise: float = 0.0) -> Any:
        """``n_per_task`` prompts of every task, seeded."""
        ...


def check_pool(pool: Any) -> None:
    """Raise :class:`TaskError` unless ``pool`` can sample prompts (has ``sample(n_per_task, n_shots, seed)``)."""
    if not callable(getattr(pool, "sample", None)) or not hasattr(pool, "task_names"):
        raise TaskError(
            f"Cannot sample prompts from a {type(pool).__name__}; pass a task pool such as "
            "tv_lens.tasks.offset_pool() (a TaskPool, RegressionPool or TextPool), or use run_batch for a batch."
        )


def check_batch(batch: Any) -> None:
    """Raise :class:`TaskError` unless ``batch`` is a batch of prompts (has the :class:`PromptBatch` fields)."""
    fields = ("inputs", "attention_mask", "answer_pos", "answers", "task_ids", "task_names")
    missing = [name for name in fields if not hasattr(batch, name)]
    if missing:
        raise TaskError(
            f"batch must be a batch of prompts, got a {type(batch).__name__} without {missing}; pass "
            "pool.sample(n_per_task, n_shots, seed) (an ICLBatch) or a selection of one (batch.select(rows))."
        )


def sample_batch(pool: PromptPool, n_per_task: int, n_shots: Any, seed: int, label_noise: float = 0.0) -> PromptBatch:
    """``pool.sample`` typed as a :class:`PromptBatch` (the pool is checked first)."""
    check_pool(pool)
    if label_noise:
        batch: PromptBatch = pool.sample(n_per_task, n_shots, seed, label_noise=label_noise)
    else:  # a pool of the user's own need not know label noise
        batch = pool.sample(n_per_task, n_shots, seed)
    return batch
