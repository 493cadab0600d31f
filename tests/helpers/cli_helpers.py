"""Running the ``tv-lens`` command in this process, and one quick demo run shared by the session."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import torch

import tv_lens.app.demo as demo_module
from tv_lens.app.cli import main


def run_cli(*argv: Any) -> tuple[int, str, str]:
    """``tv-lens argv`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(arg) for arg in argv])
        except SystemExit as exit_:  # argparse: --help and bad arguments
            status = int(exit_.code or 0)
    return status, out.getvalue(), err.getvalue()


def fingerprint(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in sorted(directory.iterdir())}


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> dict[str, Any]:
    """One real `tv-lens demo --quick` run; the DemoRun it returned is kept through a spy on run_demo.

    Its directory is shared: copy it before changing anything in it.
    """
    out = tmp_path_factory.mktemp("demo")
    runs = []
    original = demo_module.run_demo

    def spy(*args, **kwargs):
        runs.append(original(*args, **kwargs))
        return runs[-1]

    threads = torch.get_num_threads()  # main() sets it (--threads): give the session its own back
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_module, "run_demo", spy)
        status, stdout, stderr = run_cli("demo", "--quick", "--out", out, "--no-progress")
    torch.set_num_threads(threads)
    assert status == 0, stderr
    (run,) = runs
    return {
        "out": out,
        "run": run,
        "stdout": stdout,
        "report": (out / "report.html").read_text(),
        "checkpoints": fingerprint(out / "checkpoints"),
    }
