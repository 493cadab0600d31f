"""Latent in-context-learning tasks and prompt rendering.

A :class:`TaskPool` of confusable :class:`Task` rules samples an :class:`ICLBatch` of rendered prompts
(tokens, answer positions, answers, latent task ids, demonstration spans). Families of token tasks live
in :mod:`tv_lens.tasks.tokens`; their shared vocabulary layout in :mod:`tv_lens.tasks.vocabulary`.
Continuous (regression) tasks: a :class:`RegressionPool` samples a :class:`RegressionBatch`
(:mod:`tv_lens.tasks.regression`), read against least squares and ridge
(:mod:`tv_lens.tasks.regression_baselines`). Text tasks for pretrained models: a :class:`TextPool` of
:class:`TextTask` examples tokenized with the model's tokenizer samples an :class:`ICLBatch`
(:mod:`tv_lens.tasks.text`, :mod:`tv_lens.tasks.text_families`, :mod:`tv_lens.tasks.datasets`).

>>> from tv_lens.tasks import offset_pool
>>> batch = offset_pool(offsets=(1, 2, 3), n_values=10, fmt="marker").sample(8, n_shots=(0, 4), seed=0)
>>> batch.inputs.shape[0], batch.answers.shape
(32, torch.Size([32, 1]))
"""

from tv_lens.tasks.batch import ICLBatch
from tv_lens.tasks.datasets import load_examples, load_task, load_tasks
from tv_lens.tasks.lexicon import POS_TAGS
from tv_lens.tasks.pool import NULL_TASK, AnswerEncoding, ShotSpec, Task, TaskPool
from tv_lens.tasks.regression import (
    REGRESSION_FAMILIES,
    RegressionPool,
    RegressionTask,
    leaky_relu_task,
    linear_task,
    quadratic_task,
    regression_pool,
    shifted_linear_pool,
    shifted_linear_task,
    sinusoidal_task,
    sparse_linear_pool,
    sparse_linear_task,
)
from tv_lens.tasks.regression_baselines import least_squares_predictions, ridge_predictions
from tv_lens.tasks.regression_batch import RegressionBatch
from tv_lens.tasks.render import PROMPT_FORMATS, PromptFormat, render_prompts
from tv_lens.tasks.roles import PROMPT_ROLES, demonstration_roles, position_roles
from tv_lens.tasks.text import TextPool, TextTask
from tv_lens.tasks.text_families import bitwise_text_tasks, pos_tasks
from tv_lens.tasks.tokens import (
    BITWISE_OPS,
    MODULAR_OPS,
    bitwise_pool,
    modular_pool,
    offset_pool,
    parity_offset_pool,
    permutation_pool,
)
from tv_lens.tasks.vocabulary import Vocabulary

__all__ = [
    "BITWISE_OPS",
    "MODULAR_OPS",
    "NULL_TASK",
    "POS_TAGS",
    "PROMPT_FORMATS",
    "PROMPT_ROLES",
    "REGRESSION_FAMILIES",
    "AnswerEncoding",
    "ICLBatch",
    "PromptFormat",
    "RegressionBatch",
    "RegressionPool",
    "RegressionTask",
    "ShotSpec",
    "Task",
    "TaskPool",
    "TextPool",
    "TextTask",
    "Vocabulary",
    "bitwise_pool",
    "bitwise_text_tasks",
    "demonstration_roles",
    "leaky_relu_task",
    "least_squares_predictions",
    "linear_task",
    "load_examples",
    "load_task",
    "load_tasks",
    "modular_pool",
    "offset_pool",
    "parity_offset_pool",
    "permutation_pool",
    "pos_tasks",
    "position_roles",
    "quadratic_task",
    "regression_pool",
    "render_prompts",
    "ridge_predictions",
    "shifted_linear_pool",
    "shifted_linear_task",
    "sinusoidal_task",
    "sparse_linear_pool",
    "sparse_linear_task",
]
