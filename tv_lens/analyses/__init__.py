"""Analyses of task representations: each a config dataclass with ``run(model, pool, ...) -> Result``.

Under every config sits a pure function on plain tensors that other tools can call directly:
:func:`task_decodability`, :func:`icl_performance`, :func:`project`, :func:`fit_td_accuracy`,
:func:`detect_jump` / :func:`detect_coupling`, :func:`patch_task_vectors`, :func:`task_vector_prompting`,
:func:`head_importance`, :func:`head_attribution`, :func:`compare_models`, :func:`mean_head_activations` /
:func:`causal_indirect_effects` / :func:`function_vector` / :func:`function_vector_prompting`,
:func:`decode_vectors` (the logit lens of a task or function vector), :func:`role_attention` (where each head
looks from the answer position), :func:`attention_knockout` (what the answer needs of it). The causal ones take
the prompts as one :class:`LabelledPrompts`: a batch (``pool.sample(...)``), or :class:`Prompts` built from tensors
you tokenised. Results live in :mod:`tv_lens.results` (tables, figures, save / load).
"""

from tv_lens.analyses.attention import HeadAttention, role_attention
from tv_lens.analyses.attribution import head_attribution
from tv_lens.analyses.decodability import TaskDecodability, task_decodability
from tv_lens.analyses.emergence import Emergence, detect_coupling, detect_jump
from tv_lens.analyses.finetuning import LayerFinetuning, compare_models
from tv_lens.analyses.function_vectors import (
    FunctionVectors,
    causal_indirect_effects,
    function_vector,
    function_vector_prompting,
    mean_head_activations,
)
from tv_lens.analyses.geometry import Geometry, project
from tv_lens.analyses.heads import HeadAblation, head_importance
from tv_lens.analyses.knockout import AttentionKnockout, attention_knockout
from tv_lens.analyses.options import CausalOptions, IntervalOptions, PassOptions
from tv_lens.analyses.patching import TaskVectorPatching, patch_task_vectors
from tv_lens.analyses.performance import ICLPerformance, icl_performance, score_batch
from tv_lens.analyses.prediction import TdAccuracy, fit_td_accuracy, ols
from tv_lens.analyses.prompt_batches import LabelledPrompts, Prompts
from tv_lens.analyses.prompting import TaskVectorPrompting, task_vector_prompting
from tv_lens.analyses.pruning import pruning_curve, shared_heads
from tv_lens.analyses.suite import Suite
from tv_lens.analyses.vector_comparison import CompareVectors
from tv_lens.analyses.vector_decoding import decode_vectors, logit_lens

__all__ = [
    "AttentionKnockout",
    "CausalOptions",
    "CompareVectors",
    "Emergence",
    "FunctionVectors",
    "Geometry",
    "HeadAblation",
    "HeadAttention",
    "ICLPerformance",
    "IntervalOptions",
    "LabelledPrompts",
    "LayerFinetuning",
    "PassOptions",
    "Prompts",
    "Suite",
    "TaskDecodability",
    "TaskVectorPatching",
    "TaskVectorPrompting",
    "TdAccuracy",
    "attention_knockout",
    "causal_indirect_effects",
    "compare_models",
    "decode_vectors",
    "detect_coupling",
    "detect_jump",
    "fit_td_accuracy",
    "function_vector",
    "function_vector_prompting",
    "head_attribution",
    "head_importance",
    "icl_performance",
    "logit_lens",
    "mean_head_activations",
    "ols",
    "patch_task_vectors",
    "project",
    "pruning_curve",
    "role_attention",
    "score_batch",
    "shared_heads",
    "task_decodability",
    "task_vector_prompting",
]
