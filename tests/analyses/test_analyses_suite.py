"""Suite: one collect call shared by the representation analyses, results equal to separate runs."""

from __future__ import annotations

import pytest
import torch
from analyses_helpers import N_TASKS, POOL, count_forward_passes, sample

import tv_lens.analyses.suite as suite_module
from tv_lens.analyses import AttentionKnockout, Geometry, HeadAttention, ICLPerformance, Suite, TaskDecodability
from tv_lens.errors import AnalysisError
from tv_lens.interventions import knockout_strategy
from tv_lens.models import adapt
from tv_lens.results import Result, SuiteResult


def test_representation_analyses_share_one_collect_call_and_one_pass(model, monkeypatch):
    calls = []
    original = suite_module.collect
    monkeypatch.setattr(suite_module, "collect", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    decodability, geometry = TaskDecodability(k=4, n_bootstrap=20), Geometry(layers=(0, 2))
    suite = Suite((decodability, geometry), batch_size=128)
    with count_forward_passes(model) as passes:
        result = suite.run(model, POOL, n_per_task=6, n_shots=3, seed=1)
    assert calls == [[-1, 0, 1, 2]] and passes == [6 * N_TASKS]
    assert result.collect_calls == 1 and list(result.results) == ["decodability", "geometry"]
    assert result["decodability"] == decodability.run(model, POOL, n_per_task=6, n_shots=3, seed=1)
    assert result["geometry"] == geometry.run(model, POOL, n_per_task=6, n_shots=3, seed=1)
    assert result["geometry"].layers == (0, 2)


def test_model_analyses_run_with_the_suite_seed_and_the_result_round_trips(model, tmp_path):
    performance = ICLPerformance(shots=(0, 2), n_bootstrap=10)
    suite = Suite(
        (TaskDecodability(k=3, layers=(1,), n_bootstrap=0), performance, Geometry()), names=("td", "icl", "pca")
    )
    result = suite.run(model, POOL, n_per_task=5, n_shots=(1, 3), seed=2)
    assert result["icl"] == performance.run(model, POOL, n_per_task=5, seed=2)
    assert result.n_shots == (1, 3) and result.n_per_task == 5 and result.seed == 2
    loaded = Result.load(result.save(tmp_path / "suite.safetensors"))
    assert isinstance(loaded, SuiteResult) and loaded == result
    frame = result.to_frame()
    assert frame.columns[0] == "analysis" and set(frame.analysis) == {"td", "icl", "pca"}
    figure = result.figure()
    assert len(figure.data) == sum(len(r.traces()) for r in result.results.values())
    assert [a.text for a in figure.layout.annotations] == ["td", "icl", "pca"]


def test_model_analyses_that_take_shots_get_the_suite_shots(model, tmp_path):
    attention = HeadAttention(n_bootstrap=0)
    result = Suite((attention, ICLPerformance(shots=(0, 2), n_bootstrap=0))).run(model, POOL, 3, n_shots=2, seed=4)
    assert result["attention"] == attention.run(model, POOL, n_per_task=3, n_shots=2, seed=4)
    assert result["attention"] != attention.run(model, POOL, n_per_task=3, seed=4)  # not the default 4 shots
    assert Result.load(result.save(tmp_path / "suite.safetensors")) == result


def test_attention_knockout_in_a_suite_is_named_knockout_and_gets_the_suite_shots(model):
    if knockout_strategy(adapt(model)) is None:
        pytest.skip("TransformerLens 3.9's bridge computes this model's attention past its hooks: no knockout")
    knockout = AttentionKnockout(roles=("demo_answer",), n_bootstrap=0)
    result = Suite((knockout,)).run(model, POOL, 2, n_shots=2, seed=1)
    assert tuple(result.results) == ("knockout",)
    assert result["knockout"] == knockout.run(model, POOL, n_per_task=2, n_shots=2, seed=1)


def test_run_batch_and_errors(model):
    batch = sample(n_per_task=5, seed=3)
    result = Suite((TaskDecodability(k=3, n_bootstrap=0),)).run_batch(model, batch, seed=3)
    assert torch.equal(result["decodability"].labels, batch.task_ids)
    with pytest.raises(AnalysisError, match="need run"):
        Suite((ICLPerformance(),)).run_batch(model, batch)
    with pytest.raises(AnalysisError, match="not an analysis"):
        Suite((object(),))
    with pytest.raises(AnalysisError, match="at least one analysis"):
        Suite(())
    with pytest.raises(AnalysisError, match=r"got a TaskDecodability; wrap a single one: analyses=\(TaskDecodability"):
        Suite(TaskDecodability())  # was a TypeError: 'TaskDecodability' object is not iterable
    with pytest.raises(AnalysisError, match="distinct name"):
        Suite((Geometry(), Geometry()), names=("a", "a"))
    assert Suite((Geometry(), Geometry())).names == ("geometry", "geometry_2")
    with pytest.raises(KeyError, match="holds"):
        result["geometry"]
