"""Latent in-context-learning tasks and prompt rendering.

A :class:`TaskPool` of confusable :class:`Task` rules samples an :class:`ICLBatch` of rendered prompts
(tokens, answer positions, answers, latent task ids, demonstration spans). Families of token tasks live
in :mod:`tv_lens.tasks.tokens`; their shared vocabulary layout in :mod:`tv_lens.tasks.vocabulary`.

>>> from tv_lens.tasks import offset_pool
>>> batch = offset_pool(offsets=(1, 2, 3), n_values=10, fmt="marker").sample(8, n_shots=(0, 4), seed=0)
>>> batch.inputs.shape[0], batch.answers.shape
(32, torch.Size([32, 1]))
"""

from tv_lens.tasks.batch import ICLBatch
from tv_lens.tasks.pool import NULL_TASK, AnswerEncoding, ShotSpec, Task, TaskPool
from tv_lens.tasks.render import PROMPT_FORMATS, PromptFormat, render_prompts
from tv_lens.tasks.tokens import (
    BITWISE_OPS,
    MODULAR_OPS,
    bitwise_pool,
    modular_pool,
    offset_pool,
    permutation_pool,
)
from tv_lens.tasks.vocabulary import Vocabulary

__all__ = [
    "BITWISE_OPS",
    "MODULAR_OPS",
    "NULL_TASK",
    "PROMPT_FORMATS",
    "AnswerEncoding",
    "ICLBatch",
    "PromptFormat",
    "ShotSpec",
    "Task",
    "TaskPool",
    "Vocabulary",
    "bitwise_pool",
    "modular_pool",
    "offset_pool",
    "permutation_pool",
    "render_prompts",
]
