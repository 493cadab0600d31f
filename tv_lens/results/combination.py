"""Vector algebra over tasks: one new vector ``Σ weight · vector`` of named tasks, as Todd et al. compose them.

Todd et al. ("vector algebra") build the vector of a task no prompt showed from those of related tasks, e.g.
``last-antonym ≈ last-copy + first-antonym − first-copy``. :meth:`TaskVectors.combine
<tv_lens.task_vectors.TaskVectors.combine>` and :meth:`FunctionVector.combine
<tv_lens.results.FunctionVector.combine>` return such a vector under a name of its own, with the provenance of the
vectors it comes from (how to apply it, and the combination in words).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tv_lens.checks import is_finite_number
from tv_lens.errors import AnalysisError, NonFiniteError, TaskError
from tv_lens.results.provenance import VectorProvenance

__all__ = ["Combination", "combination"]


@dataclass(frozen=True)
class Combination:
    """Which task rows a combination reads, with what weights, under what name.

    Attributes:
        name: Name of the new vector.
        rows: Index of each named task on the task axis.
        weights: Weight of each, ``[n]`` (float64).
        expression: The combination in words (``"last-antonym = 1·last-copy + 1·first-antonym - 1·first-copy"``).
    """

    name: str
    rows: list[int]
    weights: Float[Tensor, " n"]
    expression: str

    def of(self, vectors: Float[Tensor, " task *rest"]) -> Float[Tensor, " 1 *rest"]:
        """``Σ weight · vectors[row]`` over the named rows, in ``vectors``' dtype, as a task axis of length 1."""
        picked = vectors[self.rows].double()
        weights = self.weights.to(picked.device).reshape(-1, *([1] * (picked.ndim - 1)))
        combined = (weights * picked).sum(0, keepdim=True).to(vectors.dtype)
        if not bool(torch.isfinite(combined).all()):
            raise NonFiniteError(
                f"The combination {self.expression} has NaN or infinite entries in {vectors.dtype}; use weights "
                "of a size the vectors can take, and check that the vectors are finite."
            )
        return combined

    def provenance(self, provenance: VectorProvenance | None) -> VectorProvenance | None:
        """``provenance`` whose prompts say that the vector is this combination of the ones they built."""
        if provenance is None:
            return None
        return replace(provenance, pool=f"{self.expression}, of vectors built from {provenance.pool or 'prompts'}")


def combination(task_names: tuple[str, ...], weights: Any, name: Any, what: str) -> Combination:
    """Check ``weights`` (task name → finite number) and ``name`` against ``task_names``; ``what`` names the vectors.

    Raises:
        AnalysisError: ``weights`` is not a non-empty mapping of task names to finite numbers, or ``name`` is not a
            non-empty string.
        TaskError: A task of ``weights`` has no vector.
    """
    if not isinstance(weights, Mapping) or not weights:
        raise AnalysisError(
            f"combine takes a dict of task name -> weight, e.g. {{'first-antonym': 1.0, 'last-copy': 1.0, "
            f"'first-copy': -1.0}}; got {weights!r}."
        )
    if not isinstance(name, str) or not name:
        raise AnalysisError(f"The combined vector needs a name (a non-empty string), got {name!r}.")
    for task, weight in weights.items():
        if task not in task_names:
            raise TaskError(f"Task {task!r} has no {what}; these cover {list(task_names)}. Combine tasks among them.")
        if not is_finite_number(weight):
            raise AnalysisError(f"The weight of {task!r} must be a finite number, got {weight!r}.")
    terms = " ".join(f"{'-' if w < 0 else '+'} {abs(w):g}·{task}" for task, w in weights.items())
    rows = [task_names.index(task) for task in weights]
    values = torch.tensor([float(w) for w in weights.values()], dtype=torch.float64)
    return Combination(name, rows, values, f"{name} = {terms.removeprefix('+ ')}")
