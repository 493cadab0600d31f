"""The fields of a verified checkpoint record, checked before they become a :class:`Checkpoint`.

A record whose digest matches may still hold values no run writes (a crafted file with a recomputed digest):
a step outside the run's schedule, random states no generator accepts, NaN parameters ... :func:`checkpoint_of`
refuses them with a :class:`~tv_lens.errors.CheckpointError`, and names the settings a newer tv_lens wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tv_lens.checks import is_finite_number, is_int
from tv_lens.environment import is_environment
from tv_lens.errors import CheckpointError, ConfigError
from tv_lens.models import ModelConfig
from tv_lens.training.checkpoint_record import Checkpoint
from tv_lens.training.config import _NESTED, TrainConfig

__all__ = ["checkpoint_of"]


def checkpoint_of(path: Path, record: dict[str, Any], fix: str) -> Checkpoint:
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
    if not is_int(step) or not 0 <= step <= config.schedule.max_steps:
        raise CheckpointError(
            refuse(f"records step {step!r}, outside the run's 0 .. {config.schedule.max_steps} optimiser steps")
        )
    elapsed_s = record["elapsed_s"]
    if not is_finite_number(elapsed_s):
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
    environment = record.get("environment")
    if environment is not None and not is_environment(environment):
        raise CheckpointError(refuse("records a software environment that is not versions and counts by name"))
    frozen = record.get("frozen")
    if frozen is not None:
        if not isinstance(frozen, dict) or not all(isinstance(k, str) and _is_digest(v) for k, v in frozen.items()):
            raise CheckpointError(refuse("holds frozen-parameter digests that are not 64-digit hex strings by name"))
        both = sorted(set(frozen) & set(record["parameters"]))
        if both:
            raise CheckpointError(refuse(f"names parameters both as saved and as frozen ({both[:3]})"))
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
        frozen=frozen,
        environment=environment,
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


def _is_digest(value: Any) -> bool:
    """Whether ``value`` is a :func:`~tv_lens.training.finetune.parameter_digest`: 64 lowercase hex digits."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
