"""`tv-lens demo --quick` end to end (run once per session), its saved results and report; the other commands."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import fingerprint, run_cli
from plotly.offline import get_plotlyjs

import tv_lens
import tv_lens.app.demo.training as demo_training
from tv_lens.app.demo import ANALYSES, DemoConfig, finetuning_pool, train_or_load
from tv_lens.app.run_files import load_results, read_run_info
from tv_lens.app.sections import ANALYSIS_NAMES, SECTIONS, headline_numbers
from tv_lens.errors import ArtefactError, ConfigError
from tv_lens.results import (
    LAYER_AXIS_TITLE,
    Decodability,
    EmergenceResult,
    FinetuningComparison,
    HeadImportance,
    KnockoutEffects,
    PatchingEffects,
    Performance,
    Projection,
    PromptingAccuracy,
    Result,
    RoleAttention,
    TdAccuracyFit,
)
from tv_lens.tasks import bitwise_pool, offset_pool
from tv_lens.training import list_checkpoints, load_checkpoint, recipes

RESULT_TYPES = {
    "decodability": Decodability,
    "performance": Performance,
    "geometry": Projection,
    "td_accuracy": TdAccuracyFit,
    "patching": PatchingEffects,
    "prompting": PromptingAccuracy,
    "heads": HeadImportance,
    "attention": RoleAttention,
    "knockout": KnockoutEffects,
    "emergence": EmergenceResult,
    "finetuning": FinetuningComparison,
}
FIGURES_PER_SECTION = {"decodability": 2, "patching": 2, "heads": 3}  # every other section draws one


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """main() sets torch's thread count (--threads); give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_every_result_is_saved_and_loads_as_what_the_demo_computed(quick_demo):
    out, run = quick_demo["out"], quick_demo["run"]
    assert sorted(p.name for p in (out / "results").iterdir()) == sorted(f"{n}.safetensors" for n in RESULT_TYPES)
    for name, kind in RESULT_TYPES.items():
        loaded = Result.load(out / "results" / f"{name}.safetensors")
        assert type(loaded) is kind and loaded == run.results[name], name
    assert run.trained.trained_now and run.trained.steps == recipes["quick"].train.schedule.max_steps


def test_saved_results_have_the_quick_models_shapes_and_finite_numbers_in_range(quick_demo):
    results = load_results(quick_demo["out"] / "results")
    tasks = ("offset(1)", "offset(3)", "null")
    td = results["decodability"]
    assert td.layers == (-1, 0, 1) and td.task_names == tasks and td.td.shape == (3,)
    assert bool(((td.td >= 0) & (td.td <= 1)).all()) and bool((td.td_ci[:, 0] <= td.td_ci[:, 1]).all())
    performance = results["performance"]
    assert performance.shots == (0, 1, 2, 4, 6) and performance.values.shape == (3, 5)
    assert bool(torch.isfinite(performance.values).all()) and bool((performance.n_prompts == 40).all())
    assert results["geometry"].coords.shape == (3, 3 * 40, 2)
    assert results["td_accuracy"].shot_grid == (1, 2) and len(results["td_accuracy"].td) == 2 * 2  # at ceiling
    patching = results["patching"]
    assert patching.layers == (0, 1) and patching.mode == "add" and bool((patching.writes > 0).all())
    assert bool(torch.isfinite(patching.correct_loss_change).all())
    assert results["prompting"].layers == (0, 1) and 0 <= results["prompting"].best_accuracy <= 1
    assert results["heads"].importance.shape == (2, 4, 3) and bool(torch.isfinite(results["heads"].overall).all())
    assert results["emergence"].steps == tuple(range(20, 201, 20))
    assert [p.name for p in quick_demo["run"].trained.checkpoints] == [f"step-{s:07d}.pt" for s in range(20, 201, 20)]
    finetuning = results["finetuning"]
    assert finetuning.variants == ("base", "first:1", "last:1") and finetuning.blocks == ((), (0,), (1,))
    assert finetuning.task_names == ("offset(4)", "offset(5)", "null")  # offsets the model never trained on
    assert bool(((finetuning.overall >= 0) & (finetuning.overall <= 1)).all())


def test_headline_icl_accuracy_matches_an_independent_scoring_of_the_trained_model(quick_demo):
    out, run = quick_demo["out"], quick_demo["run"]
    summary = json.loads((out / "summary.json").read_text())
    numbers = headline_numbers(load_results(out / "results"), read_run_info(out / "run.json"))
    assert summary == json.loads(json.dumps(numbers), parse_constant=lambda constant: None)  # NaN and infinities: null
    icl = summary["performance"]["icl_accuracy"]
    performance = run.results["performance"]
    assert icl == float(performance.values[:2, -1].mean())  # the two offset tasks at 6 shots, Null left out
    model = load_checkpoint(list_checkpoints(out / "checkpoints")[-1]).load_model()
    batch = recipes["quick"].build_pool().sample(40, 6, seed=0)
    with torch.no_grad():
        logits = model(batch.inputs)
    predicted = logits[torch.arange(len(batch)), batch.answer_pos].argmax(-1)
    correct = (predicted == batch.answers[:, 0]).double()
    assert icl == pytest.approx(float(correct[batch.task_ids < 2].mean()), abs=1e-12)
    assert f"{icl:.3f} accuracy at 6 shots" in quick_demo["stdout"]


def test_run_json_records_the_software_the_model_was_trained_with_as_its_checkpoints_do(quick_demo):
    out = quick_demo["out"]
    recorded = read_run_info(out / "run.json")["training"]["environment"]  # type: ignore[index]
    assert recorded == load_checkpoint(list_checkpoints(out / "checkpoints")[-1]).environment
    assert recorded["torch"] == str(torch.__version__) and recorded["tv_lens"] == tv_lens.__version__
    sentence = f"Computed with torch {torch.__version__}, TransformerLens {recorded['transformer_lens']}"
    assert sentence in (out / "report.html").read_text()


def test_td_accuracy_and_patching_run_at_the_shots_chosen_from_an_independent_accuracy_curve(quick_demo):
    out, run = quick_demo["out"], quick_demo["run"]
    chosen = json.loads((out / "run.json").read_text())["analysis_shots"]
    model = load_checkpoint(list_checkpoints(out / "checkpoints")[-1]).load_model()
    pool = recipes["quick"].build_pool()

    def clean_run(n_per_task: int, shots: int):
        batch = pool.sample(n_per_task, shots, seed=0)
        with torch.no_grad():
            logits = model(batch.inputs)[torch.arange(len(batch)), batch.answer_pos]
        return batch, (logits.argmax(-1) == batch.answers[:, 0]).double()

    accuracy = {}
    for shots in (1, 2, 4, 6):  # the quick preset's candidates; mean over the two offset tasks, Null left out
        batch, correct = clean_run(40, shots)
        accuracy[shots] = sum(float(correct[batch.task_ids == t].mean()) for t in (0, 1)) / 2
    assert chosen["accuracy"] == {str(s): pytest.approx(value, abs=1e-12) for s, value in accuracy.items()}
    below = [s for s, value in accuracy.items() if value < 0.95]
    assert below == []  # the quick model is at its ceiling from one shot: the smallest shot counts are taken
    assert chosen["td_accuracy"] == [1, 2] and chosen["patching"] == 1 and chosen["ceiling"] == 0.95
    assert run.results["td_accuracy"].shot_grid == (1, 2)
    batch, correct = clean_run(24, chosen["patching"])  # the patched prompts: their unpatched correctness
    assert torch.equal(run.results["patching"].clean_correct, correct.to(run.results["patching"].clean_correct))
    assert run.numbers["patching"]["shots"] == 1 and "(add, 1 shot;" in quick_demo["stdout"]
    assert "TD → accuracy ran at shots 1, 2 and patching at 1 shot: the smallest shot counts" in quick_demo["report"]
    assert "over 4 (task, shots) points at shots 1, 2" in quick_demo["stdout"]


def test_quick_model_shows_the_papers_signatures(quick_demo):
    numbers = quick_demo["run"].numbers
    assert numbers["performance"]["icl_accuracy"] > 0.9 > numbers["performance"]["zero_shot_accuracy"] + 0.3
    decodability = numbers["decodability"]
    assert decodability["best_td_ci"][0] > decodability["chance"] + 0.2  # the task is decodable
    patching = numbers["patching"]
    assert patching["incorrect_loss_change_ci"][0] > patching["correct_loss_change_ci"][1]  # H §4.1
    accuracy = numbers["finetuning"]["accuracy"]
    assert accuracy["first:1"] > accuracy["last:1"] + 0.1 and accuracy["first:1"] > accuracy["base"]  # H §4.4


def test_summary_names_the_report_and_every_analysis(quick_demo):
    stdout, out = quick_demo["stdout"], quick_demo["out"]
    assert "model trained, 200 steps" in stdout and str(out / "report.html") in stdout
    for section in SECTIONS:
        assert section.title in stdout


def test_report_is_self_contained_with_a_section_per_analysis(quick_demo):
    report = quick_demo["report"]
    bundle = get_plotlyjs()
    assert report.count(bundle) == 1  # plotly embedded once
    rest = report.replace(bundle, "")
    assert not re.search(r"https?://", rest) and "<script src" not in rest and "<link" not in rest
    assert re.findall(r'<section id="(\w+)"', rest) == list(ANALYSIS_NAMES)
    assert rest.count("Plotly.newPlot") == sum(FIGURES_PER_SECTION.get(n, 1) for n in ANALYSIS_NAMES)
    assert LAYER_AXIS_TITLE in rest and "Tests: H §4.1" in rest
    assert "recipe <b>quick</b>" in rest


def test_second_demo_loads_the_model_instead_of_retraining(quick_demo, monkeypatch):
    out = quick_demo["out"]

    def no_training(*args, **kwargs):
        raise AssertionError("the demo retrained a finished model")

    monkeypatch.setattr(demo_training, "train", no_training)
    status, stdout, stderr = run_cli("demo", "--quick", "--out", str(out), "--only", "performance", "--no-progress")
    assert status == 0, stderr
    assert "loaded (already trained, not retrained)" in stdout
    assert fingerprint(out / "checkpoints") == quick_demo["checkpoints"]
    assert Result.load(out / "results" / "performance.safetensors") == quick_demo["run"].results["performance"]
    # run.json is rewritten but keeps the shots the saved TD→accuracy and patching results ran at
    assert json.loads((out / "run.json").read_text())["analysis_shots"]["td_accuracy"] == [1, 2]


def test_td_accuracy_alone_at_other_shots_than_the_saved_patching_ran_at_is_refused(quick_demo, tmp_path):
    shutil.copytree(quick_demo["out"], tmp_path, dirs_exist_ok=True)
    results = fingerprint(tmp_path / "results")
    run_file = (tmp_path / "run.json").read_text()
    stored = json.loads(run_file)["analysis_shots"]
    assert stored["patching"] == 1  # the new candidates cannot choose it: the report would state a wrong shot count
    again = ("demo", "--quick", "--out", tmp_path, "--no-progress", "--only", "td_accuracy")
    status, _, stderr = run_cli(*again, "--set", "td_accuracy_shots=[4,6]")
    assert status == 2 and "The saved patching result ran at shots 1" in stderr
    assert "--only td_accuracy patching" in stderr
    assert fingerprint(tmp_path / "results") == results
    assert (tmp_path / "run.json").read_text() == run_file  # the refused settings are not recorded
    status, _, stderr = run_cli(*again)  # the stored settings choose the same shots: the saved patching stays true
    assert status == 0, stderr
    assert json.loads((tmp_path / "summary.json").read_text())["patching"]["shots"] == 1


def test_analyze_uses_the_stored_settings_and_finishes_an_interrupted_training_run(quick_demo, tmp_path):
    out = quick_demo["out"]
    (tmp_path / "checkpoints").mkdir()
    for checkpoint in list_checkpoints(out / "checkpoints")[:5]:  # stopped after step 100 of 200
        shutil.copy(checkpoint, tmp_path / "checkpoints")
    shutil.copy(out / "run.json", tmp_path)
    status, stdout, stderr = run_cli("analyze", "--out", str(tmp_path), "--only", "decodability", "--no-progress")
    assert status == 0, stderr
    assert stdout.startswith("tv-lens analyze: done") and "Task decodability across layers" in stdout
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 10
    final, original = (load_checkpoint(list_checkpoints(d / "checkpoints")[-1]) for d in (tmp_path, out))
    assert all(torch.equal(final.parameters[n], p) for n, p in original.parameters.items())  # resumed exactly
    assert Result.load(tmp_path / "results" / "decodability.safetensors") == quick_demo["run"].results["decodability"]
    assert re.findall(r'<section id="(\w+)"', (tmp_path / "report.html").read_text()) == ["decodability"]


def test_report_command_rebuilds_the_same_report_from_saved_results(quick_demo, tmp_path, monkeypatch):
    for name in ANALYSES:  # nothing may be recomputed
        monkeypatch.setitem(ANALYSES, name, None)
    target = tmp_path / "again.html"
    status, stdout, stderr = run_cli("report", "--out", str(quick_demo["out"]), "--output", str(target))
    assert status == 0, stderr
    assert target.read_text() == quick_demo["report"]
    assert "Task decodability across layers" in stdout


def test_report_shows_other_saved_results_in_their_own_section(quick_demo, tmp_path):
    shutil.copytree(quick_demo["out"] / "results", tmp_path / "results")
    quick_demo["run"].results["decodability"].save(tmp_path / "results" / "my_layer_sweep.safetensors")
    assert run_cli("report", "--out", str(tmp_path))[0] == 0
    sections = re.findall(r'<section id="(\w+)"', (tmp_path / "report.html").read_text().replace(get_plotlyjs(), ""))
    assert sections == [*ANALYSIS_NAMES, "my_layer_sweep"]


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ((), ("demo", "train", "analyze", "report")),
        (("demo",), ("--quick", "--out", "--recipe", "--backend", "--seed", "--only", "--set", "--threads")),
        (("train",), ("--quick", "--out", "--recipe", "--backend", "--seed", "--set")),
        (("analyze",), ("--out", "--only", "--no-progress")),
        (("report",), ("--out", "--output")),
    ],
)
def test_help_lists_every_option(command, options):
    status, stdout, _ = run_cli(*command, "--help")
    assert status == 0 and stdout.startswith("usage: tv-lens")
    assert all(option in stdout for option in options)
    assert "DIR/report.html" in stdout  # the layout of a demo directory


def one_line_error(status: int, stderr: str) -> str:
    assert status == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    return stderr


def test_bad_inputs_end_with_one_line_errors(quick_demo, tmp_path):
    empty = tmp_path / "empty"
    assert "No results in" in one_line_error(*run_cli("report", "--out", str(empty))[::2])
    assert "No trained model in" in one_line_error(*run_cli("analyze", "--out", str(empty))[::2])
    assert "No recipe named 'nope'" in one_line_error(*run_cli("demo", "--recipe", "nope", "--out", str(empty))[::2])
    assert "Unknown setting(s) ['foo']" in one_line_error(*run_cli("train", "--set", "foo=1", "--out", str(empty))[::2])
    assert "n_per_task must be" in one_line_error(*run_cli("demo", "--set", "n_per_task=0", "--out", str(empty))[::2])
    assert not empty.exists()  # nothing was trained or written
    other = one_line_error(*run_cli("demo", "--out", str(quick_demo["out"]))[::2])  # the full preset's recipe
    assert "holds a model trained with recipe='quick'" in other
    assert run_cli("demo", "--only", "bogus")[0] == 2  # argparse: invalid choice


def test_demo_into_a_pretrained_models_directory_names_it_and_keeps_its_run_json(tmp_path):
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"pretrained": {"model": "gpt2"}, "description": ["Model: gpt2."]}))
    before = run_json.read_text()
    for command in ("demo", "train"):
        error = one_line_error(*run_cli(command, "--quick", "--out", tmp_path, "--no-progress")[::2])
        assert "holds an analysis of a pretrained model" in error and f"tv-lens analyze --out {tmp_path}`" in error
        assert "unreadable" not in error and "delete it" not in error  # a valid run.json is not to be deleted
    assert run_json.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_installed_command_reports_errors_without_a_traceback(tmp_path):
    command = Path(sys.executable).with_name("tv-lens")
    done = subprocess.run([command, "report", "--out", tmp_path], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("tv-lens report: error: No results in") and "Traceback" not in done.stderr


def test_checkpoints_of_another_run_are_not_reused(quick_demo, tmp_path):
    shutil.copytree(quick_demo["out"] / "checkpoints", tmp_path / "checkpoints")  # no run.json: only the weights
    with pytest.raises(ArtefactError, match="come from a run with another model or training config"):
        train_or_load(tmp_path, DemoConfig.quick(seed=1), progress=False)


def test_finetuning_pool_takes_the_offsets_the_model_never_saw():
    pool = finetuning_pool(recipes["default"].build_pool())
    assert pool.task_names == ("offset(5)", "offset(6)", "offset(7)", "offset(8)", "null")
    assert pool.vocab == recipes["default"].build_pool().vocab
    assert finetuning_pool(offset_pool((1, 3), n_values=8), n_tasks=3).task_names[:3] == (
        "offset(4)",
        "offset(5)",
        "offset(6)",
    )
    with pytest.raises(ConfigError, match="is not an offset task"):
        finetuning_pool(bitwise_pool(("and", "or"), n_bits=2))


def test_config_presets_round_trip_and_reject_bad_settings():
    for config in (DemoConfig.full(), DemoConfig.quick(seed=3)):
        assert DemoConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert DemoConfig.quick().n_shots == 6 and DemoConfig.full().n_shots == 8
    with pytest.raises(ConfigError, match="does not divide"):
        DemoConfig.quick(checkpoint_every=30).train_config()
    with pytest.raises(ConfigError, match="patching_mode"):
        DemoConfig(patching_mode="swap")
    assert tuple(ANALYSES) == ANALYSIS_NAMES  # the report has a section for every analysis the demo runs
