"""Task-vector prompting: injections against hand-written hooks on zero-shot prompts, baselines, errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from causal_helpers import POOL, editing_hook, failing_user_hook, hooked_scores, left_pad, sample
from conftest import hook_snapshot
from result_files import save_without_field

from tv_lens.analyses import Prompts
from tv_lens.analyses.prompting import TaskVectorPrompting, task_vector_prompting
from tv_lens.errors import AnalysisError, LayerOutOfRangeError, ShapeError, TaskError
from tv_lens.interventions.prompting import other_prompts
from tv_lens.models import ModelConfig, build_continuous_model
from tv_lens.results.base import Result
from tv_lens.results.prompting import PromptingAccuracy
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import regression_pool
from tv_lens.training import RegressionObjective, tvp_accuracy

REGRESSION = regression_pool(("linear",), d=4, null=True)  # y = w·x with a fresh w per prompt, plus Null


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
    query = [tuple(zero.inputs[p, : int(zero.answer_pos[p]) + 1].tolist()) for p in range(len(batch))]
    partner = []  # Hendel's dummy query: the next prompt of the same task, cyclically, of another query
    for p, task in enumerate(batch.task_ids.tolist()):
        members = [q for q in range(len(batch)) if int(batch.task_ids[q]) == task]
        later = [members[(members.index(p) + step) % len(members)] for step in range(1, len(members))]
        partner.append(next(q for q in later if query[q] != query[p]))
    next_of_task = other_prompts(batch.task_ids, batch.task_names).tolist()  # whatever its query
    assert partner != next_of_task  # this batch has a prompt whose next prompt of its task has its query
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


def test_plain_passes_over_the_icl_prompts_take_batch_size_prompts_at_most(model):
    batch = sample(n_per_task=2, n_shots=4, seed=2)  # 8 ICL prompts, longer than their zero-shot twins
    zero_shot_width = int(batch.zero_shot().lengths.max())
    with failing_user_hook(model, "blocks.0.hook_resid_pre", fail_on_call=0, record=lambda act: act.shape) as shapes:
        result = TaskVectorPrompting(source="same_prompt", n_bootstrap=0, batch_size=3).run_batch(model, batch)
    icl_passes = [rows for rows, width, _ in shapes if width > zero_shot_width]
    assert icl_passes and max(icl_passes) <= 3  # the clean ICL run included, not all 8 prompts at once
    icl_correct, icl_loss, _ = hooked_scores(model, batch.inputs, batch.answer_pos, batch.answers)
    torch.testing.assert_close(result.icl_loss, icl_loss, atol=1e-5, rtol=0)
    assert torch.equal(result.icl_correct, icl_correct)


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
    labels = (batch.answers, batch.task_ids, batch.task_names)
    left = task_vector_prompting(
        model,
        Prompts(icl_tokens, icl_pos, *labels, icl_mask),
        Prompts(zs_tokens, zs_pos, *labels, zs_mask),
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
    one_query = batch.select(torch.tensor([0, 0, 0, 4, 5, 6, 7, 8, 9]))  # offset(1)'s prompt 0 three times
    with pytest.raises(TaskError, match=r"Every prompt of task 'offset\(1\)' has the query of prompt 0.*task_mean"):
        TaskVectorPrompting(n_bootstrap=0).run_batch(model, one_query)  # each took the vector of its own query
    with pytest.raises(ShapeError, match=r"ICL prompts \(16\), zero-shot prompts \(3\).*must pair up one to one"):
        task_vector_prompting(model, batch, zero.select(slice(3)))
    text_ids = Prompts(batch.inputs, batch.answer_pos, batch.answers, "0", batch.task_names, batch.attention_mask)
    with pytest.raises(ShapeError, match=r"task_ids must be one integer task id per prompt \(16,\).*got '0'"):
        task_vector_prompting(model, text_ids, zero)  # was a TypeError from torch
    flags = Prompts(batch.inputs, batch.answer_pos, batch.answers > 0, batch.task_ids, batch.task_names)
    with pytest.raises(ShapeError, match=r"answers must be integer token ids .* got torch\.bool"):
        task_vector_prompting(model, flags, zero)  # was read as tokens 0 and 1, and scored
    with pytest.raises(TaskError, match=r"zero_shot must be a batch of prompts or tv_lens\.Prompts, got a Tensor"):
        task_vector_prompting(model, batch, zero.inputs)


def test_a_generation_scoring_without_a_usable_tokenizer_is_refused_before_the_first_pass(model):
    batch = sample(n_per_task=3, seed=0)
    config = TaskVectorPrompting(scoring="exact_match", n_bootstrap=0)
    with failing_user_hook(model, "blocks.0.hook_resid_pre", fail_on_call=0) as calls:  # counts passes, never fails
        with pytest.raises(AnalysisError, match="compares generated text with the answers, which needs a tokenizer"):
            config.run_batch(model, batch)
        with pytest.raises(TaskError, match="tokenizer must decode token ids"):
            task_vector_prompting(model, batch, batch.zero_shot(), tokenizer="gpt2", config=config)
    assert calls == []


def test_hooks_are_restored_after_a_fault_mid_sweep(model):
    batch = sample(n_per_task=3, seed=6)
    with failing_user_hook(model, "blocks.1.hook_resid_post", fail_on_call=4) as calls:
        before = hook_snapshot(model)
        with pytest.raises(RuntimeError, match="injected fault"):
            TaskVectorPrompting(n_bootstrap=0, rows_per_pass=len(batch)).run_batch(model, batch)
        assert hook_snapshot(model) == before and len(calls) == 4


@pytest.fixture(scope="module")
def continuous_model():
    config = ModelConfig(d_vocab=1, n_layers=2, d_model=16, n_heads=2, n_ctx=16, dtype="float64", seed=3)
    return build_continuous_model(config, d_in=REGRESSION.d_in, d_out=REGRESSION.d_out)


def hand_partners(task_ids):
    """The next prompt of the same task, wrapping around, written out by hand."""
    members = {t: [q for q in range(len(task_ids)) if int(task_ids[q]) == t] for t in set(task_ids.tolist())}
    return [members[int(t)][(members[int(t)].index(p) + 1) % len(members[int(t)])] for p, t in enumerate(task_ids)]


@pytest.mark.parametrize(("source", "mode"), [("other_prompt", "replace"), ("same_prompt", "add")])
def test_regression_prompts_equal_hand_hooks_scored_by_squared_error(continuous_model, source, mode):
    model, batch = continuous_model, REGRESSION.sample(4, (2, 5), seed=8)
    zero, rows, tolerance = batch.zero_shot(), torch.arange(len(batch)), 1.0
    config = TaskVectorPrompting(source=source, mode=mode, tolerance=tolerance, n_bootstrap=0)
    result = config.run_batch(model, batch)
    read = {}

    def keeper(layer):
        def keep(activation, hook):
            read[layer] = activation[rows, batch.answer_pos].clone()

        return keep

    def errors(inputs, answer_pos, hooks=()):  # squared error of the prediction of y at each prompt's answer position
        with torch.no_grad():
            outputs = model.run_with_hooks(inputs, fwd_hooks=list(hooks))
        return (outputs[rows, answer_pos, 0] - batch.answers[:, 0]).pow(2)

    icl = errors(
        batch.inputs, batch.answer_pos, [(f"blocks.{layer}.hook_resid_post", keeper(layer)) for layer in (0, 1)]
    )
    partner = hand_partners(batch.task_ids) if source == "other_prompt" else list(range(len(batch)))
    assert result.vector_source.tolist() == partner
    torch.testing.assert_close(result.icl_loss, icl, atol=1e-10, rtol=0)
    torch.testing.assert_close(result.zero_shot_loss, errors(zero.inputs, zero.answer_pos), atol=1e-10, rtol=0)
    assert torch.equal(result.icl_correct, (icl <= tolerance).double())
    real = batch.task_ids != batch.task_names.index("null")
    for i, layer in enumerate(result.layers):

        def write(activation, hook, vectors=read[layer][partner]):
            activation = activation.clone()
            if mode == "replace":
                activation[rows, zero.answer_pos] = vectors
            else:
                activation[rows, zero.answer_pos] += vectors
            return activation

        tvp = errors(zero.inputs, zero.answer_pos, [(f"blocks.{layer}.hook_resid_post", write)])
        torch.testing.assert_close(result.tvp_loss[i], tvp, atol=1e-10, rtol=0)
        assert torch.equal(result.tvp_correct[i], (tvp <= tolerance).double())
        assert float(result.accuracy[i]) == pytest.approx(float((tvp[real] <= tolerance).double().mean()))
        # the TVP-loss's evaluation reads and writes through the same core
        objective = RegressionObjective(tolerance=tolerance)
        trained = tvp_accuracy(model, batch, layer, mode=mode, objective=objective, source=source)
        assert torch.equal(trained.double(), result.tvp_correct[i])
    scored = torch.cat([result.tvp_correct.flatten(), result.icl_correct, result.zero_shot_correct])
    assert 0 < float(scored.mean()) < 1  # the tolerance splits the prompts: correctness is not trivially constant


def test_regression_pools_run_and_refuse_what_needs_tokens(continuous_model):
    config = TaskVectorPrompting(n_bootstrap=0)
    batch = REGRESSION.sample(3, 4, seed=9)
    assert config.run(continuous_model, REGRESSION, n_per_task=3, n_shots=4, seed=9) == config.run_batch(
        continuous_model, batch, seed=9
    )
    with pytest.raises(AnalysisError, match="continuous \\(regression\\) answers are vectors, not text"):
        TaskVectorPrompting(scoring="exact_match", n_bootstrap=0).run_batch(continuous_model, batch)
    with pytest.raises(AnalysisError, match="tolerance must be a finite number > 0"):
        TaskVectorPrompting(tolerance=0.0)


def test_results_record_the_tolerance_of_continuous_answers(model, continuous_model, tmp_path):
    result = TaskVectorPrompting(n_bootstrap=0, tolerance=0.3).run_batch(continuous_model, REGRESSION.sample(3, 4, 9))
    assert result.tolerance == 0.3
    assert torch.equal(result.tvp_correct, (result.tvp_loss <= 0.3).to(result.tvp_correct.dtype))
    assert torch.equal(result.icl_correct, (result.icl_loss <= 0.3).to(result.icl_correct.dtype))
    assert 0 < float(result.tvp_correct.mean()) < 1  # the tolerance splits the prompts
    assert PromptingAccuracy.load(result.save(tmp_path / "new.safetensors")) == result
    old = replace(result, tolerance=None)  # a file saved before the field existed loads with None
    assert PromptingAccuracy.load(save_without_field(old, "tolerance", tmp_path / "old.safetensors")) == old
    tokens = TaskVectorPrompting(n_bootstrap=0, layers=(0,)).run_batch(model, sample(n_per_task=2, n_shots=2, seed=0))
    assert tokens.tolerance is None


def test_task_means_of_regression_prompts_come_from_a_separate_sample(continuous_model):
    """source="task_mean" on a regression pool: each task's mean read by hand on prompts sampled with seed + 1."""
    config = TaskVectorPrompting(source="task_mean", n_bootstrap=0, layers=(0, 1))
    result = config.run(continuous_model, REGRESSION, n_per_task=4, n_shots=5, seed=9)
    held_out = REGRESSION.sample(4, 5, seed=10)
    n_tasks = len(REGRESSION.task_names)
    rows = {layer: icl_rows(continuous_model, held_out, layer) for layer in (0, 1)}
    by_hand = torch.stack(
        [torch.stack([rows[layer][held_out.task_ids == t].mean(0) for layer in (0, 1)]) for t in range(n_tasks)]
    )  # [task, layer, d_model]
    vectors = TaskVectors.from_model(continuous_model, held_out, layers=(0, 1))
    assert vectors.task_names == REGRESSION.task_names
    torch.testing.assert_close(vectors.vectors, by_hand, atol=1e-10, rtol=0)
    given = config.run_batch(continuous_model, REGRESSION.sample(4, 5, seed=9), vectors=vectors, seed=9)
    assert result == given
    assert not torch.equal(result.tvp_loss, result.zero_shot_loss.expand_as(result.tvp_loss))  # the vectors acted
