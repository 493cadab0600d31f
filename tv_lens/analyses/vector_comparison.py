"""Three views of where a task lives, per layer, on one model and pool: TD, task vectors, function vectors.

:class:`CompareVectors` runs task decodability (:class:`~tv_lens.analyses.TaskDecodability`: can the task be
read off the answer-position residual?), task-vector prompting (:class:`~tv_lens.analyses.TaskVectorPrompting`:
does that residual, written into a zero-shot prompt, make the model do the task?) and function vectors
(:class:`~tv_lens.analyses.FunctionVectors`: does the sum of the top heads' outputs, added there, do it?) with
their own ``run_batch``, on the same prompts and seeds, and puts the three curves in one
:class:`~tv_lens.results.vector_comparison.VectorComparison`. Each number equals the analysis run alone with
the same configuration, prompts and seed.

Prompts: ICL prompts sampled with ``seed`` (TD, TVP, and the FV's clean means), corrupted prompts with
``seed + 1`` and zero-shot evaluation prompts with ``seed + 2`` (the FV), as each analysis samples them alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from tv_lens.analyses.decodability import TaskDecodability
from tv_lens.analyses.function_vectors import FunctionVectors
from tv_lens.analyses.options import N_PER_TASK
from tv_lens.analyses.prompt_batches import check_pool
from tv_lens.analyses.prompting import TaskVectorPrompting, held_out_vectors
from tv_lens.errors import AnalysisError, LayerOutOfRangeError
from tv_lens.results.vector_comparison import VectorComparison
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import ICLBatch, ShotSpec, TaskPool, TextPool

__all__ = ["CompareVectors", "VectorComparison"]


@dataclass(frozen=True)
class CompareVectors:
    """Configuration of the comparison: the three analyses' own configurations, and shared layers.

    Attributes:
        decodability: The TD analysis.
        prompting: The task-vector prompting sweep.
        function_vectors: The function-vector analysis.
        layers: Blocks every analysis reads or writes (``None``: each its own ``layers``).
    """

    decodability: TaskDecodability = field(default_factory=TaskDecodability)
    prompting: TaskVectorPrompting = field(default_factory=TaskVectorPrompting)
    function_vectors: FunctionVectors = field(default_factory=FunctionVectors)
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        kinds = (
            ("decodability", TaskDecodability),
            ("prompting", TaskVectorPrompting),
            ("function_vectors", FunctionVectors),
        )
        for name, kind in kinds:
            if not isinstance(getattr(self, name), kind):
                raise AnalysisError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}.")
        if self.layers is not None:
            if isinstance(self.layers, (int, str, bytes)) or not isinstance(self.layers, Iterable):
                raise LayerOutOfRangeError(
                    f"layers must be a sequence of block indices such as (0, 1), got {self.layers!r}; for a single "
                    f"layer pass a one-element tuple, e.g. ({self.layers!r},)."
                )
            object.__setattr__(self, "layers", tuple(self.layers))

    def configs(self) -> tuple[TaskDecodability, TaskVectorPrompting, FunctionVectors]:
        """The three configurations that run, with :attr:`layers` set in each where given."""
        configs = (self.decodability, self.prompting, self.function_vectors)
        if self.layers is None:
            return configs
        return tuple(replace(config, layers=self.layers) for config in configs)  # type: ignore[return-value]

    def run(
        self, model: Any, pool: TaskPool | TextPool, n_per_task: int = N_PER_TASK, n_shots: ShotSpec = 4, seed: int = 0
    ) -> VectorComparison:
        """Sample ICL (``seed``), corrupted (``seed + 1``) and zero-shot evaluation (``seed + 2``) prompts; run all.

        TVP's task-mean vectors (``source="task_mean"``) come from a sample of seed ``seed + 1``, as in
        :meth:`TaskVectorPrompting.run`.
        """
        _, prompting, fv = self.configs()
        check_pool(pool, model)
        batch = pool.sample(n_per_task, n_shots, seed)
        corrupted = fv.sample_corrupted(pool, n_per_task, n_shots, seed + 1)
        evaluation = pool.sample(n_per_task, n_shots, seed + 2)
        vectors = held_out_vectors(model, pool, prompting, n_per_task, n_shots, seed)
        return self.run_batch(model, batch, corrupted, evaluation, vectors=vectors, seed=seed)

    def run_batch(
        self,
        model: Any,
        batch: ICLBatch,
        corrupted: ICLBatch,
        evaluation: ICLBatch,
        vectors: TaskVectors | None = None,
        seed: int = 0,
    ) -> VectorComparison:
        """TD and TVP on ``batch``; the FV with means from ``batch``, CIE on ``corrupted``, its sweep on ``evaluation``.

        Args:
            model: A TransformerLens model.
            batch: ICL prompts.
            corrupted: Prompts whose demonstrations carry wrong labels (for the CIE).
            evaluation: Prompts whose zero-shot twins get the function vector.
            vectors: Task-mean vectors for TVP with ``source="task_mean"`` (default: means of ``batch``).
            seed: Seed of every bootstrap (and TD's probe folds).
        """
        decodability, prompting, fv = self.configs()
        return VectorComparison(
            decodability.run_batch(model, batch, seed=seed),
            prompting.run_batch(model, batch, vectors=vectors, seed=seed),
            fv.run_batch(model, batch, corrupted, evaluation, seed=seed),
        )
