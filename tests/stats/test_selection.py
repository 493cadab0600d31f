"""The best layer chosen on half the prompts, scored on the other: against numpy, on noise, in results."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from causal_helpers import POOL, sample

from tv_lens.analyses import TaskDecodability, TaskVectorPatching, TaskVectorPrompting
from tv_lens.app.sections import SECTIONS_BY_NAME
from tv_lens.errors import AnalysisError, ShapeError, TvLensError
from tv_lens.stats import held_out_best
from tv_lens.stats.bootstrap import stratified_bootstrap_ci
from tv_lens.stats.selection import ranked_heads, split_halves


def reference(values, groups, half, higher_is_better=True, eligible=None):
    """Each half's choice (numpy, the earliest on ties, NaN and ineligible options never chosen) and the scores."""
    values = values.numpy().astype(np.float64)
    chosen = []
    for h in (0, 1):
        means = values[:, half == h].mean(1) * (1 if higher_is_better else -1)
        allowed = np.ones(len(means), bool) if eligible is None else np.array(eligible)
        means = np.where(allowed & ~np.isnan(means), means, -np.inf)
        chosen.append(int(np.flatnonzero(means == means.max())[0]))
    scores = np.array([values[chosen[1 - h], p] for p, h in enumerate(half)])
    return chosen, scores


def test_halves_are_balanced_within_each_group_seeded_and_random():
    groups = torch.tensor([0] * 7 + [1] * 4 + [2] * 9)
    half = split_halves(groups, 3, seed=5)
    for g in range(3):
        in_group = half[groups == g]
        assert abs(int((in_group == 0).sum()) - int((in_group == 1).sum())) <= 1
    assert abs(int((half == 0).sum()) - int((half == 1).sum())) <= 1
    assert torch.equal(half, split_halves(groups, 3, seed=5))
    assert not torch.equal(half, split_halves(groups, 3, seed=6))


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_choices_and_scores_equal_a_numpy_reference(higher_is_better):
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(6, 30, generator=generator, dtype=torch.float64)
    values[2, :4] = float("nan")  # an option with a NaN mean never wins
    groups = torch.arange(3).repeat(10)
    eligible = [True, True, True, True, False, True]
    best = held_out_best(values, groups, 3, (10, 11, 12, 13, 14, 15), higher_is_better, eligible, 200, 0.9, 3)
    chosen, scores = reference(values, groups, best.half.numpy(), higher_is_better, eligible)
    assert best.chosen == (10 + chosen[0], 10 + chosen[1])
    np.testing.assert_allclose(best.scores.numpy(), scores, rtol=0, atol=1e-12)
    assert best.value == pytest.approx(scores.mean(), abs=1e-12)
    _, interval = stratified_bootstrap_ci(torch.from_numpy(scores), groups, 3, 200, 0.9, 3)
    assert best.ci == tuple(interval.tolist())


def test_on_noise_the_held_out_estimate_is_unbiased_and_the_same_prompt_maximum_is_not():
    same, held = [], []
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        values = torch.bernoulli(torch.full((30, 200), 0.5, dtype=torch.float64), generator=generator)
        groups = torch.arange(4).repeat(50)
        same.append(float(values.mean(1).max()))
        held.append(held_out_best(values, groups, 4, range(30), n_bootstrap=0, seed=seed).value)
    assert np.mean(same) > 0.53  # the maximum of 30 noisy means
    assert abs(np.mean(held) - 0.5) < 0.02  # 4 standard errors of a mean of 20 x 200 fair coins


def test_a_clearly_best_option_is_chosen_by_both_halves_and_scored_on_every_prompt():
    values = torch.zeros(3, 12, dtype=torch.float64)
    values[1] = torch.tensor([1.0, 1.0, 1.0, 0.0] * 3)
    best = held_out_best(values, torch.arange(2).repeat(6), 2, ("a", "b", "c"), n_bootstrap=0)
    assert best.chosen == ("b", "b") and best.value == 0.75 and all(np.isnan(best.ci))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"options": (0, 1)}, ShapeError, "options must name every option"),
        ({"groups": torch.zeros(9, dtype=torch.long)}, ShapeError, "one integer group per prompt"),
        ({"groups": torch.zeros(10)}, ShapeError, "one integer group per prompt"),
        ({"groups": torch.full((10,), 2)}, ShapeError, r"groups must lie in 0 \.\. n_groups - 1 = 1"),
        ({"n_groups": 0}, ShapeError, "n_groups must be an int >= 1"),
        ({"values": torch.rand(10)}, ShapeError, r"real \[option, prompt\] tensor"),
        ({"values": torch.rand(3, 10, device="meta")}, ShapeError, "values is a tensor on the meta device"),
        ({"values": torch.rand(3, 10).to_sparse()}, ShapeError, "values is a torch.sparse_coo tensor"),
        ({"groups": torch.zeros(10, dtype=torch.long, device="meta")}, ShapeError, "groups is a tensor on the meta"),
        ({"eligible": [True, True]}, AnalysisError, "one bool per option"),
        ({"eligible": [False] * 3}, AnalysisError, "marks no option"),
        ({"higher_is_better": "yes"}, AnalysisError, "higher_is_better must be a bool"),
        ({"values": torch.rand(3, 1), "groups": torch.zeros(1, dtype=torch.long)}, AnalysisError, "two prompts"),
        ({"seed": -1}, TvLensError, "seed must be an int"),
    ],
)
def test_bad_input_names_the_problem(change, error, match):
    arguments = {"values": torch.rand(3, 10), "groups": torch.arange(2).repeat(5), "n_groups": 2, "options": (0, 1, 2)}
    with pytest.raises(error, match=match):
        held_out_best(**(arguments | change))


def test_with_one_layer_the_held_out_numbers_are_the_results_own(model):
    batch = sample(n_per_task=6, n_shots=3, seed=1)
    td = TaskDecodability(layers=(1,), k=3, n_bootstrap=100).run_batch(model, batch)
    assert td.held_out_best().chosen == (1, 1)
    assert td.held_out_best().value == pytest.approx(float(td.td[0]), abs=1e-12)
    assert td.held_out_best().ci == tuple(td.td_ci[0].tolist())
    tvp = TaskVectorPrompting(layers=(0,), n_bootstrap=100).run_batch(model, batch)
    assert tvp.held_out_best().value == pytest.approx(float(tvp.accuracy[0]), abs=1e-12)
    assert tvp.held_out_best().ci == tuple(tvp.accuracy_ci[0].tolist())


def test_results_choose_on_their_own_prompts_and_the_report_says_so(model):
    batch = sample(n_per_task=8, n_shots=3, seed=2)
    td = TaskDecodability(layers=(-1, 0, 1, 2), k=3, n_bootstrap=50).run_batch(model, batch, seed=4)
    correct = (td.predictions == td.labels).double()
    chosen, scores = reference(correct, td.labels, td.held_out_best().half.numpy(), eligible=[False, True, True, True])
    assert td.held_out_best().chosen == tuple(td.layers[c] for c in chosen)
    headline = td.headline()
    assert headline["held_out_td"] == pytest.approx(scores.mean(), abs=1e-12)
    assert headline["held_out_layers"] == list(td.held_out_best().chosen)
    assert f"held out (layer chosen on one half of the prompts, scored on the other): {scores.mean():.3f}" in (
        SECTIONS_BY_NAME["decodability"].line(headline)
    )
    tvp = TaskVectorPrompting(layers=(-1, 0, 1, 2), n_bootstrap=50).run_batch(model, batch, seed=4)
    real = tvp.task_ids != tvp.task_names.index("null")
    half = tvp.held_out_best().half.numpy()
    chosen, scores = reference(tvp.tvp_correct[:, real], tvp.task_ids[real], half)
    assert tvp.headline()["held_out_layers"] == [tvp.layers[c] for c in chosen]
    assert tvp.headline()["held_out_accuracy"] == pytest.approx(scores.mean(), abs=1e-12)
    assert "held out" in SECTIONS_BY_NAME["prompting"].line(tvp.headline())


def test_patching_reads_each_prompts_loss_gap_at_the_layer_the_other_half_chose(model):
    effects = TaskVectorPatching(layers=(0, 1, 2), n_bootstrap=50).run(model, POOL, n_per_task=6, n_shots=3, seed=3)
    kept, gaps = [], []
    for p, source in enumerate(effects.task_ids.tolist()):
        name = effects.source_names[source]
        if name == "null":
            continue
        own = effects.target_names.index(name)
        delta = (effects.loss[:, :, p] - effects.clean_loss[p]).numpy()
        gaps.append(np.delete(delta, own, axis=1).mean(1) - delta[:, own])
        kept.append(p)
    gaps = np.stack(gaps, axis=1)  # [layer, kept prompt]
    np.testing.assert_allclose(
        gaps.mean(1), (effects.incorrect_loss_change - effects.correct_loss_change).numpy(), rtol=0, atol=1e-9
    )
    held_out = effects.held_out_best()
    chosen, scores = reference(torch.from_numpy(gaps), effects.task_ids[kept], held_out.half.numpy())
    assert held_out.chosen == tuple(effects.layers[c] for c in chosen)
    np.testing.assert_allclose(held_out.scores.numpy(), scores, rtol=0, atol=1e-9)
    headline = effects.headline()
    assert headline["held_out_loss_gap"] == pytest.approx(scores.mean(), abs=1e-9)
    assert f"loss gap {scores.mean():.3f}" in SECTIONS_BY_NAME["patching"].line(headline)


def test_with_fewer_than_two_prompts_the_headline_and_report_leave_the_held_out_numbers_out(model):
    # each prompt's own vector: with two prompts per task, other_prompt refuses a task whose two queries are one
    config = TaskVectorPrompting(layers=(0, 1), source="same_prompt", n_bootstrap=10)
    tvp = config.run_batch(model, sample(n_per_task=2, n_shots=3, seed=1))
    null = tvp.task_names.index("null")
    one_real = replace(tvp, task_ids=torch.where(torch.arange(len(tvp.task_ids)) == 0, tvp.task_ids, null))
    assert one_real.task_ids[0] != null and "held_out_accuracy" in tvp.headline()
    assert not any(key.startswith("held_out") for key in one_real.headline())
    assert "held out" not in SECTIONS_BY_NAME["prompting"].line(one_real.headline())
    with pytest.raises(AnalysisError, match="at least two prompts"):
        one_real.held_out_best()


def test_where_every_eligible_mean_is_nan_the_earliest_eligible_option_is_chosen():
    values = torch.full((3, 4), float("nan"), dtype=torch.float64)
    values[0] = 1.0  # the only defined option is not eligible
    best = held_out_best(values, torch.zeros(4, dtype=torch.long), 1, (5, 6, 7), eligible=[False, True, True])
    assert best.chosen == (6, 6)


def test_ranked_heads_order_by_score_then_block_then_head_with_nan_last():
    scores = torch.tensor([[0.5, float("nan"), 0.9], [0.9, 0.1, 0.5]])
    assert ranked_heads(scores) == ((0, 2), (1, 0), (0, 0), (1, 2), (1, 1), (0, 1))
    assert ranked_heads(scores, layers=(3, 7), k=2) == ((3, 2), (7, 0))
    for k in (0, 7, 1.5, True):
        with pytest.raises(AnalysisError, match=r"k must be an int in \[1, 6\]"):
            ranked_heads(scores, k=k)


def test_ranked_heads_refuses_layers_that_do_not_name_each_row_and_scores_not_per_head():
    scores = torch.tensor([[0.5, 0.2], [0.9, 0.1]])
    for layers in ((3,), (3, 5, 7)):  # one too few (would rank heads of a block never measured), one too many
        with pytest.raises(ShapeError, match=r"layers must name the block of each of the 2 rows of scores"):
            ranked_heads(scores, layers=layers)
    with pytest.raises(ShapeError, match=r"one score per head \[layer, head\], got shape \(4,\)"):
        ranked_heads(scores.flatten())
