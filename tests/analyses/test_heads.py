"""Head importance: ablations against hand-written hooks, batching, pruning, attribution, shared heads, errors."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from causal_helpers import editing_hook, failing_user_hook, hooked_scores, left_pad, sample
from conftest import hook_snapshot
from scipy.stats import spearmanr

from tv_lens.analyses import Prompts
from tv_lens.analyses.heads import HeadAblation, head_importance, shared_heads
from tv_lens.app.sections import headline_numbers, summary_lines
from tv_lens.errors import AnalysisError, TaskError
from tv_lens.results.base import Result
from tv_lens.results.heads import HeadImportance, PruningCurve
from tv_lens.stats import chance_jaccard
from tv_lens.stats.selection import ranked_heads

N_LAYERS, N_HEADS = 3, 4


def ablated(model, batch, heads, value=None):
    """Reference: zero (or ``value[layer, head]``) written into each listed head by a hand-written hook."""
    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        chosen = [h for lay, h in heads if lay == layer]

        def edit(act, layer=layer, chosen=chosen):
            for head in chosen:
                act[:, :, head] = 0.0 if value is None else value[layer, head]

        hooks.append((f"blocks.{layer}.attn.hook_z", editing_hook(edit)))
    return hooked_scores(model, batch.inputs, batch.answer_pos, batch.answers, hooks)


@pytest.fixture(scope="module", params=["zero", "mean"])
def analysed(request, model):
    batch = sample(n_per_task=3, n_shots=(1, 3), seed=0)
    result = HeadAblation(mode=request.param, n_bootstrap=0, prune_steps=5).run_batch(model, batch)
    return model, batch, result


def test_every_head_equals_a_hand_written_ablation(analysed):
    model, batch, result = analysed
    value = None if result.mode == "zero" else result.ablation_values
    _, clean_loss, _ = hooked_scores(model, batch.inputs, batch.answer_pos, batch.answers)
    torch.testing.assert_close(result.clean_loss, clean_loss, atol=1e-5, rtol=0)
    for layer in range(N_LAYERS):
        for head in range(N_HEADS):
            correct, loss, _ = ablated(model, batch, [(layer, head)], value)
            torch.testing.assert_close(result.ablated_loss[layer, head], loss, atol=1e-5, rtol=0)
            assert torch.equal(result.ablated_correct[layer, head], correct)
            for t in range(4):
                members = batch.task_ids == t
                expected = float((loss - clean_loss)[members].mean())
                assert abs(float(result.importance[layer, head, t]) - expected) < 1e-5
    assert torch.equal(result.writes, torch.full((N_LAYERS, N_HEADS), len(batch)))


def test_mean_ablation_value_is_the_mean_over_prompts_and_positions(analysed):
    model, batch, result = analysed
    if result.mode == "zero":
        assert torch.all(result.ablation_values == 0)
        return
    _, cache = model.run_with_cache(batch.inputs)
    for layer in range(N_LAYERS):
        z = cache[f"blocks.{layer}.attn.hook_z"].double()
        rows = [z[p, : int(batch.answer_pos[p]) + 1] for p in range(len(batch))]
        torch.testing.assert_close(result.ablation_values[layer], torch.cat(rows).mean(0), atol=1e-10, rtol=0)


def test_pruning_order_is_by_importance_and_its_sets_are_nested(analysed):
    model, batch, result = analysed
    pruning = result.pruning
    order = pruning.order
    assert len(order) == 5 and len(set(order)) == 5
    scores = [float(result.overall[layer, head]) for layer, head in order]
    assert scores == sorted(scores)  # least important first, so the removal sets are nested by construction
    rest = [float(result.overall[lay, h]) for lay in range(N_LAYERS) for h in range(N_HEADS) if (lay, h) not in order]
    assert max(scores) <= min(rest)
    torch.testing.assert_close(pruning.values[0], _task_mean(result.clean_loss, batch))
    value = None if result.mode == "zero" else result.ablation_values
    for k in (1, 3, 5):
        _, loss, _ = ablated(model, batch, list(order[:k]), value)
        torch.testing.assert_close(pruning.values[k], _task_mean(loss, batch), atol=1e-5, rtol=0)
        assert abs(float(pruning.overall[k]) - float(loss[batch.task_ids != 3].mean())) < 1e-5
    assert torch.equal(pruning.writes, torch.tril(torch.full((6, 5), len(batch)), diagonal=-1))


def _task_mean(values, batch):
    return torch.stack([values[batch.task_ids == t].mean() for t in range(4)])


def test_loss_attribution_equals_a_finite_difference_of_the_ablation_direction(analysed):
    model, batch, default = analysed
    result = HeadAblation(mode=default.mode, n_bootstrap=0, prune_steps=0, attribution_method="loss").run_batch(
        model, batch
    )
    value = torch.zeros(N_LAYERS, N_HEADS, 8, dtype=torch.float64) if result.mode == "zero" else result.ablation_values
    eps = 1e-5
    for layer, head in [(0, 1), (1, 3), (2, 0)]:
        losses = []
        for sign in (1, -1):

            def edit(act, sign=sign, layer=layer, head=head):
                act[:, :, head] += sign * eps * (value[layer, head] - act[:, :, head])

            hook = (f"blocks.{layer}.attn.hook_z", editing_hook(edit))
            losses.append(hooked_scores(model, batch.inputs, batch.answer_pos, batch.answers, [hook])[1])
        derivative = (losses[0] - losses[1]) / (2 * eps)
        torch.testing.assert_close(result.attribution[layer, head], derivative, atol=1e-6, rtol=1e-5)
    real = batch.task_ids != 3
    estimate = result.attribution[..., real].mean(-1).flatten().numpy()
    exact = (result.ablated_loss - result.clean_loss)[..., real].mean(-1).flatten().numpy()
    assert abs(result.attribution_spearman - spearmanr(estimate, exact).statistic) < 1e-12
    estimate = default.attribution[..., real].mean(-1).flatten().numpy()  # the default (log-odds) screen's too
    assert abs(default.attribution_spearman - spearmanr(estimate, exact).statistic) < 1e-12


def test_batched_ablation_equals_one_head_per_pass(model):
    batch = sample(n_per_task=3, seed=1)
    batched = HeadAblation(n_bootstrap=30, prune_steps=2, rows_per_pass=1000).run_batch(model, batch)
    assert batched == HeadAblation(n_bootstrap=30, prune_steps=2, rows_per_pass=1000).run_batch(model, batch)
    single = HeadAblation(n_bootstrap=0, prune_steps=2, rows_per_pass=len(batch)).run_batch(model, batch)
    torch.testing.assert_close(batched.ablated_loss, single.ablated_loss, atol=1e-5, rtol=0)
    assert torch.equal(batched.ablated_correct, single.ablated_correct)
    torch.testing.assert_close(batched.pruning.values, single.pruning.values, atol=1e-5, rtol=0)


def test_left_padding_and_prompt_order_do_not_change_the_numbers(model):
    batch = sample(n_per_task=2, n_shots=(0, 3), seed=6)
    config = HeadAblation("mean", prune_steps=3, n_bootstrap=0)
    reference = config.run_batch(model, batch)
    tokens, mask, answer_pos = left_pad(batch)
    left = head_importance(
        model, Prompts(tokens, answer_pos, batch.answers, batch.task_ids, batch.task_names, mask), config=config
    )
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))
    shuffled = config.run_batch(model, batch.select(perm))
    for name in ("ablated_loss", "attribution"):
        torch.testing.assert_close(getattr(left, name), getattr(reference, name), atol=1e-5, rtol=0)
        torch.testing.assert_close(getattr(shuffled, name), getattr(reference, name)[..., perm], atol=1e-5, rtol=0)
    torch.testing.assert_close(left.pruning.values, reference.pruning.values, atol=1e-5, rtol=0)
    assert left.pruning.order == reference.pruning.order


def test_accuracy_metric_importance_is_the_accuracy_drop(model):
    batch = sample(n_per_task=3, seed=2)
    result = HeadAblation(metric="accuracy", n_bootstrap=20, prune_steps=0).run_batch(model, batch)
    drop = result.clean_correct - result.ablated_correct
    real = batch.task_ids != 3
    torch.testing.assert_close(result.overall, drop[..., real].mean(-1))
    assert result.pruning.order == () and result.pruning.values.shape == (1, 4)
    assert result.pruning.higher_is_better


def test_shared_heads_equal_set_and_scipy_computations():
    importance = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    jaccard = shared_heads(importance, "jaccard", top_k=4)
    flat = importance.reshape(12, 5).numpy()
    tops = [set(np.argsort(-flat[:, t], kind="stable")[:4].tolist()) for t in range(5)]
    for a in range(5):
        for b in range(5):
            assert float(jaccard[a, b]) == pytest.approx(len(tops[a] & tops[b]) / len(tops[a] | tops[b]))
    rank = shared_heads(importance, "spearman")
    np.testing.assert_allclose(rank.numpy(), spearmanr(flat).statistic, atol=1e-12)


def test_a_task_whose_importance_is_equal_at_every_head_shares_no_heads(model):
    """Two tasks no ablation harms: their "top heads" would be the first heads in block order, overlapping fully."""
    importance = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    importance[..., 0] = importance[..., 1] = 0.0  # e.g. accuracy drops of tasks no single ablation harms
    jaccard = shared_heads(importance, "jaccard", top_k=3)
    assert jaccard[:2].isnan().all() and jaccard[:, :2].isnan().all()
    flat = importance.reshape(12, 4).numpy()
    tops = [set(np.argsort(-flat[:, t], kind="stable")[:3].tolist()) for t in (2, 3)]
    assert float(jaccard[2, 3]) == pytest.approx(len(tops[0] & tops[1]) / len(tops[0] | tops[1]))
    rank = shared_heads(importance, "spearman")  # a constant vector has no rank correlation either
    assert rank[:2].isnan().all() and rank[:, :2].isnan().all()
    assert float(rank[2, 3]) == pytest.approx(spearmanr(flat[:, 2], flat[:, 3]).statistic, abs=1e-12)
    batch = sample(n_per_task=2, seed=0)
    result = HeadAblation(n_bootstrap=0, prune_steps=0, top_k=3).run_batch(model, batch)
    flat_tasks = replace(result, shared=jaccard)
    assert flat_tasks.headline()["shared_pairs"] == 6 and math.isnan(flat_tasks.headline()["shared_mean"])
    ((_, _, line),) = summary_lines(headline_numbers({"heads": flat_tasks}))
    assert "top heads not measured (a task's importance is the same at every head: no ranking of heads to" in line


def test_chance_overlap_is_that_of_two_random_sets_of_the_results_top_k_heads(analysed):
    model, _, result = analysed
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    assert result.top_k == n_heads // 4 and result.chance_overlap(0.9) == chance_jaccard(n_heads, result.top_k, 0.9)
    correlations = replace(result, shared_method="spearman")
    with pytest.raises(AnalysisError, match="shared heads are 'spearman' correlations"):
        correlations.chance_overlap()
    assert result.headline()["shared_chance"] == result.chance_overlap()[1]
    real = [t for t, name in enumerate(result.task_names) if name != result.null_task]
    by_hand = [float(result.shared[a, b]) for a in real for b in real if a != b]
    assert result.task_overlaps().tolist() == by_hand and result.headline()["shared_mean"] == pytest.approx(
        sum(by_hand) / len(by_hand)
    )
    ((_, _, line),) = summary_lines(headline_numbers({"heads": result}))
    assert f"(two random sets: 95th percentile {result.chance_overlap()[1]:.3f});" in line
    assert math.isnan(correlations.headline()["shared_chance"])
    ((_, _, line),) = summary_lines(headline_numbers({"heads": correlations}))
    assert "random sets" not in line and "mean spearman overlap" in line


def test_tasks_without_prompts_overlap_nothing_and_one_task_states_no_overlap(model):
    batch = sample(n_per_task=3, seed=0)
    null = batch.task_names.index("null")
    one = batch.select((batch.task_ids == 0) | (batch.task_ids == null))
    result = HeadAblation(n_bootstrap=0, prune_steps=0).run_batch(model, one)
    assert len(result.task_overlaps()) == 0 and math.isnan(result.headline()["shared_mean"])
    ((_, _, line),) = summary_lines(headline_numbers({"heads": result}))
    assert "overlap of tasks' top heads not measured (fewer than two tasks besides Null);" in line
    # Tasks without prompts overlap nothing; the pairs of the tasks with prompts are theirs alone.
    two = HeadAblation(n_bootstrap=0, prune_steps=0).run_batch(model, batch.select(batch.task_ids != 2))
    assert two.shared[2].isnan().all() and two.shared[:, 2].isnan().all()
    alone = shared_heads(two.importance[..., [0, 1]], "jaccard", two.top_k)
    assert two.task_overlaps().tolist() == [float(alone[0, 1]), float(alone[1, 0])]
    with pytest.raises(TaskError, match=r"no prompts in this result, so its importance is NaN for every head"):
        two.top_heads(3, task=batch.task_names[2])  # the first heads in block order, before
    assert two.top_heads(3, task=batch.task_names[1]) == list(ranked_heads(two.importance[..., 1])[:3])


def test_a_spearman_without_a_ranking_is_reported_as_not_measured(model):
    """One head has no rank correlation; the report line says so instead of printing nan (nor does a screen not run)."""
    from conftest import tiny_config

    from tv_lens.models import build_model

    batch = sample(n_per_task=2, seed=0)
    one_head = build_model(tiny_config("bridge", dtype="float64", n_layers=1, n_heads=1))
    result = HeadAblation(n_bootstrap=0, prune_steps=0).run_batch(one_head, batch)
    assert math.isnan(result.attribution_spearman) and result.headline()["attribution_method"] == "log_odds"
    ((_, _, line),) = summary_lines(headline_numbers({"heads": result}))
    assert line.endswith("attribution vs ablation Spearman not measured (one head: no ranking to compare)")
    assert "nan" not in line
    unscreened = HeadAblation(n_bootstrap=0, prune_steps=0, attribution=False).run_batch(model, batch)
    ((_, _, line),) = summary_lines(headline_numbers({"heads": unscreened}))
    assert line.endswith("attribution vs ablation Spearman not measured (the attribution screen was not run)")
    flat = replace(result, attribution_spearman=math.nan)
    numbers = {**flat.headline(), "n_heads": 12}  # twelve heads whose estimates were all equal
    ((_, _, line),) = summary_lines({"heads": numbers})
    reason = "the estimates or the loss increases have no ranking: all equal, or no prompt besides Null"
    assert line.endswith(f"attribution vs ablation Spearman not measured ({reason})")
    old_summary = {key: value for key, value in numbers.items() if key != "attribution_method"}
    ((_, _, line),) = summary_lines({"heads": old_summary})
    assert line.endswith("attribution vs ablation Spearman not measured")


def test_frame_figures_save_load_and_top_heads(analysed, tmp_path):
    _, batch, result = analysed
    frame = result.to_frame()
    assert len(frame) == N_LAYERS * N_HEADS * 5 and not frame.duplicated(["layer", "head", "task"]).any()
    row = frame[(frame.layer == 2) & (frame["head"] == 1) & (frame.task == "offset(3)")].iloc[0]
    assert row.importance == float(result.importance[2, 1, 2]) and row.writes == len(batch)
    top = result.top_heads(3)
    assert [float(result.overall[lay, h]) for lay, h in top] == sorted(result.overall.flatten().tolist())[::-1][:3]
    np.testing.assert_array_equal(np.array(result.figure().data[0].z), result.overall.numpy())
    assert len(result.shared_figure().data) == 1
    curve = result.pruning.figure().data
    np.testing.assert_allclose(curve[0].y, result.pruning.overall.numpy())
    assert len(result.pruning.to_frame()) == 6 * 5
    path = result.save(tmp_path / "heads.safetensors")
    loaded = Result.load(path)
    assert isinstance(loaded, HeadImportance) and loaded == result and isinstance(loaded.pruning, PruningCurve)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"mode": "resample"}, "Unknown ablation mode 'resample'"),
        ({"metric": "mse"}, "Unknown head metric 'mse'"),
        ({"shared": "cosine"}, "Unknown shared-heads method 'cosine'"),
        ({"top_k": 13}, "top_k must be an int in \\[1, 12\\]"),
        ({"prune_steps": 13}, "prune_steps must be an int in \\[0, 12\\]"),
    ],
)
def test_bad_input_names_the_problem(model, kwargs, words):
    """Options are refused when the config is built; counts beyond the model's heads when the function runs."""
    batch = sample(n_per_task=1, seed=3)
    with pytest.raises(AnalysisError, match=words):
        head_importance(model, batch, config=HeadAblation(**kwargs))


@pytest.mark.parametrize("fail_on_call", [2, 5])
def test_hooks_are_restored_after_a_fault_mid_analysis(model, fail_on_call):
    batch = sample(n_per_task=2, seed=4)
    weights = [p.detach().clone() for p in model.parameters()]
    with failing_user_hook(model, "blocks.1.attn.hook_z", fail_on_call=fail_on_call) as calls:
        before = hook_snapshot(model)
        with pytest.raises(RuntimeError, match="injected fault"):
            HeadAblation(n_bootstrap=0, rows_per_pass=len(batch) * 4).run_batch(model, batch)
        assert hook_snapshot(model) == before and len(calls) == fail_on_call
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))
