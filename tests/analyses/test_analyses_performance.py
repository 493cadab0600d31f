"""ICL performance: scores equal a plain forward pass, grouping, intervals, frame, figure, errors."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from analyses_helpers import N_TASKS, POOL

from tv_lens.analyses import ICLPerformance, Prompts, icl_performance, score_batch
from tv_lens.analyses.performance import clean_outputs
from tv_lens.app.sections import headline_numbers, summary_lines
from tv_lens.errors import AnalysisError, NonFiniteError, ShapeError
from tv_lens.stats.bootstrap import stratified_bootstrap_ci


def reference_scores(model, batch):
    """Independent reference: the model's own forward pass over the padded batch, read at the answer positions."""
    with torch.no_grad():
        logits = model(batch.inputs)[torch.arange(len(batch)), batch.answer_pos]
    accuracy = (logits.argmax(-1) == batch.answers[:, 0]).double()
    cross_entropy = F.cross_entropy(logits.double(), batch.answers[:, 0], reduction="none")
    return accuracy, cross_entropy


def test_run_equals_a_plain_forward_pass_per_task_and_shots(model):
    result = ICLPerformance(shots=(0, 2, 4), n_bootstrap=0).run(model, POOL, n_per_task=6, seed=1)
    assert result.shots == (0, 2, 4) and result.task_names == POOL.task_names
    assert torch.equal(result.n_prompts, torch.full((N_TASKS, 3), 6))
    for j, shots in enumerate((0, 2, 4)):
        batch = POOL.sample(6, shots, 1)
        accuracy, _ = reference_scores(model, batch)
        expected = torch.stack([accuracy[batch.task_ids == t].mean() for t in range(N_TASKS)])
        assert torch.equal(result.values[:, j], expected)
        assert float(result.overall[j]) == pytest.approx(float(accuracy.mean()), abs=1e-12)


def test_clean_outputs_of_a_batch_or_of_prompts_a_user_tokenised(model):
    batch = POOL.sample(3, 2, 4)
    with torch.no_grad():
        expected = model(batch.inputs)[torch.arange(len(batch)), batch.answer_pos]
    torch.testing.assert_close(clean_outputs(model, batch, batch_size=5)[:, 0], expected, atol=1e-10, rtol=0)
    prompts = Prompts(batch.inputs, batch.answer_pos, None, batch.task_ids, batch.task_names)
    torch.testing.assert_close(clean_outputs(model, prompts, None, batch.answers)[:, 0], expected, atol=1e-10, rtol=0)
    with pytest.raises(ShapeError, match="give prompts with answers, or answers="):
        clean_outputs(model, prompts)


def test_label_noise_scores_prompts_with_wrong_demonstration_labels(model):
    scored = []

    def accuracy_seen(outputs, batch):
        scored.append(batch)
        return (outputs[:, 0].argmax(-1) == batch.answers[:, 0]).double()

    config = ICLPerformance(shots=(4,), n_bootstrap=0, label_noise=0.5, metric=accuracy_seen)
    result = config.run(model, POOL, n_per_task=6, seed=1)
    batch = POOL.sample(6, 4, 1, label_noise=0.5)
    assert bool(batch.demo_noisy.any())  # the reference prompts do carry wrong labels
    assert torch.equal(torch.cat([b.inputs for b in scored]), batch.inputs)
    accuracy, _ = reference_scores(model, batch)
    assert float(result.overall[0]) == pytest.approx(float(accuracy.mean()), abs=1e-12)
    with pytest.raises(AnalysisError, match=r"label_noise must be a probability in \[0, 1\)"):
        ICLPerformance(label_noise=1.0)


def test_cross_entropy_and_callable_metrics(model):
    batch = POOL.sample(4, (1, 4), 2)
    _, cross_entropy = reference_scores(model, batch)
    torch.testing.assert_close(score_batch(model, batch, "cross_entropy").double(), cross_entropy, atol=1e-6, rtol=0)

    def answer_logit(outputs, batch):
        return outputs[torch.arange(len(batch)), 0, batch.answers[:, 0]]

    result = ICLPerformance(metric=answer_logit, higher_is_better=True, n_bootstrap=0).run_batch(model, batch)
    assert result.metric == "answer_logit" and result.higher_is_better
    assert result.shots == tuple(sorted(set(batch.n_shots.tolist())))
    losses = ICLPerformance(metric="cross_entropy", n_bootstrap=0).run_batch(model, batch)
    assert losses.higher_is_better is False


def test_pure_function_groups_by_task_and_shots():
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    tasks = [0, 0, 1, 1, 0, 1, 1]
    shots = [1, 1, 1, 1, 3, 3, 3]
    result = icl_performance(scores, tasks, shots, ("a", "b"), config=ICLPerformance(n_bootstrap=0))
    frame = pd.DataFrame({"s": scores.tolist(), "t": tasks, "k": shots})
    expected = frame.groupby(["t", "k"]).s.mean().unstack()
    assert result.values.tolist() == expected.values.tolist()
    assert result.overall.tolist() == frame.groupby("k").s.mean().tolist()
    assert result.n_prompts.tolist() == [[2, 1], [2, 2]]
    assert torch.isnan(result.ci).all()  # no bootstrap requested
    one = icl_performance(scores[:4], tasks[:4], shots[:4], ("a", "b"), config=ICLPerformance(n_bootstrap=0))
    ((_, _, line),) = summary_lines(headline_numbers({"performance": one}))
    assert line == f"{float(one.values[:, 0].mean()):.3f} accuracy at 1 shot, Null task left out"


def test_intervals_are_seeded_and_contain_the_estimate():
    generator = torch.Generator().manual_seed(0)
    scores = (torch.rand(120, generator=generator) < 0.6).double()
    tasks, shots = torch.arange(3).repeat(40), torch.tensor([1, 4]).repeat_interleave(60)
    first = icl_performance(scores, tasks, shots, seed=5, config=ICLPerformance(n_bootstrap=200))
    assert first == icl_performance(scores, tasks, shots, seed=5, config=ICLPerformance(n_bootstrap=200))
    assert not torch.equal(
        first.ci, icl_performance(scores, tasks, shots, seed=6, config=ICLPerformance(n_bootstrap=200)).ci
    )
    assert bool(((first.ci[..., 0] <= first.values) & (first.values <= first.ci[..., 1])).all())
    assert bool(((first.overall_ci[:, 0] <= first.overall) & (first.overall <= first.overall_ci[:, 1])).all())


def test_each_shot_count_draws_with_the_next_seed_wrapped_into_the_seed_range():
    generator = torch.Generator().manual_seed(1)
    scores = (torch.rand(120, generator=generator) < 0.6).double()
    tasks, shots = torch.arange(3).repeat(40), torch.tensor([1, 4]).repeat_interleave(60)
    last = icl_performance(
        scores, tasks, shots, seed=2**64 - 1, config=ICLPerformance(n_bootstrap=100)
    )  # shot count 4 draws with seed 0
    start = icl_performance(
        scores, tasks, shots, seed=0, config=ICLPerformance(n_bootstrap=100)
    )  # shot count 1 draws with seed 0
    own = stratified_bootstrap_ci(scores[shots == 4], tasks[shots == 4], 3, 100, 0.95, seed=0)
    torch.testing.assert_close(last.ci[:, 1], own[0], atol=0, rtol=0)
    assert not torch.equal(last.ci[:, 1], start.ci[:, 1])


def test_frame_and_figure():
    result = icl_performance(
        torch.tensor([1.0, 0.0, 0.5, 1.0]),
        [0, 1, 0, 1],
        [0, 0, 2, 2],
        ("a", "b"),
        config=ICLPerformance(n_bootstrap=10),
    )
    frame = result.to_frame()
    assert list(frame.columns) == ["task", "shots", "metric", "value", "ci_low", "ci_high", "n_prompts"]
    assert frame.task.tolist() == ["all", "a", "b"] * 2 and frame.shots.tolist() == [0, 0, 0, 2, 2, 2]
    assert frame.value.tolist() == [0.5, 1.0, 0.0, 0.75, 0.5, 1.0]
    overall, task_a, _ = result.figure().data
    assert list(overall.x) == [0, 2] and list(overall.y) == [0.5, 0.75]
    assert list(task_a.y) == [1.0, 0.5] and task_a.name == "a"
    assert list(overall.error_y.array) == pytest.approx((result.overall_ci[:, 1] - result.overall).tolist())


def test_bad_input_raises_clear_errors():
    with pytest.raises(AnalysisError, match="Unknown metric"):
        ICLPerformance(metric="f1")
    with pytest.raises(AnalysisError, match="shots must be"):
        ICLPerformance(shots=(1, -2))
    with pytest.raises(ShapeError, match="one entry per prompt"):
        icl_performance(torch.ones(3), [0, 1], [1, 1, 1])
    with pytest.raises(NonFiniteError, match="NaN"):
        icl_performance(torch.tensor([1.0, float("nan")]), [0, 1], [1, 1])
    with pytest.raises(ShapeError, match="task_ids must lie"):
        icl_performance(torch.ones(2), [0, 3], [1, 1], ("a", "b"))
    with pytest.raises(ShapeError, match="integer"):
        icl_performance(torch.ones(2), [0.0, 1.0], [1, 1])


def test_regression_batches_are_scored_by_mse_by_default():
    from tv_lens.models import ModelConfig
    from tv_lens.models.continuous import build_continuous_model
    from tv_lens.tasks import sparse_linear_pool

    pool = sparse_linear_pool(d=8, n_bases=2)
    config = ModelConfig(d_vocab=1, n_layers=2, d_model=16, n_heads=2, n_ctx=32, dtype="float64")
    model = build_continuous_model(config, d_in=pool.d_in, d_out=pool.d_out)
    result = ICLPerformance(shots=(0, 3), n_bootstrap=0).run(model, pool, n_per_task=4, seed=0)
    assert result.metric == "mse" and result.higher_is_better is False
    for j, shots in enumerate((0, 3)):
        batch = pool.sample(4, shots, 0)
        with torch.no_grad():
            predictions = model(batch.inputs)[torch.arange(len(batch)), batch.answer_pos, : pool.d_out]
        errors = (predictions - batch.answers).pow(2).mean(-1)
        expected = torch.stack([errors[batch.task_ids == t].mean() for t in range(len(pool))])
        torch.testing.assert_close(result.values[:, j], expected, atol=1e-9, rtol=0)
    # "accuracy" of continuous answers: the fraction within the scorer's tolerance (0.1) of squared error
    batch = pool.sample(4, 3, 0)
    accuracy = score_batch(model, batch, "accuracy")
    with torch.no_grad():
        predictions = model(batch.inputs)[torch.arange(len(batch)), batch.answer_pos, : pool.d_out]
    assert torch.equal(accuracy, ((predictions - batch.answers).pow(2).mean(-1) <= 0.1).double())
    assert 0 < int(accuracy.sum()) < len(batch)


def test_mse_refuses_token_answers(model):
    with pytest.raises(ShapeError, match="squared error scores continuous answers"):
        score_batch(model, POOL.sample(2, 2, 0), "mse")
