"""parity_offset_pool: every task's outputs against the rule written out by hand; bad arguments; its recipe."""

from __future__ import annotations

import itertools

import pytest
import torch

from tv_lens.errors import TaskError
from tv_lens.tasks import NULL_TASK, parity_offset_pool
from tv_lens.training import recipes


@pytest.mark.parametrize(("offsets", "n_values"), [((1, 3), 8), ((0, 2, 5), 9), ((4,), 6)])
def test_every_task_adds_the_offset_of_the_inputs_parity(offsets: tuple[int, ...], n_values: int) -> None:
    pool = parity_offset_pool(offsets=offsets, n_values=n_values)
    pairs = list(itertools.product(offsets, offsets))
    assert pool.task_names == (*(f"offset({a},{b})" for a, b in pairs), NULL_TASK)
    assert (pool.input_values, pool.output_values, pool.vocab.n_values) == (n_values, n_values, n_values)
    x = torch.arange(n_values)[:, None]
    for task, (a, b) in zip(pool.tasks, pairs, strict=True):
        expected = [(v + (a if v % 2 == 0 else b)) % n_values for v in range(n_values)]
        assert task(x).tolist() == expected, task.name


def test_prompts_show_one_offset_per_demonstrations_parity() -> None:
    pool = parity_offset_pool(null=False)
    batch = pool.sample(n_per_task=64, n_shots=1, seed=0)
    x = batch.inputs[torch.arange(len(batch)), batch.demo_start[:, 0]]
    y = batch.inputs[torch.arange(len(batch)), batch.demo_answer_pos[:, 0] + 1]
    query = batch.inputs[torch.arange(len(batch)), batch.query_start]
    for t, (a, b) in enumerate(itertools.product((1, 3), (1, 3))):
        rows = batch.task_ids == t
        shift = torch.where(x[rows] % 2 == 0, a, b)
        assert torch.equal(y[rows], (x[rows] + shift) % 8)
        assert torch.equal(batch.answers[rows, 0], (query[rows] + torch.where(query[rows] % 2 == 0, a, b)) % 8)
    assert not pool.null and len(pool) == 4


def test_the_shots_recipe_trains_on_this_family() -> None:
    recipe_pool, pool = recipes["shots"].build_pool(), parity_offset_pool()
    assert recipe_pool.task_names == pool.task_names and recipe_pool.vocab == pool.vocab
    x = torch.arange(8)[:, None]
    for mine, theirs in zip(recipe_pool.tasks, pool.tasks, strict=True):
        assert torch.equal(mine(x), theirs(x))


def test_bad_arguments_raise_task_errors_that_name_the_fix() -> None:
    with pytest.raises(TaskError, match=r"offsets must be distinct and >= 0, got \(1, 1\)"):
        parity_offset_pool(offsets=(1, 1))
    with pytest.raises(TaskError, match=r"offsets must be distinct and >= 0, got \(-1, 3\)"):
        parity_offset_pool(offsets=(-1, 3))
    with pytest.raises(TaskError, match=r"offsets must be ints, got \(1.5, 3\); e.g. offsets=\(1, 3\)"):
        parity_offset_pool(offsets=(1.5, 3))  # type: ignore[arg-type]
    with pytest.raises(TaskError, match=r"Vocabulary too small.*needs n_values >= 10, got n_values=8"):
        parity_offset_pool(offsets=(1, 9), n_values=8)
    with pytest.raises(TaskError, match="at least one task"):
        parity_offset_pool(offsets=())
    with pytest.raises(TaskError, match=r"Unknown prompt format 'newline'"):
        parity_offset_pool(fmt="newline")  # type: ignore[arg-type]
