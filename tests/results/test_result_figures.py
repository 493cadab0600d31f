"""Figures say what their numbers support: counts in the singular where there is one, no NaN printed as a number."""

from __future__ import annotations

import torch

from tv_lens.analyses import fit_td_accuracy


def test_td_accuracy_figure_words_an_undefined_fit_and_one_shot():
    constant = fit_td_accuracy(torch.tensor([0.2, 0.5, 0.9]), torch.ones(3), shots=[1, 2, 4])
    assert constant.r2 != constant.r2  # a score that never varies: R² is 0 / 0
    figure = constant.figure()
    assert "nan" not in figure.layout.title.text
    assert "R² = undefined (accuracy does not vary)" in figure.layout.title.text
    assert figure.data[-1].name == "OLS (R² = undefined (accuracy does not vary))"
    assert [trace.text[0] for trace in figure.data[:-1]] == ["1 shot", "2 shots", "4 shots"]
    two = fit_td_accuracy(torch.tensor([0.2, 0.9]), torch.tensor([0.1, 0.8]))  # too few points for an interval
    assert "slope 1.000 (no interval), R² = 1.000, n = 2" in two.figure().layout.title.text
    fit = fit_td_accuracy(torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.1, 0.6, 0.8]))
    low, high = fit.slope_ci
    assert f"slope {fit.slope:.3f} [{low:.3f}, {high:.3f}], R² = {fit.r2:.3f}, n = 3" in fit.figure().layout.title.text
