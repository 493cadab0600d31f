"""The notebooks in demos/ run top to bottom, check a real result, and are stored executed with current outputs."""

from __future__ import annotations

import ast
import base64
import importlib.util
import math
import re
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "demos").glob("*.ipynb"))
EXPECTED = {"quickstart", "bring_your_own_model", "emergence", "tvp_loss", "pretrained"}
PLOTLY = "application/vnd.plotly.v1+json"
# A number standing on its own in printed text: not part of a word, an id or a temporary file's name.
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?!\w)")
MAX_BYTES = 1_000_000


def load_runner():
    spec = importlib.util.spec_from_file_location("execute_notebooks", ROOT / "demos" / "execute_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = load_runner()


def colab_cell() -> str:
    """The install cell as README.md documents it: every notebook starts with it."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    cells = [block.strip() for block in blocks if 'TV_LENS_SOURCE = ""' in block]
    assert len(cells) == 1, "README.md documents the notebooks' install cell once"
    return cells[0]


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def numbers_in(value: Any) -> list[float]:
    """Every number in a figure's JSON, in order: plain numbers, numbers in strings, base64-packed arrays."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, str):
        return [float(number) for number in NUMBER.findall(value)]
    if isinstance(value, dict) and {"dtype", "bdata"} <= value.keys():
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).astype(float).tolist()
    if isinstance(value, dict):
        return [number for key in sorted(value) for number in numbers_in(value[key])]
    if isinstance(value, list):
        return [number for item in value for number in numbers_in(item)]
    return []


def digest(cell: nbformat.NotebookNode) -> list[tuple[str, list[float]]]:
    """Each output of ``cell`` as (kind, its numbers): printed numbers of text, the data of figures."""
    outputs = []
    for output in cell.outputs:
        if output.output_type == "stream":
            outputs.append((f"stream {output.name}", numbers_in(output.text)))
        elif output.output_type in ("execute_result", "display_data") and PLOTLY in output.data:
            figure = output.data[PLOTLY]
            layout = {key: value for key, value in figure.get("layout", {}).items() if key != "template"}
            outputs.append((f"{output.output_type} figure", numbers_in([figure.get("data", []), layout])))
        elif output.output_type in ("execute_result", "display_data"):
            outputs.append((output.output_type, numbers_in(output.data.get("text/plain", ""))))
        else:
            outputs.append((output.output_type, []))
    return outputs


# Numbers within rel 1e-4 / abs 1e-6 of those stored when the notebook was executed on this kind of CPU. On another
# kind (another vendor's math library paths, other vector instructions) the small models the notebooks train end up
# with weights that differ in the last bits, which training and PCA amplify: one figure's coordinates moved by up to
# 2e-3 between two CPU kinds. There the numbers must agree within 1e-2: a change of the code still shows.
SAME_CPU = {"rel_tol": 1e-4, "abs_tol": 1e-6}
OTHER_CPU = {"rel_tol": 1e-2, "abs_tol": 1e-2}


def differences(
    stored: list[tuple[str, list[float]]], fresh: list[tuple[str, list[float]]], tolerance: dict[str, float] = SAME_CPU
) -> str:
    """What differs between two digests ("" if they agree: same outputs, numbers within ``tolerance``)."""
    if [kind for kind, _ in stored] != [kind for kind, _ in fresh]:
        return f"outputs {[kind for kind, _ in stored]} stored, {[kind for kind, _ in fresh]} now"
    for (kind, old), (_, new) in zip(stored, fresh, strict=True):
        if len(old) != len(new):
            return f"{kind}: {len(old)} numbers stored, {len(new)} now"
        for position, (a, b) in enumerate(zip(old, new, strict=True)):
            if not (math.isclose(a, b, **tolerance) or (math.isnan(a) and math.isnan(b))):
                return f"{kind}: number {position} is {a!r} stored, {b!r} now"
    return ""


def comparable(stored: nbformat.NotebookNode) -> str:
    """Why the stored numbers cannot be expected here ("" if they can): another TransformerLens major or torch."""
    recorded = stored.metadata.get("tv_lens", {}).get("executed_with", {})
    here = runner.versions()
    keys = {"transformer-lens": 1, "torch": 2}  # how many leading parts of each version the numbers depend on
    for name, parts in keys.items():
        if recorded.get(name, "").split(".")[:parts] != here[name].split(".")[:parts]:
            return f"stored with {name} {recorded.get(name)}, running {here[name]}"
    return ""


def test_every_demo_notebook_is_here():
    assert {path.stem for path in NOTEBOOKS} >= EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_executed_and_colab_ready(path):
    text = path.read_text(encoding="utf-8")
    notebook = nbformat.reads(text, as_version=4)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    rerun = f"python demos/execute_notebooks.py {path.stem}"
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), f"{path.name}: {rerun}"
    assert sum(len(cell.outputs) for cell in cells) >= len(cells) // 2, f"{path.name}: stored without outputs"
    assert not [o for cell in cells for o in cell.outputs if o.output_type == "error" or o.get("name") == "stderr"]
    assert "executed_with" in notebook.metadata.get("tv_lens", {}), f"{path.name}: {rerun}"
    assert len(text.encode()) <= MAX_BYTES, f"{path.name} is {len(text.encode())} bytes"
    assert str(ROOT) not in text and "site-packages" not in text, f"{path.name}: a local path in an output"
    assert cells[0].source.strip() == colab_cell(), f"{path.name}: the first cell is README.md's install cell"
    assert "pip install torch" not in text and '"torch"' not in cells[0].source  # Colab keeps its torch
    asserts = [cell for cell in cells if any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(cell.source)))]
    assert asserts, f"{path.name} needs a cell that asserts a result"


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.name)
def executed(request) -> tuple[Path, nbformat.NotebookNode]:
    """Each notebook executed once per test run (as demos/execute_notebooks.py does); shared by the tests below."""
    return request.param, runner.execute(request.param)  # raises CellExecutionError, with the traceback, on failure


# Executing the notebooks (demos; the library itself is tested under each TransformerLens version by the rest of
# the suite) is checked once per CI run.
@pytest.mark.once_per_ci
def test_notebook_runs_top_to_bottom(executed):
    _, notebook = executed
    cells = code_cells(notebook)
    assert all(cell.execution_count is not None for cell in cells)
    assert not [output for cell in cells for output in cell.outputs if output.output_type == "error"]


@pytest.mark.once_per_ci
def test_stored_outputs_are_current(executed):
    """Re-executing gives the stored numbers (printed text and figure data; not bytes): no stale notebook."""
    path, fresh = executed
    stored = nbformat.read(path, as_version=4)
    reason = comparable(stored)
    if reason:
        pytest.skip(f"{path.name}: {reason}; its numbers depend on these versions")
    stored_on = stored.metadata["tv_lens"]["executed_with"].get("cpu")
    tolerance = SAME_CPU if stored_on == runner.versions()["cpu"] else OTHER_CPU
    stale = []
    for index, (old, new) in enumerate(zip(code_cells(stored), code_cells(fresh), strict=True)):
        difference = differences(digest(old), digest(new), tolerance)
        if difference:
            first_line = old.source.strip().splitlines()[0] if old.source.strip() else ""
            stale.append(f"code cell {index} ({first_line!r}): {difference}")
    assert not stale, (
        f"{path.name} holds stale outputs (executed on {stored_on or 'an unrecorded CPU'}, compared within "
        f"{tolerance}); re-execute it with `python demos/execute_notebooks.py {path.stem}`:\n" + "\n".join(stale)
    )


def test_digest_sees_a_changed_number_and_ignores_ids():
    cell = nbformat.v4.new_code_cell("print(td)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="TD 0.93 at block 1 in /tmp/tmpa8b2c9x1\n")]
    changed = nbformat.v4.new_code_cell("print(td)")
    changed.outputs = [nbformat.v4.new_output("stream", name="stdout", text="TD 0.91 at block 1 in /tmp/tmpq01zz2k\n")]
    same = nbformat.v4.new_code_cell("print(td)")
    same.outputs = [nbformat.v4.new_output("stream", name="stdout", text="TD 0.93 at block 1 in /tmp/tmpq01zz2k\n")]
    assert digest(cell) == [("stream stdout", [0.93, 1.0])]
    assert differences(digest(cell), digest(same)) == ""
    assert "0.93" in differences(digest(cell), digest(changed)) and "0.93" in differences(
        digest(cell), digest(changed), OTHER_CPU
    )
    packed = {"dtype": "f8", "bdata": base64.b64encode(np.array([0.5, 0.25]).tobytes()).decode()}
    assert numbers_in({"data": [{"y": packed, "x": [1, 2], "showlegend": True}]}) == [1.0, 2.0, 0.5, 0.25]
