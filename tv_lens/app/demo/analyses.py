"""The demo's analyses: one step per analysis on the trained model, run in pipeline order and saved."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tv_lens.analyses import Emergence, LayerFinetuning, TaskDecodability
from tv_lens.app.demo.config import DemoConfig
from tv_lens.app.demo.shots import AnalysisShots, analysis_shots
from tv_lens.app.demo.training import TrainedModel, record_run
from tv_lens.app.pipeline import run_and_save
from tv_lens.app.run_files import RESULTS, RUN_FILE, read_run_info, result_path
from tv_lens.app.steps import SHARED_STEPS, RunSettings, Step
from tv_lens.errors import ConfigError
from tv_lens.results import Result
from tv_lens.tasks import TaskPool, offset_pool
from tv_lens.training import DataConfig, ScheduleConfig, TrainConfig

__all__ = ["ANALYSES", "CHOSEN_SHOTS", "check_names", "finetuning_pool", "run_analyses"]


def finetuning_pool(pool: TaskPool, n_tasks: int | None = None) -> TaskPool:
    """Offset tasks the model was not trained on, on the same vocabulary: where the base model is weak.

    The finetuning experiment (Han et al. §4.4) needs tasks of the trained family that the base model does
    not do well. For a pool of offset tasks ``y = x + c mod n`` these are the offsets it lacks, taken
    upwards from the largest trained one (``offsets (1, 2, 3, 4) mod 16`` gives ``5, 6, 7, 8``); as many
    as the pool has (``n_tasks`` to choose), with a Null task if the pool has one. A pool of parity-dependent
    offsets (:func:`~tv_lens.tasks.parity_offset_pool`) gets the plain offsets that neither parity of any of its
    tasks uses (``offsets (1, 3) mod 8`` gives ``4, 5, 6, 7``).

    Raises:
        ConfigError: ``pool`` is not a pool of single-input (parity-dependent) offset tasks, or has no offsets left.
    """
    n = pool.input_values
    x = torch.arange(n)[:, None]
    parities = [x[:, 0] % 2 == 0, x[:, 0] % 2 == 1]
    seen: set[int] = set()
    for task in pool.tasks:
        shift = (task(x) - x[:, 0]) % n if pool.n_inputs == 1 and pool.answer == "token" else None
        if shift is None or not all(bool((shift[side] == shift[side][0]).all()) for side in parities):
            raise ConfigError(
                f"The demo's finetuning experiment picks unseen offsets, but task {task.name!r} of the recipe's "
                "pool is not an offset task (y = x + c mod n, c possibly depending on the parity of x); run "
                "LayerFinetuning on a pool of your own instead."
            )
        seen.update(int(shift[side][0]) for side in parities if bool(side.any()))
    top = max(seen)
    unseen = [c for c in (*range(top + 1, n), *range(1, top)) if c not in seen]
    wanted = len(pool.tasks) if n_tasks is None else n_tasks
    if len(unseen) < wanted:
        raise ConfigError(f"Only {len(unseen)} offsets mod {n} are unseen by the pool, {wanted} needed.")
    return offset_pool(unseen[:wanted], n_values=n, null=pool.null, fmt=pool.fmt, bos=pool.vocab.bos)


def _shared(step: Step) -> Callable[[TrainedModel, DemoConfig, bool, AnalysisShots], Result]:
    """A shared step on the trained model, with the demo's sizes and the shot counts chosen for it."""

    def run(trained: TrainedModel, config: DemoConfig, progress: bool, shots: AnalysisShots) -> Result:
        settings = RunSettings.of(
            config,
            trained.model,
            trained.pool,
            progress,
            causal_n_per_task=config.causal_n_per_task,
            patching_shots=shots.patching,
            td_accuracy_shots=shots.td_accuracy,
            k=TaskDecodability.k,
        )
        return step(settings)

    return run


def _emergence(trained: TrainedModel, config: DemoConfig, progress: bool, shots: AnalysisShots) -> Result:
    analysis = Emergence(n_shots=config.n_shots, progress=progress)
    return analysis.run(trained.checkpoints, trained.pool, config.emergence_n_per_task, config.seed)


def _finetuning(trained: TrainedModel, config: DemoConfig, progress: bool, shots: AnalysisShots) -> Result:
    n_shots = config.n_shots
    analysis = LayerFinetuning(
        k=config.finetune_k,
        train=TrainConfig(
            data=DataConfig(n_per_task=16, n_shots=n_shots, eval_n_per_task=16, seed=config.seed),
            schedule=ScheduleConfig(
                max_steps=config.finetune_steps,
                lr=1e-3,
                min_lr=1e-4,
                warmup_steps=max(1, config.finetune_steps // 10),
            ),
            eval_every=config.finetune_steps,
        ),
        decodability=TaskDecodability(n_bootstrap=config.n_bootstrap),
        n_per_task=config.finetune_n_per_task,
        n_shots=n_shots,
        n_bootstrap=config.n_bootstrap,
        progress=progress,
    )
    return analysis.run(trained.model, finetuning_pool(trained.pool), seed=config.seed)


ANALYSES: dict[str, Callable[[TrainedModel, DemoConfig, bool, AnalysisShots], Result]] = {
    **{name: _shared(step) for name, step in SHARED_STEPS.items()},
    "emergence": _emergence,
    "finetuning": _finetuning,
}
"""Name (also the result file's stem) → the step that runs that analysis on a trained demo model (with the shot
counts of :func:`choose_analysis_shots`); the report has a section for each
(:data:`tv_lens.app.sections.ANALYSIS_NAMES`, the same names in the same order)."""

CHOSEN_SHOTS = ("td_accuracy", "patching")
"""The analyses that run at shot counts chosen from the ICL accuracy curve."""


def run_analyses(
    out: str | Path,
    trained: TrainedModel,
    config: DemoConfig,
    only: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[dict[str, Result], dict[str, float]]:
    """Run the analyses (all, or those in ``only``) and save each to ``out/results/<name>.safetensors``.

    Before TD→accuracy or patching, the shot counts they run at are chosen from the ICL accuracy curve
    (:func:`choose_analysis_shots`) and recorded in ``out/run.json`` as ``analysis_shots``. ``run.json`` takes
    ``config`` once that choice is checked against the saved results: a refused run leaves it as it was.

    Returns:
        The results by name, and the seconds each took.

    Raises:
        ConfigError: An unknown analysis name in ``only``, or one of TD→accuracy and patching run alone at other
            shot counts than the saved result of the other ran at (``run.json`` holds one choice for both).
    """
    out = Path(out)
    names = check_names(only)
    shots = analysis_shots(trained, config)
    chosen = any(name in CHOSEN_SHOTS for name in names)
    if chosen:
        stored = read_run_info(out / RUN_FILE) or {}
        _check_kept_shots(out, names, stored.get("analysis_shots"), shots)
    record_run(out, config, trained.training, shots.to_dict() if chosen else None)
    return run_and_save(
        out, names, lambda name: ANALYSES[name](trained, config, progress, shots), config.seed, progress
    )


def _check_kept_shots(out: Path, names: Sequence[str], stored: dict[str, Any] | None, shots: AnalysisShots) -> None:
    """Raise a :class:`ConfigError` if ``shots`` would misstate the shots of a saved result not re-run now.

    ``stored`` is ``run.json``'s ``analysis_shots`` (``None`` if it has none).
    """
    chosen = shots.to_dict()
    for name in CHOSEN_SHOTS:
        if name in names or not result_path(out / RESULTS, name).exists():
            continue
        before = "at shot counts run.json does not record" if stored is None else f"at shots {stored[name]}"
        if stored is None or stored[name] != chosen[name]:
            raise ConfigError(
                f"The saved {name} result ran {before}, but these settings choose shots {chosen[name]} for it, "
                f"which run.json would then state; run {name} too (e.g. --only {' '.join(CHOSEN_SHOTS)}), or keep "
                "the td_accuracy_shots and ceiling of the earlier run."
            )


def check_names(only: Sequence[str] | None) -> tuple[str, ...]:
    """``only`` as a tuple of analysis names in pipeline order (all when ``None``)."""
    if only is None:
        return tuple(ANALYSES)
    unknown = [name for name in only if name not in ANALYSES]
    if unknown or not only:
        raise ConfigError(f"Unknown analysis name(s) {unknown or list(only)}; choose from {list(ANALYSES)}.")
    return tuple(name for name in ANALYSES if name in only)
