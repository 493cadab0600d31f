"""Reliability of the encoding analyses: determinism, padding / order / batch-size invariance, hook hygiene."""

from __future__ import annotations

import pytest
import torch
from analyses_helpers import POOL, sample
from conftest import hook_snapshot, left_padded

import tv_lens.probes as probes
from tv_lens.analyses import Geometry, ICLPerformance, Suite, TaskDecodability, TdAccuracy
from tv_lens.probes import collect


def test_same_seed_gives_identical_results_for_every_analysis(model):
    analyses = (TaskDecodability(k=3, n_bootstrap=30), Geometry(), ICLPerformance(shots=(0, 2), n_bootstrap=30))
    first = Suite(analyses).run(model, POOL, n_per_task=5, n_shots=(1, 3), seed=4)
    assert first == Suite(analyses).run(model, POOL, n_per_task=5, n_shots=(1, 3), seed=4)
    assert first != Suite(analyses).run(model, POOL, n_per_task=5, n_shots=(1, 3), seed=5)
    fit = TdAccuracy(shots=(1, 2), decodability=TaskDecodability(k=3, n_bootstrap=0))
    assert fit.run(model, POOL, n_per_task=5, seed=1) == fit.run(model, POOL, n_per_task=5, seed=1)


def test_td_is_the_same_under_left_padding_shuffling_and_batch_size(model):
    batch = sample(n_per_task=8, n_shots=(1, 5), seed=6)
    config = TaskDecodability(k=4, n_bootstrap=0)
    reference = config.run_batch(model, batch)
    lengths = batch.lengths
    left, mask, _ = left_padded(batch.inputs, lengths)
    left_pos = batch.answer_pos + batch.inputs.shape[1] - lengths  # shifted right by each prompt's padding
    reps = collect(model, left, left_pos, attention_mask=mask, task_ids=batch.task_ids, progress=False)
    padded = config.compute(reps, task_names=batch.task_names)
    assert torch.equal(padded.predictions, reference.predictions) and torch.equal(padded.td, reference.td)
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))
    shuffled = TaskDecodability(k=4, n_bootstrap=0, batch_size=7).run_batch(model, batch.select(perm))
    assert torch.equal(shuffled.predictions, reference.predictions[:, perm])
    assert torch.equal(shuffled.confusion, reference.confusion)


def test_a_failure_inside_a_pass_leaves_the_model_hooks_and_weights_unchanged(model, monkeypatch):
    before_hooks = hook_snapshot(model)
    before_weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # fail at the third hook of the pass (a layer in the middle)
            raise RuntimeError("injected fault")
        return original(*args, **kwargs)

    original = probes._keep_rows
    monkeypatch.setattr(probes, "_keep_rows", failing)
    with pytest.raises(RuntimeError, match="injected fault"):
        Suite((TaskDecodability(k=3), Geometry())).run(model, POOL, n_per_task=4, n_shots=2)
    assert hook_snapshot(model) == before_hooks
    assert all(torch.equal(p, before_weights[name]) for name, p in model.named_parameters())
