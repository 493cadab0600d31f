"""What analyses take, in one place: prompt batches and pools, per-prompt answers, and representation inputs.

The names are defined by job in :mod:`tv_lens.analyses.prompt_batches` (the :class:`PromptBatch` /
:class:`PromptPool` protocols and their checks), :mod:`tv_lens.analyses.answers` (prompt counts, answers,
task ids and scores of causal analyses) and :mod:`tv_lens.analyses.representations` (checked representations
with their labels, and the :class:`RepresentationAnalysis` base); this module gathers them.
"""

from tv_lens.analyses.answers import (
    answer_counts,
    answer_scores,
    answer_tokens,
    finite_outputs,
    prompt_count,
    prompt_task_ids,
)
from tv_lens.analyses.prompt_batches import PromptBatch, PromptPool, check_batch, check_pool, sample_batch
from tv_lens.analyses.representations import (
    MAX_UNNAMED_TASKS,
    LabelledStack,
    LabelsInput,
    RepresentationAnalysis,
    RepsInput,
    integer_ids,
    labelled_stack,
    named_tasks,
)

__all__ = [
    "MAX_UNNAMED_TASKS",
    "LabelledStack",
    "LabelsInput",
    "PromptBatch",
    "PromptPool",
    "RepresentationAnalysis",
    "RepsInput",
    "answer_counts",
    "answer_scores",
    "answer_tokens",
    "check_batch",
    "check_pool",
    "finite_outputs",
    "integer_ids",
    "labelled_stack",
    "named_tasks",
    "prompt_count",
    "prompt_task_ids",
    "sample_batch",
]
