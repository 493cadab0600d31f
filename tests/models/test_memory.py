"""Passes that run out of memory are retried with half the prompts, and give the same numbers."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import pytest
import torch
from causal_helpers import memory_limit
from conftest import hook_snapshot, ragged_prompts

from tv_lens.analyses import (
    FunctionVectors,
    HeadAblation,
    TaskVectorPatching,
    TaskVectorPrompting,
    causal_indirect_effects,
    mean_head_activations,
)
from tv_lens.errors import OutOfMemoryError
from tv_lens.generation import generate
from tv_lens.interventions import ablate_head, add, run_with_interventions
from tv_lens.interventions.sweep import Cell, align, run_sweep
from tv_lens.models.memory import fitting
from tv_lens.probes import collect
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import offset_pool


def test_sweep_halves_rows_per_pass_and_gives_the_same_scores(model) -> None:
    tokens, answer_pos, _ = ragged_prompts(n_prompts=6)
    prompts = align(model, tokens, answer_pos)
    vector = torch.linspace(-1, 1, model.cfg.d_model, dtype=torch.float64)
    cells = [Cell((add(layer, vector),)) for layer in range(3)] + [Cell((ablate_head(1, 2),))]

    def score(logits, index):
        return logits[:, 0].double().cpu()

    expected = run_sweep(model, prompts, cells, score, rows_per_pass=24)
    before = hook_snapshot(model)
    with memory_limit(model, 5) as seen, pytest.warns(RuntimeWarning, match="Out of memory with rows_per_pass="):
        sweep = run_sweep(model, prompts, cells, score, rows_per_pass=24)
    assert hook_snapshot(model) == before
    assert sweep.rows_per_pass == 3 and expected.rows_per_pass == 24
    assert max(seen) > 5 and seen[-1] <= 5  # passes ran out of memory, and the last attempt fitted
    torch.testing.assert_close(sweep.clean, expected.clean)
    torch.testing.assert_close(sweep.cells, expected.cells)
    assert sweep.writes == expected.writes


def test_collect_and_engine_retry_smaller_batches(model) -> None:
    tokens, answer_pos, _ = ragged_prompts(n_prompts=7)
    expected_rows = collect(model, tokens, answer_pos, progress=False).activations
    expected_run = run_with_interventions(model, tokens, answer_pos, [ablate_head(0, 1)])
    with memory_limit(model, 2), pytest.warns(RuntimeWarning, match="batch_size"):
        rows = collect(model, tokens, answer_pos, batch_size=8, progress=False).activations
        run = run_with_interventions(model, tokens, answer_pos, [ablate_head(0, 1)])
    torch.testing.assert_close(rows, expected_rows)
    torch.testing.assert_close(run.logits, expected_run.logits)
    assert run.writes == expected_run.writes == (7,)


def test_summing_reads_start_again_from_zero_with_smaller_batches(model) -> None:
    """Head means, mean-ablation values and demonstration means add rows into sums: a retry must not add twice.

    Prompts of 1-5 shots go 4 per pass, shortest first: the first passes fit, a longer one runs out of memory, and the
    reading starts again with 2 per pass.
    """
    batch = offset_pool(offsets=(1, 2), n_values=8).sample(4, (1, 5), seed=0)
    config = FunctionVectors(batch_size=4)
    ablation = HeadAblation(mode="mean", n_bootstrap=0, prune_steps=0, attribution=False, batch_size=4)
    expected_means = mean_head_activations(model, batch, config=config)
    expected_values = ablation.run_batch(model, batch).ablation_values
    expected_vectors = TaskVectors.from_model(model, batch, reduce="mean_over_demo_positions", batch_size=4)
    with memory_limit(model, 64, max_positions=50) as seen, pytest.warns(RuntimeWarning, match="Out of memory with"):
        means = mean_head_activations(model, batch, config=config)
        values = ablation.run_batch(model, batch).ablation_values
        vectors = TaskVectors.from_model(model, batch, reduce="mean_over_demo_positions", batch_size=4)
    assert 4 in seen and 2 in seen  # passes of 4 prompts ran, and the reading started again with 2
    torch.testing.assert_close(means.activations, expected_means.activations, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(values, expected_values, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(vectors.vectors, expected_vectors.vectors, atol=1e-12, rtol=1e-12)


def test_generation_retries_smaller_batches_and_gives_the_same_tokens(model) -> None:
    # Prompts of one length (the first 4 tokens of each): the memory limit is a hook of the caller's, under which
    # generation runs prompts of one length per pass, and all 7 must share the first pass.
    tokens, _, _ = ragged_prompts(n_prompts=7)
    answer_pos = torch.full((7,), 3)
    interventions = [add(1, torch.linspace(-1, 1, model.cfg.d_model, dtype=torch.float64))]
    expected = generate(model, tokens, interventions, 3, answer_pos=answer_pos, stop_tokens=None, use_cache=False)
    sampled = generate(model, tokens, [], 3, answer_pos=answer_pos, do_sample=True, seed=5, stop_tokens=None)
    before = hook_snapshot(model)
    with memory_limit(model, 3) as seen, pytest.warns(RuntimeWarning, match="Out of memory with batch_size=7"):
        out = generate(model, tokens, interventions, 3, answer_pos=answer_pos, stop_tokens=None)
        again = generate(model, tokens, [], 3, answer_pos=answer_pos, do_sample=True, seed=5, stop_tokens=None)
    assert max(seen) == 7 and seen[-1] <= 3  # the first pass ran out of memory, the last one fitted
    assert hook_snapshot(model) == before
    assert torch.equal(out.tokens, expected.tokens) and out.writes == expected.writes == (7,)
    assert torch.equal(again.tokens, sampled.tokens)  # the sampling draws do not depend on the batches


def test_fitting_gives_up_at_one_and_lets_other_errors_through() -> None:
    def never_fits(size: int) -> int:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.warns(RuntimeWarning), pytest.raises(OutOfMemoryError, match="batch_size=1"):
        fitting(never_fits, 4, "batch_size")

    def broken(size: int) -> int:
        raise ValueError("not about memory")

    with pytest.raises(ValueError, match="not about memory"):
        fitting(broken, 4, "batch_size")
    assert fitting(lambda size: size, 4, "batch_size") == (4, 4)


def test_causal_results_record_the_rows_per_pass_that_fitted(model) -> None:
    """After an out-of-memory retry the result says the size it ran with, and every number is unchanged."""
    pool = offset_pool(offsets=(1, 2), n_values=8)
    batch = pool.sample(2, 3, seed=0)
    vectors = TaskVectors.from_model(model, pool.sample(2, 3, seed=1))
    analyses = {  # each with a limit (rows x positions) that its sweep's passes exceed at 64 rows per pass
        "patching": (100, lambda: TaskVectorPatching(n_bootstrap=0, rows_per_pass=64).run_batch(model, batch, vectors)),
        "prompting": (
            20,
            lambda: TaskVectorPrompting(n_bootstrap=0, rows_per_pass=64).run_batch(model, batch, vectors),
        ),
        "heads": (100, lambda: HeadAblation(n_bootstrap=0, prune_steps=2, rows_per_pass=64).run_batch(model, batch)),
        "indirect effects": (
            100,
            lambda: causal_indirect_effects(
                model, batch, means, config=FunctionVectors(n_bootstrap=0, rows_per_pass=64)
            ),
        ),
    }
    means = mean_head_activations(model, batch)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"  # every pass reaches it
    for name, (limit, run) in analyses.items():
        expected = run()
        with memory_limit(model, 64, max_positions=limit, at=last), pytest.warns(RuntimeWarning, match="Out of memory"):
            result = run()
        assert expected.rows_per_pass == 64, name
        assert result.rows_per_pass is not None and result.rows_per_pass < 64, name
        assert_close_results(result, expected, skip="rows_per_pass", where=name)


def assert_close_results(got, want, skip: str, where: str) -> None:
    """Every field equal, tensors to 1e-12 (batches of other sizes round float64 sums differently), nested too."""
    for field in fields(want):
        a, b, name = getattr(got, field.name), getattr(want, field.name), f"{where}.{field.name}"
        if field.name == skip:
            continue
        if isinstance(b, torch.Tensor):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, equal_nan=True, msg=name)
        elif is_dataclass(b):
            assert_close_results(a, b, skip, name)
        elif isinstance(b, float):
            assert a == pytest.approx(b, abs=1e-12, nan_ok=True), name
        else:
            assert a == b, name
