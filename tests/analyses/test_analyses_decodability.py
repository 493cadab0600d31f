"""Task decodability: against scikit-learn, one forward pass, analytic cases, bootstrap, probe, bad input."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest
import torch
from analyses_helpers import N_TASKS, POOL, clusters, collect_batch, count_forward_passes, sample
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from tv_lens.analyses import TaskDecodability, task_decodability
from tv_lens.errors import AnalysisError, NonFiniteError, ShapeError, TvLensError
from tv_lens.probes import Representations
from tv_lens.results.decodability import best_layer


def sklearn_loo(points: np.ndarray, labels: np.ndarray, k: int, metric: str = "euclidean") -> np.ndarray:
    """Independent reference: refit scikit-learn's classifier without each point, predict that point."""
    predictions = np.empty_like(labels)
    with threadpool_limits(1):  # one query per call: OpenMP threads would only wait on a busy machine
        for i in range(len(points)):
            others = np.arange(len(points)) != i
            classifier = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute")
            predictions[i] = classifier.fit(points[others], labels[others]).predict(points[i : i + 1])[0]
    return predictions


def ambiguous_points(points: np.ndarray, k: int) -> np.ndarray:
    """Points whose k-th and (k+1)-th nearest other points are exactly as far (the neighbour set is a choice)."""
    d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    ordered = np.sort(d, axis=1)
    return ordered[:, k - 1] == ordered[:, k]


@pytest.mark.parametrize("n_shots", [4, (1, 6)])
def test_td_equals_sklearn_leave_one_out_on_model_representations(model, n_shots):
    batch = sample(n_per_task=12, n_shots=n_shots)
    reps = collect_batch(model, batch)
    result = task_decodability(reps, task_names=batch.task_names, config=TaskDecodability(k=5, n_bootstrap=0))
    labels = batch.task_ids.numpy()
    checked_blocks = 0
    for i, layer in enumerate(reps.layers):
        points = reps.activations[i].double().numpy()
        expected = sklearn_loo(points, labels, k=5)
        clear = ~ambiguous_points(points, 5)
        np.testing.assert_array_equal(result.predictions[i].numpy()[clear], expected[clear])
        if clear.all():
            assert abs(float(result.td[i]) - float((expected == labels).mean())) <= 1e-9
            checked_blocks += layer >= 0
    assert checked_blocks == 3  # every block's output is checked in full


@pytest.mark.parametrize("metric", ["cosine", "manhattan", "chebyshev"])
def test_other_metrics_equal_sklearn(model, metric):
    batch = sample(n_per_task=12, seed=1)
    reps = collect_batch(model, batch, layers=[1, 2])
    result = task_decodability(reps, config=TaskDecodability(k=4, metric=metric, n_bootstrap=0))
    for i in range(2):
        expected = sklearn_loo(reps.activations[i].numpy(), batch.task_ids.numpy(), 4, metric)
        np.testing.assert_array_equal(result.predictions[i].numpy(), expected)


def test_td_curve_over_all_layers_costs_one_forward_pass_per_batch(model):
    config = TaskDecodability(k=5, n_bootstrap=0)
    with count_forward_passes(model) as calls:
        result = config.run(model, POOL, n_per_task=12, n_shots=4, seed=0)
    assert result.layers == (-1, 0, 1, 2)
    assert calls == [12 * N_TASKS]  # one pass for all four layers
    with count_forward_passes(model) as calls:
        TaskDecodability(k=5, n_bootstrap=0, batch_size=25).run(model, POOL, n_per_task=12)
    assert len(calls) == math.ceil(12 * N_TASKS / 25)


def test_run_equals_the_pure_function_on_collected_rows(model):
    batch = sample(n_per_task=12, seed=2)
    run = TaskDecodability(k=5, n_bootstrap=50).run(model, POOL, n_per_task=12, n_shots=4, seed=2)
    direct = task_decodability(
        collect_batch(model, batch), seed=2, task_names=batch.task_names, config=TaskDecodability(k=5, n_bootstrap=50)
    )
    assert run == direct
    assert run.task_names == POOL.task_names
    assert run.best_layer == int(run.td[1:].argmax())  # the best block: layers are (-1, 0, 1, 2)
    # Every prompt ends with the same separator at the same position: identical embedding rows, TD at chance.
    assert float(run.td[0]) == 1 / N_TASKS


def test_activation_cache_and_plain_tensor_inputs(model):
    batch = sample(n_per_task=12, seed=3)
    right = batch.answer_pos
    _, cache = model.run_with_cache(batch.inputs)
    from_cache = Representations.from_cache(cache, right, task_ids=batch.task_ids)
    via_cache = TaskDecodability(k=5, n_bootstrap=0).compute(from_cache, task_names=batch.task_names)
    via_collect = TaskDecodability(k=5, n_bootstrap=0).run_batch(model, batch)
    assert via_cache.layers == via_collect.layers
    torch.testing.assert_close(via_cache.td, via_collect.td, atol=1e-9, rtol=0)
    one_layer = task_decodability(from_cache.at(1), batch.task_ids, config=TaskDecodability(k=5, n_bootstrap=0))
    assert one_layer.layers == (0,) and one_layer.td.shape == (1,)
    assert float(one_layer.td[0]) == float(via_cache.td[via_cache.at(1)])


def test_per_task_and_confusion_are_consistent_with_overall_td(model):
    batch = sample(n_per_task=12, n_shots=(1, 6), seed=4)
    result = task_decodability(collect_batch(model, batch), config=TaskDecodability(k=5, n_bootstrap=0))
    counts = torch.bincount(batch.task_ids, minlength=N_TASKS).double()
    confusion = result.confusion.double()
    assert torch.equal(result.confusion.sum((1, 2)), torch.full((4,), len(batch)))
    torch.testing.assert_close(confusion.sum(-1), counts.expand(4, -1))
    torch.testing.assert_close(result.per_task, confusion.diagonal(dim1=1, dim2=2) / counts, atol=1e-12, rtol=0)
    torch.testing.assert_close(result.td, (result.per_task * counts).sum(-1) / counts.sum(), atol=1e-12, rtol=0)
    for i in range(4):  # the confusion counts the (true, predicted) pairs of the predictions
        pairs = torch.zeros(N_TASKS, N_TASKS, dtype=torch.long)
        pairs.index_put_((batch.task_ids, result.predictions[i]), torch.ones(len(batch), dtype=torch.long), True)
        assert torch.equal(result.confusion[i], pairs)


def test_far_clusters_give_td_one_and_identical_points_give_chance():
    points, labels = clusters(n_tasks=4, n_per_task=15)
    far = task_decodability(points, labels, config=TaskDecodability(k=10))
    assert float(far.td[0]) == 1.0 and torch.equal(far.per_task, torch.ones(1, 4, dtype=torch.float64))
    assert far.td_ci.tolist() == [[1.0, 1.0]]
    generator = torch.Generator().manual_seed(0)
    random_labels = torch.randint(0, 4, (80,), generator=generator)
    same = task_decodability(torch.ones(80, 6, dtype=torch.float64), random_labels, config=TaskDecodability(k=10))
    # All points tie: the k neighbours are the first in the canonical order (lowest labels), so every point
    # is predicted as task 0 and TD is the share of task 0, a chance level.
    assert torch.equal(same.predictions, torch.zeros(1, 80, dtype=torch.long))
    assert float(same.td[0]) == float((random_labels == 0).double().mean())
    assert abs(float(same.td[0]) - 0.25) < 0.05


def test_same_distribution_for_every_task_gives_td_near_chance():
    points = torch.randn(200, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.arange(4).repeat(50)
    result = task_decodability(points, labels, seed=3, config=TaskDecodability(k=10))
    low, high = result.td_ci[0].tolist()
    assert low <= 0.25 <= high
    assert abs(float(result.td[0]) - 0.25) < 0.1


def test_predictions_do_not_depend_on_prompt_order_even_with_identical_points(model):
    batch = sample(n_per_task=12, n_shots=(1, 6), seed=5)
    reps = collect_batch(model, batch)
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))
    base = task_decodability(reps.activations, batch.task_ids, config=TaskDecodability(k=5, n_bootstrap=0))
    shuffled = task_decodability(
        reps.activations[:, perm], batch.task_ids[perm], config=TaskDecodability(k=5, n_bootstrap=0)
    )
    assert torch.equal(shuffled.predictions, base.predictions[:, perm])
    assert torch.equal(shuffled.td, base.td)
    duplicates = (reps.activations[0][:, None] == reps.activations[0][None]).all(-1).sum() > len(batch)
    assert bool(duplicates)  # the embedding output does have identical rows: the tie rule is exercised


def test_bootstrap_is_seeded_and_contains_the_estimate():
    points, labels = clusters(n_tasks=3, n_per_task=20, spread=1.5, seed=2)
    first = task_decodability(points, labels, seed=7, config=TaskDecodability(k=5, n_bootstrap=300))
    again = task_decodability(points, labels, seed=7, config=TaskDecodability(k=5, n_bootstrap=300))
    other = task_decodability(points, labels, seed=8, config=TaskDecodability(k=5, n_bootstrap=300))
    assert first == again
    assert not torch.equal(first.td_ci, other.td_ci)
    assert 0 < float(first.td[0]) < 1
    assert float(first.td_ci[0, 0]) <= float(first.td[0]) <= float(first.td_ci[0, 1])
    assert float(first.td_ci[0, 0]) < float(first.td_ci[0, 1])
    inside = (first.per_task_ci[..., 0] <= first.per_task) & (first.per_task <= first.per_task_ci[..., 1])
    assert bool(inside.all())
    wider = task_decodability(points, labels, seed=7, config=TaskDecodability(k=5, n_bootstrap=300, ci=0.99))
    assert float(wider.td_ci[0, 1] - wider.td_ci[0, 0]) >= float(first.td_ci[0, 1] - first.td_ci[0, 0])


def test_linear_probe_equals_sklearn_cross_val_score(model):
    batch = sample(n_per_task=10, seed=6)
    reps = collect_batch(model, batch, layers=[0, 2])
    with threadpool_limits(1):  # small problems: BLAS threads would only wait on a busy machine
        result = task_decodability(
            reps, seed=3, config=TaskDecodability(method="probe", n_folds=5, probe_c=0.5, n_bootstrap=0)
        )
    for i in range(2):
        points, labels = reps.activations[i].numpy(), batch.task_ids.numpy()
        estimator = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=3)
        with threadpool_limits(1):
            scores = cross_val_score(estimator, points, labels, cv=folds)
        sizes = [len(test) for _, test in folds.split(points, labels)]
        assert abs(float(result.td[i]) - float(np.average(scores, weights=sizes))) <= 1e-9
    assert result.method == "probe" and result.settings == {"n_folds": 5, "C": 0.5, "repeats": "keep"}


def test_probe_separates_far_clusters():
    points, labels = clusters(n_tasks=3, n_per_task=10)
    assert float(task_decodability(points, labels, config=TaskDecodability(method="probe", n_bootstrap=0)).td[0]) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"k": 15}, AnalysisError, "k+1=16 prompts per task"),
        ({"k": 0}, AnalysisError, "k must be an int >= 1"),
        ({"k": 2.5}, AnalysisError, "k must be an int >= 1"),
        ({"metric": "hamming"}, AnalysisError, "Unknown k-NN metric"),
        ({"method": "svm"}, AnalysisError, "Unknown TD method"),
        ({"method": "probe", "n_folds": 20}, AnalysisError, "20-fold probe"),
        ({"labels": torch.arange(5)}, ShapeError, "one task id per prompt"),
        ({"labels": torch.zeros(60)}, ShapeError, "integer"),
        ({"labels": torch.zeros(60, dtype=torch.long)}, AnalysisError, "at least two tasks"),
        ({"n_bootstrap": -1}, AnalysisError, "n_bootstrap"),
        ({"ci": 95}, AnalysisError, "confidence level"),
        ({"task_names": ("a", "b")}, ShapeError, "task_names"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, error, words):
    """Options are refused when the TaskDecodability is built, the data (and too few prompts) when it runs."""
    points, labels = clusters(n_tasks=4, n_per_task=15)
    options = {name: value for name, value in kwargs.items() if name in {f.name for f in fields(TaskDecodability)}}
    data = {"labels": labels, **{name: value for name, value in kwargs.items() if name not in options}}
    with pytest.raises(error, match=words.replace("+", r"\+")) as info:
        task_decodability(points, **data, config=TaskDecodability(**options))
    assert isinstance(info.value, TvLensError)


def test_a_task_with_one_prompt_and_non_finite_reps_are_rejected():
    points, labels = clusters(n_tasks=3, n_per_task=12)
    labels = labels.clone()
    labels[0] = 3  # task 3 has a single prompt
    with pytest.raises(AnalysisError, match=r"'task 3': 1"):
        task_decodability(points, labels, config=TaskDecodability(k=5))
    points, labels = clusters(n_tasks=3, n_per_task=12)
    points[4, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        task_decodability(points, labels, config=TaskDecodability(k=5))
    points[4, 2] = float("inf")
    with pytest.raises(NonFiniteError):
        task_decodability(torch.stack([points, points]), labels, config=TaskDecodability(k=5))
    points, labels = clusters(n_tasks=3, n_per_task=12)
    with pytest.raises(ShapeError, match="No labels"):
        task_decodability(points)
    with pytest.raises(ShapeError, match="float tensor"):
        task_decodability(torch.ones(36, 4, dtype=torch.long), labels)
    with pytest.raises(ShapeError, match=r"Representations\.from_cache"):
        task_decodability({"blocks.0.hook_resid_post": points}, labels)


def test_config_rejects_bad_settings_at_construction():
    with pytest.raises(AnalysisError, match="Unknown k-NN metric"):
        TaskDecodability(metric="mahalanobis")
    with pytest.raises(AnalysisError, match="k must be"):
        TaskDecodability(k=-3)


def test_frame_has_the_documented_tidy_columns():
    points, labels = clusters(n_tasks=3, n_per_task=12, spread=2.0)
    result = task_decodability(
        torch.stack([points, points]), labels, layers=(-1, 1), config=TaskDecodability(k=4, n_bootstrap=30)
    )
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "layer_label", "task", "td", "ci_low", "ci_high", "n_prompts"]
    assert len(frame) == 2 * (3 + 1)
    overall = frame[frame.task == "all"]
    assert overall.layer.tolist() == [-1, 1] and overall.layer_label.tolist() == ["embed", "L1 resid_post"]
    assert overall.td.tolist() == result.td.tolist() and overall.ci_low.tolist() == result.td_ci[:, 0].tolist()
    task1 = frame[(frame.task == "task 1") & (frame.layer == 1)].iloc[0]
    assert task1.td == float(result.per_task[1, 1]) and task1.n_prompts == 12
    confusion = result.confusion_frame()
    assert list(confusion.columns) == ["layer", "layer_label", "true_task", "predicted_task", "count", "rate"]
    assert len(confusion) == 2 * 3 * 3 and confusion["count"].sum() == 2 * 36


def test_figure_traces_hold_the_curve_its_intervals_and_chance():
    points, labels = clusters(n_tasks=3, n_per_task=12, spread=2.0)
    result = task_decodability(
        torch.stack([points * 0, points]), labels, layers=(-1, 0), config=TaskDecodability(k=4, n_bootstrap=30)
    )
    figure = result.figure()
    overall, *per_task, chance = figure.data
    assert list(overall.x) == [-1, 0] and list(overall.y) == result.td.tolist()
    assert list(overall.error_y.array) == pytest.approx((result.td_ci[:, 1] - result.td).tolist())
    assert list(overall.error_y.arrayminus) == pytest.approx((result.td - result.td_ci[:, 0]).tolist())
    assert [t.name for t in per_task] == ["task 0", "task 1", "task 2"]
    assert list(per_task[2].y) == result.per_task[:, 2].tolist()
    assert list(chance.y) == [pytest.approx(1 / 3)] * 2
    assert list(figure.layout.xaxis.ticktext) == ["embed", "L0 resid_post"]
    assert "-1 = embedding output" in figure.layout.xaxis.title.text
    assert [type(t).__name__ for t in result.traces()] == ["Scatter"] * 5
    heatmap = result.confusion_figure().data[0]
    assert result.best_layer == 0
    assert [list(row) for row in heatmap.z] == result.confusion_rates[1].tolist()
    assert list(heatmap.x) == list(result.task_names)


def test_best_layer_passes_over_the_embedding_output_and_takes_the_earliest_tie():
    td = torch.tensor([0.9, 0.5, 0.7, 0.7], dtype=torch.float64)
    assert best_layer((-1, 0, 1, 2), td) == 1
    assert best_layer((-1,), td[:1]) == -1
    assert best_layer((3, 5), torch.tensor([0.2, 0.2])) == 3


def test_regression_pool_on_a_continuous_model():
    from tv_lens.models import ModelConfig
    from tv_lens.models.continuous import build_continuous_model
    from tv_lens.tasks import sparse_linear_pool

    pool = sparse_linear_pool(d=8, n_bases=2)
    config = ModelConfig(d_vocab=1, n_layers=2, d_model=16, n_heads=2, n_ctx=32, dtype="float64")
    model = build_continuous_model(config, d_in=pool.d_in, d_out=pool.d_out)
    result = TaskDecodability(k=4, n_bootstrap=0).run(model, pool, n_per_task=8, n_shots=4, seed=0)
    batch = pool.sample(8, 4, 0)
    reps = collect_batch(model, batch)
    assert result.layers == (-1, 0, 1) and result.task_names == pool.task_names
    for i in (1, 2):
        expected = sklearn_loo(reps.activations[i].numpy(), batch.task_ids.numpy(), 4)
        np.testing.assert_array_equal(result.predictions[i].numpy(), expected)
