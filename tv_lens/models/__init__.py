"""TransformerLens models as tv_lens sees them, and small models to train on synthetic tasks."""

from typing import TYPE_CHECKING, Any

from tv_lens.models.adapter import EMBED_LAYER, RESIDUAL_SITES, ModelAdapter, adapt
from tv_lens.models.builders import ModelConfig, build_model, hooked_transformer_available

if TYPE_CHECKING:
    from tv_lens.models.continuous import ContinuousModel, build_continuous_model

__all__ = [
    "EMBED_LAYER",
    "RESIDUAL_SITES",
    "ContinuousModel",
    "ModelAdapter",
    "ModelConfig",
    "adapt",
    "build_continuous_model",
    "build_model",
    "hooked_transformer_available",
]

_CONTINUOUS = ("ContinuousModel", "build_continuous_model")


def __getattr__(name: str) -> Any:
    # The continuous wrapper subclasses a TransformerLens class: import TransformerLens only when it is used.
    if name in _CONTINUOUS:
        from tv_lens.models import continuous

        return getattr(continuous, name)
    raise AttributeError(f"module 'tv_lens.models' has no attribute {name!r}")
