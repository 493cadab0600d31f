"""A demo directory's model: trained into ``checkpoints/``, resumed after an interruption, or loaded when finished."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tv_lens.app.demo.config import DemoConfig
from tv_lens.app.run_files import RUN_FILE, read_run_info, write_run_info
from tv_lens.environment import software_environment
from tv_lens.errors import ArtefactError, ConfigError
from tv_lens.models import ModelConfig, build_model
from tv_lens.tasks import TaskPool
from tv_lens.training import TrainConfig, latest_checkpoint, list_checkpoints, load_checkpoint, train

__all__ = ["TrainedModel", "load_trained", "read_run_config", "record_run", "train_or_load"]

CHECKPOINTS = "checkpoints"


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


def read_run_config(out: str | Path) -> DemoConfig | None:
    """The :class:`DemoConfig` stored in ``out/run.json`` (``None`` when there is none)."""
    path = Path(out) / RUN_FILE
    stored = read_run_info(path)
    if stored is None:
        return None
    if "pretrained" in stored and "config" not in stored:  # not in the try: an ArtefactError is a ValueError
        raise ArtefactError(
            f"{path.parent} holds an analysis of a pretrained model (tv-lens analyze --model), not a demo run; "
            f"rerun it with `tv-lens analyze --out {path.parent}`, or give the demo another output directory."
        )
    try:
        return DemoConfig.from_dict(stored["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise ArtefactError(f"{path} is unreadable ({error}); delete it, or use another output directory.") from error


def train_or_load(out: str | Path, config: DemoConfig, progress: bool = True, record: bool = True) -> TrainedModel:
    """Train ``config``'s recipe into ``out/checkpoints``, or load the model already trained there.

    A finished run is loaded (no training); an interrupted one resumes from its last checkpoint. Training writes
    ``config`` to ``out/run.json``; loading writes it only with ``record`` (a caller that checks the settings
    against saved results first passes ``False`` and calls :func:`record_run` once they pass).

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
            training = _training_summary(
                checkpoint.step, checkpoint.elapsed_s, checkpoint.evals, checkpoint.environment
            )
            model = checkpoint.load_model()
            if record or read_run_info(out / RUN_FILE) is None:
                record_run(out, config, training)
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
    training = _training_summary(run.steps, run.elapsed_s, run.evals.to_dict("records"), software_environment())
    record_run(out, config, training)
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


def _training_summary(
    steps: int, elapsed_s: float, evals: list[dict[str, Any]], environment: dict[str, str | int] | None
) -> dict[str, Any]:
    """What run.json keeps of the training: steps, time, the last held-out accuracy, and the software it ran on."""
    last = max((row["step"] for row in evals), default=None)
    accuracy = {str(row["task"]): float(row["accuracy"]) for row in evals if row["step"] == last}
    summary = {"steps": steps, "elapsed_s": round(float(elapsed_s), 2), "eval_step": last, "accuracy": accuracy}
    return summary if environment is None else {**summary, "environment": environment}


def record_run(
    out: Path, config: DemoConfig, training: dict[str, Any], analysis_shots: dict[str, Any] | None = None
) -> None:
    """Write ``out/run.json``: ``config``, its recipe, ``training`` and the shots TD→accuracy and patching ran at.

    ``analysis_shots`` of ``None`` keeps those of the stored file (the shots its saved results ran at).
    """
    recipe = config.get_recipe()
    info = {"config": config.to_dict(), "recipe_description": recipe.description, "training": training}
    stored = read_run_info(out / RUN_FILE) or {}
    if analysis_shots is None:
        analysis_shots = stored.get("analysis_shots")
    if analysis_shots is not None:
        info["analysis_shots"] = analysis_shots
    write_run_info(out, info)
