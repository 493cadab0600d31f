"""TD → accuracy: OLS against scipy, points consistent with the TD and performance analyses, figure, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from analyses_helpers import POOL
from scipy import stats

from tv_lens.analyses import Geometry, ICLPerformance, TaskDecodability, TdAccuracy, fit_td_accuracy, ols
from tv_lens.errors import AnalysisError, NonFiniteError, ShapeError, TaskError
from tv_lens.tasks import NULL_TASK


def test_ols_equals_scipy_linregress():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(12, generator=generator, dtype=torch.float64)
    y = 0.3 + 0.8 * x + 0.1 * torch.randn(12, generator=generator, dtype=torch.float64)
    fit = ols(x, y, ci=0.9)
    reference = stats.linregress(x.numpy(), y.numpy())
    q = stats.t.ppf(0.95, 10)
    assert fit["slope"] == pytest.approx(reference.slope, abs=1e-12)
    assert fit["intercept"] == pytest.approx(reference.intercept, abs=1e-12)
    assert fit["r2"] == pytest.approx(reference.rvalue**2, abs=1e-12)
    low, high = fit["slope_ci"]
    assert (low, high) == pytest.approx(
        (reference.slope - q * reference.stderr, reference.slope + q * reference.stderr)
    )
    ilow, ihigh = fit["intercept_ci"]
    assert (ihigh - ilow) / 2 == pytest.approx(q * reference.intercept_stderr, abs=1e-12)


def test_a_perfect_line_and_degenerate_cases():
    x = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    fit = fit_td_accuracy(x, x - 0.1)
    assert fit.slope == pytest.approx(1.0) and fit.intercept == pytest.approx(-0.1) and fit.r2 == pytest.approx(1.0)
    assert fit.slope_ci == pytest.approx((1.0, 1.0))
    two = fit_td_accuracy(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5]))
    assert math.isnan(two.slope_ci[0]) and two.slope == 0.5
    flat = fit_td_accuracy(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.3, 0.3, 0.3]))
    assert math.isnan(flat.r2) and flat.slope == 0.0


def test_points_are_the_per_task_td_and_accuracy_of_the_same_prompts(model):
    decodability = TaskDecodability(k=4, n_bootstrap=0)
    config = TdAccuracy(shots=(1, 3), decodability=decodability)
    fit = config.run(model, POOL, n_per_task=6, seed=2)
    tasks = [t for t, name in enumerate(POOL.task_names) if name != NULL_TASK]
    assert fit.task_ids.tolist() == tasks * 2 and fit.shots.tolist() == [1] * 4 + [3] * 4
    assert fit.td_by_layer.shape == (2, 4) and fit.layers == (-1, 0, 1, 2) and fit.shot_grid == (1, 3)
    column = fit.layers.index(fit.layer)
    assert column == 1 + int(fit.td_by_layer[:, 1:].mean(0).argmax())  # the best block (the embedding is passed over)
    performance = ICLPerformance(shots=(1, 3), n_bootstrap=0).run(model, POOL, n_per_task=6, seed=2)
    for j, shots in enumerate((1, 3)):
        td = decodability.run(model, POOL, n_per_task=6, n_shots=shots, seed=2)
        assert torch.equal(fit.td[4 * j : 4 * j + 4], td.per_task[column, tasks])
        assert torch.equal(fit.td_by_layer[j], td.per_task[:, tasks].mean(-1))
        assert torch.equal(fit.score[4 * j : 4 * j + 4], performance.values[tasks, j])
    slope, intercept = np.polyfit(fit.td.numpy(), fit.score.numpy(), 1)
    assert (fit.slope, fit.intercept) == pytest.approx((slope, intercept), abs=1e-9)


def test_a_chosen_layer_and_the_null_task_as_a_point(model):
    config = TdAccuracy(shots=(1, 2), layer=1, include_null=True, decodability=TaskDecodability(k=3, n_bootstrap=0))
    fit = config.run(model, POOL, n_per_task=5, seed=0)
    assert fit.layer == 1 and len(fit.td) == 2 * len(POOL)
    assert POOL.task_names.index(NULL_TASK) in fit.task_ids.tolist()


def test_frame_and_figure():
    fit = fit_td_accuracy(
        torch.tensor([0.2, 0.6, 0.4, 0.9], dtype=torch.float64),
        torch.tensor([0.1, 0.5, 0.2, 0.9], dtype=torch.float64),
        task_ids=[0, 0, 1, 1],
        shots=[1, 4, 1, 4],
        task_names=("a", "b"),
        layer=2,
    )
    frame = fit.to_frame()
    assert list(frame.columns) == ["task", "shots", "td", "score", "fitted", "residual", "layer"]
    assert frame.task.tolist() == ["a", "a", "b", "b"] and frame.layer.tolist() == [2] * 4
    assert frame.residual.tolist() == pytest.approx((fit.score - fit.fitted).tolist())
    *points, line = fit.figure().data
    assert [p.name for p in points] == ["a", "b"] and list(points[1].x) == [0.4, 0.9]
    assert list(points[0].text) == ["1 shot", "4 shots"]
    assert list(line.x) == [0.2, 0.9]
    assert list(line.y) == pytest.approx([fit.intercept + fit.slope * 0.2, fit.intercept + fit.slope * 0.9])
    assert "L2 resid_post" in fit.figure().layout.title.text


def test_bad_input_raises_clear_errors():
    with pytest.raises(AnalysisError, match="same at every point"):
        ols(torch.ones(4), torch.arange(4.0))
    with pytest.raises(NonFiniteError, match="finite"):
        ols(torch.tensor([0.0, float("nan"), 1.0]), torch.ones(3))
    with pytest.raises(ShapeError, match="one length"):
        ols(torch.ones(3), torch.ones(4))
    with pytest.raises(ShapeError, match="task_ids"):
        fit_td_accuracy(torch.tensor([0.0, 1.0]), torch.ones(2), task_ids=[0, 5], task_names=("a",))
    with pytest.raises(AnalysisError, match="shots must be"):
        TdAccuracy(shots=())


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"shots": 4}, AnalysisError, r"got 4; for one shot count pass a one-element tuple, e\.g\. shots=\(4,\)"),
        ({"decodability": Geometry()}, AnalysisError, r"decodability must be TaskDecodability settings"),
        ({"metric": "r2"}, AnalysisError, r"Unknown metric 'r2'"),
        ({"layer": "3"}, AnalysisError, r"layer must be a block index"),
        ({"include_null": "no"}, TaskError, r"include_null must be True or False"),
        ({"ci": 95}, AnalysisError, r"ci is a confidence level in \(0, 1\)"),
        (
            {"layer": 2, "decodability": TaskDecodability(layers=(0, 1))},
            AnalysisError,
            r"layer=2 was not collected; the decodability config reads layers \(0, 1\)",
        ),
    ],
)
def test_options_are_checked_when_the_config_is_built(options, error, words):
    # shots=4 was a TypeError, a Geometry an AttributeError after every pass, the others surfaced after the passes
    # (or, for include_null="no", read as True)
    with pytest.raises(error, match=words):
        TdAccuracy(**options)


def test_python_lists_keep_float64_precision():
    x, y = [0.1, 0.2, 0.35, 0.4, 1 / 3], [0.3, 0.1, 0.77, 0.5, 2 / 3]
    as_tensors = ols(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
    assert ols(x, y) == as_tensors  # exact: a list is not rounded through float32 on the way
    assert ols(tuple(x), tuple(y)) == as_tensors
