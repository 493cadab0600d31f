"""TaskVectors: means against run_with_cache, both reductions, save / load, tables, figures, bad input, hooks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from causal_helpers import POOL, failing_user_hook, sample
from conftest import hook_snapshot

from tv_lens.errors import (
    AnalysisError,
    LayerOutOfRangeError,
    ResultFileError,
    ShapeError,
    TaskError,
    TvLensError,
)
from tv_lens.probes import collect
from tv_lens.results.base import Result
from tv_lens.task_vectors import TaskVectors


def cached(model, batch, layer):
    _, cache = model.run_with_cache(batch.inputs)
    name = "blocks.0.hook_resid_pre" if layer == -1 else f"blocks.{layer}.hook_resid_post"
    return cache[name].double().numpy()


def test_mean_over_prompts_equals_numpy_means_of_cached_rows(model):
    batch = sample(n_per_task=5, n_shots=(1, 4))
    tv = TaskVectors.from_model(model, batch, layers=(-1, 0, 2))
    assert tv.task_names == POOL.task_names and tv.layers == (-1, 0, 2)
    assert tv.n_prompts.tolist() == [5] * 4 and tv.n_positions.tolist() == [5] * 4
    ids, pos = batch.task_ids.numpy(), batch.answer_pos.numpy()
    for i, layer in enumerate(tv.layers):
        rows = cached(model, batch, layer)[np.arange(len(batch)), pos]
        for t in range(4):
            np.testing.assert_allclose(tv.vectors[t, i].numpy(), rows[ids == t].mean(0), atol=1e-10)


def test_mean_over_demo_positions_equals_numpy_per_prompt_then_per_task(model):
    batch = sample(n_per_task=4, n_shots=(0, 4), seed=1)
    tv = TaskVectors.from_model(model, batch, layers=(1,), reduce="mean_over_demo_positions", batch_size=3)
    acts = cached(model, batch, 1)
    per_prompt = {}
    for p in range(len(batch)):
        shots = int(batch.n_shots[p])
        if shots:
            positions = batch.demo_answer_pos[p, :shots].numpy()
            per_prompt[p] = acts[p, positions].mean(0)
    ids = batch.task_ids.numpy()
    for t, name in enumerate(tv.task_names):
        members = [p for p in per_prompt if ids[p] == POOL.task_names.index(name)]
        np.testing.assert_allclose(tv.vectors[t, 0].numpy(), np.mean([per_prompt[p] for p in members], 0), atol=1e-10)
        assert int(tv.n_prompts[t]) == len(members)
        assert int(tv.n_positions[t]) == int(batch.n_shots[ids == POOL.task_names.index(name)].sum())
    assert tv.reduce == "mean_over_demo_positions"


def test_pool_input_is_sampled_with_the_seed_and_equals_the_batch_input(model):
    from_pool = TaskVectors.from_model(model, POOL, layers=(0, 1), n_per_task=3, n_shots=2, seed=5)
    from_batch = TaskVectors.from_model(model, POOL.sample(3, 2, 5), layers=(0, 1))
    assert from_pool == from_batch
    assert TaskVectors.from_model(model, POOL, layers=(0, 1), n_per_task=3, n_shots=2, seed=6) != from_pool


def test_from_representations_select_get_and_cosine(model):
    batch = sample(n_per_task=4, seed=2)
    reps = collect(model, batch.inputs, batch.answer_pos, layers=(0, 1), task_ids=batch.task_ids, progress=False)
    tv = TaskVectors.from_representations(reps, batch.task_names)
    from_model = TaskVectors.from_model(model, batch, layers=(0, 1))
    assert tv.provenance is None and from_model.provenance is not None  # only from_model knows the model
    assert tv == replace(from_model, provenance=None)
    sub = tv.select(tasks=("null", "offset(2)"), layers=(1,))
    assert sub.task_names == ("null", "offset(2)") and sub.layers == (1,)
    assert torch.equal(sub.vectors[1, 0], tv.get("offset(2)", 1))
    assert torch.equal(tv.at(0), tv.vectors[:, 0])
    cos = tv.cosine(1)
    v = tv.at(1).double()
    assert abs(float(cos[0, 2]) - float(v[0] @ v[2] / (v[0].norm() * v[2].norm()))) < 1e-12
    torch.testing.assert_close(cos.diagonal(), torch.ones(4, dtype=torch.float64))


def test_tasks_argument_keeps_only_named_tasks(model):
    batch = sample(n_per_task=3, seed=3)
    tv = TaskVectors.from_model(model, batch, layers=(0,), tasks=("offset(3)", "offset(1)"))
    assert tv.task_names == ("offset(3)", "offset(1)")
    full = TaskVectors.from_model(model, batch, layers=(0,))
    assert torch.equal(tv.vectors[0], full.vectors[2])
    partial = TaskVectors.from_model(model, batch.select(batch.task_ids != 1), layers=(0,))
    assert partial.task_names == ("offset(1)", "offset(3)", "null")


def test_save_load_round_trip_is_exact_and_atomic(model, tmp_path):
    tv = TaskVectors.from_model(model, sample(seed=4), layers=(-1, 2), reduce="mean_over_demo_positions")
    path = tv.save(tmp_path / "vectors.safetensors")
    assert TaskVectors.load(path) == tv and Result.load(path) == tv
    assert not [p for p in tmp_path.iterdir() if p.name != "vectors.safetensors"]  # no temporary file left
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ResultFileError, match="corrupt or truncated"):
        TaskVectors.load(path)


def test_frame_is_tidy_and_figure_holds_the_norms(model):
    tv = TaskVectors.from_model(model, sample(seed=5), layers=(0, 1, 2))
    frame = tv.to_frame()
    assert list(frame.columns) == ["task", "layer", "layer_label", "site", "reduce", "norm", "n_prompts", "n_positions"]
    assert len(frame) == 4 * 3 and not frame.duplicated(["task", "layer"]).any()
    row = frame[(frame.task == "offset(2)") & (frame.layer == 1)].iloc[0]
    assert abs(row.norm - float(tv.get("offset(2)", 1).double().norm())) < 1e-12
    traces = tv.figure().data
    assert [t.name for t in traces] == list(tv.task_names)
    np.testing.assert_allclose(traces[3].y, tv.vectors[3].double().norm(dim=-1).numpy())


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"reduce": "median"}, AnalysisError, "Unknown reduce 'median'"),
        ({"layers": (3,)}, LayerOutOfRangeError, "Layer 3 is out of range"),
        ({"layers": ()}, LayerOutOfRangeError, "layers is empty"),
        ({"tasks": ("offset(9)",)}, TaskError, "have no prompt in the batch"),
        ({"tasks": ()}, TaskError, "tasks= names no task"),
        ({"site": "residual"}, TvLensError, "Unknown site 'residual'"),
    ],
)
def test_bad_input_names_the_problem(model, kwargs, error, words):
    with pytest.raises(error, match=words):
        TaskVectors.from_model(model, sample(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"tasks": []}, r"select takes tasks as a non-empty list, got \[\]"),
        ({"layers": ()}, r"select takes layers as a non-empty list, got \(\)"),
        ({"tasks": "offset(1)"}, r"got 'offset\(1\)'; pass e.g. tasks=\['offset\(1\)'\]"),
        ({"layers": 1}, r"got 1; pass e.g. layers=\[2\]"),
    ],
)
def test_select_refuses_what_is_not_a_non_empty_list(model, kwargs, words):
    """An empty selection gave vectors of no task (or no layer); a lone name was read letter by letter."""
    tv = TaskVectors.from_model(model, sample())
    with pytest.raises(TaskError, match=words):
        tv.select(**kwargs)
    kept = tv.select(tasks=["null", "offset(2)"], layers=(2, 0))
    assert torch.equal(kept.vectors[0, 0], tv.get("null", 2)) and torch.equal(
        kept.vectors[1, 1], tv.get("offset(2)", 0)
    )


def test_more_bad_input(model):
    with pytest.raises(AnalysisError, match="no prompt with demonstrations"):
        TaskVectors.from_model(model, sample(n_shots=0), reduce="mean_over_demo_positions")
    with pytest.raises(TaskError, match="Pass a TaskPool, TextPool or RegressionPool, or a batch of one"):
        TaskVectors.from_model(model, "prompts")
    tv = TaskVectors.from_model(model, sample(), layers=(0,))
    with pytest.raises(TaskError, match="has no vector"):
        tv.get("offset(7)", 0)
    with pytest.raises(LayerOutOfRangeError, match="Layer 2 is not among the layers of these task vectors"):
        tv.at(2)
    with pytest.raises(ShapeError, match="d_model=32 but the model has d_model=16"):
        _wrong_width(tv)
    with pytest.raises(ShapeError, match=r"'vectors' is a torch.int64 tensor of shape \(2, 1, 4\), not Float\[Tensor"):
        TaskVectors(torch.zeros(2, 1, 4, dtype=torch.long), (0,), ("a", "b"), torch.ones(2), torch.ones(2))
    with pytest.raises(ShapeError, match=r"TaskVectors.vectors must have shape \(2, 1, 4\), got \(2, 2, 4\)"):
        TaskVectors(torch.zeros(2, 2, 4), (0,), ("a", "b"), torch.ones(2), torch.ones(2))
    with pytest.raises(ShapeError, match=r"TaskVectors.vectors must have shape \(2, 1, d_model\), got \(2, 4\)"):
        TaskVectors(torch.zeros(2, 4), (0,), ("a", "b"), torch.ones(2), torch.ones(2))
    with pytest.raises(ShapeError, match=r"TaskVectors.n_positions must have shape \(2,\), got \(3,\)"):
        TaskVectors(torch.zeros(2, 1, 4), (0,), ("a", "b"), torch.ones(2), torch.ones(3))


def _wrong_width(tv):
    from conftest import tiny_config

    from tv_lens.models import build_model

    tv.check_model(build_model(tiny_config(d_model=16, n_heads=2)))


def test_hooks_are_restored_after_a_fault_inside_a_hook(model):
    batch = sample(n_per_task=4, n_shots=(1, 3))
    weights = [p.detach().clone() for p in model.parameters()]
    for reduce in ("mean_over_prompts", "mean_over_demo_positions"):
        with failing_user_hook(model, "blocks.1.hook_resid_post", fail_on_call=2) as calls:
            before = hook_snapshot(model)
            with pytest.raises(RuntimeError, match="injected fault"):
                TaskVectors.from_model(model, batch, layers=(0, 1), reduce=reduce, batch_size=5)
            assert hook_snapshot(model) == before and len(calls) == 2
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))


def test_regression_prompts_give_task_vectors_of_both_reductions():
    """A continuous-input model on regression prompts: the task means read by hand from run_with_cache."""
    from tv_lens.models import ModelConfig, build_continuous_model
    from tv_lens.tasks import shifted_linear_pool

    pool = shifted_linear_pool(d=4, n_tasks=2)
    config = ModelConfig(d_vocab=1, n_layers=2, d_model=16, n_heads=2, n_ctx=16, dtype="float64", seed=1)
    model = build_continuous_model(config, d_in=pool.d_in, d_out=pool.d_out)
    batch = pool.sample(5, (1, 4), seed=2)  # shots vary, so the demonstration means weigh prompts unequally
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.inputs)
    for reduce in ("mean_over_prompts", "mean_over_demo_positions"):
        vectors = TaskVectors.from_model(model, batch, layers=(0, 1), reduce=reduce)
        assert vectors.task_names == pool.task_names
        for t in range(len(pool.task_names)):
            for i, layer in enumerate((0, 1)):
                acts = cache[f"blocks.{layer}.hook_resid_post"]
                rows = []
                for p in (batch.task_ids == t).nonzero().flatten().tolist():
                    if reduce == "mean_over_prompts":
                        rows.append(acts[p, int(batch.answer_pos[p])])
                    else:
                        demo = [int(q) for q in batch.demo_answer_pos[p] if q >= 0]
                        rows.append(acts[p, demo].mean(0))
                torch.testing.assert_close(vectors.vectors[t, i], torch.stack(rows).mean(0), atol=1e-10, rtol=0)
