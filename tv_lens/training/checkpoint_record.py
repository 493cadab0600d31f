"""A loaded checkpoint: the run it belongs to, and the model it rebuilds.

:class:`Checkpoint` is what :func:`~tv_lens.training.checkpoints.load_checkpoint` returns once the file is
verified. It rebuilds the model from the saved config (:meth:`Checkpoint.load_model`), resolving ``backend="auto"``
to the class the weights were saved from, and names every difference between its run and one that would resume it
(:meth:`Checkpoint.check_compatible`). A model whose parameters do not fit the model this TransformerLens builds
from the same config is reported as a checkpoint of another TransformerLens version, not as a wrong config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tv_lens.environment import package_version
from tv_lens.errors import CheckpointError, TvLensError
from tv_lens.models import ModelConfig, build_continuous_model, build_model, hooked_transformer_available
from tv_lens.training.config import TrainConfig
from tv_lens.training.finetune import attach_lora, parameter_digest

__all__ = ["Checkpoint", "load_parameters", "transformer_lens_version"]

# Fields that do not change the trained weights: a run may be resumed with other values.
_BOOKKEEPING = ("eval_every", "checkpoint_every")
# The read-in of a continuous-input model (tv_lens.models.ContinuousModel), which a token model lacks.
_READ_IN = "read_in.weight"


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint (see :func:`~tv_lens.training.checkpoints.load_checkpoint`).

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
        frozen: Name → :func:`~tv_lens.training.finetune.parameter_digest` of the frozen parameters that a
            finetuning run of a model without ``model_config`` (a pretrained model) leaves out of ``parameters``;
            ``None``: ``parameters`` holds every parameter.
        environment: The :func:`~tv_lens.environment.software_environment` the checkpoint was written in
            (``None`` for checkpoints of tv_lens versions that did not record it).
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
    frozen: dict[str, str] | None = None
    environment: dict[str, str | int] | None = None

    def load_into(self, model: Any) -> None:
        """Copy the checkpoint's parameters into ``model``, built as the run's model was (LoRA adapters attached).

        A checkpoint with ``frozen`` digests holds only what its run trained: the model's other parameters must be
        the ones the run started from (their digests are checked), and are kept.

        Raises:
            CheckpointError: The model's frozen parameters are not the run's, or its parameters do not fit.
        """
        parameters = dict(self.parameters)
        if self.frozen is not None:
            own = dict(model.named_parameters())
            absent = [name for name in self.frozen if name not in own]
            other = [
                name for name, digest in self.frozen.items() if name in own and parameter_digest(own[name]) != digest
            ]
            if absent or other:
                raise CheckpointError(
                    f"Checkpoint {self.path} holds only the parameters its finetuning run trained, and this model's "
                    f"frozen parameters are not the ones that run started from (absent: {absent[:3]}; other values: "
                    f"{other[:3]}). Load the same pretrained model (same weights, dtype and loader) and attach the "
                    "run's adapters (attach_lora(model, checkpoint.config.finetune)) first."
                )
            parameters |= {name: own[name].detach() for name in self.frozen}
        load_parameters(model, parameters, source=str(self.path))

    def load_model(self, device: str | torch.device = "cpu") -> Any:
        """Rebuild the model from ``model_config`` (LoRA adapters re-attached) and load the weights.

        A continuous-input model (saved with a ``read_in``) is rebuilt with
        :func:`~tv_lens.models.build_continuous_model` (``d_in`` from the read-in, ``d_out = d_vocab``).
        """
        if self.model_config is None:
            raise CheckpointError(
                f"Checkpoint {self.path} has no model config (the run was started without model_config=), so "
                "the model cannot be rebuilt from it. Build or load the model yourself, attach the run's adapters "
                "(attach_lora(model, checkpoint.config.finetune)) and call checkpoint.load_into(model)."
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

    def run_differences(self, other: Checkpoint) -> list[str]:
        """The dotted keys of the training config, the pool and the model config in which ``other``'s run differs.

        Empty for two checkpoints of one run; ``eval_every`` and ``checkpoint_every`` may differ.
        """
        config = _leaf_differences(
            "config", _plain(self.config.to_dict()), _plain(other.config.to_dict()), _BOOKKEEPING
        )
        pool = _leaf_differences("pool", _plain(self.pool), _plain(other.pool))
        model = _leaf_differences("model_config", _model_config(self), _model_config(other))
        return [key for key, _, _ in config + pool + model]

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


def transformer_lens_version() -> str:
    """The installed TransformerLens version (``"unknown"`` when its package metadata is missing)."""
    return package_version("transformer-lens")


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


def _model_config(checkpoint: Checkpoint) -> Any:
    return None if checkpoint.model_config is None else _plain(checkpoint.model_config.to_dict())


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so configs compare equal however they were stored."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _differences(prefix: str, saved: Any, current: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"prefix.key = X in the checkpoint but Y now"`` for every leaf that differs."""
    return [
        f"{key} = {old!r} in the checkpoint but {new!r} now"
        for key, old, new in _leaf_differences(prefix, saved, current, ignore)
    ]


def _leaf_differences(
    prefix: str, saved: Any, current: Any, ignore: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved, current)`` of each differing leaf of two nested dicts (top-level ``ignore`` not read)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(saved) | set(current), key=str):
            if key not in ignore:
                out += _leaf_differences(f"{prefix}.{key}", saved.get(key), current.get(key))
        return out
    return [] if saved == current else [(prefix, saved, current)]
