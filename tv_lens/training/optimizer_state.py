"""Restoring a saved optimiser state, checked against the parameters it will update."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tv_lens.errors import CheckpointError

__all__ = ["load_optimizer_state"]


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
