"""Vector algebra: a combined task or function vector is the weighted sum of its tasks' vectors, written by hand."""

from __future__ import annotations

import pytest
import torch
from causal_helpers import POOL
from conftest import BACKENDS, tiny_config

from tv_lens import steer
from tv_lens.analyses import FunctionVectors
from tv_lens.errors import AnalysisError, TaskError
from tv_lens.models import build_model
from tv_lens.results import Result
from tv_lens.task_vectors import TaskVectors

WEIGHTS = {"offset(3)": 1.0, "offset(1)": 2.5, "offset(2)": -1.0}


@pytest.fixture(scope="module", params=BACKENDS)
def built(request):
    model = build_model(tiny_config(request.param, dtype="float64"))
    tv = TaskVectors.from_model(model, POOL, layers=(0, 1), n_per_task=3, n_shots=2)
    fv = FunctionVectors(k=2, n_bootstrap=0, layers=(1, 2)).run(model, POOL, n_per_task=2, n_shots=2, seed=0).vector
    return model, tv, fv


def by_hand(vectors, task_names):
    return sum(weight * vectors[task_names.index(task)] for task, weight in WEIGHTS.items())


def test_a_combined_task_vector_is_the_weighted_sum_at_every_layer(built, tmp_path):
    _, tv, _ = built
    combined = tv.combine(WEIGHTS, "offset(4)")
    assert combined.task_names == ("offset(4)",) and combined.layers == tv.layers
    torch.testing.assert_close(combined.vectors[0], by_hand(tv.vectors, tv.task_names), atol=1e-12, rtol=0)
    assert combined.n_prompts.tolist() == [int(tv.n_prompts[:3].sum())]
    assert combined.provenance.model == tv.provenance.model
    assert combined.provenance.pool.startswith("offset(4) = 1·offset(3) + 2.5·offset(1) - 1·offset(2), of vectors")
    assert Result.load(combined.save(tmp_path / "combined.safetensors")) == combined
    one = tv.combine({"offset(2)": 1}, "same")
    assert torch.equal(one.vectors[0], tv.vectors[tv.task_index("offset(2)")])


def test_a_combined_function_vector_sums_the_vectors_and_the_head_outputs(built, tmp_path):
    _, _, fv = built
    combined = fv.combine(WEIGHTS, "offset(4)")
    assert combined.task_names == ("offset(4)",) and combined.heads == fv.heads
    torch.testing.assert_close(combined.vectors[0], by_hand(fv.vectors, fv.task_names), atol=1e-12, rtol=0)
    torch.testing.assert_close(combined.head_outputs[0], by_hand(fv.head_outputs, fv.task_names), atol=1e-12, rtol=0)
    torch.testing.assert_close(combined.head_outputs.sum(1), combined.vectors, atol=1e-12, rtol=0)
    assert (combined.provenance.layers, combined.provenance.operation) == (fv.provenance.layers, "add")
    assert Result.load(combined.save(tmp_path / "combined.safetensors")) == combined


def test_steering_with_a_combined_vector_writes_the_weighted_sum(built):
    model, tv, fv = built
    prompts = POOL.sample(2, 0, seed=5)
    layer = fv.provenance.layers[0]
    found = steer(model, fv.combine(WEIGHTS, "offset(4)"), prompts)
    expected = steer(model, by_hand(fv.vectors, fv.task_names), prompts, layer=layer, operation="add")
    torch.testing.assert_close(found, expected, atol=1e-10, rtol=0)
    assert not torch.allclose(found, steer(model, fv, prompts, task="offset(1)"))
    found = steer(model, tv.combine(WEIGHTS, "offset(4)"), prompts, layer=1)
    expected = steer(model, by_hand(tv.vectors, tv.task_names)[1], prompts, layer=1, operation="replace")
    torch.testing.assert_close(found, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    ("weights", "name", "error", "message"),
    [
        ({}, "x", AnalysisError, r"combine takes a dict of task name -> weight"),
        ([("offset(1)", 1.0)], "x", AnalysisError, r"combine takes a dict of task name -> weight"),
        ({"offset(9)": 1.0}, "x", TaskError, r"Task 'offset\(9\)' has no task vector; these cover \['offset\(1\)'"),
        ({"offset(1)": float("nan")}, "x", AnalysisError, r"The weight of 'offset\(1\)' must be a finite number"),
        ({"offset(1)": True}, "x", AnalysisError, r"The weight of 'offset\(1\)' must be a finite number"),
        ({"offset(1)": "1"}, "x", AnalysisError, r"The weight of 'offset\(1\)' must be a finite number"),
        ({"offset(1)": 1.0}, "", AnalysisError, r"The combined vector needs a name \(a non-empty string\)"),
        ({"offset(1)": 1.0}, 4, AnalysisError, r"The combined vector needs a name \(a non-empty string\), got 4"),
    ],
)
def test_bad_combinations_are_refused(built, weights, name, error, message):
    _, tv, _ = built
    with pytest.raises(error, match=message):
        tv.combine(weights, name)
