"""Statistics of sampling: the Null task, label noise, shot counts, task order, permutations."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare
from tasks_helpers import decode

from tv_lens.tasks import NULL_TASK, bitwise_pool, offset_pool, permutation_pool


def _query_table(pool, batch, task: str) -> torch.Tensor:
    """Contingency counts [query x, answer] over the prompts of one task."""
    n = pool.vocab.n_values
    table = torch.zeros(n, n, dtype=torch.long)
    for i in (batch.task_ids == batch.task_names.index(task)).nonzero().flatten().tolist():
        p = decode(batch, pool, i)
        table[p.query_x[0], p.answer[0]] += 1
    return table


def test_null_answers_are_uniform_and_independent_of_query() -> None:
    pool = offset_pool(offsets=(1, 2), n_values=6, null=True)
    batch = pool.sample(n_per_task=1500, n_shots=1, seed=0)
    assert batch.task_names[-1] == NULL_TASK
    null = _query_table(pool, batch, NULL_TASK)
    assert ((null > 0).sum(1) == 6).all()  # every query value receives every answer
    assert chi2_contingency(null.numpy()).pvalue > 1e-3
    assert chisquare(null.sum(0).numpy()).pvalue > 1e-3  # answers uniform
    # The same statistic does detect dependence: a real task's table is far from independent.
    assert chi2_contingency(_query_table(pool, batch, "offset(1)").numpy()).pvalue < 1e-12


def test_null_demonstrations_are_random_too() -> None:
    pool = offset_pool(offsets=(3,), n_values=5, null=True)
    batch = pool.sample(n_per_task=400, n_shots=4, seed=1)
    ys_by_x: dict[int, set[int]] = {}
    for i in (batch.task_ids == 1).nonzero().flatten().tolist():
        for d in decode(batch, pool, i).demos:
            ys_by_x.setdefault(d.x[0], set()).add(d.y[0])
    assert all(len(ys) == 5 for ys in ys_by_x.values()) and len(ys_by_x) == 5


def test_pool_without_null_has_no_null_prompts() -> None:
    pool = bitwise_pool(ops=("and", "or"), n_bits=2, null=False)
    batch = pool.sample(n_per_task=5, n_shots=2, seed=0)
    assert batch.task_names == ("and", "or") and len(pool) == 2
    assert batch.task_ids.tolist() == [0] * 5 + [1] * 5  # ordered by task id


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.4])
def test_label_noise_fraction_and_clean_queries(noise: float) -> None:
    pool = bitwise_pool(n_bits=3, answer="bits", null=True)
    batch = pool.sample(n_per_task=200, n_shots=4, seed=5, label_noise=noise)
    real = batch.task_ids < len(pool.tasks)
    frac = batch.demo_noisy[real].float().mean().item()
    assert abs(frac - noise) < 0.03
    assert not batch.demo_noisy[~real].any()  # Null labels are random already: no noise flags
    for i in real.nonzero().flatten().tolist()[::7]:
        p = decode(batch, pool, i)
        x = torch.tensor([p.query_x])
        assert pool.decode_answers(torch.tensor(p.answer)).item() == pool.tasks[int(batch.task_ids[i])](x).item()


def test_noisy_labels_cover_the_other_values() -> None:
    pool = offset_pool(offsets=(0,), n_values=4, null=False)
    batch = pool.sample(n_per_task=600, n_shots=3, seed=2, label_noise=0.5)
    wrong: set[int] = set()
    for i in range(len(batch)):
        for d in decode(batch, pool, i).demos:
            if d.noisy:
                assert d.y[0] != d.x[0]
                wrong.add((d.y[0] - d.x[0]) % 4)
    assert wrong == {1, 2, 3}


@pytest.mark.parametrize(("spec", "allowed"), [(3, {3}), ((0, 4), {0, 1, 2, 3, 4}), (range(2, 11, 4), {2, 6, 10})])
def test_shot_specs(spec, allowed: set[int]) -> None:
    batch = offset_pool(n_values=8).sample(n_per_task=60, n_shots=spec, seed=0)
    assert set(batch.n_shots.tolist()) == allowed
    assert batch.max_shots == max(allowed)
    assert (batch.demo_start >= 0).sum(1).tolist() == batch.n_shots.tolist()


def test_permutations_are_distinct_seeded_bijections() -> None:
    pool = permutation_pool(n_tasks=4, n_values=7, seed=3)
    xs = torch.arange(7)[:, None]
    tables = [task(xs) for task in pool.tasks]
    assert all(sorted(t.tolist()) == list(range(7)) for t in tables)
    assert len({tuple(t.tolist()) for t in tables}) == 4
    again = permutation_pool(n_tasks=4, n_values=7, seed=3)
    assert all(torch.equal(a(xs), b(xs)) for a, b in zip(pool.tasks, again.tasks, strict=True))
    other = permutation_pool(n_tasks=4, n_values=7, seed=4)
    assert not all(torch.equal(a(xs), b(xs)) for a, b in zip(pool.tasks, other.tasks, strict=True))
    assert permutation_pool(n_tasks=2, n_values=2).task_names == ("perm(0)", "perm(1)", NULL_TASK)


def test_bits_encoding_round_trips() -> None:
    pool = bitwise_pool(n_bits=4, answer="bits")
    values = torch.arange(16)
    bits = pool.encode_answers(values)
    assert bits.shape == (16, 4) and bits[5].tolist() == [0, 1, 0, 1]
    assert torch.equal(pool.decode_answers(bits), values)
