"""tv_lens: task vectors in in-context learning, measured on TransformerLens models.

The names most work starts from are here; each subpackage has the rest:
:mod:`tv_lens.models` (adapter, builder), :mod:`tv_lens.tasks` (ICL task pools), :mod:`tv_lens.training`
(small models trained from scratch), :mod:`tv_lens.analyses` (configs and pure functions),
:mod:`tv_lens.results` (tables, figures, save / load).
"""

from tv_lens.analyses import (
    AttentionKnockout,
    CompareVectors,
    Emergence,
    FunctionVectors,
    Geometry,
    HeadAblation,
    HeadAttention,
    ICLPerformance,
    LabelledPrompts,
    LayerFinetuning,
    Prompts,
    Suite,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TdAccuracy,
    task_decodability,
)
from tv_lens.errors import TvLensError
from tv_lens.generation import generate
from tv_lens.interventions import ablate_head, add, knockout, replace, run_with_interventions
from tv_lens.models import ModelConfig, adapt, build_model
from tv_lens.probes import collect
from tv_lens.results import Result
from tv_lens.steering import steer, steering
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import TaskPool, TextPool, bitwise_pool, offset_pool
from tv_lens.training import recipes, train

__all__ = [
    "AttentionKnockout",
    "CompareVectors",
    "Emergence",
    "FunctionVectors",
    "Geometry",
    "HeadAblation",
    "HeadAttention",
    "ICLPerformance",
    "LabelledPrompts",
    "LayerFinetuning",
    "ModelConfig",
    "Prompts",
    "Result",
    "Suite",
    "TaskDecodability",
    "TaskPool",
    "TaskVectorPatching",
    "TaskVectorPrompting",
    "TaskVectors",
    "TdAccuracy",
    "TextPool",
    "TvLensError",
    "ablate_head",
    "adapt",
    "add",
    "bitwise_pool",
    "build_model",
    "collect",
    "generate",
    "knockout",
    "offset_pool",
    "recipes",
    "replace",
    "run_with_interventions",
    "steer",
    "steering",
    "task_decodability",
    "train",
]
__version__ = "0.1.0"  # the one place the version is set: the package metadata reads it from here
