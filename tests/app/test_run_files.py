"""The files of a run directory: ``summary.json`` is standard JSON whatever the headline numbers hold."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tv_lens.app.run_files import SUMMARY_FILE, save_summary


def _strict_load(path: Path) -> object:
    """Parse ``path`` as standard JSON: the NaN and Infinity that Python's json writes by default are refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_summary_writes_numbers_that_are_not_finite_as_null(tmp_path):
    numbers = {
        "td_accuracy": {"r2": math.nan, "slope": 0.0, "slope_ci": [-math.inf, 0.25], "shots": (1, 2)},
        "attention": {"roles": {"separator": math.inf, "query": 0.5}, "absent": [(math.nan, "prefix")]},
        "performance": {"icl_accuracy": 1.0, "metric": "accuracy", "finite": True, "layer": None},
    }
    path = save_summary(tmp_path, numbers)
    assert path == tmp_path / SUMMARY_FILE
    assert _strict_load(path) == {
        "td_accuracy": {"r2": None, "slope": 0.0, "slope_ci": [None, 0.25], "shots": [1, 2]},
        "attention": {"roles": {"separator": None, "query": 0.5}, "absent": [[None, "prefix"]]},
        "performance": {"icl_accuracy": 1.0, "metric": "accuracy", "finite": True, "layer": None},
    }


def test_summary_of_finite_numbers_is_what_json_writes(tmp_path):
    numbers = {"decodability": {"best_td": 0.8125, "layers": [-1, 0, 1]}, "seed": 3, "tiny": 5e-324}
    assert _strict_load(save_summary(tmp_path, numbers)) == json.loads(json.dumps(numbers))


def test_summary_refuses_what_json_cannot_write(tmp_path):
    with pytest.raises(TypeError):
        save_summary(tmp_path, {"performance": {"accuracy": object()}})
    assert not (tmp_path / SUMMARY_FILE).exists()
