"""demos/regression_emergence.py on a tiny run: its series, projections, report and saved result, checked by hand."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tv_lens.analyses import Geometry, HeadAblation, TaskDecodability
from tv_lens.errors import ConfigError
from tv_lens.results import EmergenceResult, HeadImportance
from tv_lens.training import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location(
        "regression_emergence_demo", ROOT / "demos" / "regression_emergence.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["regression_emergence_demo"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["regression_emergence_demo"]


@pytest.fixture(scope="module")
def run(demo, tmp_path_factory):
    """A 1-block model trained 40 steps with a checkpoint every 10, analysed at 5 steps (0 included)."""
    out = tmp_path_factory.mktemp("regression-emergence")
    settings = demo.settings(seed=0, quick=True, umap=False)
    computed, numbers = demo.run_all(out, settings)
    loaded = EmergenceResult.load(out / demo.RESULT_FILE)
    return out, settings, numbers, loaded, computed


def models(out, settings):
    """(step, model) of the initial model and of every checkpoint, loaded afresh."""
    return [(0, settings.recipe.build_model())] + [
        (load_checkpoint(path).step, load_checkpoint(path).load_model())
        for path in list_checkpoints(out / "checkpoints")
    ]


def test_every_checkpoint_is_analysed_on_the_same_prompts(run):
    out, settings, _, result, _ = run
    assert result.steps == (0, 10, 20, 30, 40)
    assert [load_checkpoint(p).step for p in list_checkpoints(out / "checkpoints")] == [10, 20, 30, 40]
    assert result.performance == "loss"  # regression: the jumps are detected on the query MSE
    assert result.task_names == ("sparse_linear(0)", "sparse_linear(1)", "null")
    assert (result.n_per_task, result.n_shots, result.seed) == (settings.n_per_task, settings.n_shots, 0)
    assert torch.isnan(result.accuracy).all()


def test_mse_series_is_the_query_mse_of_each_checkpoint_by_hand(run):
    out, settings, _, result, _ = run
    batch = settings.recipe.build_pool().sample(settings.n_per_task, settings.n_shots, seed=settings.seed)
    for s, (step, model) in enumerate(models(out, settings)):
        assert result.steps[s] == step
        with torch.no_grad():
            outputs = model(batch.inputs)  # [prompt, position, d_out]
        predicted = outputs[torch.arange(len(batch.answer_pos)), batch.answer_pos]
        squared = (predicted - batch.answers).pow(2).mean(-1)
        by_hand = torch.stack([squared[batch.task_ids == t].mean() for t in range(len(result.task_names))])
        torch.testing.assert_close(result.loss[s], by_hand.to(result.loss.dtype), rtol=1e-4, atol=1e-6)
    # Training moved the model: the series is not one value repeated.
    assert not torch.allclose(result.loss[0], result.loss[-1])


def test_td_and_projections_are_those_of_the_analyses_run_on_each_checkpoint(run):
    out, settings, _, result, _ = run
    pool = settings.recipe.build_pool()
    for s, (_, model) in enumerate(models(out, settings)):
        direct = TaskDecodability(n_bootstrap=0).run(model, pool, settings.n_per_task, settings.n_shots, seed=0)
        assert direct.layers == result.layers
        torch.testing.assert_close(result.td[s], direct.td.to(result.td.dtype))
        torch.testing.assert_close(result.td_per_task[s], direct.per_task.to(result.td_per_task.dtype))
        projection = Geometry().run(model, pool, settings.n_per_task, settings.n_shots, seed=0)
        torch.testing.assert_close(result.snapshots[s]["geometry"].coords, projection.coords)


def test_numbers_match_the_result(demo, run):
    out, settings, numbers, result, _ = run
    assert json.loads((out / demo.SUMMARY_FILE).read_text())["tasks"] == json.loads(json.dumps(numbers["tasks"]))
    best = result.layers.index(result.best_layer)
    batch = settings.recipe.build_pool().sample(settings.n_per_task, settings.n_shots, seed=settings.seed)
    for t, name in enumerate(result.task_names):
        task = numbers["tasks"][name]
        assert (task["mse_jump"], task["td_jump"], task["coupled"]) == (
            result.performance_jump[t],
            result.td_jump[t],
            result.coupled[t],
        )
        assert task["mse"] == pytest.approx([float(result.loss[0, t]), float(result.loss[-1, t])])
        assert task["td"] == pytest.approx(
            [float(result.td_per_task[0, best, t]), float(result.td_per_task[-1, best, t])]
        )
        variance = float(batch.answers[batch.task_ids == t].pow(2).mean())  # the mean predictor (0)'s query MSE
        assert task["mse_over_mean_predictor"][1] == pytest.approx(float(result.loss[-1, t]) / variance, rel=1e-5)


def test_pca_silhouette_by_hand(run):
    _, _, numbers, result, _ = run
    for s, step in enumerate(result.steps):
        projection = result.snapshots[s]["geometry"]
        points = projection.coords[projection.layers.index(result.best_layer)]
        labels = projection.labels
        distances = torch.cdist(points, points)
        scores = []
        for i in range(len(labels)):
            own = labels == labels[i]
            a = distances[i, own].sum() / (own.sum() - 1)  # mean distance to the others of its task
            b = min(distances[i, labels == other].mean() for other in labels.unique() if other != labels[i])
            scores.append((b - a) / max(a, b))
        assert numbers["pca_silhouette"][step] == pytest.approx(float(torch.stack(scores).mean()), abs=1e-6)


def test_report_has_the_emergence_figure_and_one_projection_per_checkpoint(demo, run):
    out, _, _, result, _ = run
    html = (out / demo.REPORT_FILE).read_text()
    # MSE and TD; the heads' importance, shared heads and pruning curve; then one PCA per checkpoint
    assert html.count("Plotly.newPlot(") == 1 + 3 + len(result.steps)
    for step in result.steps:
        assert f'id="pca_step_{step:05d}"' in html
    assert "Emergence: loss and TD" in html
    assert "jump of the MSE: " in html


def test_heads_are_the_last_checkpoints_and_their_overlap_is_read_against_chance(demo, run):
    out, settings, numbers, _, _ = run
    model = load_checkpoint(list_checkpoints(out / "checkpoints")[-1]).load_model()
    pool = settings.recipe.build_pool()
    direct = HeadAblation().run(model, pool, n_per_task=settings.n_per_task, n_shots=settings.n_shots, seed=0)
    saved = HeadImportance.load(out / demo.HEADS_FILE)
    assert saved == direct
    shared = direct.shared[:2, :2]  # the two sparse tasks; Null (the last) left out
    heads = numbers["heads"]
    assert heads["overlap"] == pytest.approx(float(shared[0, 1]), abs=1e-12)
    assert (heads["top_k"], heads["n_heads"]) == (direct.top_k, model.cfg.n_layers * model.cfg.n_heads)
    assert heads["chance_q95"] == direct.chance_overlap()[1]


def test_result_loads_back_equal(run):
    _, _, _, loaded, computed = run
    assert loaded == computed  # every field, snapshots included
    assert loaded.snapshots[-1]["geometry"] == computed.snapshots[-1]["geometry"]


def test_the_command_reuses_a_finished_run_and_refuses_another(demo, run, capsys):
    out, _, numbers, result, _ = run
    before = {path: path.stat().st_mtime_ns for path in list_checkpoints(out / "checkpoints")}
    demo.main(["--out", str(out), "--quick", "--no-umap"])
    assert {path: path.stat().st_mtime_ns for path in list_checkpoints(out / "checkpoints")} == before  # no training
    assert EmergenceResult.load(out / demo.RESULT_FILE) == result
    printed = capsys.readouterr().out
    assert f"trained 40 steps in {numbers['training_s']:.0f} s" in printed and "Report: " in printed
    with pytest.raises(ConfigError, match="other settings"):
        demo.main(["--out", str(out), "--quick", "--no-umap", "--seed", "1"])
    with pytest.raises(ConfigError, match="must divide"):
        demo.settings(quick=True, every=7)


class _FakeUMAP:
    """Stands in for umap.UMAP (not installed here): the first two coordinates, so the wiring can be checked."""

    def __init__(self, n_components, n_neighbors, min_dist, random_state):
        self.settings = (n_components, n_neighbors, min_dist)

    def fit_transform(self, points):
        return points[:, :2]


def test_umap_projections_join_the_report_when_umap_is_there(demo, run, monkeypatch):
    out, settings, _, _, _ = run
    monkeypatch.setitem(sys.modules, "umap", type(sys)("umap"))
    monkeypatch.setattr(sys.modules["umap"], "UMAP", _FakeUMAP, raising=False)
    with_umap = demo.settings(seed=0, quick=True, umap=True)
    result = demo.analyse(with_umap, list_checkpoints(out / "checkpoints")[-1:])
    shown = demo.report_results(result, HeadImportance.load(out / demo.HEADS_FILE))
    projections = ["pca_step_00000", "umap_step_00000", "pca_step_00040", "umap_step_00040"]
    assert list(shown) == ["emergence", "heads", *projections]
    umap = shown["umap_step_00040"]
    assert umap.method == "umap" and umap.settings["n_neighbors"] == 15
    # The fake keeps the first two residual coordinates: the projection is the residual stream's, read by hand.
    batch = settings.recipe.build_pool().sample(settings.n_per_task, settings.n_shots, seed=settings.seed)
    model = load_checkpoint(list_checkpoints(out / "checkpoints")[-1]).load_model()
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.inputs)
    rows = torch.arange(len(batch.answer_pos))
    for i, layer in enumerate(umap.layers):
        name = "blocks.0.hook_resid_pre" if layer == -1 else f"blocks.{layer}.hook_resid_post"
        expected = cache[name][rows, batch.answer_pos, :2].double()
        torch.testing.assert_close(umap.coords[i], expected, rtol=1e-4, atol=1e-5)


def test_the_shifted_recipe_and_the_shot_count_reach_the_run(demo, tmp_path):
    settings = demo.settings(seed=0, quick=True, umap=False, recipe="shifted_linear", n_shots=3)
    assert settings.recipe.name == "shifted_linear" and settings.n_shots == 3
    assert settings.recipe.model.n_layers == 1  # quick still shrinks the chosen recipe
    demo.main(["--out", str(tmp_path), "--quick", "--no-umap", "--recipe", "shifted_linear", "--shots", "3"])
    result = EmergenceResult.load(tmp_path / demo.RESULT_FILE)
    assert result.task_names == ("shifted_linear(0)", "shifted_linear(1)", "shifted_linear(2)", "null")
    assert result.n_shots == 3 and result.steps == (0, 10, 20, 30, 40)
    summary = json.loads((tmp_path / demo.SUMMARY_FILE).read_text())
    assert summary["n_shots"] == 3 and list(summary["tasks"]) == list(result.task_names)
    with pytest.raises(ConfigError, match=r"Unknown regression recipe 'default'"):
        demo.settings(recipe="default")


def _summary(seed, td, tasks):
    """A run's summary.json as the script writes it, with the fields the tables read."""
    return {
        "seed": seed,
        "td": td,
        "tasks": {
            name: {
                "mse_jump": mse_jump,
                "td_jump": td_jump,
                "coupled": coupled,
                "mse_over_mean_predictor": [1.0, 0.25],
                "td": [0.25, 0.5],
                "td_max": 0.55,
            }
            for name, (mse_jump, td_jump, coupled) in tasks.items()
        },
    }


def test_gather_prints_each_task_and_the_claims_over_seeds_by_the_verdict_rule(demo, run, tmp_path, capsys):
    out, _, numbers, _, _ = run
    assert numbers["seed"] == 0 and json.loads((out / demo.SUMMARY_FILE).read_text())["seed"] == 0
    coupling = {  # per seed: two tasks and Null (never counted), coupled in 2, 1 and 2 of the two tasks
        1: {"a": (100, 100, True), "b": (200, 200, True), "null": (None, None, False)},
        2: {"a": (100, 500, False), "b": (200, 200, True), "null": (None, 300, False)},
        3: {"a": (100, 100, True), "b": (300, None, True), "null": (None, None, False)},
    }
    folders = []
    for seed, tasks in coupling.items():
        folders.append(tmp_path / f"seed-{seed}")
        folders[-1].mkdir()
        td = [0.25, 0.45 + 0.02 * (seed - 1)]  # rises 0.20, 0.22, 0.24
        (folders[-1] / demo.SUMMARY_FILE).write_text(json.dumps(_summary(seed, td, tasks)))
    demo.main(["--gather", *map(str, folders)])
    lines = capsys.readouterr().out.splitlines()
    assert "| 2 | 0.250 → 0.470 | a | 1.00 → 0.25 | 0.25 → 0.50 (0.55) | step 100 | step 500 | no |" in lines
    assert "|  |  | b | 1.00 → 0.25 | 0.25 → 0.50 (0.55) | step 300 | none | yes |" in lines
    assert not any("| null |" in line for line in lines)
    # By hand: rises 0.20, 0.22, 0.24: mean 0.22, sd 0.02, t(0.975, 2) = 4.302653; every seed above 0.
    half = 4.302653 * 0.02 / 3**0.5
    claim = "| TD rises with training | overall TD at the best block, last step − first step > 0 |"
    assert f"{claim} +0.220 [{0.22 - half:+.3f}, {0.22 + half:+.3f}] | 3/3 | holds |" in lines
    # Coupled fractions 1, 0.5, 1: seed 2 is not above one half, and the interval reaches below it.
    mean, half = 2.5 / 3, 4.302653 * (1 / 12) ** 0.5 / 3**0.5
    assert f"| +{mean:.3f} [{mean - half:+.3f}, {mean + half:+.3f}] | 2/3 | does not hold |" in lines[-1]
    assert not any("share important heads" in line for line in lines)  # these runs did not measure the heads
    with pytest.raises(ConfigError, match="two or more different seeds"):
        demo.gather(folders[:1] + folders[:1])
    with pytest.raises(ConfigError, match=r"does not name its seed; run this script with --out"):
        demo.gather([folders[0], tmp_path])


def test_gather_reads_the_shared_heads_against_chance_where_every_run_has_them(demo, tmp_path, capsys):
    import statistics

    folders = []
    for seed, overlap in ((1, 0.5), (2, 0.6), (3, 0.3)):
        folders.append(tmp_path / f"seed-{seed}")
        folders[-1].mkdir()
        summary = _summary(seed, [0.25, 0.45], {"a": (100, 100, True)})
        summary["heads"] = {"top_k": 4, "n_heads": 16, "overlap": overlap, "min_overlap": overlap, "chance_q95": 1 / 3}
        (folders[-1] / demo.SUMMARY_FILE).write_text(json.dumps(summary))
    demo.main(["--gather", *map(str, folders)])
    line = capsys.readouterr().out.splitlines()[-1]
    values = [0.5 - 1 / 3, 0.6 - 1 / 3, 0.3 - 1 / 3]  # seed 3 below chance
    mean, half = statistics.mean(values), 4.302653 * statistics.stdev(values) / 3**0.5
    assert line == (
        "| Tasks share important heads | mean pairwise overlap of the tasks' top-4 heads − 95th percentile of two "
        f"random sets (0.33) > 0 | {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] | 2/3 | does not hold |"
    )
