"""The report's lines of numbers say only what the numbers support: no NaN printed as a number."""

from __future__ import annotations

import torch

from tv_lens.analyses.decodability import TaskDecodability, task_decodability
from tv_lens.app.sections import SECTIONS_BY_NAME


def line(name: str, result) -> str:
    return SECTIONS_BY_NAME[name].line(result.headline())


def test_intervals_not_computed_are_said_to_be_absent():
    labels = torch.arange(4).repeat_interleave(10)
    reps = torch.randn(2, 40, 8, generator=torch.Generator().manual_seed(0))
    result = task_decodability(reps, labels, config=TaskDecodability(k=3, n_bootstrap=0))
    assert torch.isnan(result.td_ci).all()  # n_bootstrap=0: no intervals
    text = line("decodability", result)
    assert "nan" not in text
    assert f"TD {float(result.td[result.at(result.best_layer)]):.3f} (no interval)" in text
    with_intervals = line("decodability", task_decodability(reps, labels, config=TaskDecodability(k=3)))
    assert "(no interval)" not in with_intervals and "nan" not in with_intervals
