"""The notebooks in demos/ run top to bottom, are stored without outputs, and check a real result."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "demos").glob("*.ipynb"))
EXPECTED = {"quickstart", "bring_your_own_model", "emergence", "tvp_loss", "pretrained"}


def code_cells(notebook: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def test_every_demo_notebook_is_here():
    assert {path.stem for path in NOTEBOOKS} >= EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_clean_and_colab_ready(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: store it without outputs"
    install = cells[0]
    assert '"google.colab" in sys.modules' in install and "pip" in install
    assert install.index("torch") < install.index("tv_lens"), "install torch first, then tv_lens"
    asserts = [cell for cell in cells if any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(cell)))]
    assert asserts, f"{path.name} needs a cell that asserts a result"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    # One thread per kernel, as in the training tests: tiny models gain nothing from more, and on a busy machine
    # several threads per process waiting on each other slow them down many times over.
    # pretrained.ipynb builds a small local model instead of downloading GPT-2 when TV_LENS_LOCAL_FIXTURE is set.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TV_LENS_LOCAL_FIXTURE": "1"}
    client.execute(env=env)  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    executed = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in executed)
    errors = [output for cell in executed for output in cell.outputs if output.output_type == "error"]
    assert not errors
