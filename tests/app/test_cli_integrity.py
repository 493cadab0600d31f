"""`tv-lens` under bad input: one line on stderr naming the problem and the fix, exit status 2, nothing written.

Each case is a directory or argument a person or a faulty tool could produce: a truncated or wrongly typed
run.json, a result saved under another analysis's name, output paths that are files, lie under files or
cannot be written, ``--set`` values of the wrong type, ``--threads`` out of range. The HTML report shows
every name and run.json value it takes from files as text: tags in task names, result file names and run.json
values are escaped, and figure data cannot close the page's script tags.
"""

from __future__ import annotations

import errno
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import run_cli
from plotly.offline import get_plotlyjs
from reliability_helpers import POOL, one_thread, tiny_model  # noqa: F401  (one_thread: autouse)

import tv_lens.app.cli.paths as cli_paths
from tv_lens.analyses import TaskDecodability
from tv_lens.app.demo import DemoConfig
from tv_lens.app.report import environment_sentence, render_report
from tv_lens.app.run_files import load_results, read_run_info
from tv_lens.app.sections import headline_numbers
from tv_lens.errors import ArtefactError, ResultFileError

HOSTILE_TASK = "</script><script>alert(1)</script>"
HOSTILE_VALUE = '"><img src=x onerror=alert(2)>'
HOSTILE_FILE = 'sweep"><img src=x onerror=alert(3)>'


def one_line_error(status: int, stderr: str, *patterns: str) -> str:
    """Assert exit status 2 and a single line on stderr without a traceback that matches every pattern."""
    assert status == 2, stderr
    assert stderr.count("\n") == 1 and stderr.endswith("\n") and "Traceback" not in stderr, stderr
    for pattern in patterns:
        assert re.search(pattern, stderr), (pattern, stderr)
    return stderr


def cli_error(*argv: Any) -> str:
    status, stdout, stderr = run_cli(*(str(arg) for arg in argv))
    assert stdout == ""
    return one_line_error(status, stderr)


def demo_run_json(**training: Any) -> dict[str, Any]:
    """A run.json as the demo writes it."""
    summary = {"steps": 200, "elapsed_s": 1.5, "eval_step": 200, "accuracy": {"offset(1)": 0.9, "offset(2)": 0.8}}
    return {"config": DemoConfig.quick().to_dict(), "recipe_description": "Two blocks.", "training": summary | training}


@pytest.fixture(scope="module")
def decodability():
    return TaskDecodability(k=2, n_bootstrap=10).run(tiny_model(), POOL, 4, 3, 0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, decodability) -> Path:
    """A directory with one saved result and a well-formed run.json (copy it before changing it)."""
    out = tmp_path_factory.mktemp("run")
    decodability.save(out / "results" / "decodability.safetensors")
    (out / "run.json").write_text(json.dumps(demo_run_json()))
    return out


@pytest.fixture
def copy(run_dir, tmp_path) -> Path:
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """main() sets torch's thread count (--threads); give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --- run.json -------------------------------------------------------------------------------------------


def _set(path: str, value: Any):
    def edit(info: dict[str, Any]) -> dict[str, Any]:
        *parents, key = path.split(".")
        target = info
        for parent in parents:
            target = target[parent]
        target[key] = value
        return info

    return edit


RUN_JSON_EDITS = {
    "config_is_a_list": (_set("config", [1, 2]), r"'config' should be an object"),
    "training_is_a_list": (_set("training", []), r"'training' should be an object"),
    "accuracy_is_text": (_set("training.accuracy", {"offset(1)": "high"}), r"'training\.accuracy' should be"),
    "steps_is_text": (_set("training.steps", "200"), r"'training\.steps' should be an integer"),
    "seed_is_text": (_set("config.seed", "0"), r"'config\.seed' should be an integer"),
    "whole_file_a_list": (lambda info: [info], r"the whole file should be a JSON object"),
    "threads_are_text": (
        _set("training.environment", {"torch": "2.13.0", "torch_threads": "1"}),
        r"'training\.environment' should be an object of versions \(strings\) and torch_threads \(an integer\)",
    ),
}


@pytest.mark.parametrize("command", ["report", "analyze", "train"])
@pytest.mark.parametrize("case", ["truncated", "nested_too_deeply", *RUN_JSON_EDITS])
def test_a_corrupt_or_mistyped_run_json_is_one_line_naming_the_file_and_the_fix(copy, command, case):
    path = copy / "run.json"
    if case in ("truncated", "nested_too_deeply"):
        text = path.read_text()
        path.write_text(text[: len(text) // 2] if case == "truncated" else "[" * 10_000 + "]" * 10_000)
        problem = r"(not valid JSON|unreadable)"
    else:
        edit, problem = RUN_JSON_EDITS[case]
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    before = sorted(p.name for p in copy.iterdir())
    extra = ("--quick", "--no-progress") if command == "train" else ()
    message = cli_error(command, "--out", copy, *extra)
    assert re.search(rf"{re.escape(str(path))} .*{problem}", message), message
    assert re.search(r"(delete it|restore it)", message), message
    assert sorted(p.name for p in copy.iterdir()) == before  # no report, summary or checkpoint written


def test_read_run_info_returns_a_well_formed_file_and_none_without_one(run_dir, tmp_path):
    assert read_run_info(run_dir / "run.json") == json.loads(json.dumps(demo_run_json()))
    assert read_run_info(tmp_path / "run.json") is None
    (tmp_path / "run.json").mkdir()
    with pytest.raises(ArtefactError, match=r"is not a file"):
        read_run_info(tmp_path / "run.json")


def test_render_report_checks_a_run_info_passed_directly(decodability):
    with pytest.raises(ArtefactError, match=r"run_info is not a run file .*'training\.eval_step' should be"):
        render_report({"decodability": decodability}, _set("training.eval_step", [200])(demo_run_json()))


def test_the_installed_command_reports_a_corrupt_run_json_in_one_line(copy):
    (copy / "run.json").write_text('{"config": {"recipe": ')
    command = Path(sys.executable).with_name("tv-lens")
    done = subprocess.run([command, "report", "--out", copy], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"tv-lens report: error: {copy / 'run.json'} is not valid JSON")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# --- result files ---------------------------------------------------------------------------------------


def test_a_result_saved_under_another_analysis_name_is_refused(copy, decodability):
    decodability.save(copy / "results" / "performance.safetensors")
    message = cli_error("report", "--out", copy)
    path = re.escape(str(copy / "results" / "performance.safetensors"))
    assert re.search(rf"{path} holds a Decodability, but .*needs a Performance", message), message
    assert "--only performance" in message and "my_performance.safetensors" in message
    assert not (copy / "report.html").exists() and not (copy / "summary.json").exists()
    with pytest.raises(ResultFileError, match=r"saved under another analysis's name"):
        load_results(copy / "results")
    with pytest.raises(ArtefactError, match=r"'heads' holds a Decodability, but .*needs a HeadImportance"):
        headline_numbers({"heads": decodability})


# --- output paths ---------------------------------------------------------------------------------------


def _unwritable(directory: Path):
    """``tempfile.mkstemp`` as on a read-only directory (root ignores chmod, so the denial is simulated)."""
    real = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> Any:
        if Path(kwargs.get("dir", "")) == directory:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(*args, **kwargs)

    return mkstemp


def test_report_output_that_is_a_directory_a_foreign_file_or_under_a_file_is_refused(copy, tmp_path):
    foreign = tmp_path / "notes.txt"
    foreign.write_text("my notes")
    message = cli_error("report", "--out", copy, "--output", foreign)
    assert f"{foreign} is an existing file that is not a tv_lens report; it is not overwritten" in message
    assert foreign.read_text() == "my notes"
    message = cli_error("report", "--out", copy, "--output", copy / "run.json")  # would destroy the run's record
    assert "is not a tv_lens report" in message
    assert json.loads((copy / "run.json").read_text()) == json.loads(json.dumps(demo_run_json()))
    message = cli_error("report", "--out", copy, "--output", copy / "results")
    assert f"{copy / 'results'} is a directory; give a file path, e.g. {copy / 'results' / 'report.html'}" in message
    message = cli_error("report", "--out", copy, "--output", copy / "results" / "report.safetensors")
    assert "ends in .safetensors, the suffix of result files" in message and "report.html" in message
    assert not (copy / "results" / "report.safetensors").exists()
    message = cli_error("report", "--out", copy, "--output", foreign / "sub" / "report.html")
    assert f"lies under {foreign}, which is a file, not a directory" in message
    assert not (copy / "summary.json").exists()
    # A report is rebuilt in place.
    target = tmp_path / "report.html"
    assert run_cli("report", "--out", str(copy), "--output", str(target))[0] == 0
    assert run_cli("report", "--out", str(copy), "--output", str(target))[0] == 0
    assert "<title>tv_lens report</title>" in target.read_text()


def test_report_output_in_a_read_only_directory_is_refused_before_writing(copy, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(cli_paths.tempfile, "mkstemp", _unwritable(locked))
    message = cli_error("report", "--out", copy, "--output", locked / "report.html")
    assert f"{locked} is not writable (PermissionError" in message and "pass a path in a directory" in message
    assert not (copy / "summary.json").exists() and os.listdir(locked) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only directories")
def test_report_output_in_a_really_read_only_directory_is_refused(copy, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert "is not writable" in cli_error("report", "--out", copy, "--output", locked / "report.html")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("command", ["demo", "train", "analyze", "report"])
def test_out_that_is_a_file_lies_under_a_file_or_is_read_only_is_refused_before_any_work(
    command, tmp_path, monkeypatch
):
    extra = ("--quick", "--no-progress") if command in ("demo", "train") else ()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    message = cli_error(command, "--out", blocker, *extra)
    assert f"--out {blocker} is a file, not a directory; pass a directory" in message
    message = cli_error(command, "--out", blocker / "run", *extra)
    assert f"--out {blocker / 'run'} lies under {blocker}, which is a file" in message
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(cli_paths.tempfile, "mkstemp", _unwritable(locked))
    message = cli_error(command, "--out", locked / "run", *extra)
    assert f"--out {locked / 'run'} cannot be written to: {locked} is not writable" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "locked"] and os.listdir(locked) == []


# --- arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("seed=abc", r"DemoConfig\.seed must be an int >= 0, got 'abc'"),
        ("seed=-1", r"DemoConfig\.seed must be an int >= 0, got -1"),
        ("n_bootstrap=many", r"DemoConfig\.n_bootstrap must be an int >= 0"),
        ("n_per_task=1.5", r"DemoConfig\.n_per_task must be an int >= 1, got 1\.5"),
        ("performance_shots=5", r"DemoConfig\.performance_shots must be a non-empty list of ints >= 0, got 5"),
        ('td_accuracy_shots=[1,"a"]', r"DemoConfig\.td_accuracy_shots must be a non-empty list of ints"),
        ("performance_shots=[]", r"DemoConfig\.performance_shots must be a non-empty list"),
        ("recipe=5", r"DemoConfig\.recipe must be a recipe name \(a string\), got 5"),
        ("patching_mode=true", r"patching_mode must be one of"),
        ("n_per_tusk=50", r"Unknown setting\(s\) \['n_per_tusk'\] for --set; the settings of DemoConfig are"),
    ],
)
@pytest.mark.parametrize("command", ["demo", "train"])
def test_set_with_a_value_of_the_wrong_type_or_an_unknown_key_is_refused_before_any_work(
    command, setting, problem, tmp_path
):
    out = tmp_path / "out"
    message = cli_error(command, "--quick", "--out", out, "--set", setting, "--no-progress")
    assert re.search(problem, message), message
    assert not out.exists()


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        (("--set", "seed=1", "--set", "seed=2"), r"--set seed is given twice \('seed=2' the second time\)"),
        (("--seed", "3", "--set", "seed=5"), r"--seed 3 and --set seed=5 both set seed; give it once"),
        (("--seed", "0", "--set", "seed=0"), r"--seed 0 and --set seed=0 both set seed"),
        (("--backend", "hooked", "--set", "backend=bridge"), r"--backend hooked and --set backend='bridge' both set"),
        (("--recipe", "quick", "--set", "recipe=shots"), r"--recipe quick and --set recipe='shots' both set recipe"),
    ],
)
@pytest.mark.parametrize("command", ["demo", "train"])
def test_a_setting_given_twice_is_refused_not_the_last_one_taken(command, given, problem, tmp_path):
    out = tmp_path / "out"
    message = cli_error(command, "--quick", "--out", out, *given, "--no-progress")
    assert re.search(problem, message), message
    assert not out.exists()


@pytest.mark.parametrize("threads", ["0", "-3", str(10**9)])
@pytest.mark.parametrize("command", ["demo", "analyze"])
def test_threads_outside_one_to_the_cpu_count_are_refused(command, threads, tmp_path):
    before = torch.get_num_threads()
    message = cli_error(command, "--out", tmp_path / "out", "--threads", threads)
    assert f"--threads must be between 1 and {os.cpu_count()} (the CPUs of this machine), got {threads}" in message
    assert torch.get_num_threads() == before and not (tmp_path / "out").exists()


# --- the HTML report ------------------------------------------------------------------------------------


class _Tags(HTMLParser):
    """The start tags of a document and the text of its script elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def test_the_report_shows_names_and_run_json_values_from_files_as_text(copy, decodability):
    hostile = replace(decodability, task_names=(HOSTILE_TASK, *decodability.task_names[1:]))
    hostile.save(copy / "results" / "decodability.safetensors")
    hostile.save(copy / "results" / f"{HOSTILE_FILE}.safetensors")
    info = demo_run_json(accuracy={HOSTILE_TASK: 0.5})
    info["config"]["recipe"] = HOSTILE_VALUE
    info["recipe_description"] = HOSTILE_VALUE
    (copy / "run.json").write_text(json.dumps(info))
    status, _, stderr = run_cli("report", "--out", str(copy))
    assert status == 0, stderr
    report = (copy / "report.html").read_text().replace(get_plotlyjs(), "")

    for raw in (HOSTILE_TASK, HOSTILE_VALUE, HOSTILE_FILE, "<img", "alert(1)</script>"):
        assert raw not in report, raw
    assert html.escape(HOSTILE_VALUE) in report  # the recipe and its description, as text
    assert f"{html.escape(HOSTILE_TASK)} 0.500" in report  # the held-out accuracy of the hostile task
    assert f"{html.escape(HOSTILE_FILE)} (Decodability)" in report  # the extra result's section title
    assert "\\u003c\\u002fscript\\u003e" in report  # the task name inside the figure data, escaped

    parsed = _Tags()
    parsed.feed(report)
    assert "img" not in parsed.tags
    figures = report.count("Plotly.newPlot")
    assert parsed.tags.count("script") == 1 + figures  # the plotly bundle, then one per figure: none injected
    assert all(script.count("Plotly.newPlot") == 1 for script in parsed.scripts[1:])
    ids = [value for name, value in parsed.attributes if name == "id"]
    assert all(value is not None and re.fullmatch(r"[\w\-]+", value) for value in ids if value != HOSTILE_FILE), ids
    assert HOSTILE_FILE in ids  # the section of the extra result keeps its name as its (escaped) id


def test_the_environment_sentence_names_what_was_recorded_and_says_what_reproduces_numbers():
    environment = {"torch": "2.13.0", "torch_threads": 1, "transformer_lens": "4.3.0", "tv_lens": "0.1.0"}
    assert environment_sentence(environment) == (
        "Computed with torch 2.13.0, TransformerLens 4.3.0 on 1 CPU thread, tv_lens 0.1.0; on a CPU, numbers are "
        "bit-identical only under the same torch version, thread count and kind of CPU."
    )
    environment["cpu"] = "AMD EPYC, AVX512"
    assert "on 1 CPU thread (AMD EPYC, AVX512), tv_lens 0.1.0;" in environment_sentence(environment)
    environment["gpu"] = "none"  # a run that used no GPU says nothing of one
    assert "on 1 CPU thread (AMD EPYC, AVX512), tv_lens 0.1.0;" in environment_sentence(environment)
    environment["gpu"] = "NVIDIA H200 x1, CUDA 12.8"
    assert "(AMD EPYC, AVX512), GPU NVIDIA H200 x1, CUDA 12.8, tv_lens 0.1.0;" in environment_sentence(environment)
    assert environment_sentence({"torch_threads": 2}).startswith("Computed with unrecorded versions on 2 CPU threads;")


def test_a_pretrained_runs_report_adds_the_environment_to_its_description(decodability):
    info = {"description": ["Model: m."], "environment": {"torch": "2.13.0", "torch_threads": 3}}
    page = render_report({"decodability": decodability}, info)
    assert "Model: m.<br>Computed with torch 2.13.0 on 3 CPU threads;" in page
