"""A claim over training seeds: the Student-t interval of its per-seed values and the verdict rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from tv_lens.errors import ConfigError, TvLensError
from tv_lens.stats import seed_interval, seed_verdict


def test_seed_interval_is_the_student_t_interval():
    values = [0.1, 0.3, 0.5]
    mean, low, high = seed_interval(values)
    # By hand: mean 0.3, sd 0.2, t(0.975, 2 df) = 4.302653 from tables.
    half = 4.302653 * 0.2 / math.sqrt(3)
    assert mean == pytest.approx(0.3)
    assert (low, high) == pytest.approx((0.3 - half, 0.3 + half), abs=1e-6)
    # And against scipy's one-sample t-test interval, an independent implementation.
    reference = stats.ttest_1samp([0.2, 0.9, 0.4, 0.7], 0.0).confidence_interval(0.95)
    assert seed_interval([0.2, 0.9, 0.4, 0.7])[1:] == pytest.approx((reference.low, reference.high))


@pytest.mark.parametrize("values", [[0.5], [0.1, float("nan")], []])
def test_seed_interval_needs_two_finite_values(values):
    with pytest.raises(TvLensError, match="at least 2 finite"):
        seed_interval(values)


@pytest.mark.parametrize(
    ("values", "holds", "null", "direction", "expected"),
    [
        # interval [0.25, 0.35] excludes 0 and every seed holds
        ([0.28, 0.30, 0.32], [True, True, True], 0.0, "greater", "holds"),
        # the same interval, one seed's own bootstrap interval reaches 0
        ([0.28, 0.30, 0.32], [True, False, True], 0.0, "greater", "mixed"),
        # every seed holds but the seeds disagree so much that the interval covers 0
        ([0.01, 0.5, 1.0], [True, True, True], 0.0, "greater", "mixed"),
        ([0.01, 0.5, 1.0], [True, False, True], 0.0, "greater", "does not hold"),
        # the claimed direction matters: a clear increase is no support for "less"
        ([0.28, 0.30, 0.32], [True, True, True], 0.0, "less", "mixed"),
        ([-0.28, -0.30, -0.32], [True, True, True], 0.0, "less", "holds"),
        # a null value other than 0: above 0.3, not above 0.4
        ([0.45, 0.5, 0.55], [True, True, True], 0.3, "greater", "holds"),
        ([0.45, 0.5, 0.55], [True, True, True], 0.4, "greater", "mixed"),
        # two-sided: excluded on the low side; a seed "holding" on the other side does not count
        ([-0.2, -0.21, -0.19], [True, True, True], 0.0, "differs", "holds"),
        ([-0.2, -0.21, 0.05], [True, True, True], 0.0, "differs", "does not hold"),
    ],
)
def test_the_verdict_rule(values, holds, null, direction, expected):
    assert seed_verdict(values, holds, null, direction) == expected


def test_a_level_and_a_direction_are_checked():
    assert seed_interval([0.1, 0.3, 0.5], level=0.5)[1] > seed_interval([0.1, 0.3, 0.5])[1]  # narrower
    for level in (0.0, 1.0, 95, "0.95", None, math.nan):  # a string or None was a TypeError
        with pytest.raises(ConfigError, match=r"level must lie in \(0, 1\)"):
            seed_interval([0.1, 0.3], level=level)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="direction must be 'greater', 'less' or 'differs'"):
        seed_verdict([0.1, 0.3], [True, True], 0.0, "above")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"holds needs one entry per seed \(2\), got 3"):
        seed_verdict([0.1, 0.3], [True, True, True], 0.0, "greater")
    with pytest.raises(ConfigError, match="at least 2 finite"):
        seed_interval([0.1, "0.3"])  # type: ignore[list-item]


def test_numpy_and_tensor_values_are_numbers_too():
    """A float32 of NumPy or a tensor element was refused as if fewer than two values had been given."""
    expected = seed_interval([0.25, 0.5, 1.0])
    for values in (
        [np.float32(0.25), np.float32(0.5), np.float32(1.0)],
        torch.tensor([0.25, 0.5, 1.0]),
        [1 / 4, 0.5, 1],
    ):
        assert seed_interval(values) == pytest.approx(expected)
    assert seed_verdict(torch.tensor([-0.2, -0.21, -0.19]), [True] * 3, 0.0, "differs") == "holds"
    for bad in ([0.1, True], [np.bool_(True), 0.5], [torch.ones(2), 0.5]):
        with pytest.raises(ConfigError, match=r"is a .*, not a real number; pass one float per seed"):
            seed_interval(bad)
