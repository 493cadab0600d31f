"""The analyses that apply to a model not trained here: one step each, on the model and its text pool."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from tv_lens.analyses import LayerFinetuning, TaskDecodability
from tv_lens.app.pretrained.config import PretrainedConfig
from tv_lens.app.steps import SHARED_STEPS, RunSettings, Step
from tv_lens.errors import ConfigError
from tv_lens.interventions import knockout_strategy
from tv_lens.models import adapt
from tv_lens.results import Result
from tv_lens.tasks import TextPool
from tv_lens.training.lora import weight_targets

__all__ = [
    "ANALYSES",
    "COMPARING_TASKS",
    "ON_REQUEST",
    "PRETRAINED_ANALYSES",
    "applicable",
    "check_names",
    "check_task_count",
]


def _shared(step: Step) -> Callable[[Any, TextPool, PretrainedConfig, bool], Result]:
    """A shared step on the model, with the run's sizes (every analysis at ``n_per_task`` and ``n_shots``)."""

    def run(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
        settings = RunSettings.of(
            config,
            model,
            pool,
            progress,
            causal_n_per_task=config.n_per_task,
            patching_shots=config.n_shots,
            td_accuracy_shots=config.td_accuracy_shots,
            k=config.k,
        )
        return step(settings)

    return run


def _finetuning(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    paper, steps = LayerFinetuning(), config.finetune_steps
    defaults, lora = paper.train, paper.lora
    found = weight_targets(model, 0)  # a mixture of experts has no MLP weights of its own: its attention's only
    analysis = LayerFinetuning(
        lora=None if lora is None else replace(lora, targets=tuple(t for t in lora.targets if t in found)),
        train=replace(
            defaults,
            data=replace(defaults.data, n_shots=config.n_shots),
            schedule=replace(defaults.schedule, max_steps=steps, warmup_steps=steps // 10),
            eval_every=steps,
        ),
        decodability=TaskDecodability(k=config.k, n_bootstrap=config.n_bootstrap),
        n_per_task=config.n_per_task,
        n_shots=config.n_shots,
        n_bootstrap=config.n_bootstrap,
        progress=progress,
    )
    return analysis.run(model, pool, config.seed)


ANALYSES: dict[str, Callable[[Any, TextPool, PretrainedConfig, bool], Result]] = {
    **{name: _shared(step) for name, step in SHARED_STEPS.items()},
    "finetuning": _finetuning,
}
"""Name (also the result file's stem) → the step that runs that analysis, in the demo's order
(:data:`tv_lens.app.sections.ANALYSIS_NAMES`)."""

ON_REQUEST: tuple[str, ...] = ("finetuning",)
"""Analyses run only when named (``only=`` / ``--only``): layer finetuning trains the model twice (LayerFinetuning's
defaults: LoRA rank 16 on a third of the blocks, on the default targets the model has (a mixture of experts: its
attention's), 16 prompts per task, lr 1e-3; ``finetune_steps`` steps at ``n_shots``)."""

PRETRAINED_ANALYSES: tuple[str, ...] = tuple(name for name in ANALYSES if name not in ON_REQUEST)
"""The analyses :func:`run_pretrained` runs by default (result file stems, the report's names), in order. Of the
demo's others, emergence over training needs training checkpoints, and layer finetuning runs on request."""


COMPARING_TASKS: tuple[str, ...] = ("decodability", "td_accuracy", "finetuning")
"""Analyses that decode the task from the representations (TD), so need prompts of at least two tasks."""


def check_task_count(names: Sequence[str], n_tasks: int) -> None:
    """Refuse analyses of :data:`COMPARING_TASKS` among ``names`` with fewer than two tasks (Null counted).

    Raises:
        ConfigError: One task and no Null task, and an analysis that needs two.
    """
    comparing = [name for name in names if name in COMPARING_TASKS]
    if n_tasks < 2 and comparing:
        others = [name for name in PRETRAINED_ANALYSES if name not in COMPARING_TASKS]
        raise ConfigError(
            f"{', '.join(comparing)} decode which task a prompt is of (TD), which needs prompts of at least two "
            f"tasks, and this run has {n_tasks}; add a task to --tasks, drop --no-null (the Null task counts), or "
            f"run the analyses of one task (--only {' '.join(others)})."
        )


def check_names(only: Sequence[str] | None) -> tuple[str, ...]:
    """``only`` as a tuple of :data:`ANALYSES` names in pipeline order (:data:`PRETRAINED_ANALYSES` when ``None``).

    Raises:
        ConfigError: A name that is not an analysis of a pretrained model.
    """
    if only is None:
        return PRETRAINED_ANALYSES
    unknown = [name for name in only if name not in ANALYSES]
    if unknown or not only:
        why = " (emergence needs training checkpoints: tv_lens.analyses.Emergence)" if "emergence" in unknown else ""
        raise ConfigError(
            f"Analysis name(s) {unknown or list(only)} do not apply to a pretrained model{why}; choose from "
            f"{list(ANALYSES)}."
        )
    return tuple(name for name in ANALYSES if name in only)


def applicable(names: tuple[str, ...], only: Sequence[str] | None, model: Any) -> tuple[tuple[str, ...], list[str]]:
    """The analyses to run on ``model``, and a line for each default one left out because it cannot run there.

    Attention knockout needs attention that the hooks can mask (:func:`~tv_lens.interventions.knockout_strategy`);
    a default run leaves it out of a model whose attention runs past them, a run that names it fails.
    """
    if only is not None or "knockout" not in names or knockout_strategy(adapt(model)) is not None:
        return names, []
    line = (
        "Attention knockout: left out, this model's attention runs past TransformerLens's attention hooks, so they "
        "cannot block it (tv_lens.interventions.knockout_strategy)."
    )
    return tuple(name for name in names if name != "knockout"), [line]
