"""CompareVectors: TD, TVP and FV accuracy per layer equal each analysis run alone with the same seeds."""

from __future__ import annotations

from dataclasses import replace

import pytest
from causal_helpers import POOL

from tv_lens import CompareVectors
from tv_lens.analyses import FunctionVectors, TaskDecodability, TaskVectorPrompting
from tv_lens.errors import AnalysisError
from tv_lens.results import Result, VectorComparison

CONFIG = CompareVectors(
    decodability=TaskDecodability(k=3, n_bootstrap=20),
    prompting=TaskVectorPrompting(n_bootstrap=20),
    function_vectors=FunctionVectors(k=2, n_bootstrap=20),
)


@pytest.fixture(scope="module")
def compared(model):
    # seed 2: seed 1 draws one query for all four prompts of a task, which other_prompt TVP refuses
    return model, CONFIG.run(model, POOL, n_per_task=4, n_shots=3, seed=2)


def test_numbers_equal_each_analysis_run_alone(compared):
    model, result = compared
    assert result.decodability == CONFIG.decodability.run(model, POOL, n_per_task=4, n_shots=3, seed=2)
    assert result.prompting == CONFIG.prompting.run(model, POOL, n_per_task=4, n_shots=3, seed=2)
    assert result.function_vectors == CONFIG.function_vectors.run(model, POOL, n_per_task=4, n_shots=3, seed=2)
    curves = result.curves()
    assert (
        curves["TD"][1] is result.decodability.td
        and curves["FV accuracy"][1] is result.function_vectors.prompting.accuracy
    )
    assert result.best_layers()["TVP accuracy"] == result.prompting.best_layer


def test_shared_layers_and_task_mean_vectors_match_the_analyses_alone(model):
    config = CompareVectors(
        decodability=TaskDecodability(k=3, n_bootstrap=0),
        prompting=TaskVectorPrompting(source="task_mean", n_bootstrap=0),
        function_vectors=FunctionVectors(k=2, n_bootstrap=0),
        layers=(1, 2),
    )
    result = config.run(model, POOL, n_per_task=4, n_shots=3, seed=0)
    prompting = TaskVectorPrompting(source="task_mean", n_bootstrap=0, layers=(1, 2))
    assert result.prompting == prompting.run(model, POOL, n_per_task=4, n_shots=3, seed=0)
    assert result.decodability.layers == result.prompting.layers == result.function_vectors.prompting.layers == (1, 2)


def test_the_function_vectors_are_corrupted_as_configured(model):
    """Todd et al.'s corruption (labels shuffled among the demonstrations, no label noise) as the analysis alone."""
    function_vectors = FunctionVectors(k=2, label_noise=0, shuffle_labels=True, n_bootstrap=0)
    config = CompareVectors(
        decodability=TaskDecodability(k=3, n_bootstrap=0),
        prompting=TaskVectorPrompting(n_bootstrap=0),
        function_vectors=function_vectors,
        layers=(1,),
    )
    result = config.run(model, POOL, n_per_task=4, n_shots=3, seed=0)
    alone = replace(function_vectors, layers=(1,)).run(model, POOL, n_per_task=4, n_shots=3, seed=0)
    assert result.function_vectors == alone and alone.effects.label_noise > 0


def test_table_figure_and_exact_save_load(compared, tmp_path):
    _, result = compared
    frame = result.to_frame()
    assert list(frame.columns) == ["measure", "layer", "value", "ci_low", "ci_high"]
    n_layers = (
        len(result.decodability.layers) + len(result.prompting.layers) + len(result.function_vectors.prompting.layers)
    )
    assert len(frame) == n_layers + 3 and set(frame["measure"][:n_layers]) == {"TD", "TVP accuracy", "FV accuracy"}
    figure = result.figure()
    lines = [trace for trace in figure.data if trace.fill != "toself"]
    bands = [trace for trace in figure.data if trace.fill == "toself"]
    assert len(bands) == 3 and len(lines) == 6
    assert [trace.line.dash for trace in lines[3:]] == ["dash", "dash", "dot"]
    path = result.save(tmp_path / "comparison.safetensors")
    assert VectorComparison.load(path) == result and Result.load(path) == result


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(AnalysisError, match="prompting must be a TaskVectorPrompting"):
        CompareVectors(prompting=TaskDecodability())
