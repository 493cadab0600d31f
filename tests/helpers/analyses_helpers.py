"""Shared helpers of the analyses tests (not a conftest.py: tests/conftest.py owns that module name)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from tv_lens.models import adapt
from tv_lens.probes import collect
from tv_lens.tasks import offset_pool

POOL = offset_pool()  # 4 offsets + Null, one input distribution; vocabulary fits the conftest models
N_TASKS = len(POOL)


def sample(n_per_task: int = 12, n_shots=4, seed: int = 0):
    return POOL.sample(n_per_task, n_shots, seed)


def collect_batch(model, batch, **kwargs):
    return collect(
        model,
        batch.inputs,
        batch.answer_pos,
        attention_mask=batch.attention_mask,
        task_ids=batch.task_ids,
        progress=False,
        **kwargs,
    )


@contextmanager
def count_forward_passes(model):
    """Count forward passes: a hook on the embedding output fires once per pass."""
    calls = []
    hook_point = adapt(model).hook_point("blocks.0.hook_resid_pre")
    before = list(hook_point.fwd_hooks)
    hook_point.add_hook(lambda activation, hook: calls.append(activation.shape[0]))
    try:
        yield calls
    finally:
        for handle in [h for h in hook_point.fwd_hooks if not any(h is old for old in before)]:
            handle.hook.remove()
            hook_point.fwd_hooks.remove(handle)


def clusters(n_tasks: int = 4, n_per_task: int = 15, d: int = 8, spread: float = 100.0, seed: int = 0):
    """Gaussian clusters: task t centred at spread * e_t (far apart for a large spread)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_tasks).repeat_interleave(n_per_task)
    centres = torch.eye(n_tasks, d, dtype=torch.float64) * spread
    return centres[labels] + torch.randn(len(labels), d, generator=generator, dtype=torch.float64), labels
