"""Task-vector prompting: injections against hand-written hooks on zero-shot prompts, baselines, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from causal_helpers import POOL, editing_hook, failing_user_hook, hooked_scores, left_pad, sample
from conftest import hook_snapshot

from tv_lens.analyses.prompting import TaskVectorPrompting, task_vector_prompting
from tv_lens.errors import AnalysisError, LayerOutOfRangeError, ShapeError, TaskError
from tv_lens.results.base import Result
from tv_lens.results.prompting import PromptingAccuracy
from tv_lens.task_vectors import TaskVectors


def icl_rows(model, batch, layer):
    _, cache = model.run_with_cache(batch.inputs)
    name = "blocks.0.hook_resid_pre" if layer == -1 else f"blocks.{layer}.hook_resid_post"
    return cache[name][torch.arange(len(batch)), batch.answer_pos]


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_injection_equals_a_hand_written_hook_on_the_zero_shot_prompts(model, mode):
    batch = sample(n_per_task=3, n_shots=(1, 4), seed=0)
    zero = batch.zero_shot()
    result = TaskVectorPrompting(layers=(-1, 0, 1, 2), mode=mode, n_bootstrap=0, rows_per_pass=5).run_batch(
        model, batch
    )
    rows = torch.arange(len(batch))
    partner = []  # Hendel's dummy query: the next prompt of the same task, cyclically
    for p, task in enumerate(batch.task_ids.tolist()):
        members = [q for q in range(len(batch)) if int(batch.task_ids[q]) == task]
        partner.append(members[(members.index(p) + 1) % len(members)])
    assert result.vector_source.tolist() == partner and result.source == "other_prompt"
    for i, layer in enumerate(result.layers):
        vectors = icl_rows(model, batch, layer)[partner]

        def edit(act, vectors=vectors):
            if mode == "replace":
                act[rows, zero.answer_pos] = vectors
            else:
                act[rows, zero.answer_pos] += vectors

        name = "blocks.0.hook_resid_pre" if layer == -1 else f"blocks.{layer}.hook_resid_post"
        correct, loss, _ = hooked_scores(
            model, zero.inputs, zero.answer_pos, zero.answers, [(name, editing_hook(edit))]
        )
        torch.testing.assert_close(result.tvp_loss[i], loss, atol=1e-5, rtol=0)
        assert torch.equal(result.tvp_correct[i], correct)
    assert torch.equal(result.writes, torch.full((4,), len(batch)))


def test_baselines_equal_plain_runs_and_the_last_layer_reproduces_icl(model):
    batch = sample(n_per_task=4, n_shots=3, seed=1)
    result = TaskVectorPrompting(source="same_prompt", n_bootstrap=0).run_batch(model, batch)
    assert torch.equal(result.vector_source, torch.arange(len(batch)))
    icl_correct, icl_loss, _ = hooked_scores(model, batch.inputs, batch.answer_pos, batch.answers)
    zero = batch.zero_shot()
    zs_correct, zs_loss, _ = hooked_scores(model, zero.inputs, zero.answer_pos, zero.answers)
    torch.testing.assert_close(result.icl_loss, icl_loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.zero_shot_loss, zs_loss, atol=1e-5, rtol=0)
    assert torch.equal(result.icl_correct, icl_correct) and torch.equal(result.zero_shot_correct, zs_correct)
    # replacing the last block's output at the answer position makes the output the ICL prompt's output
    torch.testing.assert_close(result.tvp_loss[-1], icl_loss, atol=1e-5, rtol=0)
    real = batch.task_ids != 3
    assert result.icl_accuracy == float(icl_correct[real].mean())
    assert result.zero_shot_accuracy == float(zs_correct[real].mean())


def test_task_mean_source_injects_each_prompts_task_vector(model):
    batch = sample(n_per_task=3, seed=2)
    vectors = TaskVectors.from_model(model, sample(n_per_task=3, seed=3), layers=(1,))
    config = TaskVectorPrompting(layers=(1,), source="task_mean", n_bootstrap=0)
    result = config.run_batch(model, batch, vectors=vectors, seed=2)
    zero = batch.zero_shot()

    def edit(act):
        act[torch.arange(len(batch)), zero.answer_pos] = vectors.vectors[batch.task_ids, 0]

    hook = ("blocks.1.hook_resid_post", editing_hook(edit))
    _, loss, _ = hooked_scores(model, zero.inputs, zero.answer_pos, zero.answers, [hook])
    torch.testing.assert_close(result.tvp_loss[0], loss, atol=1e-5, rtol=0)
    own_batch = config.run_batch(model, batch)  # without vectors: the means over the batch's own prompts
    assert own_batch == config.run_batch(model, batch, vectors=TaskVectors.from_model(model, batch, layers=(1,)))
    assert config.run(model, POOL, n_per_task=3, n_shots=3, seed=2) == result


def test_summaries_frame_figure_and_save_load(model, tmp_path):
    batch = sample(n_per_task=4, seed=4)
    result = TaskVectorPrompting(n_bootstrap=50).run_batch(model, batch, seed=3)
    real = batch.task_ids != 3
    np.testing.assert_allclose(result.accuracy.numpy(), result.tvp_correct[:, real].mean(-1).numpy())
    for t in range(4):
        np.testing.assert_allclose(result.per_task[:, t].numpy(), result.tvp_correct[:, batch.task_ids == t].mean(-1))
    assert result.best_layer == result.layers[int(np.argmax(result.accuracy.numpy()))]
    assert torch.all(result.accuracy_ci[:, 0] <= result.accuracy + 1e-12)
    assert torch.all(result.accuracy <= result.accuracy_ci[:, 1] + 1e-12)
    frame = result.to_frame()
    assert len(frame) == 3 * 5 and not frame.duplicated(["layer", "task"]).any()
    row = frame[(frame.layer == 1) & (frame.task == "offset(2)")].iloc[0]
    assert row.tvp_accuracy == float(result.per_task[1, 1]) and row.n_prompts == 4
    traces = result.figure().data
    assert [t.name for t in traces] == ["task-vector prompting", "ICL", "zero-shot"]
    np.testing.assert_allclose(traces[0].y, result.accuracy.numpy())
    assert list(traces[2].y) == [result.zero_shot_accuracy] * 3
    assert result == TaskVectorPrompting(n_bootstrap=50).run_batch(model, batch, seed=3)  # deterministic
    path = result.save(tmp_path / "tvp.safetensors")
    assert PromptingAccuracy.load(path) == result and Result.load(path) == result


def test_left_padding_does_not_change_the_numbers(model):
    batch = sample(n_per_task=3, n_shots=(1, 4), seed=7)
    zero = batch.zero_shot()
    reference = TaskVectorPrompting(n_bootstrap=0).run_batch(model, batch)
    icl_tokens, icl_mask, icl_pos = left_pad(batch)
    zs_tokens, zs_mask, zs_pos = left_pad(batch, zero.inputs, zero.answer_pos, zero.attention_mask)
    left = task_vector_prompting(
        model,
        icl_tokens,
        icl_pos,
        zs_tokens,
        zs_pos,
        batch.answers,
        batch.task_ids,
        batch.task_names,
        icl_attention_mask=icl_mask,
        zero_shot_attention_mask=zs_mask,
        config=TaskVectorPrompting(n_bootstrap=0, rows_per_pass=7),
    )
    for name in ("tvp_loss", "icl_loss", "zero_shot_loss"):
        torch.testing.assert_close(getattr(left, name), getattr(reference, name), atol=1e-5, rtol=0)


def test_bad_input_names_the_problem(model):
    batch = sample(seed=5)
    zero = batch.zero_shot()
    with pytest.raises(AnalysisError, match="Unknown TVP source 'context'"):
        TaskVectorPrompting(source="context")
    with pytest.raises(AnalysisError, match="Unknown TVP mode 'swap'"):
        TaskVectorPrompting(mode="swap")
    with pytest.raises(LayerOutOfRangeError, match="Layer 5 is out of range"):
        TaskVectorPrompting(layers=(5,), n_bootstrap=0).run_batch(model, batch)
    vectors = TaskVectors.from_model(model, batch, layers=(0,), tasks=("offset(1)",))
    with pytest.raises(TaskError, match="no vector for tasks \\['null', 'offset\\(2\\)', 'offset\\(3\\)'\\]"):
        TaskVectorPrompting(layers=(0,), source="task_mean", n_bootstrap=0).run_batch(model, batch, vectors)
    with pytest.raises(TaskError, match="Too few prompts: task 'offset\\(1\\)' has 1 prompt"):
        TaskVectorPrompting(n_bootstrap=0).run_batch(model, sample(n_per_task=1))
    with pytest.raises(ShapeError, match="must pair up one to one"):
        task_vector_prompting(
            model,
            batch.inputs,
            batch.answer_pos,
            zero.inputs[:3],
            zero.answer_pos[:3],
            batch.answers,
            batch.task_ids,
            batch.task_names,
        )


def test_hooks_are_restored_after_a_fault_mid_sweep(model):
    batch = sample(n_per_task=3, seed=6)
    with failing_user_hook(model, "blocks.1.hook_resid_post", fail_on_call=4) as calls:
        before = hook_snapshot(model)
        with pytest.raises(RuntimeError, match="injected fault"):
            TaskVectorPrompting(n_bootstrap=0, rows_per_pass=len(batch)).run_batch(model, batch)
        assert hook_snapshot(model) == before and len(calls) == 4
