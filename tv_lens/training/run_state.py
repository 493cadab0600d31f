"""A run's state between steps, written to and restored from checkpoints.

Besides weights and optimiser state, a run that resumes needs its step, the tables written so far, the
elapsed time and the state of every random generator its modules own (LoRA dropout); batches need
nothing, since they are drawn from seeds derived from the step (:mod:`tv_lens.training.data`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tv_lens.environment import OtherEnvironmentWarning, environment_differences, software_environment
from tv_lens.errors import CheckpointError, ConfigError
from tv_lens.models import ModelConfig
from tv_lens.training.checkpoint_record import Checkpoint
from tv_lens.training.checkpoints import (
    checkpoint_path,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
)
from tv_lens.training.config import TrainConfig

__all__ = [
    "RunState",
    "check_resume_directory",
    "check_stop_after",
    "checkpoint_directory",
    "describe_pool",
    "resume_run",
    "save_run",
]


@dataclass
class RunState:
    """Where a run stands: steps done, history and evaluation rows so far, training time so far.

    ``frozen``: name → digest of the parameters a resumed finetuning run leaves as they are, checked against the
    model when the checkpoint was loaded (``None`` for a run that starts, or whose checkpoint holds every parameter).
    """

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    frozen: dict[str, str] | None = None


def describe_pool(pool: Any) -> dict[str, Any]:
    """What a checkpoint records of the pool, to recognise a different one on resume."""
    keys = ("task_names", "vocab_size", "n_answer_tokens", "fmt", "d_in", "noise_std")
    return {"type": type(pool).__name__, **{key: getattr(pool, key, None) for key in keys}}


def checkpoint_directory(
    config: TrainConfig, directory: str | Path | None, resume_from: str | Path | None
) -> Path | None:
    """The directory checkpoints go to: as given, else that of ``resume_from``; required by ``checkpoint_every``."""
    for name, value, example in (
        ("checkpoint_dir", directory, "'runs/default'"),
        ("resume_from", resume_from, "'runs/default' (its latest checkpoint) or 'runs/default/step-0000100.pt'"),
    ):
        if value is not None and not isinstance(value, str | os.PathLike):
            raise ConfigError(
                f"{name} must be a path (a str or pathlib.Path) or None, got {value!r:.60} ({type(value).__name__}); "
                f"e.g. {name}={example}."
            )
    if directory is None and resume_from is not None:
        resume_from = Path(resume_from)
        directory = resume_from if resume_from.is_dir() else resume_from.parent
    if config.checkpoint_every and directory is None:
        raise ConfigError(
            f"checkpoint_every={config.checkpoint_every} needs a place to write: pass checkpoint_dir=, or set "
            "checkpoint_every=0."
        )
    return None if directory is None else Path(directory)


def save_run(
    directory: Path,
    state: RunState,
    config: TrainConfig,
    model_config: ModelConfig | None,
    pool: Any,
    model: Any,
    optimizer: torch.optim.Optimizer,
    frozen: dict[str, str] | None = None,
) -> Path:
    """Write the checkpoint of ``state.step`` to ``directory`` (atomically).

    With ``frozen`` (name → digest of the parameters a finetuning run leaves as they are), those parameters are
    left out and their digests written instead: a finetuned pretrained model's checkpoint holds what trained.
    """
    payload = {
        "step": state.step,
        "config": config.to_dict(),
        "model_config": None if model_config is None else model_config.to_dict(),
        "pool": describe_pool(pool),
        "parameters": {name: p.detach() for name, p in model.named_parameters() if name not in (frozen or {})},
        "optimizer": optimizer.state_dict(),
        "rng": {name: generator.get_state() for name, generator in _generators(model).items()},
        "history": state.history,
        "evals": state.evals,
        "elapsed_s": state.elapsed_s,
        **({} if frozen is None else {"frozen": dict(frozen)}),
    }
    return save_checkpoint(checkpoint_path(directory, state.step), payload)


def resume_run(
    resume_from: str | Path,
    config: TrainConfig,
    pool: Any,
    model: Any,
    model_config: ModelConfig | None,
    optimizer: torch.optim.Optimizer,
    directory: Path | None = None,
    stop_after: int | None = None,
) -> RunState:
    """Load a checkpoint (a file, or a directory's latest), check it is this run's, and restore from it.

    ``directory``: where the resumed run writes its checkpoints; it must hold none later than the one resumed from,
    and none of another run.
    ``stop_after``: the step the resumed run stops after; a checkpoint past it is refused before the model is
    touched, and one at it (short of the schedule's end: nothing left to train) is restored with a warning.
    """
    path = Path(resume_from)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"No checkpoints in {path} to resume from; start without resume_from=.")
        path = latest
    checkpoint = load_checkpoint(path)
    check_stop_after(path, checkpoint.step, stop_after)
    check_resume_directory(directory, checkpoint, config)
    left_out = checkpoint.frozen or {}
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if name not in left_out}
    checkpoint.check_compatible(config, describe_pool(pool), shapes, model_config)
    generators = _generators(model)
    lacking = [name for name in checkpoint.rng if name not in generators]
    if lacking:
        raise CheckpointError(
            f"{path} has the random state of module {lacking[0]!r}, which this model lacks; resume with the model "
            "(and finetune settings) the run was started with."
        )
    # Everything that can be refused is checked before the model's weights are written.
    load_optimizer_state(optimizer, checkpoint.optimizer, model, source=str(path))
    checkpoint.load_into(model)
    for name, rng_state in checkpoint.rng.items():
        generators[name].set_state(rng_state)
    warn_other_environment(checkpoint)
    if stop_after is not None and checkpoint.step == stop_after < config.schedule.max_steps:
        warnings.warn(
            f"Resumed from {path}, the checkpoint of step {checkpoint.step}, with stop_after={stop_after}: no step "
            "was trained, and the run comes back as that checkpoint left it. To train on, pass a later stop_after= "
            f"(or None, to train to step {config.schedule.max_steps}).",
            UserWarning,
            stacklevel=3,
        )
    return RunState(
        checkpoint.step, list(checkpoint.history), list(checkpoint.evals), checkpoint.elapsed_s, checkpoint.frozen
    )


def check_stop_after(path: Path, step: int, stop_after: int | None) -> None:
    """Refuse to resume from the checkpoint of ``step`` a run that should stop after an earlier step."""
    if stop_after is not None and step > stop_after:
        raise ConfigError(
            f"{path} is the checkpoint of step {step}, past stop_after={stop_after}: a run cannot be resumed back to "
            f"an earlier step, so nothing would be trained and the model would be that of step {step}. Pass "
            f"stop_after= a step after {step} (or None, to train to the end), or resume from a checkpoint of step "
            f"{stop_after} or earlier (a file of list_checkpoints(dir)) with checkpoint_dir= a new directory."
        )


def check_resume_directory(directory: Path | None, resumed: Checkpoint, config: TrainConfig) -> None:
    """Refuse to write a run resumed from ``resumed`` to a ``directory`` of another run's or of later checkpoints.

    Later checkpoints the resumed run would write over; another run's would be mixed with its own.
    """
    if directory is None or not config.checkpoint_every:
        return
    held = list_checkpoints(directory)
    if held and directory.resolve() != resumed.path.resolve().parent:  # a directory of checkpoints holds one run's
        differ = resumed.run_differences(load_checkpoint(held[-1]))
        if differ:
            raise CheckpointError(
                f"{directory} holds checkpoints of another run ({held[-1].name} differs from {resumed.path} in "
                f"{', '.join(differ[:4])}), which the resumed run's checkpoints would be mixed with. Write the resumed "
                f"run to checkpoint_dir= a new directory, or to that of its checkpoint ({resumed.path.parent})."
            )
    later = [path for path in held if checkpoint_step(path) > resumed.step and path.resolve() != resumed.path.resolve()]
    if later:
        raise CheckpointError(
            f"{directory} holds checkpoints later than step {resumed.step}, the one resumed from "
            f"({', '.join(path.name for path in later[:3])}), which the resumed run would write over. Resume from the "
            "latest (resume_from= the directory), or write the resumed run elsewhere: checkpoint_dir= a new directory."
        )


def warn_other_environment(checkpoint: Checkpoint) -> None:
    """Warn when a run resumes under other software, torch threads or CPU kind than its checkpoint was written under.

    The run continues correctly, but not bit for bit as it would have uninterrupted (see :mod:`tv_lens.environment`).
    """
    differences = environment_differences(checkpoint.environment or {}, software_environment())
    if differences:
        warnings.warn(
            f"Resuming {checkpoint.path} in another environment than it was written in ({'; '.join(differences)}): "
            "the run continues, but its weights will not be bit-identical to an uninterrupted run's. To continue it "
            "exactly, resume where those match (torch.set_num_threads for the threads, the same kind of CPU).",
            OtherEnvironmentWarning,
            stacklevel=4,
        )


def _generators(model: Any) -> dict[str, torch.Generator]:
    """Random generators owned by the model's modules (e.g. LoRA dropout), by module name."""
    return {
        name: module.generator
        for name, module in model.named_modules()
        if isinstance(getattr(module, "generator", None), torch.Generator)
    }
