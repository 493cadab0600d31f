"""Checkpoints: everything a run needs to continue exactly where it stopped, written so a crash cannot spoil them.

A checkpoint holds the model's parameters (by name, so it works for every backend and for LoRA-adapted
models), the optimiser state, the step, the run's config, the model's config (to rebuild the model for
later analysis), the random state of stochastic modules, and the history so far. Training batches are
drawn from seeds derived from the step, so with these a resumed run repeats the uninterrupted one
bit for bit on CPU.

Writing is atomic: the file is written under a temporary name, synced, then renamed over the final
name (``os.replace``), so a write that fails half-way leaves the previous checkpoints untouched; a write
that cannot happen (read-only directory, full disk, a path under a file) raises
:class:`CheckpointWriteError`, and :func:`check_checkpoint_directory` finds an unwritable directory before a
run starts.

Loading is defensive. The file is unpickled with ``weights_only=True`` (tensors, numbers, strings and
containers only), so a file that asks to run code on loading is refused as not being a tv_lens checkpoint.
Every checkpoint carries a SHA-256 digest of its whole contents, which must be present and match, and the
fields are then checked (a step within the run's schedule, random states a generator accepts ...): a
truncated, altered or crafted file fails to load with a :class:`~tv_lens.errors.CheckpointError` instead of
resuming from garbage.

Versions. A checkpoint records the TransformerLens version it was written under. Settings this tv_lens does
not know (a checkpoint of a newer version) are named in the error; a model whose parameters do not fit the
model this TransformerLens builds from the same config (TransformerLens 4 and 3 name a bridge's parameters
differently) is reported as a checkpoint of another TransformerLens version, not as a wrong config; an
optimiser state whose tensors do not fit the model's parameters is refused on resume.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tv_lens.errors import CheckpointError, ConfigError, TvLensError
from tv_lens.models import ModelConfig, build_continuous_model, build_model, hooked_transformer_available
from tv_lens.results.storage import write_failure
from tv_lens.training.config import _NESTED, TrainConfig
from tv_lens.training.finetune import attach_lora

__all__ = [
    "Checkpoint",
    "CheckpointWriteError",
    "check_checkpoint_directory",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_optimizer_state",
    "load_parameters",
    "save_checkpoint",
]

FORMAT = "tv_lens.training.checkpoint/1"
_NAME = re.compile(r"^step-(\d+)\.pt$")
# Fields that do not change the trained weights: a run may be resumed with other values.
_BOOKKEEPING = ("eval_every", "checkpoint_every")
# The read-in of a continuous-input model (tv_lens.models.ContinuousModel), which a token model lacks.
_READ_IN = "read_in.weight"
# What torch names when a weights_only load meets a global it does not allow (``GLOBAL posix.system``).
_FORBIDDEN_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint that could not be written (read-only directory, full disk, a parent path that is a file).

    Also an ``OSError``, so code that catches failed writes as ``OSError`` keeps working.
    """


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint (see :func:`load_checkpoint`).

    Attributes:
        path: The file it was read from.
        step: Optimiser steps completed when it was written.
        config: The run's training config.
        model_config: The model's config, when the run was given one (``None`` otherwise).
        pool: Description of the task pool (type, task names, vocabulary size ...).
        parameters: Model parameters by ``named_parameters()`` name.
        optimizer: The optimiser's ``state_dict()``.
        rng: Generator states of stochastic modules, by module name.
        history: Rows of the per-step history so far.
        evals: Rows of the evaluation table so far.
        elapsed_s: Training wall time so far, in seconds.
        transformer_lens: The TransformerLens version the checkpoint was written under (``None`` for
            checkpoints of tv_lens versions that did not record it).
    """

    path: Path
    step: int
    config: TrainConfig
    model_config: ModelConfig | None
    pool: dict[str, Any]
    parameters: dict[str, Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Tensor]
    history: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    elapsed_s: float
    transformer_lens: str | None = None

    def load_model(self, device: str | torch.device = "cpu") -> Any:
        """Rebuild the model from ``model_config`` (LoRA adapters re-attached) and load the weights.

        A continuous-input model (saved with a ``read_in``) is rebuilt with
        :func:`~tv_lens.models.build_continuous_model` (``d_in`` from the read-in, ``d_out = d_vocab``).
        """
        if self.model_config is None:
            raise CheckpointError(
                f"Checkpoint {self.path} has no model config (the run was started without model_config=), so "
                "the model cannot be rebuilt from it. Build the model yourself and call "
                "load_parameters(model, checkpoint.parameters)."
            )
        config = self.model_config_as_saved()
        read_in = self.parameters.get(_READ_IN)
        try:
            if read_in is None:
                model = build_model(config, device=device)
            else:
                model = build_continuous_model(config, d_in=int(read_in.shape[1]), d_out=config.d_vocab, device=device)
            attach_lora(model, self.config.finetune)
        except TvLensError as error:
            other_version = self._other_version_error(str(error))
            if other_version is None:
                raise
            raise other_version from error
        mismatch = _parameter_mismatch(model, self.parameters)
        other_version = None if mismatch is None else self._other_version_error(mismatch)
        if other_version is not None:
            raise other_version
        if mismatch is not None and self.transformer_lens is None:
            raise CheckpointError(
                f"The parameters in {self.path} do not fit the model built from its ModelConfig ({mismatch}). This "
                "checkpoint does not record the TransformerLens version it was written under (tv_lens did not "
                f"before); if that was not the installed {transformer_lens_version()}, load it where that version "
                "is installed, or retrain the run here."
            )
        load_parameters(model, self.parameters, source=str(self.path))
        return model.eval()

    def _other_version_error(self, problem: str) -> CheckpointError | None:
        """The error that blames the TransformerLens version for ``problem``, if the checkpoint's is another."""
        installed = transformer_lens_version()
        if self.transformer_lens in (None, installed):
            return None
        return CheckpointError(
            f"{self.path} was written under TransformerLens {self.transformer_lens}, but TransformerLens {installed} "
            f"is installed, and the model this version builds from the checkpoint's own config does not take its "
            f"weights ({problem}). Load the checkpoint where TransformerLens {self.transformer_lens} is installed, "
            "or retrain the run under this version."
        )

    def model_config_as_saved(self) -> ModelConfig:
        """``model_config`` with ``backend="auto"`` resolved to the model class the weights were saved from.

        ``"auto"`` means HookedTransformer under TransformerLens 3 and TransformerBridge under 4, so a run
        trained under 4 and loaded under 3 would otherwise rebuild the wrong class.
        """
        config = self.model_config
        if config is None or config.backend != "auto":
            return config  # type: ignore[return-value]
        inner = "model.embed.W_E" if _READ_IN in self.parameters else "embed.W_E"  # continuous: the wrapped model's
        if inner not in self.parameters:
            return replace(config, backend="bridge")
        if not hooked_transformer_available():
            raise CheckpointError(
                f"{self.path} holds HookedTransformer weights, and the installed TransformerLens (4.x) has no "
                "HookedTransformer. Load it where transformer-lens 3.x is installed, or retrain the run here."
            )
        return replace(config, backend="hooked")

    def check_compatible(
        self,
        config: TrainConfig,
        pool: dict[str, Any],
        parameter_shapes: dict[str, tuple[int, ...]],
        model_config: ModelConfig | None,
    ) -> None:
        """Raise :class:`CheckpointError` naming every difference between this checkpoint's run and another.

        ``eval_every`` and ``checkpoint_every`` may differ (they do not change the weights).
        """
        problems = _differences("config", _plain(self.config.to_dict()), _plain(config.to_dict()), _BOOKKEEPING)
        problems += _differences("pool", _plain(self.pool), _plain(pool))
        if self.model_config is not None and model_config is not None:
            problems += _differences("model_config", self.model_config.to_dict(), model_config.to_dict())
        saved_shapes = {name: tuple(t.shape) for name, t in self.parameters.items()}
        if saved_shapes != parameter_shapes:
            missing = sorted(set(parameter_shapes) - set(saved_shapes))[:3]
            extra = sorted(set(saved_shapes) - set(parameter_shapes))[:3]
            reshaped = [n for n in saved_shapes if n in parameter_shapes and saved_shapes[n] != parameter_shapes[n]]
            installed = transformer_lens_version()
            version = (
                f", and the checkpoint was written under TransformerLens {self.transformer_lens}, not the installed "
                f"{installed}, whose models may name their parameters differently"
                if self.transformer_lens not in (None, installed)
                else ""
            )
            problems.append(
                f"model parameters differ (not in checkpoint: {missing}; only in checkpoint: {extra}; "
                f"other shapes: {reshaped[:3]}{version})"
            )
        if problems:
            raise CheckpointError(
                f"Checkpoint {self.path} comes from a run with a different config: {'; '.join(problems)}. Resume "
                "with the same model, pool and config (load_checkpoint(path).config holds the run's config), "
                "or start a new run in an empty checkpoint directory."
            )


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """File name of the checkpoint of ``step`` in ``directory``."""
    return Path(directory) / f"step-{step:07d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest step first (temporary files of unfinished writes excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint of the highest step in ``directory``, or ``None`` if there is none."""
    paths = list_checkpoints(directory)
    return paths[-1] if paths else None


def check_checkpoint_directory(directory: str | Path) -> Path:
    """Create ``directory`` if needed and check that checkpoints can be written there, before a run starts.

    A temporary file is created and removed, so a read-only directory or file system, or a ``directory``
    that is (or lies under) a file, fails here rather than at the first checkpoint, after training time
    was spent. A full disk may still only show at a save, which then raises :class:`CheckpointWriteError`.

    Args:
        directory: Where the run's checkpoints go.

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        CheckpointWriteError: Checkpoints cannot be written to ``directory`` (the message says why).
    """
    directory = Path(directory)
    probe = directory / "step-0000000.pt"
    if directory.exists() and not directory.is_dir():
        raise CheckpointWriteError(
            f"The checkpoint directory {directory} is a file, not a directory; pass a directory as "
            "checkpoint_dir= (it is created if missing)."
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".write-check.", suffix=".tmp")
        os.close(handle)
        os.unlink(temporary)
    except OSError as error:
        raise CheckpointWriteError(
            f"Cannot write checkpoints to {directory}: {write_failure(error, probe)}; or pass another "
            "checkpoint_dir=, or set checkpoint_every=0 to train without checkpoints."
        ) from error
    return directory


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (see :func:`load_checkpoint` for the keys) atomically, with its digest.

    Raises:
        CheckpointWriteError: The file could not be written (read-only directory, full disk, a parent path
            that is a file); earlier checkpoints are untouched and the run can resume from the latest.
    """
    path = Path(path)
    record = {"transformer_lens": transformer_lens_version(), **payload, "format": FORMAT}
    record["digest"] = _digest(record)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # of an earlier write of this checkpoint, killed
            leftover.unlink(missing_ok=True)
        try:
            with open(temporary, "wb") as file:
                torch.save(record, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as error:
        raise CheckpointWriteError(
            f"Cannot save checkpoint {path}: {write_failure(error, path)}. Earlier checkpoints are untouched: "
            f"fix this, then resume the run with resume_from={str(path.parent)!r}."
        ) from error
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    The file is unpickled with ``weights_only=True``; its digest must be present and match its contents,
    and its fields must be well formed (a step within the run's schedule, random states a generator
    accepts, tensors where tensors belong ...).

    Raises:
        CheckpointError: The file is missing, truncated, corrupt, altered, crafted, or not a tv_lens
            checkpoint (also one that would run code when unpickled: it is never loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint file at {path}; list a run's checkpoints with list_checkpoints(dir).")
    fix = "delete it and resume from an earlier checkpoint of the run (list_checkpoints(dir)), or start afresh"
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files: the error says it all
            warnings.simplefilter("ignore", UserWarning)
            record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        forbidden = _FORBIDDEN_GLOBAL.search(str(error))
        if forbidden is not None or "allowed global" in str(error):
            name = forbidden.group(1) if forbidden is not None else "a Python global"
            raise CheckpointError(
                f"{path} is not a tv_lens checkpoint and must not be loaded: it asks to import {name} when "
                "unpickled, which a tv_lens checkpoint never does and which could run code on this machine. It "
                "was not loaded; delete it (or keep it away from torch.load and pickle), and resume from a "
                "checkpoint tv_lens wrote."
            ) from None
        if "weights only" in str(error).lower() or "weights_only" in str(error):
            raise CheckpointError(
                f"{path} is truncated or corrupt, or not a tv_lens checkpoint at all, and must not be loaded: its "
                "pickled data holds instructions that no tv_lens checkpoint holds. It was not loaded; delete it (or "
                "keep it away from torch.load and pickle), and resume from an earlier checkpoint of the run "
                "(list_checkpoints(dir)), or start afresh."
            ) from None
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt (its pickled data is unreadable); {fix}."
        ) from None
    except Exception as error:
        reason = "" if "weights_only" in str(error) else f" ({error})"  # never repeat torch's advice to unpickle
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt{reason}; {fix}.") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a tv_lens training checkpoint (expected format {FORMAT!r}); pass a file that "
            "tv_lens.training.train wrote (list_checkpoints(dir) lists a run's)."
        )
    if "digest" not in record:
        raise CheckpointError(
            f"Checkpoint {path} has no digest, which every tv_lens checkpoint records: it was altered or not "
            f"written by tv_lens, so its contents cannot be checked; {fix}."
        )
    digest = record.pop("digest")
    if digest != _digest(record):
        raise CheckpointError(f"Checkpoint {path} is corrupt: its contents do not match its digest; {fix}.")
    try:
        return _checkpoint_of(path, record, fix)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"Checkpoint {path} lacks or mangles a field ({error!r}); {fix}.") from error


def _checkpoint_of(path: Path, record: dict[str, Any], fix: str) -> Checkpoint:
    """Build a :class:`Checkpoint` from a verified record, refusing values no run writes."""

    def refuse(problem: str) -> str:
        return f"Checkpoint {path} {problem}, which no tv_lens run writes: it is corrupt or crafted; {fix}."

    model_config = record["model_config"]
    unknown = _unknown_settings(TrainConfig, record["config"], "config")
    if isinstance(model_config, Mapping):
        unknown += _unknown_settings(ModelConfig, model_config, "model_config")
    if unknown:
        raise CheckpointError(
            f"Checkpoint {path} records settings this tv_lens does not know: {unknown}. It was written by a newer "
            "tv_lens (or edited by hand); load it with the tv_lens version that wrote it (or upgrade tv_lens), or "
            "retrain the run with this version."
        )
    version = record.get("transformer_lens")
    if version is not None and not isinstance(version, str):
        raise CheckpointError(refuse(f"records TransformerLens version {version!r}, not a version string"))
    try:
        config = TrainConfig.from_dict(record["config"])
        built_model_config = None if model_config is None else ModelConfig(**model_config)
    except (ConfigError, TypeError) as error:
        raise CheckpointError(refuse(f"holds a config this tv_lens refuses ({error})")) from error
    step = record["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= config.schedule.max_steps:
        raise CheckpointError(
            refuse(f"records step {step!r}, outside the run's 0 .. {config.schedule.max_steps} optimiser steps")
        )
    elapsed_s = record["elapsed_s"]
    if isinstance(elapsed_s, bool) or not isinstance(elapsed_s, int | float) or not math.isfinite(elapsed_s):
        raise CheckpointError(refuse(f"records a training time of {elapsed_s!r} s"))
    if elapsed_s < 0:
        raise CheckpointError(refuse(f"records a negative training time ({elapsed_s!r} s)"))
    for name in ("pool", "parameters", "optimizer", "rng"):
        if not isinstance(record[name], dict):
            raise CheckpointError(refuse(f"holds a {type(record[name]).__name__} as its {name!r}, not a dict"))
    for name in ("history", "evals"):
        if not isinstance(record[name], list) or not all(isinstance(row, dict) for row in record[name]):
            raise CheckpointError(refuse(f"holds a {name!r} that is not a list of rows (dicts)"))
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in record["parameters"].items()):
        raise CheckpointError(refuse("holds parameters that are not tensors by name"))
    not_finite = [k for k, v in record["parameters"].items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if not_finite:
        raise CheckpointError(refuse(f"holds NaN or infinite parameters ({not_finite[:3]})"))
    optimizer = record["optimizer"]
    if not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
        raise CheckpointError(refuse("holds an optimiser state without 'state' and 'param_groups'"))
    for module, state in record["rng"].items():
        problem = None if isinstance(module, str) and isinstance(state, Tensor) else "it is not a tensor"
        if problem is None:
            try:
                torch.Generator().set_state(state.clone())
            except (RuntimeError, TypeError) as error:
                problem = str(error)
        if problem is not None:
            raise CheckpointError(
                refuse(f"holds a random state for module {module!r} that no generator accepts ({problem})")
            )
    return Checkpoint(
        path=path,
        step=step,
        config=config,
        model_config=built_model_config,
        pool=record["pool"],
        parameters=record["parameters"],
        optimizer=optimizer,
        rng=record["rng"],
        history=record["history"],
        evals=record["evals"],
        elapsed_s=float(elapsed_s),
        transformer_lens=version,
    )


def _unknown_settings(kind: type, data: Any, where: str) -> list[str]:
    """Dotted names of the keys of ``data`` (and of its nested config sections) that ``kind`` has no field for."""
    if not isinstance(data, Mapping):
        return []
    known = {f.name for f in fields(kind)}
    found = [f"{where}.{key}" for key in data if key not in known]
    for name in sorted(known & set(data)):
        if name in _NESTED:
            found += _unknown_settings(_NESTED[name], data[name], f"{where}.{name}")
    return found


def transformer_lens_version() -> str:
    """The installed TransformerLens version (``"unknown"`` when its package metadata is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        return "unknown"


def load_parameters(model: Any, parameters: dict[str, Tensor], source: str = "the checkpoint") -> None:
    """Copy saved parameters into ``model`` (names must match ``model.named_parameters()`` exactly)."""
    own = dict(model.named_parameters())
    if set(own) != set(parameters):
        raise CheckpointError(
            f"The parameters in {source} do not match the model's ({_parameter_mismatch(model, parameters)}). Load "
            "it into a model built from the same ModelConfig and finetune settings."
        )
    with torch.no_grad():
        for name, parameter in own.items():
            if parameter.shape != parameters[name].shape:
                raise CheckpointError(
                    f"Parameter {name} has shape {tuple(parameter.shape)} in the model but "
                    f"{tuple(parameters[name].shape)} in {source}; build the model from the checkpoint's ModelConfig."
                )
            parameter.copy_(parameters[name])


def _parameter_mismatch(model: Any, parameters: dict[str, Tensor]) -> str | None:
    """How ``parameters`` differ from ``model``'s by name and shape (``None`` when they fit)."""
    own = {name: tuple(p.shape) for name, p in model.named_parameters()}
    missing, extra = sorted(set(own) - set(parameters)), sorted(set(parameters) - set(own))
    if missing or extra:
        return f"missing: {missing[:3]}, unexpected: {extra[:3]}"
    reshaped = [
        f"{name} {tuple(parameters[name].shape)} in the checkpoint, {shape} in the model"
        for name, shape in own.items()
        if tuple(parameters[name].shape) != shape
    ]
    return f"other shapes: {'; '.join(reshaped[:3])}" if reshaped else None


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], model: Any = None, source: str = "the checkpoint"
) -> None:
    """Load a saved optimiser ``state_dict`` into ``optimizer``, after checking its tensors fit the parameters.

    ``torch.optim.Optimizer.load_state_dict`` checks only the number of parameters per group; a state whose
    moment estimates have other shapes would fail (or broadcast) at the first step. Here each per-parameter
    tensor must have its parameter's shape.

    Args:
        optimizer: The run's optimiser, over the model's parameters.
        state: The saved ``optimizer.state_dict()``.
        model: The model, to name parameters in errors (optional).
        source: Names the checkpoint in errors.

    Raises:
        CheckpointError: The state has other parameter groups, or a tensor whose shape is not its parameter's.
    """
    fix = (
        "resume with the model and optimiser settings the run was started with, or start a new run in an empty "
        "checkpoint directory"
    )
    names = {} if model is None else {id(p): name for name, p in model.named_parameters()}
    saved_groups = state.get("param_groups") if isinstance(state, Mapping) else None
    saved_state = state.get("state") if isinstance(state, Mapping) else None
    same_groups = (
        isinstance(saved_groups, list)
        and isinstance(saved_state, Mapping)
        and len(saved_groups) == len(optimizer.param_groups)
        and all(
            isinstance(saved, Mapping) and len(saved.get("params", ())) == len(group["params"])
            for saved, group in zip(saved_groups, optimizer.param_groups, strict=True)
        )
    )
    if same_groups:  # otherwise load_state_dict below names the difference in groups
        for saved_group, group in zip(saved_groups, optimizer.param_groups, strict=True):  # type: ignore[arg-type]
            for index, parameter in zip(saved_group["params"], group["params"], strict=True):
                entries = saved_state.get(index, {})  # type: ignore[union-attr]
                for key, value in entries.items() if isinstance(entries, Mapping) else ():
                    if isinstance(value, Tensor) and value.dim() > 0 and value.shape != parameter.shape:
                        name = names.get(id(parameter), f"number {index}")
                        raise CheckpointError(
                            f"The optimiser state in {source} does not fit this run's parameters: its {key!r} of "
                            f"parameter {name} has shape {tuple(value.shape)}, the parameter {tuple(parameter.shape)}; "
                            f"{fix}."
                        )
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(
            f"The optimiser state in {source} does not fit this run's parameters ({error}); {fix}."
        ) from error


def _digest(record: Any) -> str:
    hasher = hashlib.sha256()
    _feed(hasher, record)
    return hasher.hexdigest()


def _feed(hasher: Any, value: Any) -> None:
    """Hash a nest of dicts, lists, tensors and plain values in a canonical order."""
    if isinstance(value, Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        hasher.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, dict):
        hasher.update(b"{")
        for key in sorted(value, key=repr):
            hasher.update(repr(key).encode())
            _feed(hasher, value[key])
        hasher.update(b"}")
    elif isinstance(value, list | tuple):
        hasher.update(b"[")
        for item in value:
            _feed(hasher, item)
        hasher.update(b"]")
    else:
        hasher.update(repr(value).encode())


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so configs compare equal however they were stored."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _differences(prefix: str, saved: Any, current: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"prefix.key: checkpoint X, now Y"`` for every leaf that differs."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            if key not in ignore:
                out += _differences(f"{prefix}.{key}", saved.get(key), current.get(key))
        return out
    return [] if saved == current else [f"{prefix} = {saved!r} in the checkpoint but {current!r} now"]
