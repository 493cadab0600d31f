"""MkDocs hook: the notebooks in demos/ as pages of the site, their plotly figures drawn without network access.

- Every ``demos/NAME.ipynb`` becomes the page ``notebooks/NAME.ipynb``, rendered by mkdocs-jupyter from its stored
  outputs (nothing is executed); each stored figure (plotly figure JSON) gets an HTML rendering.
- ``<!-- notebook-figures: NAME -->`` in a Markdown page is replaced by the figures stored in ``demos/NAME.ipynb``.
- A page with figures loads plotly.js once, from the site's own copy (:data:`PLOTLY_JS`).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nbformat
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.utils import get_relative_url

DEMOS = Path(__file__).resolve().parents[1] / "demos"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_JS = "assets/javascripts/plotly.min.js"
FIGURES_MARKER = re.compile(r"<!-- notebook-figures: (\w+) -->")
_workdir: tempfile.TemporaryDirectory[str] | None = None


def figure_html(figure: dict[str, Any], div_id: str) -> str:
    """One stored figure as an HTML fragment that draws it with the page's plotly.js."""
    import plotly.io as pio

    return pio.to_html(
        figure,
        include_plotlyjs=False,
        full_html=False,
        div_id=div_id,
        default_height="480px",
        config={"displaylogo": False, "responsive": True},
        validate=False,
    )


def with_figure_html(notebook: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """``notebook`` with an HTML rendering beside each stored figure (ids ``NAME-CELL-OUTPUT``)."""
    for index, cell in enumerate(notebook.cells):
        for number, output in enumerate(cell.get("outputs", [])):
            if PLOTLY_MIME in output.get("data", {}):
                output.data["text/html"] = figure_html(output.data[PLOTLY_MIME], f"{name}-{index}-{number}")
    return notebook


def figures(name: str) -> list[str]:
    """The HTML of every figure stored in ``demos/NAME.ipynb``, in order."""
    notebook = with_figure_html(nbformat.read(DEMOS / f"{name}.ipynb", as_version=4), name)
    return [
        output.data["text/html"]
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if PLOTLY_MIME in output.get("data", {})
    ]


@event_priority(100)  # before mkdocs-jupyter turns the .ipynb files into pages
def on_files(files: Files, config: Any) -> Files:
    """Add each notebook of demos/ (a copy with its figures' HTML) as ``notebooks/NAME.ipynb``."""
    global _workdir
    _workdir = tempfile.TemporaryDirectory(prefix="tv_lens_docs_")
    (Path(_workdir.name) / "notebooks").mkdir()
    for path in sorted(DEMOS.glob("*.ipynb")):
        copy = Path(_workdir.name) / "notebooks" / path.name
        nbformat.write(with_figure_html(nbformat.read(path, as_version=4), path.stem), copy)
        # A File with its own source folder (mkdocs-jupyter reads the path it derives from it), not File.generated.
        files.append(File(f"notebooks/{path.name}", _workdir.name, config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Put the figures of the notebook named by each marker in place; load plotly.js once where figures are."""
    html = FIGURES_MARKER.sub(lambda match: "\n".join(figures(match.group(1))), html)
    if "Plotly.newPlot" in html:
        html = f'<script src="{get_relative_url(PLOTLY_JS, page.url)}"></script>\n{html}'
    return html


def on_post_build(config: Any) -> None:
    """Copy plotly.js into the site; remove the notebook copies."""
    import plotly

    target = Path(config["site_dir"]) / PLOTLY_JS
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", target)
    if _workdir is not None:
        _workdir.cleanup()


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    """``mkdocs serve`` rebuilds when a notebook changes."""
    server.watch(str(DEMOS))
    return server
