"""The analyses that apply to a model not trained here: one step each, on the model and its text pool."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tv_lens.analyses import (
    Geometry,
    HeadAblation,
    ICLPerformance,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TdAccuracy,
)
from tv_lens.app.pretrained.config import PretrainedConfig
from tv_lens.errors import ConfigError
from tv_lens.results import Result
from tv_lens.tasks import TextPool

__all__ = ["ANALYSES", "PRETRAINED_ANALYSES", "check_names"]


def _decodability(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = TaskDecodability(k=config.k, n_bootstrap=config.n_bootstrap, progress=progress)
    return analysis.run(model, pool, config.n_per_task, config.n_shots, config.seed)


def _performance(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = ICLPerformance(shots=config.performance_shots, n_bootstrap=config.n_bootstrap)
    return analysis.run(model, pool, config.n_per_task, config.seed)


def _geometry(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = Geometry(method="pca", progress=progress)
    return analysis.run(model, pool, config.n_per_task, config.n_shots, config.seed)


def _td_accuracy(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = TdAccuracy(shots=config.td_accuracy_shots, decodability=TaskDecodability(k=config.k, n_bootstrap=0))
    return analysis.run(model, pool, config.n_per_task, config.seed)


def _patching(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = TaskVectorPatching(
        mode=config.patching_mode,  # type: ignore[arg-type]
        n_bootstrap=config.n_bootstrap,
        progress=progress,
    )
    return analysis.run(model, pool, config.n_per_task, config.n_shots, config.seed)


def _prompting(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = TaskVectorPrompting(n_bootstrap=config.n_bootstrap, progress=progress)
    return analysis.run(model, pool, config.n_per_task, config.n_shots, config.seed)


def _heads(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = HeadAblation(n_bootstrap=config.n_bootstrap, progress=progress)
    return analysis.run(model, pool, config.n_per_task, config.n_shots, config.seed)


ANALYSES: dict[str, Callable[[Any, TextPool, PretrainedConfig, bool], Result]] = {
    "decodability": _decodability,
    "performance": _performance,
    "geometry": _geometry,
    "td_accuracy": _td_accuracy,
    "patching": _patching,
    "prompting": _prompting,
    "heads": _heads,
}
"""Name (also the result file's stem) → the step that runs that analysis, in the demo's order
(:data:`tv_lens.app.sections.ANALYSIS_NAMES`)."""

PRETRAINED_ANALYSES: tuple[str, ...] = tuple(ANALYSES)
"""The analyses :func:`run_pretrained` runs (result file stems, the report's names), in order. The demo's other
two, emergence over training and layer finetuning, need training runs."""


def check_names(only: Sequence[str] | None) -> tuple[str, ...]:
    """``only`` as a tuple of :data:`PRETRAINED_ANALYSES` names in pipeline order (all when ``None``).

    Raises:
        ConfigError: A name that is not an analysis of a pretrained model.
    """
    if only is None:
        return PRETRAINED_ANALYSES
    unknown = [name for name in only if name not in ANALYSES]
    if unknown or not only:
        training = [name for name in unknown if name in ("emergence", "finetuning")]
        why = f" ({', '.join(training)} needs a model trained by tv-lens demo)" if training else ""
        raise ConfigError(
            f"Analysis name(s) {unknown or list(only)} do not apply to a pretrained model{why}; choose from "
            f"{list(PRETRAINED_ANALYSES)}."
        )
    return tuple(name for name in PRETRAINED_ANALYSES if name in only)
