"""``Prompts``: the causal functions read prompts you tokenised exactly as they read a batch, and refuse non-prompts."""

from __future__ import annotations

import pytest
import torch
from causal_helpers import POOL, sample

from tv_lens import LabelledPrompts, Prompts
from tv_lens.analyses import (
    FunctionVectors,
    HeadAblation,
    TaskVectorPatching,
    TaskVectorPrompting,
    causal_indirect_effects,
    function_vector,
    function_vector_prompting,
    head_importance,
    mean_head_activations,
    patch_task_vectors,
    task_vector_prompting,
)
from tv_lens.errors import ShapeError, TaskError
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import regression_pool


def tensors_of(batch, answers=True):
    """``Prompts`` of the batch's tensors (``answers=False``: none), task names as a list."""
    return Prompts(
        batch.inputs.clone(),
        batch.answer_pos.clone(),
        batch.answers.clone() if answers else None,
        batch.task_ids.clone(),
        list(batch.task_names),
        batch.attention_mask.clone(),
    )


def test_a_batch_and_a_regression_batch_and_prompts_are_labelled_prompts():
    batch = sample(n_per_task=1)
    regression = regression_pool(("linear",), d=4).sample(1, 2, seed=0)
    for prompts in (batch, regression, tensors_of(batch)):
        assert isinstance(prompts, LabelledPrompts)
    assert not isinstance(batch.inputs, LabelledPrompts)
    assert tensors_of(batch).task_names == batch.task_names  # a list is stored as a tuple
    assert Prompts(batch.inputs, batch.answer_pos, None, batch.task_ids, "abc").task_names == "abc"  # refused on use


def test_prompts_of_a_batchs_tensors_give_the_batchs_head_importance(model):
    batch = sample(n_per_task=2, n_shots=(1, 3), seed=1)
    config = HeadAblation(mode="mean", prune_steps=2, n_bootstrap=20)
    from_batch = head_importance(model, batch, config=config, seed=3)
    assert from_batch == head_importance(model, tensors_of(batch), config=config, seed=3)
    assert from_batch == config.run_batch(model, batch, seed=3)


def test_prompts_of_a_batchs_tensors_give_the_batchs_patching_effects(model):
    batch = sample(n_per_task=3, n_shots=(1, 3), seed=2)
    vectors = TaskVectors.from_model(model, sample(n_per_task=3, seed=3), layers=(0, 2))
    config = TaskVectorPatching(mode="add", scale=0.5, n_bootstrap=20)
    from_batch = patch_task_vectors(model, batch, vectors, config=config, seed=1)
    from_prompts = patch_task_vectors(model, tensors_of(batch), vectors, config=config, seed=1)
    assert from_batch == from_prompts
    assert torch.equal(from_prompts.loss, config.run_batch(model, batch, vectors, seed=1).loss)


def test_prompts_give_the_batchs_prompting_and_function_vector_numbers(model):
    batch = sample(n_per_task=3, seed=4)
    config = TaskVectorPrompting(n_bootstrap=10)
    zero = batch.zero_shot()
    assert task_vector_prompting(model, tensors_of(batch), tensors_of(zero), config=config) == config.run_batch(
        model, batch
    )
    real = batch.select(batch.task_ids != POOL.task_names.index("null"))
    means = mean_head_activations(model, real)
    assert torch.equal(mean_head_activations(model, tensors_of(real, answers=False)).activations, means.activations)
    fv_config = FunctionVectors(n_bootstrap=0, layers=(1,))
    effects = causal_indirect_effects(model, real, means, config=fv_config)
    assert effects == causal_indirect_effects(model, tensors_of(real), means, config=fv_config)
    vector = function_vector(model, means, effects, config=FunctionVectors(k=2))
    sweep = function_vector_prompting(model, real, real.zero_shot(), vector, config=fv_config)
    own = function_vector_prompting(model, tensors_of(real), tensors_of(real.zero_shot()), vector, config=fv_config)
    assert sweep.prompting == own.prompting


@pytest.mark.parametrize(
    "call",
    [
        lambda model, batch, vectors: head_importance(model, batch.inputs),
        lambda model, batch, vectors: patch_task_vectors(model, batch.inputs, vectors),
        lambda model, batch, vectors: mean_head_activations(model, batch.inputs),
        lambda model, batch, vectors: task_vector_prompting(model, batch.inputs, batch.zero_shot()),
        lambda model, batch, vectors: causal_indirect_effects(
            model, (batch.inputs, batch.answer_pos), mean_head_activations(model, batch)
        ),
    ],
    ids=["head_importance", "patch_task_vectors", "mean_head_activations", "task_vector_prompting", "cie"],
)
def test_what_is_not_prompts_is_refused_naming_what_to_pass(model, call):
    batch = sample(n_per_task=1)
    vectors = TaskVectors.from_model(model, batch, layers=(0,))
    with pytest.raises(
        TaskError, match=r"prompts must be a batch of prompts or tv_lens\.Prompts, got a (Tensor|tuple) without"
    ) as info:
        call(model, batch, vectors)
    assert "tv_lens.Prompts(inputs, answer_pos, answers, task_ids, task_names)" in str(info.value)


def test_prompts_without_answers_serve_only_the_head_means(model):
    batch = sample(n_per_task=1)
    with pytest.raises(ShapeError, match=r"answers must be integer token ids \[batch=4, n_answer\].*got None"):
        head_importance(model, tensors_of(batch, answers=False), config=HeadAblation(n_bootstrap=0))
    with pytest.raises(
        ShapeError, match=r"answers must be integer token ids \[batch=4, n_answer\] or continuous.*got None"
    ):
        task_vector_prompting(model, tensors_of(batch, answers=False), batch.zero_shot())
