"""Prompts of the Null task alone: the analyses that report means over the other tasks refuse them before any pass."""

from __future__ import annotations

import math

import pytest
import torch
from analyses_helpers import POOL, count_forward_passes

from tv_lens.analyses import (
    AttentionKnockout,
    HeadAblation,
    HeadAttention,
    TaskVectorPrompting,
    attention_knockout,
    head_importance,
    role_attention,
)
from tv_lens.errors import AnalysisError
from tv_lens.interventions import knockout_strategy
from tv_lens.models import adapt

ANALYSES = {
    "head importance": HeadAblation(n_bootstrap=0, prune_steps=0, attribution=False),
    "head attention": HeadAttention(n_bootstrap=0),
    "attention knockout": AttentionKnockout(n_bootstrap=0),
    "task-vector prompting": TaskVectorPrompting(n_bootstrap=0),
}


def null_prompts(n_per_task: int = 6):
    batch = POOL.sample(n_per_task, 3, seed=0)
    return batch.select(batch.task_ids == POOL.task_names.index("null"))


@pytest.mark.parametrize("name", list(ANALYSES))
def test_null_prompts_alone_are_refused_before_the_first_pass(model, name):
    batch = null_prompts()
    with count_forward_passes(model) as calls, pytest.raises(AnalysisError, match=f"{name} reports means over"):
        ANALYSES[name].run_batch(model, batch)
    assert calls == []


@pytest.mark.parametrize(
    ("function", "config"),
    [
        (head_importance, ANALYSES["head importance"]),
        (role_attention, ANALYSES["head attention"]),
        (attention_knockout, ANALYSES["attention knockout"]),
    ],
)
def test_with_no_task_left_out_the_null_prompts_are_a_task_of_their_own(model, function, config):
    """The fix the message gives: ``null_task=''`` reads them as any task: the overall means are the Null task's."""
    if function is attention_knockout and knockout_strategy(adapt(model)) is None:
        pytest.skip("this model's attention cannot be knocked out through hooks (TransformerLens 3.9's bridge)")
    result = function(model, null_prompts(), config=config, null_task="")
    per_task = result.importance if function is head_importance else result.per_task
    null = per_task.select(-1, POOL.task_names.index("null"))
    torch.testing.assert_close(result.overall, null, equal_nan=True)
    assert bool(result.overall.isfinite().any())


def test_a_batch_with_one_real_prompt_is_analysed(model):
    batch = POOL.sample(6, 3, seed=0)
    null = POOL.task_names.index("null")
    keep = batch.task_ids == null
    keep[0] = True  # one prompt of offset(1)
    result = ANALYSES["head importance"].run_batch(model, batch.select(keep))
    assert all(math.isfinite(x) for x in result.overall.flatten().tolist())
