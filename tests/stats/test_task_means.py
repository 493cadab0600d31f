"""task_means: the per-task and overall means of per-prompt values with their stratified bootstrap intervals."""

from __future__ import annotations

import torch

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
