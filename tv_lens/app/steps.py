"""The analysis steps the demo and the pretrained-model pipeline share: one analysis each, with a run's settings.

Each app turns its own configuration into :class:`RunSettings` and runs the steps of :data:`SHARED_STEPS`; the steps
an app alone has (emergence over the demo's checkpoints, each app's layer finetuning) stay in the app.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tv_lens.analyses import (
    AttentionKnockout,
    Geometry,
    HeadAblation,
    HeadAttention,
    ICLPerformance,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TdAccuracy,
)
from tv_lens.results import Result

__all__ = ["SHARED_STEPS", "RunSettings", "Step"]


@dataclass(frozen=True)
class RunSettings:
    """A pipeline run's model, task pool and sizes, as the shared steps read them.

    Attributes:
        model: The model analysed.
        pool: Its task pool.
        n_per_task: Prompts per task of TD, geometry, ICL performance and TD vs accuracy.
        causal_n_per_task: Prompts per task of the causal analyses (patching, prompting, heads, attention, knockout).
        n_shots: Demonstrations per prompt (the causal analyses but patching; TD and geometry).
        patching_shots: Demonstrations per prompt of task-vector patching.
        performance_shots: Shot counts of the ICL-performance curve.
        td_accuracy_shots: Shot counts of the TD-vs-accuracy fit.
        patching_mode: ``"replace"``, ``"add"`` or ``"add_difference"``.
        k: Neighbours of TD's k-NN.
        n_bootstrap: Bootstrap resamples of every interval.
        seed: Seed of the prompts and the bootstrap.
        progress: Show progress bars.
    """

    model: Any
    pool: Any
    n_per_task: int
    causal_n_per_task: int
    n_shots: int
    patching_shots: int
    performance_shots: tuple[int, ...]
    td_accuracy_shots: tuple[int, ...]
    patching_mode: str
    k: int
    n_bootstrap: int
    seed: int
    progress: bool

    @classmethod
    def of(cls, config: Any, model: Any, pool: Any, progress: bool, **sizes: Any) -> RunSettings:
        """The settings of an app's ``config`` (the fields both apps' configs have), with ``sizes`` for the rest.

        ``sizes``: ``causal_n_per_task``, ``patching_shots``, ``td_accuracy_shots`` and ``k``, which each app sets
        its own way.
        """
        common = ("n_per_task", "n_shots", "performance_shots", "patching_mode", "n_bootstrap", "seed")
        return cls(model, pool, progress=progress, **{name: getattr(config, name) for name in common}, **sizes)


Step = Callable[[RunSettings], Result]


def _decodability(run: RunSettings) -> Result:
    analysis = TaskDecodability(k=run.k, n_bootstrap=run.n_bootstrap, progress=run.progress)
    return analysis.run(run.model, run.pool, run.n_per_task, run.n_shots, run.seed)


def _performance(run: RunSettings) -> Result:
    analysis = ICLPerformance(shots=run.performance_shots, n_bootstrap=run.n_bootstrap)
    return analysis.run(run.model, run.pool, run.n_per_task, run.seed)


def _geometry(run: RunSettings) -> Result:
    analysis = Geometry(method="pca", progress=run.progress)
    return analysis.run(run.model, run.pool, run.n_per_task, run.n_shots, run.seed)


def _td_accuracy(run: RunSettings) -> Result:
    analysis = TdAccuracy(shots=run.td_accuracy_shots, decodability=TaskDecodability(k=run.k, n_bootstrap=0))
    return analysis.run(run.model, run.pool, run.n_per_task, run.seed)


def _patching(run: RunSettings) -> Result:
    analysis = TaskVectorPatching(
        mode=run.patching_mode,  # type: ignore[arg-type]
        n_bootstrap=run.n_bootstrap,
        progress=run.progress,
    )
    return analysis.run(run.model, run.pool, run.causal_n_per_task, run.patching_shots, run.seed)


def _sampled(kind: Callable[..., Any]) -> Step:
    """The step of an analysis that samples the causal prompts at the run's shots, with its defaults otherwise."""

    def step(run: RunSettings) -> Result:
        analysis = kind(n_bootstrap=run.n_bootstrap, progress=run.progress)
        return analysis.run(run.model, run.pool, run.causal_n_per_task, run.n_shots, run.seed)

    return step


SHARED_STEPS: dict[str, Step] = {
    "decodability": _decodability,
    "performance": _performance,
    "geometry": _geometry,
    "td_accuracy": _td_accuracy,
    "patching": _patching,
    "prompting": _sampled(TaskVectorPrompting),
    "heads": _sampled(HeadAblation),
    "attention": _sampled(HeadAttention),
    "knockout": _sampled(AttentionKnockout),
}
"""Name (also the result file's stem) → the step, in the report's order
(:data:`tv_lens.app.sections.ANALYSIS_NAMES`)."""
