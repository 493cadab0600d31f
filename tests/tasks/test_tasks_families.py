"""Every family, both formats, with and without BOS: rendered prompts obey their rule and layout."""

from __future__ import annotations

import pytest
import torch
from tasks_helpers import FAMILIES, decode, reference

from tv_lens.tasks import NULL_TASK, ICLBatch


def _fields_equal(a: ICLBatch, b: ICLBatch) -> bool:
    tensors = ["inputs", "attention_mask", "answer_pos", "answers", "task_ids", "n_shots"]
    tensors += ["demo_start", "demo_answer_pos", "demo_noisy", "query_start"]
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in tensors) and a.task_names == b.task_names


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("fmt", ["arrow", "marker"])
@pytest.mark.parametrize("bos", [False, True])
def test_rule_holds_on_every_prompt(family: str, fmt: str, bos: bool) -> None:
    pool = FAMILIES[family](fmt, bos)
    batch = pool.sample(n_per_task=40, n_shots=(0, 5), seed=1, label_noise=0.2)
    assert len(batch) == 40 * len(pool)
    assert set(batch.n_shots.tolist()) == set(range(6))  # shots vary per prompt
    n_noisy = n_checked = 0
    for i in range(len(batch)):
        prompt = decode(batch, pool, i)
        if prompt.task == NULL_TASK:
            assert not any(d.noisy for d in prompt.demos)
            continue
        assert prompt.answer == reference(pool, prompt.task, prompt.query_x)  # queries are never noisy
        for d in prompt.demos:
            assert (d.y == reference(pool, prompt.task, d.x)) != d.noisy
            n_noisy += d.noisy
            n_checked += 1
    assert 0.1 < n_noisy / n_checked < 0.3


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("fmt", ["arrow", "marker"])
def test_answer_pos_and_teacher_forcing(family: str, fmt: str) -> None:
    pool = FAMILIES[family](fmt, False)
    batch = pool.sample(n_per_task=10, n_shots=(0, 4), seed=2)
    v, k = pool.vocab, batch.n_answer_tokens
    for i in range(len(batch)):
        ap = int(batch.answer_pos[i])
        assert torch.equal(batch.inputs[i, ap + 1 : ap + 1 + k], batch.answers[i])
        # arrow: the token before the answer is the query's separator; marker: the query's last x token.
        qs = int(batch.query_start[i])
        assert ap == qs + pool.n_inputs
        if fmt == "arrow":
            assert int(batch.inputs[i, ap]) == v.sep
        else:
            assert int(batch.inputs[i, qs]) == v.marker and int(batch.inputs[i, ap]) < v.n_values
        for j in range(int(batch.n_shots[i])):
            dap, start = int(batch.demo_answer_pos[i, j]), int(batch.demo_start[i, j])
            assert dap == start + pool.n_inputs and dap < qs
            special = (dap, v.sep) if fmt == "arrow" else (start, v.marker)
            assert int(batch.inputs[i, special[0]]) == special[1]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_token_outside_declared_vocab(family: str) -> None:
    for fmt in ("arrow", "marker"):
        for bos in (False, True):
            pool = FAMILIES[family](fmt, bos)
            batch = pool.sample(n_per_task=50, n_shots=(0, 6), seed=3, label_noise=0.5)
            assert int(batch.inputs.min()) >= 0 and int(batch.inputs.max()) < pool.vocab_size
            assert int(batch.answers.max()) < pool.vocab.n_values
            real = batch.attention_mask.bool()
            assert not (batch.inputs[real] == pool.vocab.pad).any()
            assert (batch.inputs[~real] == pool.vocab.pad).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_seed_same_batch_and_global_rng_untouched(family: str) -> None:
    pool = FAMILIES[family]("arrow", False)
    state = torch.get_rng_state()
    a = pool.sample(n_per_task=8, n_shots=(1, 4), seed=7, label_noise=0.3)
    b = pool.sample(n_per_task=8, n_shots=(1, 4), seed=7, label_noise=0.3)
    assert torch.equal(state, torch.get_rng_state())
    assert _fields_equal(a, b)
    c = pool.sample(n_per_task=8, n_shots=(1, 4), seed=8, label_noise=0.3)
    assert not _fields_equal(a, c)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("fmt", ["arrow", "marker"])
@pytest.mark.parametrize("bos", [False, True])
def test_zero_shot_keeps_query_and_answer(family: str, fmt: str, bos: bool) -> None:
    pool = FAMILIES[family](fmt, bos)
    batch = pool.sample(n_per_task=6, n_shots=(0, 3), seed=4)
    zs = batch.zero_shot()
    assert len(zs) == len(batch) and zs.max_shots == 0 and (zs.n_shots == 0).all()
    assert torch.equal(zs.answers, batch.answers) and torch.equal(zs.task_ids, batch.task_ids)
    pair_len = pool.n_inputs + 1 + pool.n_answer_tokens
    assert zs.inputs.shape[1] == int(bos) + pair_len  # every zero-shot prompt has the same length
    for i in range(len(batch)):
        full, zero = decode(batch, pool, i), decode(zs, pool, i)
        assert zero.demos == [] and zero.query_x == full.query_x and zero.answer == full.answer
        q = batch.inputs[i, int(batch.query_start[i]) : int(batch.lengths[i])]
        assert torch.equal(zs.inputs[i, int(zs.query_start[i]) :], q)
        assert int(zs.answer_pos[i]) - int(zs.query_start[i]) == int(batch.answer_pos[i] - batch.query_start[i])
    assert torch.equal(zs.zero_shot().inputs, zs.inputs)  # idempotent
