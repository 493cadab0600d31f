"""The whole demo, :func:`run_demo`: train or load, run the analyses, write ``summary.json`` and the report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tv_lens.app.demo.analyses import check_names, run_analyses
from tv_lens.app.demo.config import DemoConfig
from tv_lens.app.demo.training import TrainedModel, train_or_load
from tv_lens.app.pipeline import write_outputs
from tv_lens.results import Result

__all__ = ["DemoRun", "run_demo"]


@dataclass(frozen=True, eq=False)
class DemoRun:
    """What :func:`run_demo` produced: where everything is, the results, and the headline numbers."""

    out: Path
    report: Path
    results: dict[str, Result]
    numbers: dict[str, Any]
    trained: TrainedModel
    seconds: dict[str, float]


def run_demo(out: str | Path, config: DemoConfig, only: Sequence[str] | None = None, progress: bool = True) -> DemoRun:
    """Train or load, run the analyses, save the results, write ``summary.json`` and the report."""
    out = Path(out)
    check_names(only)
    start = time.perf_counter()
    trained = train_or_load(out, config, progress, record=False)  # run_analyses records it after its checks
    seconds = {"train": time.perf_counter() - start}
    results, analysis_seconds = run_analyses(out, trained, config, only, progress)
    seconds.update(analysis_seconds)
    report, numbers = write_outputs(out)
    seconds["total"] = time.perf_counter() - start
    return DemoRun(out, report, results, numbers, trained, seconds)
