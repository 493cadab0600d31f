"""task_means: the per-task and overall means of per-prompt values with their stratified bootstrap intervals."""

from __future__ import annotations

import pytest
import torch

from tv_lens.errors import ShapeError
from tv_lens.stats import group_means
from tv_lens.stats.bootstrap import stratified_bootstrap_ci, task_means


def test_task_means_are_plain_means_and_the_bootstrap_intervals_of_the_chosen_prompts():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(2, 3, 30, generator=generator)  # [layer, head, prompt]
    groups = torch.arange(3).repeat(10)
    chosen = groups != 2  # every task but the third (a Null task, say)
    means = task_means(values, groups, 3, chosen, n_bootstrap=200, ci=0.9, seed=4)
    for t in range(3):
        torch.testing.assert_close(means.per_task[..., t], values[..., groups == t].double().mean(-1))
    torch.testing.assert_close(means.overall, values[..., chosen].mean(-1))
    per_task_ci, _ = stratified_bootstrap_ci(values, groups, 3, 200, 0.9, 4)
    _, overall_ci = stratified_bootstrap_ci(values[..., chosen], groups[chosen], 3, 200, 0.9, 4)
    assert torch.equal(means.per_task_ci, per_task_ci) and torch.equal(means.overall_ci, overall_ci)
    assert bool((means.overall_ci[..., 0] < means.overall).all() and (means.overall < means.overall_ci[..., 1]).all())
    assert bool(means.per_task_ci[..., 2, :].isfinite().all())  # the left-out task keeps its own interval


def test_values_that_do_not_count_are_left_out_of_the_means_and_the_intervals():
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(2, 3, 30, generator=generator)  # [layer, role, prompt]
    groups = torch.arange(3).repeat(10)
    chosen = groups != 2
    present = torch.rand(3, 30, generator=generator) > 0.4  # [role, prompt]: which prompts have each role
    present[2] = False  # a role no prompt has
    same = task_means(values, groups, 3, chosen, n_bootstrap=50, seed=2, present=torch.ones(3, 30, dtype=torch.bool))
    plain = task_means(values, groups, 3, chosen, n_bootstrap=50, seed=2)
    for name in ("per_task", "per_task_ci", "overall_ci"):
        assert torch.equal(getattr(same, name), getattr(plain, name))
    torch.testing.assert_close(same.overall, plain.overall.double())
    means = task_means(values, groups, 3, chosen, n_bootstrap=200, seed=2, present=present)
    for r in range(2):
        for t in range(3):
            rows = present[r] & (groups == t)
            torch.testing.assert_close(means.per_task[:, r, t], values[:, r, rows].double().mean(-1))
        torch.testing.assert_close(means.overall[:, r], values[:, r, present[r] & chosen].double().mean(-1))
    assert bool(means.per_task[:, 2].isnan().all() and means.per_task_ci[:, 2].isnan().all())
    assert bool(means.overall[:, 2].isnan().all() and means.overall_ci[:, 2].isnan().all())
    low, high = means.overall_ci[:, :2].unbind(-1)
    assert bool((low < means.overall[:, :2]).all() and (means.overall[:, :2] < high).all())


def test_an_interval_over_equal_counted_values_is_that_value_whatever_the_others_hold():
    values = torch.full((2, 12), 0.25, dtype=torch.float64)
    present = torch.tensor([[True, False] * 6, [False] * 11 + [True]])
    values[~present] = torch.tensor([float("nan"), 7.0], dtype=torch.float64).repeat(9)[: int((~present).sum())]
    groups = torch.tensor([0, 1] * 6)
    per_task_ci, overall_ci = stratified_bootstrap_ci(values, groups, 2, 100, 0.9, 0, present)
    assert torch.equal(per_task_ci[0, 0], torch.tensor([0.25, 0.25], dtype=torch.float64))
    assert bool(per_task_ci[0, 1].isnan().all())  # the first row counts no prompt of the second group
    assert torch.equal(overall_ci, torch.full((2, 2), 0.25, dtype=torch.float64))
    assert torch.equal(per_task_ci[1, 1], torch.tensor([0.25, 0.25], dtype=torch.float64))


def resampled_reference(values, groups, n_groups, n_bootstrap, ci, seed, present=None):
    """Independent reference: every resample drawn (the documented draws: per group, in order, from one generator
    seeded with ``seed``) and its means taken one by one over the prompts that count."""
    generator = torch.Generator().manual_seed(seed)
    present = torch.ones(values.shape, dtype=torch.bool) if present is None else present.expand(values.shape)
    quantiles = torch.tensor([(1 - ci) / 2, (1 + ci) / 2], dtype=torch.float64)
    per_group = torch.full((*values.shape[:-1], n_groups, 2), float("nan"), dtype=torch.float64)
    chosen = [[] for _ in range(n_bootstrap)]
    for g in range(n_groups):
        members = (groups == g).nonzero().flatten()
        draws = torch.randint(len(members), (n_bootstrap, len(members)), generator=generator)
        means = []
        for b in range(n_bootstrap):
            rows = members[draws[b]]
            chosen[b].append(rows)
            counted = present[..., rows].double()
            means.append((values[..., rows].double() * counted).sum(-1) / counted.sum(-1))
        per_group[..., g, :] = torch.stack(means, -1).nanquantile(quantiles, -1).movedim(0, -1)
    overall = []
    for rows in chosen:
        rows = torch.cat(rows)
        counted = present[..., rows].double()
        overall.append((values[..., rows].double() * counted).sum(-1) / counted.sum(-1))
    return per_group, torch.stack(overall, -1).nanquantile(quantiles, -1).movedim(0, -1)


def test_the_intervals_are_those_of_every_resample_taken_one_by_one():
    generator = torch.Generator().manual_seed(5)
    values = torch.randn(2, 3, 24, generator=generator)  # [layer, role, prompt]
    groups = torch.tensor([0, 1, 2] * 8)
    present = torch.rand(3, 24, generator=generator) > 0.3
    for mask in (None, present):
        got = stratified_bootstrap_ci(values, groups, 3, 60, 0.9, 9, mask)
        want = resampled_reference(values, groups, 3, 60, 0.9, 9, mask)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0, equal_nan=True)


@pytest.mark.parametrize("groups", [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, -1, -1]])
def test_a_group_outside_n_groups_is_refused_not_dropped_from_the_overall_interval(groups):
    values = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    ids = torch.tensor(groups)
    with pytest.raises(
        ShapeError, match=r"groups must lie in 0 \.\. n_groups - 1 = 1, got \[.*with n_groups the number of tasks"
    ):
        stratified_bootstrap_ci(values, ids, 2, n_bootstrap=50)
    with pytest.raises(ShapeError, match=r"ids must lie in 0 \.\. n_groups - 1 = 1"):
        group_means(values, ids, 2)
    with pytest.raises(ShapeError, match="integer group ids"):
        group_means(values, ids.double(), 3)
    _, overall = stratified_bootstrap_ci(values, ids % 3, 3, n_bootstrap=0)  # every prompt in a group: accepted
    assert bool(overall.isnan().all())
