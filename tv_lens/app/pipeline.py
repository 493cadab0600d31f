"""What the demo and the pretrained-model pipeline share: run analyses into a run directory, then report them.

:func:`run_and_save` runs the analyses one by one and saves each result to ``out/results/<name>.safetensors``;
:func:`write_outputs` gathers every saved result's headline numbers into ``out/summary.json`` and writes the
report, ``out/report.html`` (:mod:`tv_lens.app.report`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tv_lens.app.report import write_report
from tv_lens.app.run_files import RESULTS, RUN_FILE, load_results, read_run_info, result_path, save_summary
from tv_lens.app.sections import headline_numbers
from tv_lens.results import Result

__all__ = ["REPORT_FILE", "run_and_save", "write_outputs"]

REPORT_FILE = "report.html"


def run_and_save(
    out: str | Path, names: Sequence[str], run: Callable[[str], Result], seed: int, progress: bool = True
) -> tuple[dict[str, Result], dict[str, float]]:
    """``run(name)`` for each of ``names`` in order, each result saved to ``out/results/<name>.safetensors``.

    The global torch generator is seeded with ``seed`` first (LoRA dropout and other module randomness draw from it).

    Returns:
        The results by name, and the seconds each took.
    """
    results: dict[str, Result] = {}
    seconds: dict[str, float] = {}
    torch.manual_seed(seed)
    bar = tqdm(names, desc="analyses", disable=not progress, unit="analysis")
    for name in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        results[name] = run(name)
        seconds[name] = time.perf_counter() - start
        results[name].save(result_path(Path(out) / RESULTS, name))
    bar.close()
    return results, seconds


def write_outputs(out: str | Path, report: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the report (default ``out/report.html``) and ``out/summary.json`` from every result in ``out/results``.

    Returns:
        The report's path and the headline numbers.
    """
    out = Path(out)
    results = load_results(out / RESULTS)
    info = read_run_info(out / RUN_FILE)
    path = write_report(results, out / REPORT_FILE if report is None else report, info)
    numbers = headline_numbers(results, info)
    save_summary(out, numbers)
    return path, numbers
