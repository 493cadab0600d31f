"""Result objects: frozen dataclasses with ``to_frame()``, ``traces()`` / ``figure()``, ``save()`` / ``load()``.

Every analysis returns one; :meth:`Result.load` reads back any of them (the file records its type).
"""

from tv_lens.results.attention import RoleAttention
from tv_lens.results.axes import LAYER_AXIS_TITLE, layer_axis, layer_label
from tv_lens.results.base import Result
from tv_lens.results.decodability import Decodability
from tv_lens.results.emergence import EmergenceResult
from tv_lens.results.finetuning import FinetuningComparison
from tv_lens.results.function_vector_prompting import FunctionVectorPrompting, FunctionVectorResult
from tv_lens.results.function_vectors import FunctionVector, IndirectEffects, MeanHeadActivations
from tv_lens.results.geometry import Projection
from tv_lens.results.heads import HeadImportance, PruningCurve
from tv_lens.results.knockout import KnockoutEffects
from tv_lens.results.patching import PatchingEffects
from tv_lens.results.performance import Performance
from tv_lens.results.prediction import TdAccuracyFit
from tv_lens.results.prompting import PromptingAccuracy
from tv_lens.results.provenance import ModelSignature, OtherWeightsWarning, VectorProvenance
from tv_lens.results.shared import BootstrapSettings, SweepSettings
from tv_lens.results.suite import SuiteResult
from tv_lens.results.vector_comparison import VectorComparison
from tv_lens.results.vector_decoding import VectorDecoding

__all__ = [
    "LAYER_AXIS_TITLE",
    "BootstrapSettings",
    "Decodability",
    "EmergenceResult",
    "FinetuningComparison",
    "FunctionVector",
    "FunctionVectorPrompting",
    "FunctionVectorResult",
    "HeadImportance",
    "IndirectEffects",
    "KnockoutEffects",
    "MeanHeadActivations",
    "ModelSignature",
    "OtherWeightsWarning",
    "PatchingEffects",
    "Performance",
    "Projection",
    "PromptingAccuracy",
    "PruningCurve",
    "Result",
    "RoleAttention",
    "SuiteResult",
    "SweepSettings",
    "TdAccuracyFit",
    "VectorComparison",
    "VectorDecoding",
    "VectorProvenance",
    "layer_axis",
    "layer_label",
]
