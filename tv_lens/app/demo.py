"""The pipeline behind ``tv-lens demo``: train (or load) a recipe's model, run every analysis, save every result.

A demo directory holds everything a run produced, so each step can be repeated on its own:

- ``checkpoints/step-*.pt``: the training run (the emergence analysis reads every checkpoint);
- ``run.json``: the :class:`DemoConfig` of the run, its training summary and the shots chosen for TD→accuracy
  and patching (``analysis_shots``);
- ``results/<name>.safetensors``: one :class:`~tv_lens.results.Result` per analysis (``Result.load`` reads any);
- ``summary.json``: the headline numbers; ``report.html``: the report (:mod:`tv_lens.app.report`).

A directory that already holds the finished run is reused: the model is loaded, not retrained; an
interrupted run resumes from its last checkpoint. Settings live in :class:`DemoConfig`
(:meth:`DemoConfig.full` and :meth:`DemoConfig.quick` are the two presets of the command line).

TD → accuracy and correct-vs-incorrect patching only say something where accuracy can move: at shot counts
where the model is at its ceiling there is no variation for TD to predict, and a correct task vector cannot
help. So both run at shot counts chosen from the model's ICL accuracy curve (:func:`choose_analysis_shots`):
those of ``td_accuracy_shots`` whose accuracy on the non-Null tasks is below ``DemoConfig.ceiling``. The
choice is saved in ``run.json`` (``analysis_shots``) and stated in the report.

>>> DemoConfig.quick().recipe, DemoConfig.full().recipe
('quick', 'shots')
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tv_lens.analyses import (
    Emergence,
    Geometry,
    HeadAblation,
    ICLPerformance,
    LayerFinetuning,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TdAccuracy,
)
from tv_lens.analyses.patching import MODES as PATCHING_MODES
from tv_lens.app.report import write_report
from tv_lens.app.run_files import RUN_FILE, load_results, result_path, save_summary, write_run_info
from tv_lens.app.run_files import read_run_info as report_run_info
from tv_lens.app.sections import headline_numbers
from tv_lens.errors import ArtefactError, ConfigError
from tv_lens.models import ModelConfig, build_model
from tv_lens.results import Performance, Result
from tv_lens.tasks import NULL_TASK, TaskPool, offset_pool
from tv_lens.training import (
    DataConfig,
    Recipe,
    ScheduleConfig,
    TrainConfig,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    recipes,
    train,
)

__all__ = [
    "AnalysisShots",
    "DemoConfig",
    "DemoRun",
    "TrainedModel",
    "analysis_shots",
    "choose_analysis_shots",
    "finetuning_pool",
    "run_analyses",
    "run_demo",
    "shots_below_ceiling",
    "train_or_load",
]

CHECKPOINTS = "checkpoints"
RESULTS = "results"
REPORT_FILE = "report.html"
# DemoConfig fields that decide the trained weights: a directory trained with other values cannot be reused.
TRAINING_FIELDS = ("recipe", "backend", "seed", "checkpoint_every")


@dataclass(frozen=True)
class DemoConfig:
    """Every setting of a demo run: which model is trained, and how many prompts each analysis uses.

    Attributes:
        recipe: Name of the training recipe (:data:`tv_lens.training.recipes`).
        backend: ``"auto"``, ``"hooked"`` (HookedTransformer) or ``"bridge"`` (TransformerBridge).
        seed: Seed of the model's initialisation, of the training prompts and of every analysis's prompts.
        checkpoint_every: Training steps between checkpoints (must divide the recipe's steps).
        n_per_task: Prompts per task for task decodability, geometry, TD→accuracy and ICL performance.
        causal_n_per_task: Prompts per task for patching, task-vector prompting and head ablation.
        emergence_n_per_task: Prompts per task scored at every checkpoint.
        performance_shots: Shot counts of the ICL-performance curve.
        td_accuracy_shots: Candidate shot counts of TD→accuracy and patching: those below ``ceiling`` are used
            (:func:`choose_analysis_shots`).
        ceiling: ICL accuracy (mean over the non-Null tasks) from which a shot count is at ceiling.
        n_bootstrap: Bootstrap resamples of every confidence interval.
        patching_mode: How task vectors are patched: ``"replace"``, ``"add"`` or ``"add_difference"``.
        finetune_k: Blocks trained in each variant of the finetuning experiment (first k vs last k).
        finetune_steps: Finetuning steps of each variant.
        finetune_n_per_task: Held-out prompts per task the finetuned variants are compared on.
    """

    recipe: str = "shots"
    backend: str = "auto"
    seed: int = 0
    checkpoint_every: int = 25
    n_per_task: int = 100
    causal_n_per_task: int = 50
    emergence_n_per_task: int = 50
    performance_shots: tuple[int, ...] = (0, 1, 2, 4, 8)
    td_accuracy_shots: tuple[int, ...] = (1, 2, 4, 8)
    ceiling: float = 0.95
    n_bootstrap: int = 1000
    patching_mode: str = "add"
    finetune_k: int = 1
    finetune_steps: int = 200
    finetune_n_per_task: int = 50

    def __post_init__(self) -> None:
        counts = ("n_per_task", "causal_n_per_task", "emergence_n_per_task", "finetune_n_per_task", "finetune_k")
        for name in (*counts, "checkpoint_every", "finetune_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DemoConfig.{name} must be an int >= 1, got {value!r}.")
        for name in ("performance_shots", "td_accuracy_shots"):
            value = getattr(self, name)
            if not isinstance(value, list | tuple) or not value or not all(_is_count(s, 0) for s in value):
                raise ConfigError(
                    f"DemoConfig.{name} must be a non-empty list of ints >= 0, got {value!r}; e.g. [1, 2, 4]."
                )
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.recipe, str):
            raise ConfigError(f"DemoConfig.recipe must be a recipe name (a string), got {self.recipe!r}; e.g. 'quick'.")
        if not _is_count(self.seed, 0):
            raise ConfigError(f"DemoConfig.seed must be an int >= 0, got {self.seed!r}; e.g. seed=0.")
        if not _is_count(self.n_bootstrap, 0):
            raise ConfigError(
                f"DemoConfig.n_bootstrap must be an int >= 0 (0: no intervals), got {self.n_bootstrap!r}."
            )
        if isinstance(self.ceiling, bool) or not isinstance(self.ceiling, int | float) or not 0 < self.ceiling <= 1:
            raise ConfigError(
                f"DemoConfig.ceiling is an accuracy in (0, 1], got {self.ceiling!r}; e.g. ceiling=0.95 (1: every "
                "shot count below perfect accuracy counts as below the ceiling)."
            )
        if self.patching_mode not in PATCHING_MODES:
            raise ConfigError(f"patching_mode must be one of {list(PATCHING_MODES)}, got {self.patching_mode!r}.")
        if self.backend not in ("auto", "hooked", "bridge"):
            raise ConfigError(f"backend must be 'auto', 'hooked' or 'bridge', got {self.backend!r}.")

    @classmethod
    def full(cls, **overrides: Any) -> DemoConfig:
        """The full demo: ``recipes["shots"]`` (4 blocks, accuracy rising with shots), 100 prompts per task."""
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A minute-scale demo: ``recipes["quick"]`` (2 blocks, 6 shots, at ceiling from one shot), fewer prompts."""
        settings: dict[str, Any] = {
            "recipe": "quick",
            "checkpoint_every": 20,
            "n_per_task": 40,
            "causal_n_per_task": 24,
            "emergence_n_per_task": 24,
            "performance_shots": (0, 1, 2, 4, 6),
            "td_accuracy_shots": (1, 2, 4, 6),
            "n_bootstrap": 200,
            "finetune_steps": 100,
            "finetune_n_per_task": 30,
        }
        return cls(**{**settings, **overrides})

    def get_recipe(self) -> Recipe:
        """The training recipe (raises a ``TvLensError`` naming the available ones if it is unknown)."""
        return recipes[self.recipe]

    def model_config(self) -> ModelConfig:
        """The recipe's model, with this config's seed and backend."""
        return replace(self.get_recipe().model, seed=self.seed, backend=self.backend)  # type: ignore[arg-type]

    def train_config(self) -> TrainConfig:
        """The recipe's training settings, with this config's seed and checkpoint interval."""
        base = self.get_recipe().train
        steps = base.schedule.max_steps
        if steps % self.checkpoint_every:
            raise ConfigError(
                f"checkpoint_every={self.checkpoint_every} does not divide the recipe's {steps} steps, so the "
                f"trained model would have no checkpoint; pick a divisor of {steps}."
            )
        return replace(base, data=replace(base.data, seed=self.seed), checkpoint_every=self.checkpoint_every)

    @property
    def n_shots(self) -> int:
        """Shots of the analyses' prompts: the largest the recipe trains on."""
        shots = self.get_recipe().train.data.n_shots
        return shots if isinstance(shots, int) else shots[1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (stored in ``run.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown DemoConfig settings {unknown}; known: {sorted(known)}.")
        return cls(**data)

    def training_settings(self) -> dict[str, Any]:
        """The settings that decide the trained weights."""
        return {name: getattr(self, name) for name in TRAINING_FIELDS}


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A demo directory's trained model, with what the analyses need besides it.

    Attributes:
        model: The trained model (eval mode).
        pool: The recipe's task pool.
        checkpoints: The run's checkpoint files, oldest first.
        steps: Training steps done.
        trained_now: ``False`` when the finished model was loaded from the directory.
        training: Training summary (steps, seconds, held-out accuracy per task), as stored in ``run.json``.
    """

    model: Any
    pool: TaskPool
    checkpoints: tuple[Path, ...]
    steps: int
    trained_now: bool
    training: dict[str, Any]


@dataclass(frozen=True, eq=False)
class DemoRun:
    """What :func:`run_demo` produced: where everything is, the results, and the headline numbers."""

    out: Path
    report: Path
    results: dict[str, Result]
    numbers: dict[str, Any]
    trained: TrainedModel
    seconds: dict[str, float]


@dataclass(frozen=True)
class AnalysisShots:
    """The shot counts TD→accuracy and patching run at, chosen from the ICL accuracy curve.

    Attributes:
        td_accuracy: Shot counts of the TD→accuracy fit, increasing.
        patching: Shot count of the patched prompts (and of the prompts their task vectors are read from).
        accuracy: Mean ICL accuracy over the non-Null tasks at each candidate shot count.
        ceiling: Accuracy from which a shot count is at ceiling.
    """

    td_accuracy: tuple[int, ...]
    patching: int
    accuracy: dict[int, float]
    ceiling: float

    @property
    def below_ceiling(self) -> tuple[int, ...]:
        """The candidate shot counts whose accuracy is below the ceiling (empty: the model is at ceiling)."""
        return tuple(s for s, value in sorted(self.accuracy.items()) if value < self.ceiling)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (stored in ``run.json`` as ``analysis_shots``)."""
        return {
            "td_accuracy": list(self.td_accuracy),
            "patching": self.patching,
            "accuracy": {str(s): value for s, value in sorted(self.accuracy.items())},
            "ceiling": self.ceiling,
        }


def shots_below_ceiling(
    performance: Performance, candidates: Sequence[int], ceiling: float = 0.95, minimum: int = 2
) -> tuple[int, ...]:
    """The ``candidates`` whose ICL accuracy is below ``ceiling``, topped up to ``minimum`` with the smallest others.

    Accuracy is the mean over the non-Null tasks of ``performance.values`` at that shot count (the Null task's
    answers are random: it is never at ceiling). A fit over shot counts needs at least two of them, so when fewer
    than ``minimum`` are below the ceiling the smallest remaining candidates are added (a model at its ceiling
    everywhere gets the smallest ``minimum``).

    >>> import torch
    >>> curve = Performance(
    ...     values=torch.tensor([[0.7, 0.9, 0.97, 1.0], [0.8, 0.85, 0.99, 1.0]]), ci=torch.zeros(2, 4, 2),
    ...     overall=torch.zeros(4), overall_ci=torch.zeros(4, 2), n_prompts=torch.ones(2, 4, dtype=torch.long),
    ...     shots=(1, 2, 4, 8), task_names=("a", "b"))
    >>> shots_below_ceiling(curve, (1, 2, 4, 8)), shots_below_ceiling(curve, (1, 2, 4, 8), ceiling=0.5)
    ((1, 2), (1, 2))
    >>> shots_below_ceiling(curve, (2, 4, 8), ceiling=0.9), shots_below_ceiling(curve, (1, 2, 4, 8), ceiling=1.0)
    ((2, 4), (1, 2, 4))

    Raises:
        ConfigError: A candidate is not a shot count of ``performance``, or it has no task but Null.
    """
    accuracy = _real_accuracy(performance, candidates)
    below = [s for s in sorted(accuracy) if accuracy[s] < ceiling]
    others = [s for s in sorted(accuracy) if s not in below]
    return tuple(sorted(below + others[: max(0, minimum - len(below))]))


def _real_accuracy(performance: Performance, candidates: Sequence[int]) -> dict[int, float]:
    """Mean accuracy over the non-Null tasks of ``performance`` at each of the ``candidates`` shot counts."""
    missing = sorted(set(candidates) - set(performance.shots))
    real = [t for t, name in enumerate(performance.task_names) if name != NULL_TASK]
    if missing or not real or not performance.higher_is_better:
        raise ConfigError(
            f"Choosing shot counts needs an accuracy curve of the candidates {sorted(set(candidates))} on tasks other "
            f"than Null; got a {performance.metric} curve at shots {list(performance.shots)} of tasks "
            f"{list(performance.task_names)}. Run ICLPerformance (metric 'accuracy') at every candidate shot count."
        )
    return {s: float(performance.values[real, performance.shots.index(s)].nanmean()) for s in sorted(set(candidates))}


def choose_analysis_shots(performance: Performance, config: DemoConfig) -> AnalysisShots:
    """Where TD→accuracy and patching run: shot counts of ``config.td_accuracy_shots`` below ``config.ceiling``.

    TD→accuracy uses :func:`shots_below_ceiling` (at least two shot counts); patching uses the largest shot count
    below the ceiling (the prompts carry the most evidence of their task while a correct vector can still help),
    or, when every candidate is at ceiling, the smallest candidate.
    """
    candidates = config.td_accuracy_shots
    td = shots_below_ceiling(performance, candidates, config.ceiling)
    accuracy = _real_accuracy(performance, candidates)
    below = [s for s in sorted(accuracy) if accuracy[s] < config.ceiling]
    patching = below[-1] if below else min(candidates)
    return AnalysisShots(td, patching, accuracy, float(config.ceiling))


def _is_count(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def read_run_config(out: str | Path) -> DemoConfig | None:
    """The :class:`DemoConfig` stored in ``out/run.json`` (``None`` when there is none)."""
    path = Path(out) / RUN_FILE
    stored = read_run_info(out)
    if stored is None:
        return None
    try:
        if "pretrained" in stored and "config" not in stored:
            raise ArtefactError(
                f"{path.parent} holds an analysis of a pretrained model (tv-lens analyze --model), not a demo run; "
                "rerun it with `tv-lens analyze --out DIR`, or give the demo another output directory."
            )
        return DemoConfig.from_dict(stored["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise ArtefactError(f"{path} is unreadable ({error}); delete it, or use another output directory.") from error


def train_or_load(out: str | Path, config: DemoConfig, progress: bool = True) -> TrainedModel:
    """Train ``config``'s recipe into ``out/checkpoints``, or load the model already trained there.

    A finished run is loaded (no training); an interrupted one resumes from its last checkpoint.

    Raises:
        ArtefactError: ``out`` holds a run trained with other settings (recipe, backend, seed, checkpoints).
        CheckpointError: A checkpoint in ``out`` is corrupt.
    """
    out = Path(out)
    directory = out / CHECKPOINTS
    _check_same_training(out, config)
    model_config, train_config = config.model_config(), config.train_config()
    pool = config.get_recipe().build_pool()
    if not isinstance(pool, TaskPool):
        raise ConfigError(
            f"The demo runs token-task recipes, but recipe {config.recipe!r} trains on a {type(pool).__name__}; "
            "pick a token recipe (e.g. 'shots' or 'quick'), or train it with Recipe.run and run analyses yourself."
        )
    last = latest_checkpoint(directory)
    if last is not None:
        checkpoint = load_checkpoint(last)
        _check_checkpoint(checkpoint, model_config, train_config, out)
        if checkpoint.step >= train_config.schedule.max_steps:
            training = _training_summary(checkpoint.step, checkpoint.elapsed_s, checkpoint.evals)
            model = checkpoint.load_model()
            _write_run_file(out, config, training)
            return TrainedModel(model, pool, tuple(list_checkpoints(directory)), checkpoint.step, False, training)
    run = train(
        build_model(model_config),
        pool,
        train_config,
        model_config=model_config,
        checkpoint_dir=directory,
        resume_from=directory if last is not None else None,
        progress=progress,
    )
    training = _training_summary(run.steps, run.elapsed_s, run.evals.to_dict("records"))
    _write_run_file(out, config, training)
    return TrainedModel(run.model, pool, run.checkpoints, run.steps, True, training)


def load_trained(out: str | Path, progress: bool = True) -> tuple[DemoConfig, TrainedModel]:
    """The stored config and the trained model of a demo directory (for ``tv-lens analyze``).

    An interrupted training run is finished first, with the settings it was started with.

    Raises:
        ArtefactError: ``out`` holds no training run.
    """
    out = Path(out)
    config = read_run_config(out)
    if config is None or latest_checkpoint(out / CHECKPOINTS) is None:
        raise ArtefactError(
            f"No trained model in {out} (no {RUN_FILE} or no checkpoints); train one first with "
            f"`tv-lens train --out {out}` (or run `tv-lens demo --out {out}`)."
        )
    return config, train_or_load(out, config, progress)


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


def _decodability(trained: TrainedModel, config: DemoConfig, progress: bool, shots: AnalysisShots) -> Result:
    analysis = TaskDecodability(n_bootstrap=config.n_bootstrap, progress=progress)
    return analysis.run(trained.model, trained.pool, config.n_per_task, config.n_shots, config.seed)


def _performance(trained: TrainedModel, config: DemoConfig, progress: bool, shots: AnalysisShots) -> Result:
    analysis = ICLPerformance(shots=config.performance_shots, n_bootstrap=config.n_bootstrap)
    return analysis.run(trained.model, trained.pool, config.n_per_task, config.seed)


def _geometry(trained: TrainedModel, config: DemoConfig, progress: bool, shots: AnalysisShots) -> Result:
    analysis = Geometry(method="pca", progress=progress)
    return analysis.run(trained.model, trained.pool, config.n_per_task, config.n_shots, config.seed)


def _td_accuracy(trained: TrainedModel, config: DemoConfig, progress: bool, shots: AnalysisShots) -> Result:
    analysis = TdAccuracy(shots=shots.td_accuracy)
    return analysis.run(trained.model, trained.pool, config.n_per_task, config.seed)


def _patching(trained: TrainedModel, config: DemoConfig, progress: bool, shots: AnalysisShots) -> Result:
    analysis = TaskVectorPatching(
        mode=config.patching_mode,  # type: ignore[arg-type]
        n_bootstrap=config.n_bootstrap,
        progress=progress,
    )
    return analysis.run(trained.model, trained.pool, config.causal_n_per_task, shots.patching, config.seed)


def _prompting(trained: TrainedModel, config: DemoConfig, progress: bool, shots: AnalysisShots) -> Result:
    analysis = TaskVectorPrompting(n_bootstrap=config.n_bootstrap, progress=progress)
    return analysis.run(trained.model, trained.pool, config.causal_n_per_task, config.n_shots, config.seed)


def _heads(trained: TrainedModel, config: DemoConfig, progress: bool, shots: AnalysisShots) -> Result:
    analysis = HeadAblation(n_bootstrap=config.n_bootstrap, progress=progress)
    return analysis.run(trained.model, trained.pool, config.causal_n_per_task, config.n_shots, config.seed)


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
    "decodability": _decodability,
    "performance": _performance,
    "geometry": _geometry,
    "td_accuracy": _td_accuracy,
    "patching": _patching,
    "prompting": _prompting,
    "heads": _heads,
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
    (:func:`choose_analysis_shots`) and recorded in ``out/run.json`` as ``analysis_shots``.

    Returns:
        The results by name, and the seconds each took.

    Raises:
        ConfigError: An unknown analysis name in ``only``.
    """
    names = check_names(only)
    results: dict[str, Result] = {}
    seconds: dict[str, float] = {}
    shots = analysis_shots(trained, config)
    if any(name in CHOSEN_SHOTS for name in names):
        write_run_info(Path(out), {**(read_run_info(out) or {}), "analysis_shots": shots.to_dict()})
    torch.manual_seed(config.seed)  # LoRA dropout and other module randomness draw from the global generator
    bar = tqdm(names, desc="analyses", disable=not progress, unit="analysis")
    for name in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        results[name] = ANALYSES[name](trained, config, progress, shots)
        seconds[name] = time.perf_counter() - start
        results[name].save(result_path(Path(out) / RESULTS, name))
    bar.close()
    return results, seconds


def analysis_shots(trained: TrainedModel, config: DemoConfig) -> AnalysisShots:
    """:func:`choose_analysis_shots` on the trained model's ICL accuracy at ``config.td_accuracy_shots``.

    The curve is measured on the prompts the ICL-performance analysis scores (``config.n_per_task`` per task,
    ``config.seed``; the prompts of a shot count depend only on the seed and the count), so its numbers are that
    analysis's numbers at the same shot counts.
    """
    analysis = ICLPerformance(shots=config.td_accuracy_shots, n_bootstrap=0)
    curve = analysis.run(trained.model, trained.pool, config.n_per_task, config.seed)
    return choose_analysis_shots(curve, config)


def check_names(only: Sequence[str] | None) -> tuple[str, ...]:
    """``only`` as a tuple of analysis names in pipeline order (all when ``None``)."""
    if only is None:
        return tuple(ANALYSES)
    unknown = [name for name in only if name not in ANALYSES]
    if unknown or not only:
        raise ConfigError(f"Unknown analysis name(s) {unknown or list(only)}; choose from {list(ANALYSES)}.")
    return tuple(name for name in ANALYSES if name in only)


def run_demo(out: str | Path, config: DemoConfig, only: Sequence[str] | None = None, progress: bool = True) -> DemoRun:
    """Train or load, run the analyses, save the results, write ``summary.json`` and the report."""
    out = Path(out)
    check_names(only)
    start = time.perf_counter()
    trained = train_or_load(out, config, progress)
    seconds = {"train": time.perf_counter() - start}
    results, analysis_seconds = run_analyses(out, trained, config, only, progress)
    seconds.update(analysis_seconds)
    report, numbers = write_outputs(out)
    seconds["total"] = time.perf_counter() - start
    return DemoRun(out, report, results, numbers, trained, seconds)


def write_outputs(out: str | Path, report: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the report (default ``out/report.html``) and ``out/summary.json`` from every result in ``out/results``.

    Returns:
        The report's path and the headline numbers.
    """
    out = Path(out)
    results = load_results(out / RESULTS)
    info = read_run_info(out)
    path = write_report(results, out / REPORT_FILE if report is None else report, info)
    numbers = headline_numbers(results, info)
    save_summary(out, numbers)
    return path, numbers


def read_run_info(out: str | Path) -> dict[str, Any] | None:
    """The checked contents of ``out/run.json`` (``None`` if absent): :func:`tv_lens.app.run_files.read_run_info`."""
    return report_run_info(Path(out) / RUN_FILE)


def _check_same_training(out: Path, config: DemoConfig) -> None:
    stored = read_run_config(out)
    if stored is None or stored.training_settings() == config.training_settings():
        return
    raise ArtefactError(
        f"{out} holds a model trained with {_describe(stored.training_settings())}, but this run asks for "
        f"{_describe(config.training_settings())}; use another --out directory, or the same settings."
    )


def _check_checkpoint(checkpoint: Any, model_config: ModelConfig, train_config: TrainConfig, out: Path) -> None:
    same_training = replace(checkpoint.config, eval_every=1, checkpoint_every=0) == replace(
        train_config, eval_every=1, checkpoint_every=0
    )  # evaluation and checkpoint intervals do not change the weights
    if checkpoint.model_config != model_config or not same_training:
        raise ArtefactError(
            f"The checkpoints in {out / CHECKPOINTS} come from a run with another model or training config than "
            "this demo's recipe; use another --out directory (or delete those checkpoints)."
        )


def _describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in settings.items())


def _training_summary(steps: int, elapsed_s: float, evals: list[dict[str, Any]]) -> dict[str, Any]:
    last = max((row["step"] for row in evals), default=None)
    accuracy = {str(row["task"]): float(row["accuracy"]) for row in evals if row["step"] == last}
    return {"steps": steps, "elapsed_s": round(float(elapsed_s), 2), "eval_step": last, "accuracy": accuracy}


def _write_run_file(out: Path, config: DemoConfig, training: dict[str, Any]) -> None:
    recipe = config.get_recipe()
    info = {"config": config.to_dict(), "recipe_description": recipe.description, "training": training}
    stored = read_run_info(out) or {}
    if "analysis_shots" in stored:  # the shot counts the saved results of TD→accuracy and patching ran at
        info["analysis_shots"] = stored["analysis_shots"]
    write_run_info(out, info)
