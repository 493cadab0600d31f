"""One self-contained HTML report of a demo's saved results, led by their headline numbers.

:func:`build_report` reads every result file of a results directory (``<name>.safetensors``, written by
:meth:`~tv_lens.results.Result.save`) and writes ONE HTML file: the plotly library is embedded once, every
figure is drawn from the saved numbers, and nothing is fetched from the network, so the file opens
offline and can be mailed around. Each analysis the demo runs gets a section
(:mod:`tv_lens.app.sections`): what the figure shows, which claim of Han et al. (2025, "H") or Yang et al. (2025,
"Y") it tests, and its headline numbers (also what ``tv-lens demo`` prints and saves as ``summary.json``). Result
files of other names get a plain section with their own ``figure()``.

Nothing is recomputed: the report of a results directory is the same file however often it is rebuilt.

Every text the report takes from files (task names, result file names, the values of ``run.json``) is
HTML-escaped, and figure data is embedded as JSON with ``<``, ``>`` and ``/`` escaped, so a name such as
``<script>`` shows as text and cannot close the page's script tags. A result file of a demo analysis's name
must hold that analysis's result type, and ``run.json`` must have the shape tv_lens writes: anything else is a
:class:`~tv_lens.errors.TvLensError` naming the file and the fix, never a half-written report.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tv_lens.app.run_files import check_run_info, load_results
from tv_lens.app.sections import SECTIONS_BY_NAME, Numbers, headline_numbers, summary_lines
from tv_lens.errors import ArtefactError
from tv_lens.results import (
    LAYER_AXIS_TITLE,
    Result,
)
from tv_lens.results.axes import counted
from tv_lens.results.storage import write_atomically

__all__ = [
    "build_report",
    "check_report_target",
    "environment_sentence",
    "render_report",
    "shots_sentence",
    "write_report",
]

_REPORT_MARK = "<title>tv_lens report</title>"  # in the head of every report: marks a file that may be overwritten


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2.2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.note, .claim { color: #444; } .claim { border-left: 4px solid #8aa; padding-left: 0.8em; }
.numbers { background: #f4f6f8; padding: 0.5em 0.8em; border-radius: 4px; font-family: ui-monospace, monospace;
           font-size: 0.92em; }
table.summary { border-collapse: collapse; margin: 1em 0; }
table.summary td { border-top: 1px solid #e2e2e2; padding: 0.35em 0.6em; vertical-align: top; }
table.summary td:first-child { white-space: nowrap; font-weight: 600; }
.figure { margin: 1em 0; }
"""


def render_report(results: Mapping[str, Result], run_info: Mapping[str, Any] | None = None) -> str:
    """The report of ``results`` (name → result) as one HTML document, plotly embedded.

    Raises:
        ArtefactError: ``run_info`` does not have the shape of a ``run.json`` (:func:`check_run_info`), or a
            result under a demo analysis's name is not of that analysis's type.
    """
    from plotly.offline import get_plotlyjs

    if run_info:
        check_run_info(run_info)
    numbers = headline_numbers(results, run_info)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>tv_lens report</title>",
        f"<style>{_STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        "<h1>tv_lens report</h1>",
        _run_html(run_info),
        f'<p class="note">Layers are TransformerLens block indices: layer <i>l</i> is the residual stream after '
        f"block <i>l</i> (<code>blocks.l.hook_resid_post</code>, block 0 first) and -1 the embedding output. "
        f"Every interval is a 95% bootstrap interval over prompts. Axis: {html.escape(LAYER_AXIS_TITLE)}.</p>",
        _summary_html(numbers),
    ]
    for name, result in results.items():
        parts.append(_section_html(name, result, numbers.get(name)))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def build_report(
    results_dir: str | Path, path: str | Path | None = None, run_info: Mapping[str, Any] | None = None
) -> Path:
    """Write the report of every result in ``results_dir`` to ``path`` (default: ``report.html`` beside it).

    Raises:
        ArtefactError: No results in ``results_dir``, or ``path`` cannot take the report (see :func:`write_report`).
    """
    results_dir = Path(results_dir)
    target = Path(path) if path is not None else results_dir.parent / "report.html"
    return write_report(load_results(results_dir), target, run_info)


def write_report(results: Mapping[str, Result], path: str | Path, run_info: Mapping[str, Any] | None = None) -> Path:
    """Write the report of ``results`` (name → result) to ``path`` (atomically); returns the path.

    An existing file at ``path`` is replaced only if it is a tv_lens report.

    Raises:
        ArtefactError: ``path`` is a directory, or an existing file that is not a tv_lens report.
        ResultWriteError: The file could not be written (read-only directory, a parent path that is a file,
            full disk; the message says why).
    """
    target = Path(path)
    check_report_target(target)
    return write_atomically(target, render_report(results, run_info).encode("utf-8"))


def check_report_target(path: str | Path) -> Path:
    """Raise an :class:`ArtefactError` if a report cannot be written to ``path`` without harm.

    ``path`` must not be a directory, and an existing file there must be a tv_lens report (a report is
    rebuilt in place; any other file is left alone rather than overwritten).
    """
    target = Path(path)
    if target.is_dir():
        raise ArtefactError(
            f"The report path {target} is a directory; give a file path, e.g. {target / 'report.html'}."
        )
    if target.exists():
        try:
            with open(target, "rb") as file:
                head = file.read(4096)
        except OSError as error:
            raise ArtefactError(
                f"The report path {target} exists and cannot be read ({type(error).__name__}: {error}); choose "
                "another file name for the report."
            ) from error
        if _REPORT_MARK.encode() not in head:
            raise ArtefactError(
                f"The report path {target} is an existing file that is not a tv_lens report; it is not overwritten. "
                "Choose another file name for the report (e.g. report.html), or move that file away."
            )
    return target


def _run_html(run_info: Mapping[str, Any] | None) -> str:
    if not run_info:
        return ""
    training = run_info.get("training", {})
    environment = run_info.get("environment", training.get("environment"))
    software = [] if environment is None else [html.escape(environment_sentence(environment))]
    if "description" in run_info:  # a run that describes itself in lines of plain text (a pretrained model's)
        lines = [html.escape(str(line)) for line in run_info["description"]]
        return '<p class="note">' + "<br>".join(lines + software) + "</p>"
    config = run_info.get("config", {})
    accuracy = training.get("accuracy", {})
    held_out = ", ".join(f"{task} {value:.3f}" for task, value in accuracy.items())

    def text(value: Any) -> str:
        return html.escape(str(value))

    facts = [
        f"Model: recipe <b>{text(config.get('recipe'))}</b> "
        f"({text(str(run_info.get('recipe_description', '')).rstrip('.'))}), backend "
        f"{text(config.get('backend'))}, seed {text(config.get('seed'))}.",
        f"Trained {text(training.get('steps'))} steps in {text(training.get('elapsed_s'))} s; held-out accuracy at "
        f"step {text(training.get('eval_step'))}: {text(held_out)}.",
    ]
    if "analysis_shots" in run_info:
        facts.append(text(shots_sentence(run_info["analysis_shots"])))
    return '<p class="note">' + "<br>".join(facts + software) + "</p>"


def environment_sentence(environment: Mapping[str, Any]) -> str:
    """One sentence on the software a run computed with (``run.json``'s environment; entries may be missing)."""
    parts = [
        f"{label} {environment[key]}"
        for key, label in (
            ("torch", "torch"),
            ("transformer_lens", "TransformerLens"),
            ("transformers", "transformers"),
        )
        if key in environment
    ]
    threads = environment.get("torch_threads")
    on = "" if threads is None else f" on {counted(threads, 'CPU thread')}"
    cpu = f" ({environment['cpu']})" if "cpu" in environment else ""
    gpu = f", GPU {environment['gpu']}" if environment.get("gpu", "none") != "none" else ""
    version = f", tv_lens {environment['tv_lens']}" if "tv_lens" in environment else ""
    return (
        f"Computed with {', '.join(parts) or 'unrecorded versions'}{on}{cpu}{gpu}{version}; on a CPU, numbers are "
        "bit-identical only under the same torch version, thread count and kind of CPU."
    )


def shots_sentence(chosen: Mapping[str, Any]) -> str:
    """One sentence on the shot counts TD→accuracy and patching ran at (``run.json``'s ``analysis_shots``)."""
    curve = ", ".join(f"{counted(shots, 'shot')} {value:.3f}" for shots, value in chosen["accuracy"].items())
    ceiling = f"{chosen['ceiling']:.2f}"
    below = [int(shots) for shots, value in chosen["accuracy"].items() if value < chosen["ceiling"]]
    why = (
        f"the shot counts where ICL accuracy on the non-Null tasks is below {ceiling}"
        if below
        else f"the smallest shot counts: ICL accuracy on the non-Null tasks is at least {ceiling} at every candidate, "
        "so TD has little variation to predict and a correct task vector little room to help"
    )
    td = ", ".join(map(str, chosen["td_accuracy"]))
    return f"TD → accuracy ran at shots {td} and patching at {counted(chosen['patching'], 'shot')}: {why} ({curve})."


def _summary_html(numbers: Mapping[str, Numbers]) -> str:
    rows = [
        f'<tr><td><a href="#{name}">{html.escape(title)}</a></td><td>{html.escape(line)}</td></tr>'
        for name, title, line in summary_lines(numbers)
    ]
    return '<h2 id="summary">Headline numbers</h2><table class="summary">' + "".join(rows) + "</table>"


def _section_html(name: str, result: Result, numbers: Numbers | None) -> str:
    section = SECTIONS_BY_NAME.get(name)
    if section is None or numbers is None:
        title, figures = f"{name} ({type(result).__name__})", [result.figure()]
        text = [f'<p class="note">A saved {html.escape(type(result).__name__)} (not one of the demo analyses).</p>']
    else:
        title, figures = section.title, section.figures(result)
        text = [
            f'<p class="note">{html.escape(section.shows)}</p>',
            f'<p class="claim">Tests: {html.escape(section.claim)}</p>',
            f'<p class="numbers">{html.escape(section.line(numbers))}</p>',
        ]
    divs = [_figure_html(figure, f"{_html_id(name)}-figure-{i}") for i, figure in enumerate(figures)]
    return f'<section id="{html.escape(name)}" class="analysis"><h2>{html.escape(title)}</h2>{"".join(text)}' + (
        "".join(divs) + "</section>"
    )


def _html_id(name: str) -> str:
    """``name`` if it is safe as an HTML id and a JavaScript string, else a stable id derived from it.

    Plotly writes the id of a figure's div unescaped into HTML and into the script that draws it.
    """
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    return "result-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]


def _figure_html(figure: Any, div_id: str) -> str:
    import plotly.io as pio

    figure.update_layout(template="plotly_white")
    body = pio.to_html(
        figure,
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        default_height="520px",
        config={"displaylogo": False, "responsive": True},
    )
    return f'<div class="figure">{body}</div>'
