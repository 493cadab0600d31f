"""One self-contained HTML report of a demo's saved results, and the headline numbers it leads with.

:func:`build_report` reads every result file of a results directory (``<name>.safetensors``, written by
:meth:`~tv_lens.results.Result.save`) and writes ONE HTML file: the plotly library is embedded once, every
figure is drawn from the saved numbers, and nothing is fetched from the network, so the file opens
offline and can be mailed around. Each analysis the demo runs (:data:`ANALYSIS_NAMES`) gets a section: what
the figure shows, which claim of Han et al. (2025, "H") or Yang et al. (2025, "Y") it tests, and its
headline numbers (:func:`headline_numbers`, also what ``tv-lens demo`` prints and saves as
``summary.json``). Result files of other names get a plain section with their own ``figure()``.

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
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tv_lens.errors import ArtefactError, ResultFileError
from tv_lens.results import (
    LAYER_AXIS_TITLE,
    Decodability,
    EmergenceResult,
    FinetuningComparison,
    HeadImportance,
    PatchingEffects,
    Performance,
    Projection,
    PromptingAccuracy,
    Result,
    TdAccuracyFit,
    layer_label,
)
from tv_lens.results.storage import write_atomically
from tv_lens.tasks import NULL_TASK

__all__ = [
    "ANALYSIS_NAMES",
    "SECTIONS",
    "Section",
    "build_report",
    "check_report_target",
    "check_run_info",
    "headline_numbers",
    "load_results",
    "read_run_info",
    "render_report",
    "result_path",
    "save_summary",
    "shots_sentence",
    "summary_lines",
    "write_report",
    "write_run_info",
]

RUN_FILE = "run.json"
RESULT_SUFFIX = ".safetensors"
SUMMARY_FILE = "summary.json"
_REPORT_MARK = "<title>tv_lens report</title>"  # in the head of every report: marks a file that may be overwritten
Numbers = dict[str, Any]


def result_path(results_dir: str | Path, name: str) -> Path:
    """Where the result called ``name`` is saved in ``results_dir``."""
    return Path(results_dir) / f"{name}{RESULT_SUFFIX}"


def load_results(results_dir: str | Path) -> dict[str, Result]:
    """Every result saved in ``results_dir``, by file stem: the demo's analyses in pipeline order, then others.

    Raises:
        ArtefactError: The directory is missing or holds no result files.
        ResultFileError: A result file is corrupt, or a file named after a demo analysis holds another type of
            result.
    """
    results_dir = Path(results_dir)
    paths = sorted(results_dir.glob(f"*{RESULT_SUFFIX}")) if results_dir.is_dir() else []
    if not paths:
        out = results_dir.parent
        raise ArtefactError(
            f"No results in {results_dir}: nothing to report. Run the analyses first with "
            f"`tv-lens analyze --out {out}` (or `tv-lens demo --out {out}`)."
        )
    stems = {path.name[: -len(RESULT_SUFFIX)]: path for path in paths}
    order = [name for name in ANALYSIS_NAMES if name in stems] + sorted(set(stems) - set(ANALYSIS_NAMES))
    results = {}
    for name in order:
        results[name] = Result.load(stems[name])
        problem = _wrong_kind(name, results[name])
        if problem is not None:
            raise ResultFileError(
                f"{stems[name]} {problem}: a result was saved under another analysis's name. Re-run that analysis "
                f"(`tv-lens analyze --out {results_dir.parent} --only {name}`), or rename the file to a name that is "
                f"no demo analysis's (e.g. my_{name}{RESULT_SUFFIX}) to show it in a section of its own."
            )
    return results


def _wrong_kind(name: str, result: Result) -> str | None:
    """Why ``result`` cannot be the result of the demo analysis ``name`` (``None`` when it can, or no such one)."""
    section = _BY_NAME.get(name)
    if section is None or isinstance(result, section.kind):
        return None
    return (
        f"holds a {type(result).__name__}, but the report's section {section.title!r} needs a {section.kind.__name__}"
    )


# --- headline numbers ------------------------------------------------------------------------------------


def _real_tasks(task_names: tuple[str, ...]) -> list[int]:
    return [t for t, name in enumerate(task_names) if name != NULL_TASK]


def _interval(ci: Any) -> list[float]:
    return [float(x) for x in ci]


def _performance(r: Any) -> Numbers:
    real = _real_tasks(r.task_names)
    numbers = {
        "icl_accuracy": float(r.values[real, -1].mean()),
        "icl_shots": int(r.shots[-1]),
        "metric": r.metric,
    }
    if r.shots[0] == 0:
        numbers["zero_shot_accuracy"] = float(r.values[real, 0].mean())
    return numbers


def _decodability(r: Any) -> Numbers:
    i = r.at(r.best_layer)
    return {
        "best_layer": r.best_layer,
        "best_td": float(r.td[i]),
        "best_td_ci": _interval(r.td_ci[i]),
        "chance": r.chance,
        "td_by_layer": {str(layer): float(v) for layer, v in zip(r.layers, r.td, strict=True)},
    }


def _geometry(r: Any) -> Numbers:
    return {
        "layers": list(r.layers),
        "explained_variance_last_layer": _interval(r.explained_variance[-1]),
    }


def _td_accuracy(r: Any) -> Numbers:
    return {
        "shots": sorted({int(s) for s in r.shots.tolist()}),
        "layer": r.layer,
        "r2": float(r.r2),
        "slope": float(r.slope),
        "slope_ci": _interval(r.slope_ci),
        "n_points": len(r.td),
        "score_range": [float(r.score.min()), float(r.score.max())],
        "metric": r.metric,
    }


def _patching(r: Any) -> Numbers:
    gap = torch.nan_to_num(r.incorrect_loss_change - r.correct_loss_change, nan=-torch.inf)
    i = int(torch.argmax(gap))
    return {
        "mode": r.mode,
        "layer": r.layers[i],
        "correct_change": float(r.correct_change[i]),
        "correct_change_ci": _interval(r.correct_change_ci[i]),
        "incorrect_change": float(r.incorrect_change[i]),
        "incorrect_change_ci": _interval(r.incorrect_change_ci[i]),
        "correct_loss_change": float(r.correct_loss_change[i]),
        "correct_loss_change_ci": _interval(r.correct_loss_change_ci[i]),
        "incorrect_loss_change": float(r.incorrect_loss_change[i]),
        "incorrect_loss_change_ci": _interval(r.incorrect_loss_change_ci[i]),
        "override_rate": float(r.override_rate[i]),
    }


def _prompting(r: Any) -> Numbers:
    return {
        "best_layer": r.best_layer,
        "best_accuracy": r.best_accuracy,
        "best_accuracy_ci": _interval(r.accuracy_ci[r.layers.index(r.best_layer)]),
        "zero_shot_accuracy": float(r.zero_shot_accuracy),
        "icl_accuracy": float(r.icl_accuracy),
    }


def _heads(r: Any) -> Numbers:
    real = _real_tasks(r.task_names)
    shared = r.shared[real][:, real]
    off_diagonal = shared[~torch.eye(len(real), dtype=torch.bool)]
    return {
        "top_heads": [f"L{layer}H{head}" for layer, head in r.top_heads(3)],
        "attribution_spearman": float(r.attribution_spearman),
        "shared_mean": float(off_diagonal.mean()) if len(off_diagonal) else math.nan,
        "shared_method": r.shared_method,
        "n_heads": r.n_layers * r.n_heads,
    }


def _emergence(r: Any) -> Numbers:
    real = _real_tasks(r.task_names)
    return {
        "n_checkpoints": len(r.steps),
        "best_layer": r.best_layer,
        "coupled": sum(bool(r.coupled[t]) for t in real),
        "n_tasks": len(real),
        "performance_jump": {r.task_names[t]: r.performance_jump[t] for t in real},
        "td_jump": {r.task_names[t]: r.td_jump[t] for t in real},
    }


def _finetuning(r: Any) -> Numbers:
    return {
        "tasks": [name for name in r.task_names if name != NULL_TASK],
        "accuracy": {variant: float(r.overall[v]) for v, variant in enumerate(r.variants)},
        "td_last_layer": {variant: float(r.td[v, -1]) for v, variant in enumerate(r.variants)},
        "last_layer": r.layers[-1],
    }


def _f(value: float) -> str:
    return f"{value:.3f}"


def _ci(values: list[float]) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


def _count(n: int | str, noun: str) -> str:
    return f"{n} {noun}" if int(n) == 1 else f"{n} {noun}s"


def _block(layer: int) -> str:
    return layer_label(layer).split(" ")[0]


def _performance_line(n: Numbers) -> str:
    zero = f" (0 shots: {_f(n['zero_shot_accuracy'])})" if "zero_shot_accuracy" in n else ""
    return f"{_f(n['icl_accuracy'])} {n['metric']} at {n['icl_shots']} shots{zero}, Null task left out"


def _decodability_line(n: Numbers) -> str:
    return (
        f"best layer {_block(n['best_layer'])}: TD {_f(n['best_td'])} {_ci(n['best_td_ci'])} (chance {_f(n['chance'])})"
    )


def _geometry_line(n: Numbers) -> str:
    first, second = n["explained_variance_last_layer"]
    return f"PC1 + PC2 explain {first + second:.1%} of the variance at {_block(n['layers'][-1])}"


def _td_accuracy_line(n: Numbers) -> str:
    low, high = n["score_range"]
    shots = f" at shots {', '.join(map(str, n['shots']))}" if "shots" in n else ""
    where = f"over {n['n_points']} (task, shots) points{shots}, TD at {_block(n['layer'])}"
    if low == high:  # nothing to explain: the fit is undefined
        return f"{n['metric']} is {_f(low)} at every point ({where}): no variation for TD to predict"
    return (
        f"R² {_f(n['r2'])}, slope {_f(n['slope'])} {_ci(n['slope_ci'])} {where}; {n['metric']} ranges "
        f"{_f(low)} to {_f(high)}"
    )


def _patching_line(n: Numbers) -> str:
    shots = f", {_count(n['shots'], 'shot')}" if "shots" in n else ""
    return (
        f"at {_block(n['layer'])} ({n['mode']}{shots}; the layer of largest incorrect - correct loss gap): loss change "
        f"correct {_f(n['correct_loss_change'])} {_ci(n['correct_loss_change_ci'])} vs incorrect "
        f"{_f(n['incorrect_loss_change'])} {_ci(n['incorrect_loss_change_ci'])}; accuracy change correct "
        f"{_f(n['correct_change'])} vs incorrect {_f(n['incorrect_change'])}"
    )


def _prompting_line(n: Numbers) -> str:
    return (
        f"best layer {_block(n['best_layer'])}: {_f(n['best_accuracy'])} {_ci(n['best_accuracy_ci'])} "
        f"(zero-shot {_f(n['zero_shot_accuracy'])}, ICL {_f(n['icl_accuracy'])})"
    )


def _heads_line(n: Numbers) -> str:
    return (
        f"most important {', '.join(n['top_heads'])} of {n['n_heads']}; mean {n['shared_method']} overlap of "
        f"tasks' top heads {_f(n['shared_mean'])}; attribution vs ablation Spearman {_f(n['attribution_spearman'])}"
    )


def _emergence_line(n: Numbers) -> str:
    jumps = ", ".join(f"{task} {step}" for task, step in n["td_jump"].items())
    return (
        f"accuracy and TD jump together in {n['coupled']} of {n['n_tasks']} tasks over {n['n_checkpoints']} "
        f"checkpoints; TD jump step per task: {jumps}"
    )


def _finetuning_line(n: Numbers) -> str:
    accuracy = ", ".join(f"{variant} {_f(value)}" for variant, value in n["accuracy"].items())
    td = ", ".join(f"{variant} {_f(value)}" for variant, value in n["td_last_layer"].items())
    return f"accuracy on unseen {', '.join(n['tasks'])}: {accuracy}; TD at {_block(n['last_layer'])}: {td}"


# --- sections --------------------------------------------------------------------------------------------


def _with_layer_slider(figure: Any) -> Any:
    """Name the layer indexing on a figure's layer slider."""
    for slider in figure.layout.sliders:
        slider.currentvalue.prefix = f"{LAYER_AXIS_TITLE}: "
    return figure


@dataclass(frozen=True)
class Section:
    """How the report presents one analysis.

    Attributes:
        name: The result's file stem (``decodability`` ...) and the section's HTML id.
        title: Section heading.
        shows: What the figures show.
        claim: The paper claim it tests.
        figures: The result's figures, in order.
        numbers: The headline numbers of the result (JSON-ready).
        line: One line of text from those numbers.
        kind: The result type of the analysis (a file of this name holding another is refused).
    """

    name: str
    title: str
    shows: str
    claim: str
    figures: Callable[[Any], list[Any]]
    numbers: Callable[[Any], Numbers]
    line: Callable[[Numbers], str]
    kind: type[Result]


SECTIONS: tuple[Section, ...] = (
    Section(
        "decodability",
        "Task decodability across layers",
        "Task decodability (TD) at every layer: leave-one-out 10-nearest-neighbour classification of the latent "
        "task from the residual stream at the token right before the answer. Thick line: all prompts, with 95% "
        "bootstrap intervals; thin lines: per task; dashed: chance. The heatmap is the task confusion at the "
        "best layer (rows: true task, columns: the neighbours' vote).",
        "H §4: the model encodes the latent task into a representation from which it can be read off (TD well "
        "above chance), and TD peaks inside the model.",
        lambda r: [r.figure(), r.confusion_figure()],
        _decodability,
        _decodability_line,
        Decodability,
    ),
    Section(
        "performance",
        "ICL performance against shots",
        "Accuracy of the query's answer against the number of demonstrations, per task (thin) and over all "
        "prompts including the Null task, whose answers are random (thick), with 95% bootstrap intervals. The "
        "headline leaves the Null task out.",
        "The model learns in context: accuracy rises with shots. This is the behaviour task vectors explain.",
        lambda r: [r.figure()],
        _performance,
        _performance_line,
        Performance,
    ),
    Section(
        "geometry",
        "Geometry of task representations",
        "PCA of the pre-answer representations of each layer, one point per prompt, coloured by task; the "
        "slider picks the layer. Where TD is high, the prompts of each task form their own cluster.",
        "H §3.3 (their Fig. 2, with UMAP): task representations separate by task in the layers that encode it.",
        lambda r: [r.figure()],
        _geometry,
        _geometry_line,
        Projection,
    ),
    Section(
        "td_accuracy",
        "Task decodability predicts accuracy",
        "One point per (task, number of shots): TD at the layer of highest mean TD against accuracy on the "
        "same prompts; the dashed line is the ordinary-least-squares fit (R² and the slope's 95% interval in "
        "the title). The Null task is left out.",
        "H §4.2: TD predicts ICL performance (their R² 0.53 to 0.84 on language models).",
        lambda r: [r.figure()],
        _td_accuracy,
        _td_accuracy_line,
        TdAccuracyFit,
    ),
    Section(
        "patching",
        "Task-vector patching: correct vs incorrect vectors",
        "The residual stream at a prompt's pre-answer token is patched, at one layer at a time, with the mean "
        "vector of its own task (correct) or of another task (incorrect, Null included); the lines are the "
        "change in accuracy against the unpatched run with 95% intervals, and the override rate (how often "
        "the answer follows the injected task). The heatmap shows every (prompt task, injected task) pair at "
        "the layer the slider picks. On small models, replacing the residual can erase the query itself: "
        "compare the correct and incorrect lines, not their level.",
        "H §4.1: task vectors are causal: a correct vector keeps or improves performance, an incorrect one hurts it.",
        lambda r: [r.summary_figure(), _with_layer_slider(r.figure())],
        _patching,
        _patching_line,
        PatchingEffects,
    ),
    Section(
        "prompting",
        "Task-vector prompting",
        "A query-only (zero-shot) prompt gets, at one layer, the pre-answer residual of another in-context "
        "prompt of its task written in at its own pre-answer token; the line is its accuracy per layer, with "
        "the in-context accuracy (ceiling) and the plain zero-shot accuracy (floor). The Null task is left out.",
        "Y, after Hendel et al. (2023): a task vector alone makes a zero-shot prompt do the task; the layer where "
        "it works best is where the vector is formed.",
        lambda r: [r.figure()],
        _prompting,
        _prompting_line,
        PromptingAccuracy,
    ),
    Section(
        "heads",
        "Attention-head importance and pruning",
        "The loss increase when one attention head's output (attn.hook_z) is zero-ablated, averaged over the "
        "prompts of every task but Null (heatmap: layer against head); then how much the tasks' most important "
        "heads overlap (Jaccard, task against task), and the loss as the least important heads are removed "
        "one after another.",
        "H §3.3 and App. F: tasks of one family share the heads that carry them, and a few heads suffice.",
        lambda r: [r.figure(), r.shared_figure(), r.pruning.figure()],
        _heads,
        _heads_line,
        HeadImportance,
    ),
    Section(
        "emergence",
        "Emergence during training",
        "At every training checkpoint, on the same prompts: accuracy per task (solid, left axis) and TD per task "
        "at the best layer of the trained model (dashed, right axis); dotted vertical lines mark the steps where "
        "TD jumps.",
        "H §3.3 (Figs. 2, 9-11): accuracy and task decodability rise together during training (coupled emergence).",
        lambda r: [r.figure()],
        _emergence,
        _emergence_line,
        EmergenceResult,
    ),
    Section(
        "finetuning",
        "Finetuning early vs late layers",
        "The trained model is finetuned with LoRA (rank 16) on offset tasks it was not trained on, once on its "
        "first blocks and once on its last blocks, with the same data; the lines are TD per layer of the base "
        "model and of both variants on held-out prompts, their accuracy in the legend. TD below the finetuned "
        "blocks cannot change, by construction.",
        "H §4.4 (Table 1): finetuning the early layers improves task encoding and accuracy more than finetuning "
        "the late layers.",
        lambda r: [r.figure()],
        _finetuning,
        _finetuning_line,
        FinetuningComparison,
    ),
)
"""Every analysis of the demo, in pipeline order."""

ANALYSIS_NAMES: tuple[str, ...] = tuple(section.name for section in SECTIONS)
_BY_NAME = {section.name: section for section in SECTIONS}


def headline_numbers(results: Mapping[str, Result], run_info: Mapping[str, Any] | None = None) -> dict[str, Numbers]:
    """The headline numbers of every known result, by analysis name (JSON-ready).

    With a demo's ``run_info`` (its ``run.json``) that records ``analysis_shots``, the patching numbers also say
    the shot count the patching ran at (a patching result does not hold it).

    Raises:
        ArtefactError: A result under a demo analysis's name is not of that analysis's type.
    """
    for name, result in results.items():
        problem = _wrong_kind(name, result)
        if problem is not None:
            raise ArtefactError(
                f"The result named {name!r} {problem}; pass each demo analysis's result under its own name, and "
                "other results under other names."
            )
    numbers = {name: _BY_NAME[name].numbers(result) for name, result in results.items() if name in _BY_NAME}
    chosen = (run_info or {}).get("analysis_shots")
    if chosen and "patching" in numbers:
        numbers["patching"] = {"shots": chosen["patching"], **numbers["patching"]}
    return numbers


def summary_lines(numbers: Mapping[str, Numbers]) -> list[tuple[str, str, str]]:
    """``(analysis name, section title, one line of numbers)`` for every analysis in ``numbers``, in order."""
    return [
        (name, _BY_NAME[name].title, _BY_NAME[name].line(numbers[name])) for name in ANALYSIS_NAMES if name in numbers
    ]


def save_summary(out: str | Path, numbers: Mapping[str, Numbers]) -> Path:
    """Write the headline numbers to ``out/summary.json`` (atomically).

    Raises:
        ResultWriteError: The file could not be written (the message says why).
    """
    return write_atomically(Path(out) / SUMMARY_FILE, (json.dumps(numbers, indent=1) + "\n").encode("utf-8"))


# --- run.json ----------------------------------------------------------------------------------------------


def read_run_info(path: str | Path) -> dict[str, Any] | None:
    """The run description a demo or pretrained run wrote to ``path`` (its ``run.json``), checked.

    Returns:
        The parsed file, or ``None`` when there is no file at ``path``.

    Raises:
        ArtefactError: The file cannot be read, is not JSON (truncated or corrupt), or a value the report
            shows has the wrong type (the message names the field).
    """
    path = Path(path)
    if not path.exists():
        return None
    fix = (
        "restore it, or delete it and rerun the `tv-lens demo`, `train` or `analyze --model` command that made this "
        "directory, which writes it again"
    )
    if not path.is_file():
        raise ArtefactError(f"{path} is not a file, where a run writes its run.json; {fix}.")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ArtefactError(f"{path} cannot be read ({type(error).__name__}: {error}); {fix}.") from error
    except (ValueError, RecursionError) as error:  # RecursionError: arrays nested thousands deep
        raise ArtefactError(f"{path} is not valid JSON ({error}): it is truncated or corrupt; {fix}.") from error
    check_run_info(info, str(path), fix)
    return info  # type: ignore[no-any-return]


def write_run_info(out: str | Path, info: Mapping[str, Any]) -> Path:
    """Write ``info`` as ``out/run.json``, atomically (a failed write leaves the previous file untouched).

    Raises:
        ResultWriteError: The file could not be written (full disk, no permission: the message says which).
    """
    check_run_info(dict(info), "the run description to write", "this is a bug in tv_lens; please report it")
    return write_atomically(Path(out) / RUN_FILE, (json.dumps(info, indent=1) + "\n").encode("utf-8"))


def check_run_info(
    info: Any, source: str = "run_info", fix: str = "pass the contents of a run.json tv_lens wrote"
) -> None:
    """Raise an :class:`ArtefactError` unless ``info`` has the shape of a ``run.json`` tv_lens writes.

    Only the values the report shows are checked: a demo run's ``config`` (recipe, backend, seed),
    ``recipe_description`` and ``training`` summary, or a pretrained run's ``description`` lines.
    """

    def expect(value: Any, ok: bool, field: str, what: str) -> None:
        if not ok:
            raise ArtefactError(
                f"{source} is not a run file as tv_lens writes it: {field} should be {what}, but it is "
                f"{type(value).__name__} {_clip(value)}; it was edited or is corrupt; {fix}."
            )

    expect(info, isinstance(info, dict), "the whole file", "a JSON object")
    if "description" in info:
        lines = info["description"]
        expect(
            lines,
            isinstance(lines, list) and all(isinstance(x, str) for x in lines),
            "'description'",
            "a list of strings",
        )
        return
    config = info.get("config", {})
    expect(config, isinstance(config, dict), "'config'", "an object of settings")
    for key in ("recipe", "backend"):
        expect(config.get(key), isinstance(config.get(key, ""), str), f"'config.{key}'", "a string")
    expect(config.get("seed"), _is_int(config.get("seed", 0)), "'config.seed'", "an integer")
    description = info.get("recipe_description", "")
    expect(description, isinstance(description, str), "'recipe_description'", "a string")
    training = info.get("training", {})
    expect(training, isinstance(training, dict), "'training'", "an object (steps, elapsed_s, eval_step, accuracy)")
    for key in ("steps", "eval_step"):
        value = training.get(key)
        expect(value, value is None or _is_int(value), f"'training.{key}'", "an integer")
    elapsed = training.get("elapsed_s")
    expect(elapsed, elapsed is None or _is_number(elapsed), "'training.elapsed_s'", "a number of seconds")
    accuracy = training.get("accuracy", {})
    expect(
        accuracy,
        isinstance(accuracy, dict) and all(_is_number(v) for v in accuracy.values()),
        "'training.accuracy'",
        "an object of task name: accuracy (a number)",
    )
    if "analysis_shots" in info:
        chosen = info["analysis_shots"]
        shape = "an object with td_accuracy (a list of shot counts), patching (a shot count), accuracy and ceiling"
        expect(chosen, isinstance(chosen, dict), "'analysis_shots'", shape)
        td, patching = chosen.get("td_accuracy"), chosen.get("patching")
        expect(
            td,
            isinstance(td, list) and bool(td) and all(_is_int(x) for x in td),
            "'analysis_shots.td_accuracy'",
            "a non-empty list of shot counts",
        )
        expect(patching, _is_int(patching), "'analysis_shots.patching'", "a shot count (an integer)")
        expect(chosen.get("ceiling"), _is_number(chosen.get("ceiling")), "'analysis_shots.ceiling'", "a number")
        curve = chosen.get("accuracy")
        expect(
            curve,
            isinstance(curve, dict) and all(_is_number(v) for v in curve.values()),
            "'analysis_shots.accuracy'",
            "an object of shot count: accuracy (a number)",
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _clip(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- HTML ------------------------------------------------------------------------------------------------

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
    if "description" in run_info:  # a run that describes itself in lines of plain text (a pretrained model's)
        return '<p class="note">' + "<br>".join(html.escape(str(line)) for line in run_info["description"]) + "</p>"
    config = run_info.get("config", {})
    training = run_info.get("training", {})
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
    return '<p class="note">' + "<br>".join(facts) + "</p>"


def shots_sentence(chosen: Mapping[str, Any]) -> str:
    """One sentence on the shot counts TD→accuracy and patching ran at (``run.json``'s ``analysis_shots``)."""
    curve = ", ".join(f"{_count(shots, 'shot')} {value:.3f}" for shots, value in chosen["accuracy"].items())
    ceiling = f"{chosen['ceiling']:.2f}"
    below = [int(shots) for shots, value in chosen["accuracy"].items() if value < chosen["ceiling"]]
    why = (
        f"the shot counts where ICL accuracy on the non-Null tasks is below {ceiling}"
        if below
        else f"the smallest shot counts: ICL accuracy on the non-Null tasks is at least {ceiling} at every candidate, "
        "so TD has little variation to predict and a correct task vector little room to help"
    )
    td = ", ".join(map(str, chosen["td_accuracy"]))
    return f"TD → accuracy ran at shots {td} and patching at {_count(chosen['patching'], 'shot')}: {why} ({curve})."


def _summary_html(numbers: Mapping[str, Numbers]) -> str:
    rows = [
        f'<tr><td><a href="#{name}">{html.escape(title)}</a></td><td>{html.escape(line)}</td></tr>'
        for name, title, line in summary_lines(numbers)
    ]
    return '<h2 id="summary">Headline numbers</h2><table class="summary">' + "".join(rows) + "</table>"


def _section_html(name: str, result: Result, numbers: Numbers | None) -> str:
    section = _BY_NAME.get(name)
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
