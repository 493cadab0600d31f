"""Emergence: the jump detector on analytic series, and time series equal to per-checkpoint analyses."""

from __future__ import annotations

import gc
import math
import re
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tv_lens import training
from tv_lens.analyses import Emergence, Geometry, ICLPerformance, TaskDecodability, detect_coupling, detect_jump
from tv_lens.app.sections import headline_numbers, summary_lines
from tv_lens.errors import AnalysisError, ShapeError
from tv_lens.models import ModelConfig, build_model
from tv_lens.results import EmergenceResult, Projection, Result
from tv_lens.tasks import offset_pool
from tv_lens.training import (
    Checkpoint,
    DataConfig,
    ScheduleConfig,
    TrainConfig,
    list_checkpoints,
    load_checkpoint,
    train,
)

STEPS = (0, 100, 200, 300, 400)


def test_detect_jump_on_analytic_series():
    assert detect_jump(STEPS, torch.tensor([0.2, 0.2, 0.9, 0.9, 0.9])) == 200
    assert detect_jump(STEPS, torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8])) == 200  # half-way to the best value
    assert detect_jump(STEPS, torch.tensor([0.5, 0.55, 0.6, 0.58, 0.6])) is None  # rise 0.1 < min_rise
    assert detect_jump(STEPS, torch.tensor([0.5, 0.55, 0.6, 0.58, 0.6]), min_rise=0.05) == 100
    assert detect_jump(STEPS, torch.tensor([0.9, 0.5, 0.3, 0.2, 0.1])) is None  # only gets worse
    assert detect_jump(STEPS, torch.tensor([0.2, math.nan, 0.9, 0.9, 0.9])) is None
    loss = torch.tensor([2.0, 1.9, 1.0, 0.5, 0.4])
    assert detect_jump(STEPS, loss, higher_is_better=False, relative=True) == 200  # 1.0 is past 1.2, half-way to 0.4
    assert detect_jump(STEPS, loss, min_rise=0.9, higher_is_better=False, relative=True) is None
    with pytest.raises(AnalysisError, match="one value per step"):
        detect_jump(STEPS, torch.ones(3))
    with pytest.raises(ShapeError, match="values must be one number per step, got 'accuracy'"):
        detect_jump(STEPS, "accuracy")  # was a TypeError
    assert detect_jump(STEPS, torch.tensor([0.5, 0.5, 0.51, 0.5, 0.5]), min_rise=0) == 200  # any improvement
    for min_rise in ("0.2", -0.1, math.nan, None):  # a string or None was a TypeError, -0.1 and NaN were taken
        with pytest.raises(AnalysisError, match=rf"min_rise must be a finite number >= 0, got {min_rise!r}"):
            detect_jump(STEPS, torch.ones(5), min_rise=min_rise)


def test_detect_coupling_pairs_the_jumps_per_task():
    accuracy = torch.tensor([[0.3, 0.3, 0.3], [0.3, 0.3, 0.3], [0.9, 0.3, 0.3], [0.9, 0.9, 0.3], [0.9, 0.9, 0.3]])
    td = torch.tensor([[0.2, 0.2, 0.2], [0.2, 0.2, 0.2], [0.9, 0.2, 0.9], [0.9, 0.2, 0.9], [0.9, 0.9, 0.9]])
    performance_jump, td_jump, coupled = detect_coupling(STEPS, accuracy, td)
    assert performance_jump == (200, 300, None)
    assert td_jump == (200, 400, 200)
    assert coupled == (True, True, False)  # default tolerance: one checkpoint interval (100 steps)
    assert detect_coupling(STEPS, accuracy, td, tolerance=0)[2] == (True, False, False)
    with pytest.raises(AnalysisError, match="must both be"):
        detect_coupling(STEPS, accuracy, td[:, :2])
    with pytest.raises(ShapeError, match=r"td must be a \[step=5, task\] tensor of numbers, got None"):
        detect_coupling(STEPS, accuracy, None)
    for tolerance in ("100", -1, 1.5):  # "100" was a TypeError once a task had both jumps, -1 coupled nothing
        with pytest.raises(AnalysisError, match=rf"tolerance must be an int >= 0 .*, got {tolerance!r}"):
            detect_coupling(STEPS, accuracy, td, tolerance=tolerance)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained for 6 steps with a checkpoint every 2 steps."""
    pool = offset_pool(offsets=(1, 2), n_values=8, null=True)
    model_config = ModelConfig(d_vocab=pool.vocab_size, n_layers=2, d_model=32, n_heads=4, n_ctx=24, seed=0)
    config = TrainConfig(
        data=DataConfig(n_per_task=4, n_shots=3, eval_n_per_task=4),
        schedule=ScheduleConfig(max_steps=6, lr=3e-3, min_lr=3e-4, warmup_steps=2),
        eval_every=6,
        checkpoint_every=2,
    )
    directory = tmp_path_factory.mktemp("checkpoints")
    train(build_model(model_config), pool, config, model_config=model_config, checkpoint_dir=directory, progress=False)
    return pool, list_checkpoints(directory)


def test_series_equal_the_analyses_run_on_each_checkpoint(run):
    pool, paths = run
    emergence = Emergence(analyses=(TaskDecodability(k=3, n_bootstrap=0), Geometry(layers=(1,))), n_shots=3)
    result = emergence.run(list(reversed(paths)), pool, n_per_task=5, seed=1)
    assert result.steps == (2, 4, 6) and result.layers == (-1, 0, 1) and result.task_names == pool.task_names
    for s, path in enumerate(paths):
        model = load_checkpoint(path).load_model()
        td = TaskDecodability(k=3, n_bootstrap=0).run(model, pool, n_per_task=5, n_shots=3, seed=1)
        accuracy = ICLPerformance(shots=(3,), metric="accuracy", n_bootstrap=0).run(model, pool, n_per_task=5, seed=1)
        loss = ICLPerformance(shots=(3,), metric="cross_entropy", n_bootstrap=0).run(model, pool, n_per_task=5, seed=1)
        assert torch.equal(result.td[s], td.td) and torch.equal(result.td_per_task[s], td.per_task)
        assert torch.equal(result.accuracy[s], accuracy.values[:, 0])
        torch.testing.assert_close(result.loss[s], loss.values[:, 0], atol=1e-6, rtol=0)
        assert result.snapshots[s]["decodability"] == td
        assert isinstance(result.snapshots[s]["geometry"], Projection)
    assert result.best_layer in (0, 1) and result.tolerance == 2 and result.performance == "accuracy"
    expected = detect_coupling(result.steps, result.accuracy, result.td_at_best_layer, 0.2, 2)
    assert (result.performance_jump, result.td_jump, result.coupled) == expected


def test_model_pairs_frame_figure_and_round_trip(run, tmp_path):
    pool, paths = run
    models = [(load_checkpoint(p).step, load_checkpoint(p).load_model()) for p in paths]
    result = Emergence(analyses=(TaskDecodability(k=3, n_bootstrap=0),), n_shots=2).run(models, pool, n_per_task=4)
    assert Result.load(result.save(tmp_path / "emergence.safetensors")) == result
    frame = result.to_frame()
    assert list(frame.columns) == ["step", "task", "measure", "layer", "value"]
    n_tasks, n_layers = len(pool), len(result.layers)
    assert len(frame) == 3 * (2 * n_tasks + n_layers * (n_tasks + 1))
    rows = frame[(frame.measure == "accuracy") & (frame.task == pool.task_names[0])]
    assert rows.value.tolist() == result.accuracy[:, 0].tolist()
    assert list(result.jumps_frame().columns) == ["task", "performance_jump", "td_jump", "coupled"]
    figure = result.figure()
    assert len(figure.data) == 2 * n_tasks
    assert list(figure.data[1].y) == result.td_at_best_layer[:, 0].tolist() and figure.data[1].yaxis == "y2"
    assert list(figure.data[0].x) == [2, 4, 6]


def test_loaders_run_one_model_at_a_time_with_the_numbers_of_models(run):
    pool, paths = run
    alive: list[weakref.ref] = []
    calls = []

    def loader(path):
        def load():
            gc.collect()
            calls.append(sum(ref() is not None for ref in alive))  # models still in memory when this one loads
            model = load_checkpoint(path).load_model()
            alive.append(weakref.ref(model))
            return model

        return load

    emergence = Emergence(analyses=(TaskDecodability(k=3, n_bootstrap=0),), n_shots=2)
    lazily = emergence.run([(load_checkpoint(p).step, loader(p)) for p in paths], pool, n_per_task=4)
    assert calls == [0, 0, 0]
    models = [(load_checkpoint(p).step, load_checkpoint(p).load_model()) for p in paths]
    assert lazily == emergence.run(models, pool, n_per_task=4)


def test_each_checkpoint_file_is_read_once_and_let_go_of_once_its_model_is_built(run, monkeypatch):
    """A file is read once (its step, its run and its model come from that read), with the numbers of its model;
    each record is released as its model is built, so the checkpoints' weights are not all held through the run."""
    pool, paths = run
    emergence = Emergence(analyses=(TaskDecodability(k=3, n_bootstrap=0),), n_shots=2)
    expected = emergence.run([(load_checkpoint(p).step, load_checkpoint(p).load_model()) for p in paths], pool, 4)
    reads: list[str] = []
    records: list[weakref.ref] = []
    alive_at_build: list[int] = []
    real_read, real_build = training.load_checkpoint, Checkpoint.load_model

    def read(path):
        reads.append(Path(path).name)
        return real_read(path)

    def build(record, *args, **kwargs):
        records.append(weakref.ref(record))
        gc.collect()
        alive_at_build.append(sum(ref() is not None for ref in records[:-1]))  # records of models built before
        return real_build(record, *args, **kwargs)

    monkeypatch.setattr(training, "load_checkpoint", read)
    monkeypatch.setattr(Checkpoint, "load_model", build)
    result = emergence.run(list(reversed(paths)), pool, n_per_task=4)
    assert sorted(reads) == sorted(path.name for path in paths)
    assert alive_at_build == [0, 0, 0]
    assert result == expected


def test_bad_checkpoints_raise_clear_errors(run):
    pool, paths = run
    with pytest.raises(AnalysisError, match="distinct steps"):
        Emergence().run([paths[0], paths[0]], pool, n_per_task=11)
    with pytest.raises(AnalysisError, match="Unknown checkpoint"):
        Emergence().run([3.5], pool)
    with pytest.raises(AnalysisError, match=r"step 2 holds a str; pair each step with a model or with a function"):
        Emergence().run([(2, "step2")], pool)
    with pytest.raises(AnalysisError, match="min_rise"):
        Emergence(min_rise=0)
    # each was a TypeError (min_rise, analyses), an error after every checkpoint ran (tolerance="x"), or no coupling
    # ever (tolerance=-5, min_rise=inf)
    with pytest.raises(AnalysisError, match=r"min_rise must be a finite number > 0, got '0\.2'"):
        Emergence(min_rise="0.2")
    with pytest.raises(AnalysisError, match=r"min_rise must be a finite number > 0, got inf"):
        Emergence(min_rise=math.inf)
    with pytest.raises(AnalysisError, match=r"Emergence takes a tuple of analyses, got a TaskDecodability; wrap"):
        Emergence(analyses=TaskDecodability())
    for tolerance in ("x", -5, 2.5):
        with pytest.raises(AnalysisError, match=rf"tolerance must be an int >= 0 .*, got {tolerance!r}"):
            Emergence(tolerance=tolerance)
    assert Emergence(tolerance=0).tolerance == 0
    assert isinstance(Emergence().analyses[0], TaskDecodability)
    assert isinstance(EmergenceResult, type)


@pytest.mark.parametrize("given", ["directory", "file", "str", "number"])
def test_checkpoints_that_are_no_list_are_refused(run, given):
    """A run's directory or one file as a str was read character by character ('No checkpoint file at /'), as a Path
    or a number it was Python's TypeError."""
    pool, paths = run
    checkpoints = {"directory": paths[0].parent, "file": paths[0], "str": str(paths[0].parent), "number": 3.5}[given]
    got = "a float" if given == "number" else f"the path '{checkpoints}'"
    with pytest.raises(AnalysisError, match=rf"checkpoints must be a list of checkpoints, got {re.escape(got)}; pass"):
        Emergence().run(checkpoints, pool, n_per_task=4)


def test_checkpoints_whose_model_cannot_be_rebuilt_are_refused_before_any_runs(run, tmp_path, monkeypatch):
    """A run started without model_config failed when its first checkpoint's turn came (after the checkpoints before
    it had run); it is refused before any model is built."""
    pool, paths = run
    config = load_checkpoint(paths[0]).config
    model = build_model(load_checkpoint(paths[0]).model_config)
    rootless = train(model, pool, config, checkpoint_dir=tmp_path, stop_after=4, progress=False).checkpoints
    built = []
    monkeypatch.setattr(Checkpoint, "load_model", lambda self, *args, **kwargs: built.append(self.step))
    with pytest.raises(AnalysisError, match=r"step-0000002\.pt has no model config .* Pass \(step, load\) pairs"):
        Emergence().run(rootless, pool, n_per_task=4)
    assert built == []


def test_checkpoints_of_models_of_other_sizes_are_refused(run):
    pool, paths = run
    model = load_checkpoint(paths[0]).load_model()
    deeper = build_model(ModelConfig(d_vocab=pool.vocab_size, n_layers=3, d_model=32, n_heads=4, n_ctx=24, seed=0))
    emergence = Emergence(analyses=(TaskDecodability(k=3, n_bootstrap=0),), n_shots=2)
    with pytest.raises(AnalysisError, match="not of one model: n_layers 2 at step 2, 3 at step 4"):
        emergence.run([(4, deeper), (2, model)], pool, n_per_task=4)  # was torch.stack's RuntimeError
    wider = build_model(ModelConfig(d_vocab=pool.vocab_size, n_layers=2, d_model=16, n_heads=4, n_ctx=24, seed=0))
    with pytest.raises(AnalysisError, match="d_model 32 at step 2, 16 at step 4"):
        emergence.run([(2, model), (4, wider)], pool, n_per_task=4)  # ran, mixing two models' series


def test_checkpoints_of_two_training_runs_are_refused(run, tmp_path):
    pool, paths = run
    first = load_checkpoint(paths[0])
    model_config = replace(first.model_config, seed=1)  # the same model and training, another initialisation
    train(
        build_model(model_config),
        pool,
        first.config,
        model_config=model_config,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    other = list_checkpoints(tmp_path)
    emergence = Emergence(analyses=(TaskDecodability(k=3, n_bootstrap=0),), n_shots=2)
    with pytest.raises(AnalysisError, match=r"steps 2 and 4 come from different training runs .*model_config\.seed"):
        emergence.run([paths[0], other[1], paths[2]], pool, n_per_task=4)  # ran, mixing the two runs' series
    with pytest.raises(AnalysisError, match="different training runs"):
        emergence.run([first, load_checkpoint(other[1])], pool, n_per_task=4)


def test_checkpoints_of_runs_on_two_pools_are_refused(run, tmp_path):
    """Runs that differ in their pool only (the same vocabulary, other offsets) are two runs too."""
    pool, paths = run
    first = load_checkpoint(paths[0])
    other_pool = offset_pool(offsets=(1, 3), n_values=8, null=True)
    assert other_pool.vocab_size == pool.vocab_size
    model = build_model(first.model_config)
    train(model, other_pool, first.config, model_config=first.model_config, checkpoint_dir=tmp_path, progress=False)
    other = list_checkpoints(tmp_path)
    assert first.run_differences(load_checkpoint(paths[1])) == []
    assert any(key.startswith("pool.") for key in first.run_differences(load_checkpoint(other[1])))
    emergence = Emergence(analyses=(TaskDecodability(k=3, n_bootstrap=0),), n_shots=2)
    with pytest.raises(AnalysisError, match=r"steps 2 and 4 come from different training runs .*pool\."):
        emergence.run([paths[0], other[1]], pool, n_per_task=4)  # ran, mixing the two runs' series


def test_jumps_frame_keeps_missing_jumps_as_missing_integers():
    accuracy = torch.tensor([[0.3, 0.3], [0.9, 0.3], [0.9, 0.3]], dtype=torch.float64)
    td = torch.tensor([[0.2, 0.2], [0.9, 0.2], [0.9, 0.2]], dtype=torch.float64)
    performance_jump, td_jump, coupled = detect_coupling((0, 1, 2), accuracy, td)
    result = EmergenceResult(
        steps=(0, 1, 2),
        accuracy=accuracy,
        loss=-accuracy,
        td=td.mean(-1, keepdim=True),
        td_per_task=td[:, None],
        layers=(0,),
        task_names=("a", "b"),
        best_layer=0,
        performance="accuracy",
        performance_jump=performance_jump,
        td_jump=td_jump,
        coupled=coupled,
        min_rise=0.2,
        tolerance=1,
    )
    frame = result.jumps_frame()
    assert frame.performance_jump.tolist()[0] == 1 and frame.performance_jump.isna().tolist() == [False, True]
    ((_, _, line),) = summary_lines(headline_numbers({"emergence": result}))
    assert line.endswith("TD jump step per task: a 1, b none")
    assert frame.coupled.tolist() == [True, False]
