"""The option groups every analysis config shares: their checks when a config is built, and ``config=`` checks."""

from __future__ import annotations

import pytest
import torch

from tv_lens.analyses import (
    Geometry,
    HeadAblation,
    LayerFinetuning,
    TaskDecodability,
    TaskVectorPatching,
    compare_models,
    head_importance,
    patch_task_vectors,
    project,
    task_decodability,
)
from tv_lens.analyses.function_vectors import (
    FunctionVectors,
    causal_indirect_effects,
    function_vector,
    function_vector_prompting,
    mean_head_activations,
)
from tv_lens.errors import AnalysisError, ConfigError, ShapeError, TaskError

REPS, LABELS = torch.randn(2, 36, 4), torch.arange(3).repeat_interleave(12)


@pytest.mark.parametrize(
    "build",
    [
        lambda size: TaskDecodability(batch_size=size),  # IntervalOptions, then PassOptions
        lambda size: Geometry(batch_size=size),  # PassOptions after the config's own checks
        lambda size: HeadAblation(batch_size=size),  # CausalOptions
        lambda size: FunctionVectors(batch_size=size),
    ],
)
@pytest.mark.parametrize("size", [0, -3, 1.5, True, None, "8"])
def test_every_config_with_pass_options_refuses_a_batch_size_that_is_not_a_positive_int(build, size):
    with pytest.raises(ShapeError, match=rf"batch_size must be an int ≥ 1 \(prompts per pass\), got {size!r}\."):
        build(size)


@pytest.mark.parametrize(
    "build",
    [
        lambda flag: TaskDecodability(progress=flag),
        lambda flag: Geometry(progress=flag),
        lambda flag: HeadAblation(progress=flag),
        lambda flag: FunctionVectors(progress=flag),
    ],
)
@pytest.mark.parametrize("flag", ["no", 0, None])
def test_every_config_with_pass_options_refuses_a_progress_that_is_not_a_bool(build, flag):
    # was taken as it was: progress="no" showed the bars
    with pytest.raises(TaskError, match=rf"progress must be True or False \(show progress bars\), got {flag!r}\."):
        build(flag)


def test_the_option_groups_check_their_values_in_turn():
    assert HeadAblation(batch_size=1, n_bootstrap=0).batch_size == 1
    with pytest.raises(AnalysisError):  # IntervalOptions still checks its values before PassOptions
        HeadAblation(batch_size=0, n_bootstrap=-1)
    with pytest.raises(AnalysisError, match="Unknown projection"):  # the config's own checks still run
        Geometry(method="tsne")  # type: ignore[arg-type]


WRONG = TaskVectorPatching(n_bootstrap=0)  # the config of another analysis


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: task_decodability(REPS, LABELS, config=WRONG), "TaskDecodability"),
        (lambda: project(REPS, LABELS, config=WRONG), "Geometry"),
        (lambda: head_importance(None, None, config=WRONG), "HeadAblation"),
        (lambda: patch_task_vectors(None, None, None, config=Geometry()), "TaskVectorPatching"),
        (lambda: compare_models({}, None, config=WRONG), "LayerFinetuning"),
        (lambda: function_vector(None, None, (), config=WRONG), "FunctionVectors"),
        (lambda: function_vector_prompting(None, None, None, None, config=WRONG), "FunctionVectors"),
        (lambda: mean_head_activations(None, None, config={"batch_size": 8}), "FunctionVectors"),
        (lambda: causal_indirect_effects(None, None, None, config=Geometry()), "FunctionVectors"),
    ],
)
def test_a_pure_function_given_another_config_names_the_one_it_takes(call, expected):
    with pytest.raises(ConfigError, match=rf"config must be a {expected}, got a \w+; pass config={expected}\(\.\.\.\)"):
        call()


def test_a_config_of_the_right_class_or_none_is_used():
    default = task_decodability(REPS, LABELS)
    assert default.settings["k"] == TaskDecodability().k
    assert task_decodability(REPS, LABELS, config=TaskDecodability(k=2, n_bootstrap=0)).settings["k"] == 2
    assert isinstance(LayerFinetuning().decodability, TaskDecodability)
