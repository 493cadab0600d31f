"""Run several analyses on one model and pool, sharing one set of cached representations.

Representation analyses (task decodability, geometry, and any object with ``layers``, ``site`` and
``compute(reps, task_names=, seed=)``) all read the residual stream of the same prompts at their answer
positions. The suite samples the prompts once and calls :func:`tv_lens.probes.collect` once per residual
site with the union of the layers they need, then hands each analysis its layers of the shared
representations: one forward pass per batch of prompts, however many such analyses run. Analyses that
run the model on prompts of their own (ICL performance, TD → accuracy, the causal analyses, head attention) run
as usual with the suite's ``n_per_task`` and ``seed``, and its ``n_shots`` where their ``run`` takes one (the
others set their shots in their config).

>>> from tv_lens.analyses import Geometry, TaskDecodability
>>> suite = Suite((TaskDecodability(k=3), Geometry()))
>>> suite.names
('decodability', 'geometry')
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tv_lens.analyses.attention import HeadAttention
from tv_lens.analyses.decodability import TaskDecodability
from tv_lens.analyses.geometry import Geometry
from tv_lens.analyses.knockout import AttentionKnockout
from tv_lens.analyses.options import N_PER_TASK, PassOptions
from tv_lens.analyses.performance import ICLPerformance
from tv_lens.analyses.prediction import TdAccuracy
from tv_lens.analyses.prompt_batches import PromptBatch, PromptPool, sample_batch
from tv_lens.errors import AnalysisError
from tv_lens.models.adapter import EMBED_LAYER, adapt
from tv_lens.probes import Representations, collect
from tv_lens.results.base import Result
from tv_lens.results.suite import SuiteResult
from tv_lens.tasks import ShotSpec

__all__ = ["ModelAnalysis", "RepresentationStep", "Suite", "SuiteResult"]


@runtime_checkable
class RepresentationStep(Protocol):
    """A step of the suite computed on its shared answer-position representations (the ``layers`` of ``site``).

    Every :class:`~tv_lens.analyses.representations.RepresentationAnalysis` (decodability, geometry) is one.
    """

    layers: tuple[int, ...] | None
    site: str

    def compute(self, reps: Representations, labels: Any = None, task_names: Any = None, seed: int = 0) -> Result:
        """The result on given representations."""
        ...


@runtime_checkable
class ModelAnalysis(Protocol):
    """An analysis that runs the model on prompts of its own (its ``run`` may also take ``n_shots``)."""

    def run(self, model: Any, pool: PromptPool, n_per_task: int = ..., seed: int = ...) -> Result:
        """The result on ``model`` and ``pool``."""
        ...


_DEFAULT_NAMES = {
    AttentionKnockout: "knockout",
    HeadAttention: "attention",
    TaskDecodability: "decodability",
    Geometry: "geometry",
    ICLPerformance: "performance",
    TdAccuracy: "prediction",
}


def analysis_tuple(analyses: Any, owner: str) -> tuple[Any, ...]:
    """``analyses`` (a tuple or list of analysis configs) as a tuple; a single config is refused, naming the fix."""
    if not isinstance(analyses, (tuple, list)):
        raise AnalysisError(
            f"{owner} takes a tuple of analyses, got a {type(analyses).__name__}; wrap a single one: "
            f"analyses=({type(analyses).__name__}(...),)."
        )
    return tuple(analyses)


@dataclass(frozen=True)
class Suite(PassOptions):
    """Several analyses run together; representation analyses share one collect call per site.

    Attributes:
        analyses: The analysis configs.
        names: A name per analysis (default from its type, e.g. ``"decodability"``; repeats get ``_2`` ...).

    The keyword-only :class:`~tv_lens.analyses.options.PassOptions` (``batch_size`` of the shared collect,
    ``progress``) apply too.
    """

    analyses: tuple[Any, ...]
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared options
        object.__setattr__(self, "analyses", analysis_tuple(self.analyses, "Suite"))
        if not self.analyses:
            raise AnalysisError("A Suite needs at least one analysis, e.g. Suite((TaskDecodability(), Geometry())).")
        for analysis in self.analyses:
            if not isinstance(analysis, (RepresentationStep, ModelAnalysis)):
                raise AnalysisError(
                    f"{type(analysis).__name__} is not an analysis: give configs with compute(reps, ...) and "
                    "layers/site (representation analyses) or run(model, pool, n_per_task, seed)."
                )
        names = self.names if self.names is not None else _default_names(self.analyses)
        if len(names) != len(self.analyses) or len(set(names)) != len(names):
            raise AnalysisError(f"names must give one distinct name per analysis, got {names!r}.")
        object.__setattr__(self, "names", tuple(names))

    def run(
        self, model: Any, pool: PromptPool, n_per_task: int = N_PER_TASK, n_shots: ShotSpec = 4, seed: int = 0
    ) -> SuiteResult:
        """Sample one batch (seeded) for the representation analyses and run every analysis."""
        batch = sample_batch(pool, n_per_task, n_shots, seed, model=model) if self._representation_analyses() else None
        return self._run(model, pool, batch, n_per_task, n_shots, seed)

    def run_batch(self, model: Any, batch: PromptBatch, seed: int = 0) -> SuiteResult:
        """Run representation analyses on a given batch (model analyses need a pool: use :meth:`run`)."""
        others = [name for name, a in zip(self.names or (), self.analyses, strict=True) if not _is_rep(a)]
        if others:
            raise AnalysisError(f"run_batch runs representation analyses only; {others} need run(model, pool, ...).")
        return self._run(model, None, batch, None, None, seed)

    def _representation_analyses(self) -> list[Any]:
        return [a for a in self.analyses if _is_rep(a)]

    def _run(
        self,
        model: Any,
        pool: PromptPool | None,
        batch: PromptBatch | None,
        n_per_task: int | None,
        n_shots: ShotSpec | None,
        seed: int,
    ) -> SuiteResult:
        shared = self._collect(model, batch) if batch is not None else {}
        results: dict[str, Result] = {}
        for name, analysis in zip(self.names or (), self.analyses, strict=True):
            if _is_rep(analysis) and batch is not None:
                results[name] = analysis.compute(shared[analysis.site], task_names=batch.task_names, seed=seed)
            else:
                takes_shots = "n_shots" in inspect.signature(analysis.run).parameters
                own = {"n_shots": n_shots} if takes_shots else {}
                results[name] = analysis.run(model, pool, n_per_task=n_per_task, seed=seed, **own)
        shots = list(n_shots) if isinstance(n_shots, range) else n_shots
        return SuiteResult(results, n_per_task, shots, seed, len(shared))

    def _collect(self, model: Any, batch: PromptBatch) -> dict[str, Representations]:
        """One collect call per site, over the union of the layers its analyses need."""
        n_layers = adapt(model).n_layers
        by_site: dict[str, set[int]] = {}
        for analysis in self._representation_analyses():
            every = ([EMBED_LAYER] if analysis.site == "resid_post" else []) + list(range(n_layers))
            by_site.setdefault(analysis.site, set()).update(every if analysis.layers is None else analysis.layers)
        return {
            site: collect(
                model,
                batch.inputs,
                batch.answer_pos,
                sorted(layers),
                site,
                attention_mask=batch.attention_mask,
                task_ids=batch.task_ids,
                batch_size=self.batch_size,
                progress=self.progress,
            )
            for site, layers in by_site.items()
        }


def _is_rep(analysis: Any) -> bool:
    return isinstance(analysis, RepresentationStep)


def _default_names(analyses: Sequence[Any]) -> tuple[str, ...]:
    names: list[str] = []
    for analysis in analyses:
        base = _DEFAULT_NAMES.get(type(analysis), type(analysis).__name__.lower())
        name, i = base, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return tuple(names)
