"""Execute the notebooks in demos/ and store them with their outputs.

``python demos/execute_notebooks.py`` re-executes every notebook; ``python demos/execute_notebooks.py quickstart
tvp_loss`` only those. Each runs top to bottom in a fresh kernel with the settings of the test suite (one thread, the
offline stand-in for GPT-2, plotly figures as figure JSON), so ``tests/demos/test_notebooks.py`` reproduces the stored
numbers; the notebook's metadata records the TransformerLens and torch versions and the kind of CPU they come
from. What is stored is what a reader needs: printed text, tables and figures; progress bars and warnings (stderr)
are left out. Run it after changing a notebook or anything that changes the numbers it shows.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tv_lens.environment import cpu_kind

DEMOS = Path(__file__).resolve().parent
ENV = {
    # One thread per kernel, as in the test suite: tiny models gain nothing from more, and the numbers stay put.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # pretrained.ipynb builds a small local GPT-2 (random weights) instead of downloading GPT-2.
    "TV_LENS_LOCAL_FIXTURE": "1",
    # Figures are stored as plotly figure JSON: JupyterLab and VS Code draw it offline, the docs site as HTML.
    "PLOTLY_RENDERER": "plotly_mimetype",
}
TIMEOUT_S = 900


def notebook_paths(names: Sequence[str] = ()) -> list[Path]:
    """The notebooks in demos/, or those named (``quickstart`` or ``quickstart.ipynb``)."""
    paths = sorted(DEMOS.glob("*.ipynb"))
    if not names:
        return paths
    wanted = {Path(name).stem for name in names}
    unknown = wanted - {path.stem for path in paths}
    if unknown:
        raise SystemExit(f"no such notebook in demos/: {', '.join(sorted(unknown))}")
    return [path for path in paths if path.stem in wanted]


def versions() -> dict[str, str]:
    """The versions of the packages the stored numbers depend on, and the kind of CPU that computed them."""
    return {
        **{name: importlib.metadata.version(name) for name in ("transformer-lens", "torch")},
        "cpu": cpu_kind(),
    }


def execute(path: Path) -> nbformat.NotebookNode:
    """``path``'s notebook, executed top to bottom in a temporary directory and tidied; raises if a cell fails."""
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="tv_lens_notebook_") as workdir:
        client = NotebookClient(
            notebook,
            timeout=TIMEOUT_S,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": workdir}},
        )
        client.execute(env={**os.environ, **ENV})
    notebook.metadata["tv_lens"] = {"executed_with": versions()}
    return tidy(notebook)


def tidy(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``notebook`` without stderr outputs (progress bars, warnings), consecutive stdout pieces joined in one."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        outputs: list[nbformat.NotebookNode] = []
        for output in cell.outputs:
            if output.output_type == "stream" and output.name != "stdout":
                continue
            if output.output_type == "stream" and outputs and outputs[-1].output_type == "stream":
                outputs[-1].text += output.text
                continue
            outputs.append(output)
        cell.outputs = outputs
    return notebook


def store(path: Path, notebook: nbformat.NotebookNode) -> None:
    """Write ``notebook`` to ``path`` (validated, with a trailing newline)."""
    nbformat.validate(notebook)
    path.write_text(nbformat.writes(notebook) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Execute the notebooks named in ``argv`` (default: all) and store them with their outputs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to execute (default: every notebook in demos/)")
    args = parser.parse_args(argv)
    for path in notebook_paths(args.names):
        start = time.perf_counter()
        store(path, execute(path))
        size = path.stat().st_size / 1e3
        print(f"{path.name}: executed in {time.perf_counter() - start:.0f} s, stored ({size:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
