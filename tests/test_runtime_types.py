"""Type annotations hold at run time: every analysis on fixed models, with jaxtyping and beartype checking each call.

The equivalence suite (tests/equivalence: every analysis, intervention and probe on fixed models and seeds, both
backends) runs again in a subprocess with ``--jaxtyping-packages=tv_lens,beartype.beartype``, so every annotated
argument and return value of tv_lens, tensor shapes and dtypes included (dimension names agree across the arguments of
one call), is checked on the way. Only valid inputs run there: on a wrong input the run-time checker would raise its own
error before tv_lens's clear ``TvLensError``, which is what the bad-input catalogue (tests/test_errors.py) tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECKED = "TV_LENS_TYPE_CHECKED"


@pytest.mark.once_per_ci
def test_the_equivalence_suite_passes_with_run_time_type_checks(tmp_path):
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["--jaxtyping-packages=tv_lens,beartype.beartype", str(ROOT / "tests" / "equivalence")]
    command += [f"{Path(__file__)}::test_the_checks_are_on"]
    env = {**os.environ, CHECKED: "1"}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout


@pytest.mark.once_per_ci
def test_the_analyses_outside_the_frozen_suite_pass_with_run_time_type_checks(tmp_path):
    """Attention knockout and the causal analyses of regression prompts, which the frozen numbers do not cover.

    Their bad-input tests are left out: the checks refuse such input before tv_lens's own errors can name it.
    """
    files = ("analyses/test_knockout.py", "interventions/test_attention_knockout.py")
    files += ("analyses/test_regression_causal.py",)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not bad"]
    command += ["--jaxtyping-packages=tv_lens,beartype.beartype", *(str(ROOT / "tests" / name) for name in files)]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout


@pytest.mark.skipif(not os.environ.get(CHECKED), reason="runs inside the type-checked run above")
def test_the_checks_are_on():
    from jaxtyping import TypeCheckError

    from tv_lens.metrics import mse

    with pytest.raises(TypeCheckError):  # "batch" is 2 in one argument and 3 in the other
        mse(torch.zeros(2, 4), torch.zeros(3, 4))
