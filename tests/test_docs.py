"""Every Python example in README.md and docs/ runs, the docs site builds strictly, and the demos run."""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import os
import pkgutil
import re
import runpy
import subprocess
import sys
from pathlib import Path

import nbformat
import plotly
import pytest
import torch
import yaml

import tv_lens
from tv_lens.analyses import (
    Emergence,
    FunctionVectors,
    Geometry,
    HeadAblation,
    HeadAttention,
    ICLPerformance,
    LayerFinetuning,
    Suite,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TdAccuracy,
)
from tv_lens.training import TVPConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOC_FILES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
# The notebooks of demos/ are pages too: docs/notebook_pages.py adds each one as notebooks/NAME.ipynb.
NOTEBOOK_PAGES = {f"notebooks/{path.name}": path for path in sorted((ROOT / "demos").glob("*.ipynb"))}
PLOTLY_MIME = "application/vnd.plotly.v1+json"
FENCE = re.compile(r"^```(\S*)", flags=re.MULTILINE)
# Languages of code blocks: python blocks run in the tests; the others are shell commands or output.
BLOCK_LANGUAGES = {"python", "bash", "text"}
# Each analysis page documents every option of its config.
OPTION_PAGES = {
    "analyses/decodability.md": TaskDecodability,
    "analyses/performance.md": ICLPerformance,
    "analyses/geometry.md": Geometry,
    "analyses/td-accuracy.md": TdAccuracy,
    "analyses/emergence.md": Emergence,
    "analyses/suite.md": Suite,
    "analyses/patching.md": TaskVectorPatching,
    "analyses/prompting.md": TaskVectorPrompting,
    "analyses/heads.md": HeadAblation,
    "analyses/finetuning.md": LayerFinetuning,
    "analyses/function-vectors.md": FunctionVectors,
    "analyses/attention.md": HeadAttention,
    "training.md": TVPConfig,
}


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run the examples on one thread, as the training tests do: tiny models gain nothing from more, and on a busy
    machine several threads per process waiting on each other slow them down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_in_docs_run(path):
    blocks = python_blocks(path)
    namespace: dict = {}
    for block in blocks:  # blocks of one page share a namespace, like a reader pasting them in order
        exec(compile(block, str(path), "exec"), namespace)


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"<!-- (main|test)-command -->\n```bash\n(.+?)\n```", readme)
    assert [kind for kind, _ in commands] == ["main", "test"]
    assert all("pip install torch==2.13.0" in command for _, command in commands)
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_say_whether_they_run(path):
    """A block fenced ``py`` or without a language would silently never run: only python, bash and text."""
    text = path.read_text()
    fences = FENCE.findall(text)
    openings = fences[::2]  # fences alternate: opening (with its language), closing
    assert len(fences) % 2 == 0, f"{path.name}: unbalanced code fences"
    assert set(openings) <= BLOCK_LANGUAGES, f"{path.name}: code blocks in {set(openings) - BLOCK_LANGUAGES}"


@pytest.mark.parametrize("page", sorted(OPTION_PAGES), ids=str)
def test_analysis_pages_document_every_option(page):
    text = (DOCS / page).read_text()
    missing = [f.name for f in dataclasses.fields(OPTION_PAGES[page]) if f"`{f.name}`" not in text]
    assert not missing, f"docs/{page} does not document {missing}"


def test_every_page_is_in_the_nav_and_every_module_has_an_api_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(entries):
        for entry in entries:
            value = entry if isinstance(entry, str) else next(iter(entry.values()))
            yield from pages(value) if isinstance(value, list) else [value]

    in_nav = set(pages(config["nav"]))
    on_disk = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")} | set(NOTEBOOK_PAGES)
    assert in_nav == on_disk
    documented = set(re.findall(r"^::: (\S+)", "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md")), re.M))
    modules = {f"tv_lens.{m.name}" for m in pkgutil.iter_modules(tv_lens.__path__) if not m.name.startswith("_")}
    assert modules <= documented, f"no API page for {sorted(modules - documented)}"


def test_griffe_extension_renders_doctests_and_roles_as_markdown():
    spec = importlib.util.spec_from_file_location("griffe_markdown", DOCS / "griffe_markdown.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "See :func:`tv_lens.probes.collect` and :class:`~tv_lens.tasks.\n    ICLBatch`::\n\n>>> 1 + 1\n2\n\nDone."
    assert module.to_markdown(text) == (
        "See `tv_lens.probes.collect` and `tv_lens.tasks.ICLBatch`:\n\n```pycon\n>>> 1 + 1\n2\n```\n\nDone."
    )


@pytest.mark.once_per_ci
def test_docs_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "WARNING" not in build.stderr, build.stderr
    analyses = (site / "api" / "analyses" / "index.html").read_text()
    for name in ("task_decodability", "TaskDecodability", "TaskVectorPrompting", "HeadAblation", "detect_coupling"):
        assert f'id="tv_lens.analyses.{name}"' in analyses, name
    assert 'id="tv_lens.probes.collect"' in (site / "api" / "probes" / "index.html").read_text()
    assert 'id="tv_lens.training.train"' in (site / "api" / "training" / "index.html").read_text()
    for page in (site / "api").rglob("*.html"):  # docstrings rendered as Markdown, not as reST leftovers
        html = page.read_text()
        assert ":func:`" not in html and ":class:`" not in html and "<blockquote>" not in html, page
    assert (site / "analyses" / "decodability" / "index.html").exists()
    check_notebook_pages_and_figures(site)


def stored_figures(path: Path) -> list[dict]:
    notebook = nbformat.read(path, as_version=4)
    return [
        o.data[PLOTLY_MIME] for c in notebook.cells for o in c.get("outputs", []) if PLOTLY_MIME in o.get("data", {})
    ]


def check_notebook_pages_and_figures(site: Path) -> None:
    """Each notebook is a page with its stored outputs and figures; every page with figures loads the site's own
    plotly.js once, and nothing loads plotly from a CDN."""
    for page, path in NOTEBOOK_PAGES.items():
        text = (site / page.removesuffix(".ipynb") / "index.html").read_text()
        notebook = nbformat.read(path, as_version=4)
        printed = [o.text.splitlines()[0] for c in notebook.cells for o in c.get("outputs", []) if o.get("text")]
        assert printed and all(line in html.unescape(text) for line in printed), page
        assert text.count("Plotly.newPlot(") == len(stored_figures(path)) > 0, page
    started = (site / "getting-started" / "index.html").read_text()  # the quickstart's figures, as the demo draws
    assert started.count("Plotly.newPlot(") == len(stored_figures(ROOT / "demos" / "quickstart.ipynb")) >= 3
    bundle = site / "assets" / "javascripts" / "plotly.min.js"
    assert bundle.read_bytes() == (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    with_figures = 0
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert "cdn.plot.ly" not in text, page
        if "Plotly.newPlot(" in text:
            with_figures += 1
            sources = re.findall(r'<script src="([^"]*plotly[^"]*)"', text)
            assert len(sources) == 1 and (page.parent / sources[0]).resolve() == bundle.resolve(), page
    assert with_figures == len(NOTEBOOK_PAGES) + 1


def test_quickstart_script_runs(capsys):
    runpy.run_path(str(ROOT / "demos" / "quickstart.py"), run_name="__main__")
    assert capsys.readouterr().out.strip()


def test_replication_script_starts():
    """The replication script trains and analyses for about an hour, so it is run by hand; here it must parse."""
    script = subprocess.run(
        [sys.executable, str(ROOT / "demos" / "replication.py"), "--help"], capture_output=True, text=True, timeout=300
    )
    assert script.returncode == 0, script.stderr
    assert "--runs" in script.stdout and "--seeds" in script.stdout
