"""TransformerLens models as tv_lens sees them, and small models to train on synthetic tasks."""

from tv_lens.models.adapter import EMBED_LAYER, RESIDUAL_SITES, ModelAdapter, adapt
from tv_lens.models.builders import ModelConfig, build_model, hooked_transformer_available

__all__ = [
    "EMBED_LAYER",
    "RESIDUAL_SITES",
    "ModelAdapter",
    "ModelConfig",
    "adapt",
    "build_model",
    "hooked_transformer_available",
]
