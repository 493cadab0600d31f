"""The files of a run directory besides checkpoints: results, ``run.json`` and ``summary.json``, read and written."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from tv_lens.app.sections import ANALYSIS_NAMES, Numbers, wrong_kind
from tv_lens.checks import is_int, is_number
from tv_lens.environment import is_environment
from tv_lens.errors import ArtefactError, ConfigError, ResultFileError
from tv_lens.results import Result
from tv_lens.results.storage import write_atomically

__all__ = [
    "RESULTS",
    "RESULT_SUFFIX",
    "RUN_FILE",
    "SUMMARY_FILE",
    "check_run_info",
    "check_settings",
    "load_results",
    "read_run_info",
    "result_path",
    "save_summary",
    "write_run_info",
]

RUN_FILE = "run.json"
RESULTS = "results"  # the folder of a run directory that holds its results
RESULT_SUFFIX = ".safetensors"
SUMMARY_FILE = "summary.json"


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
        problem = wrong_kind(name, results[name])
        if problem is not None:
            raise ResultFileError(
                f"{stems[name]} {problem}: a result was saved under another analysis's name. Re-run that analysis "
                f"(`tv-lens analyze --out {results_dir.parent} --only {name}`), or rename the file to a name that is "
                f"no demo analysis's (e.g. my_{name}{RESULT_SUFFIX}) to show it in a section of its own."
            )
    return results


def save_summary(out: str | Path, numbers: Mapping[str, Numbers]) -> Path:
    """Write the headline numbers to ``out/summary.json`` (atomically), as standard JSON.

    A number that is not finite (the R² of scores that never vary, the mean of a role no prompt has) is written
    as ``null``: JSON has no NaN or infinity, and readers other than Python's refuse them.

    Raises:
        ResultWriteError: The file could not be written (the message says why).
    """
    text = json.dumps(_finite_or_null(numbers), indent=1, allow_nan=False)
    return write_atomically(Path(out) / SUMMARY_FILE, (text + "\n").encode("utf-8"))


def _finite_or_null(value: Any) -> Any:
    """``value`` with every float that is not finite, at any depth of its dicts, lists and tuples, as ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


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


def check_settings(config_class: type[Any], settings: Mapping[str, Any]) -> None:
    """Raise a :class:`~tv_lens.errors.ConfigError` naming the keys of ``settings`` that ``config_class`` lacks.

    ``config_class`` is a dataclass of settings stored in ``run.json`` (the demo's or a pretrained run's).
    """
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"Unknown {config_class.__name__} settings {unknown}; known: {sorted(known)}.")


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

    def expect_environment(environment: Any, field: str) -> None:
        expect(
            environment,
            is_environment(environment),
            field,
            "an object of versions (strings) and torch_threads (an integer)",
        )

    if "environment" in info:
        expect_environment(info["environment"], "'environment'")
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
    expect(config.get("seed"), is_int(config.get("seed", 0)), "'config.seed'", "an integer")
    description = info.get("recipe_description", "")
    expect(description, isinstance(description, str), "'recipe_description'", "a string")
    training = info.get("training", {})
    expect(training, isinstance(training, dict), "'training'", "an object (steps, elapsed_s, eval_step, accuracy)")
    for key in ("steps", "eval_step"):
        value = training.get(key)
        expect(value, value is None or is_int(value), f"'training.{key}'", "an integer")
    elapsed = training.get("elapsed_s")
    expect(elapsed, elapsed is None or is_number(elapsed), "'training.elapsed_s'", "a number of seconds")
    if "environment" in training:
        expect_environment(training["environment"], "'training.environment'")
    accuracy = training.get("accuracy", {})
    expect(
        accuracy,
        isinstance(accuracy, dict) and all(is_number(v) for v in accuracy.values()),
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
            isinstance(td, list) and bool(td) and all(is_int(x) for x in td),
            "'analysis_shots.td_accuracy'",
            "a non-empty list of shot counts",
        )
        expect(patching, is_int(patching), "'analysis_shots.patching'", "a shot count (an integer)")
        expect(chosen.get("ceiling"), is_number(chosen.get("ceiling")), "'analysis_shots.ceiling'", "a number")
        curve = chosen.get("accuracy")
        expect(
            curve,
            isinstance(curve, dict) and all(is_number(v) for v in curve.values()),
            "'analysis_shots.accuracy'",
            "an object of shot count: accuracy (a number)",
        )


def _clip(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
