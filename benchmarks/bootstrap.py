"""Benchmark 10: bootstrap intervals of head attention by role, against gathering every resample's values.

The usual way to resample: index the values with every resample's draws (``values[..., draws]``, a
``[*lead, resample, prompt]`` copy per task) and sum. tv_lens counts how often each resample drew each prompt and
takes one product with those counts (``[*lead, prompt] @ [prompt, resample]``), with the same draws. The input has the
shape of head attention by role on a GPT-2-size model (12 blocks × 12 heads × 6 roles), a quarter of the prompts
without one of the roles (``present``); the intervals are checked equal (1e-12) first.
"""

from __future__ import annotations

import torch

from benchmarks.common import Row, Scale, measure
from tv_lens.stats.bootstrap import stratified_bootstrap_ci


def _gathered(values, groups, n_groups: int, n_bootstrap: int, present):
    """Every resample's values gathered and summed, over the prompts that count: ``(per_group, overall)``."""
    generator = torch.Generator().manual_seed(0)
    weights = present.expand(values.shape).double()
    values = torch.where(weights > 0, values, 0.0)
    quantiles = torch.tensor([0.025, 0.975], dtype=torch.float64)
    per_group = torch.full((*values.shape[:-1], n_groups, 2), float("nan"), dtype=torch.float64)
    total, counted = 0, 0
    for g in range(n_groups):
        members = (groups == g).nonzero().flatten()
        draws = members[torch.randint(len(members), (n_bootstrap, len(members)), generator=generator)]
        sums, counts = values[..., draws].sum(-1), weights[..., draws].sum(-1)
        total, counted = total + sums, counted + counts
        per_group[..., g, :] = torch.nanquantile(sums / counts, quantiles, dim=-1).movedim(0, -1)
    return per_group, torch.nanquantile(total / counted, quantiles, dim=-1).movedim(0, -1)


def bootstrap_rows(scale: Scale, device: str) -> list[Row]:
    generator = torch.Generator().manual_seed(3)
    n_prompts = 80 if scale.recipe == "quick" else 200
    values = torch.rand(12, 12, 6, n_prompts, generator=generator, dtype=torch.float64)  # [layer, head, role, prompt]
    groups = torch.arange(5).repeat(n_prompts // 5)
    present = torch.ones(6, n_prompts, dtype=torch.bool)
    present[2, : n_prompts // 4] = False  # a quarter of the prompts lack one role
    (ours_s, usual_s), (ours, usual) = measure(
        lambda: stratified_bootstrap_ci(values, groups, 5, 1000, 0.95, 0, present),
        lambda: _gathered(values, groups, 5, 1000, present),
        rounds=scale.rounds,
    )
    for a, b in zip(ours, usual, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, equal_nan=True)
    label = f"bootstrap of head attention by role, 144 heads x 6 roles x {n_prompts} prompts, 1000 resamples"
    note = "intervals checked equal (1e-12) first; the same draws, counted instead of gathered"
    return [Row(label, ours_s, usual_s, "every resample's values gathered, then summed", "< 1", ours_s < usual_s, note)]
