"""Task-vector patching: cells against hand-written TransformerLens hooks, summaries against pandas, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from causal_helpers import POOL, editing_hook, failing_user_hook, hooked_scores, sample
from conftest import hook_snapshot, tiny_config

from tv_lens.analyses import Prompts
from tv_lens.analyses.patching import TaskVectorPatching, patch_task_vectors, rule_answers
from tv_lens.app.sections import headline_numbers, summary_lines
from tv_lens.errors import AnalysisError, LayerOutOfRangeError, ShapeError, TaskError
from tv_lens.models import build_model
from tv_lens.results.base import Result
from tv_lens.results.patching import PatchingEffects
from tv_lens.task_vectors import TaskVectors

LAYERS = (0, 1, 2)


def run(model, batch, vectors, **kwargs):
    kwargs.setdefault("n_bootstrap", 0)
    return TaskVectorPatching(**kwargs).run_batch(model, batch, vectors, pool=POOL)


@pytest.mark.parametrize("mode", ["replace", "add", "add_difference"])
def test_cells_equal_a_hand_written_hook(model, mode):
    batch = sample(n_per_task=3, n_shots=(1, 3), seed=0)
    vectors = TaskVectors.from_model(model, sample(n_per_task=3, seed=1), layers=LAYERS)
    result = run(model, batch, vectors, mode=mode, scale=1.5, rows_per_pass=7)
    rows = torch.arange(len(batch))
    own = vectors.vectors[batch.task_ids]  # [prompt, layer, d_model]: the vector of each prompt's task
    for layer, target in [(0, 1), (1, 3), (2, 0), (2, 2)]:
        vector = vectors.vectors[target, layer]

        def edit(act, vector=vector, layer=layer):
            if mode == "replace":
                act[rows, batch.answer_pos] = vector
            elif mode == "add":
                act[rows, batch.answer_pos] += 1.5 * vector
            else:
                act[rows, batch.answer_pos] += 1.5 * (vector - own[:, layer])

        hook = (f"blocks.{layer}.hook_resid_post", editing_hook(edit))
        correct, loss, _ = hooked_scores(model, batch.inputs, batch.answer_pos, batch.answers, [hook])
        torch.testing.assert_close(result.loss[layer, target], loss, atol=1e-5, rtol=0)
        assert torch.equal(result.correct[layer, target], correct)
    clean_correct, clean_loss, _ = hooked_scores(model, batch.inputs, batch.answer_pos, batch.answers)
    torch.testing.assert_close(result.clean_loss, clean_loss, atol=1e-5, rtol=0)
    assert torch.equal(result.clean_correct, clean_correct)
    assert torch.equal(result.writes, torch.full((3, 4), len(batch)))


def test_replacing_with_the_prompts_own_activation_changes_nothing(model):
    batch = sample(n_per_task=1, n_shots=3, seed=2)  # one prompt per task: its task mean is its own row
    vectors = TaskVectors.from_model(model, batch, layers=(-1, *LAYERS))
    result = run(model, batch, vectors, layers=(-1, *LAYERS))
    own = torch.arange(4)
    for i in range(4):
        torch.testing.assert_close(result.loss[i, own, own], result.clean_loss, atol=1e-5, rtol=0)
        torch.testing.assert_close(result.correct[i, own, own], result.clean_correct, atol=0, rtol=0)
    assert torch.all(result.accuracy_change.diagonal(dim1=1, dim2=2) == 0)


def test_add_difference_with_the_own_task_is_exactly_a_no_op(model):
    batch = sample(n_per_task=3, seed=3)
    vectors = TaskVectors.from_model(model, sample(n_per_task=3, seed=4), layers=LAYERS)
    result = run(model, batch, vectors, mode="add_difference")
    own = batch.task_ids
    for i in range(3):
        torch.testing.assert_close(result.loss[i, own, torch.arange(len(batch))], result.clean_loss, atol=1e-9, rtol=0)
    torch.testing.assert_close(result.correct_loss_change, torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)


def test_rule_answers_apply_each_tasks_rule_to_the_query():
    batch = sample(n_per_task=3, n_shots=(0, 3), seed=5)
    answers = rule_answers(POOL, batch, POOL.task_names)
    query = batch.inputs[torch.arange(len(batch)), batch.answer_pos - 1]  # arrow format: x then the separator
    for t, offset in enumerate((1, 2, 3)):
        assert torch.equal(answers[t, :, 0], (query + offset) % 8)
    assert torch.all(answers[3] == -1)  # Null has no rule
    own = answers[batch.task_ids.clamp(max=2), torch.arange(len(batch))]
    real = batch.task_ids < 3
    assert torch.equal(own[real], batch.answers[real])


def test_summaries_equal_an_independent_pandas_computation(model):
    batch = sample(n_per_task=4, n_shots=(1, 3), seed=6)
    vectors = TaskVectors.from_model(model, sample(n_per_task=4, seed=7), layers=LAYERS)
    result = run(model, batch, vectors, mode="add", scale=4.0)
    targets = rule_answers(POOL, batch, POOL.task_names)[..., 0]
    rows = []
    for i, layer in enumerate(result.layers):
        for t in range(4):
            for p in range(len(batch)):
                rows.append(
                    {
                        "layer": layer,
                        "source": int(batch.task_ids[p]),
                        "target": t,
                        "prompt": p,
                        "d_acc": float(result.correct[i, t, p] - result.clean_correct[p]),
                        "d_loss": float(result.loss[i, t, p] - result.clean_loss[p]),
                        "follows": float(result.follows[i, t, p]),
                        "rule": int(targets[t, p]),
                        "answer": int(batch.answers[p, 0]),
                    }
                )
    df = pd.DataFrame(rows)
    cells = df.groupby(["layer", "source", "target"])[["d_acc", "d_loss"]].mean()
    np.testing.assert_allclose(result.accuracy_change.numpy().ravel(), cells.d_acc.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(result.loss_change.numpy().ravel(), cells.d_loss.to_numpy(), atol=1e-12)
    real = df[df.source != 3]
    correct = real[real.source == real.target].groupby("layer")[["d_acc", "d_loss"]].mean()
    incorrect = real[real.source != real.target].groupby(["layer", "prompt"])[["d_acc", "d_loss"]].mean()
    incorrect = incorrect.groupby("layer").mean()
    np.testing.assert_allclose(result.correct_change.numpy(), correct.d_acc.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(result.incorrect_change.numpy(), incorrect.d_acc.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(result.correct_loss_change.numpy(), correct.d_loss.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(result.incorrect_loss_change.numpy(), incorrect.d_loss.to_numpy(), atol=1e-12)
    # overriding: prediction == the target rule's answer, over targets with a rule that differs from the answer
    predicted = _predictions(model, batch, vectors, result)
    df["predicted"] = predicted
    defined = df[(df.target != 3) & (df.rule != df.answer)]
    np.testing.assert_array_equal(defined.follows.to_numpy(), (defined.predicted == defined.rule).to_numpy())
    assert df[(df.target == 3) | (df.rule == df.answer)].follows.isna().all()
    pooled = defined[(defined.source != 3) & (defined.source != defined.target)].groupby("layer").follows.mean()
    np.testing.assert_allclose(result.override_rate.numpy(), pooled.to_numpy(), atol=1e-12)


def _predictions(model, batch, vectors, result):
    """The patched argmax of every (layer, target, prompt), by hand-written hooks, in the frame's order."""
    out = []
    rows = torch.arange(len(batch))
    for layer in result.layers:
        for t in range(4):

            def edit(act, t=t, layer=layer):
                act[rows, batch.answer_pos] += 4.0 * vectors.vectors[t, layer]

            hook = (f"blocks.{layer}.hook_resid_post", editing_hook(edit))
            _, _, logits = hooked_scores(model, batch.inputs, batch.answer_pos, batch.answers, [hook])
            out.extend(logits.argmax(-1).tolist())
    return out


def test_bootstrap_intervals_are_seeded_and_bracket_the_means(model):
    batch = sample(n_per_task=4, seed=8)
    vectors = TaskVectors.from_model(model, sample(n_per_task=4, seed=9), layers=LAYERS)
    config = TaskVectorPatching(mode="add", scale=3.0, n_bootstrap=200)
    first, second = config.run_batch(model, batch, vectors, seed=1), config.run_batch(model, batch, vectors, seed=1)
    assert first == second
    tol = 1e-12
    assert torch.all(first.accuracy_change_ci[..., 0] <= first.accuracy_change + tol)
    assert torch.all(first.accuracy_change <= first.accuracy_change_ci[..., 1] + tol)
    assert torch.all(first.loss_change <= first.loss_change_ci[..., 1] + tol)
    assert torch.all(first.incorrect_loss_change <= first.incorrect_loss_change_ci[:, 1] + tol)
    assert torch.all(first.incorrect_loss_change >= first.incorrect_loss_change_ci[:, 0] - tol)


def test_run_builds_vectors_from_a_separate_sample_and_is_deterministic(model):
    config = TaskVectorPatching(mode="add", layers=(1, 2), n_bootstrap=20)
    result = config.run(model, POOL, n_per_task=3, n_shots=2, seed=3)
    vectors = TaskVectors.from_model(model, POOL.sample(3, 2, 4), layers=(1, 2))
    assert result == config.run_batch(model, POOL.sample(3, 2, 3), vectors, pool=POOL, seed=3)
    assert result == config.run(model, POOL, n_per_task=3, n_shots=2, seed=3)


def test_left_padding_and_pass_size_do_not_change_the_numbers(model):
    batch = sample(n_per_task=3, n_shots=(0, 3), seed=10)
    vectors = TaskVectors.from_model(model, sample(n_per_task=3, seed=11), layers=LAYERS)
    reference = run(model, batch, vectors)
    lengths = batch.lengths
    width = batch.inputs.shape[1]
    left = torch.full_like(batch.inputs, batch.pad_token)
    mask = torch.zeros_like(batch.attention_mask)
    for row, length in enumerate(lengths.tolist()):
        left[row, width - length :] = batch.inputs[row, :length]
        mask[row, width - length :] = 1
    prompts = Prompts(left, batch.answer_pos + width - lengths, batch.answers, batch.task_ids, batch.task_names, mask)
    shifted = patch_task_vectors(model, prompts, vectors, config=TaskVectorPatching(n_bootstrap=0, rows_per_pass=5))
    for name in ("loss", "clean_loss", "accuracy_change", "loss_change"):
        torch.testing.assert_close(getattr(shifted, name), getattr(reference, name), atol=1e-5, rtol=0)


def test_frame_figure_and_save_load(model, tmp_path):
    batch = sample(n_per_task=3, seed=12)
    vectors = TaskVectors.from_model(model, sample(n_per_task=3, seed=13), layers=(0, 2))
    result = run(model, batch, vectors, n_bootstrap=30)
    frame = result.to_frame()
    assert len(frame) == 2 * 4 * 4 and not frame.duplicated(["layer", "source", "target"]).any()
    assert frame.correct.sum() == 2 * 4
    cell = frame[(frame.layer == 2) & (frame.source == "offset(2)") & (frame.target == "null")].iloc[0]
    assert cell.accuracy_change == float(result.accuracy_change[1, 1, 3]) and cell.writes == len(batch)
    summary = result.summary_frame()
    assert list(summary.comparison) == ["correct", "incorrect"] * 2
    assert np.isnan(summary.override_rate[0]) and summary.override_rate[1] == float(result.override_rate[0])
    figure = result.figure()
    assert [trace.visible for trace in figure.data] == [True, False]
    np.testing.assert_array_equal(np.array(figure.data[1].z, dtype=float), result.accuracy_change[1].numpy())
    assert figure.layout.sliders[0].steps[1].args[0]["visible"] == [False, True]
    assert len(result.summary_figure().data) == 3
    path = result.save(tmp_path / "patching.safetensors")
    assert PatchingEffects.load(path) == result and Result.load(path) == result


def test_bad_input_names_the_problem(model):
    batch = sample(seed=14)
    vectors = TaskVectors.from_model(model, batch, layers=(0, 1))
    with pytest.raises(AnalysisError, match="Unknown patching mode 'swap'"):
        TaskVectorPatching(mode="swap")
    with pytest.raises(TaskError, match="Task 'offset\\(5\\)' has no vector"):
        patch_task_vectors(model, batch, vectors, targets=("offset(5)",))
    with pytest.raises(LayerOutOfRangeError, match="Layer 2 is not among the layers of these task vectors"):
        run(model, batch, vectors, layers=(2,))
    no_null = vectors.select(tasks=("offset(1)", "offset(2)", "offset(3)"))
    with pytest.raises(TaskError, match=r"add_difference.*\['null'\] have none"):
        run(model, batch, no_null, mode="add_difference")
    narrow = build_model(tiny_config(d_model=16, n_heads=2))
    with pytest.raises(ShapeError, match="d_model=32 but the model has d_model=16"):
        run(narrow, batch, vectors)
    with pytest.raises(AnalysisError, match="scale must be a finite number"):
        TaskVectorPatching(mode="add", scale=float("nan"))
    with pytest.raises(
        ShapeError, match=r"answers must be integer token ids \[batch=16, n_answer\].*got torch\.int64 \(3, 1\)"
    ):
        patch_task_vectors(
            model, Prompts(batch.inputs, batch.answer_pos, batch.answers[:3], batch.task_ids, batch.task_names), vectors
        )
    with pytest.raises(TaskError, match="Could not read the queries' 2 input value"):
        rule_answers(_other_pool(), batch, POOL.task_names)


def _other_pool():
    from tv_lens.tasks import modular_pool

    return modular_pool(p=7)


def test_hooks_are_restored_after_a_fault_mid_sweep(model):
    batch = sample(n_per_task=3, seed=15)
    vectors = TaskVectors.from_model(model, batch, layers=LAYERS)
    weights = [p.detach().clone() for p in model.parameters()]
    with failing_user_hook(model, "blocks.2.hook_resid_pre", fail_on_call=3) as calls:
        before = hook_snapshot(model)
        with pytest.raises(RuntimeError, match="injected fault"):
            run(model, batch, vectors, rows_per_pass=len(batch))
        assert hook_snapshot(model) == before and len(calls) == 3
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))
    run(model, batch, vectors)  # the model still works


def test_best_layer_is_the_largest_incorrect_minus_correct_loss_gap_and_the_headline_reads_it(model):
    # correct_loss_change and incorrect_loss_change are checked against pandas above
    batch = sample(n_per_task=3, seed=14)
    vectors = TaskVectors.from_model(model, sample(n_per_task=3, seed=15), layers=LAYERS)
    result = run(model, batch, vectors, mode="add")
    gap = (result.incorrect_loss_change - result.correct_loss_change).numpy()
    assert result.best_layer == LAYERS[int(np.argmax(gap))]
    headline, i = result.headline(), int(np.argmax(gap))
    assert (headline["layer"], headline["mode"]) == (LAYERS[i], "add")
    assert headline["correct_loss_change"] == float(result.correct_loss_change[i])
    np.testing.assert_array_equal(headline["incorrect_loss_change_ci"], result.incorrect_loss_change_ci[i].numpy())
    np.testing.assert_array_equal(headline["override_rate"], result.override_rate[i].numpy())


def test_without_incorrect_vectors_no_best_layer_is_claimed(model):
    """Prompts of one task patched with that task's vector only: nothing to compare, so no layer is 'best'."""
    batch = sample(n_per_task=3, seed=14)
    vectors = TaskVectors.from_model(model, sample(n_per_task=3, seed=15), layers=LAYERS)
    own = batch.select(batch.task_ids == 0)
    result = patch_task_vectors(model, own, vectors, targets=(batch.task_names[0],), config=TaskVectorPatching())
    assert torch.isfinite(result.correct_loss_change).all() and result.incorrect_loss_change.isnan().all()
    assert not result.compared
    with pytest.raises(AnalysisError, match="no layer where both correct and incorrect vectors were patched"):
        _ = result.best_layer
    assert result.headline() == {"mode": "replace", "layer": None}
    ((_, _, line),) = summary_lines(headline_numbers({"patching": result}))
    assert line.startswith("no comparison (replace): no layer has both correct and incorrect vectors patched")
    assert run(model, batch, vectors).compared  # every task's vector in every prompt: both to compare
