"""Shuffled demonstration labels (Todd et al.'s corruption): a permutation within each prompt, recorded per label."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from test_text import bitwise, decode
from text_tokenizers import word_level

from tv_lens.errors import TaskError
from tv_lens.tasks import NULL_TASK, TextPool, bitwise_pool, bitwise_text_tasks


def demo_labels(batch, i: int) -> list[int]:
    return [int(batch.inputs[i, p + 1]) for p in batch.demo_answer_pos[i, : int(batch.n_shots[i])].tolist()]


def test_token_pool_permutes_each_prompts_labels_and_nothing_else():
    pool = bitwise_pool(ops=("and", "or", "xor"), n_bits=3)
    clean = pool.sample(n_per_task=20, n_shots=(1, 6), seed=3)
    shuffled = pool.sample(n_per_task=20, n_shots=(1, 6), seed=3, shuffle_labels=True)
    assert torch.equal(clean.answers, shuffled.answers) and torch.equal(clean.n_shots, shuffled.n_shots)
    assert torch.equal(clean.demo_answer_pos, shuffled.demo_answer_pos)
    n_moved = 0
    for i in range(len(clean)):
        before, after = demo_labels(clean, i), demo_labels(shuffled, i)
        assert Counter(before) == Counter(after)  # the same labels, reordered
        wrong = [a != b for a, b in zip(before, after, strict=True)]
        assert shuffled.demo_noisy[i, : len(wrong)].tolist() == wrong
        if clean.task_names[int(clean.task_ids[i])] == NULL_TASK:
            assert not any(wrong)
        n_moved += sum(wrong)
        inputs = [p for p in range(int(clean.lengths[i])) if p - 1 not in clean.demo_answer_pos[i].tolist()]
        assert clean.inputs[i, inputs].tolist() == shuffled.inputs[i, inputs].tolist()  # all but the labels
    assert n_moved > len(clean)  # most multi-shot prompts end up with wrong labels


def test_text_pool_permutes_each_prompts_outputs():
    tokenizer = word_level()
    pool = TextPool(bitwise_text_tasks(n_examples=128), tokenizer, null=True)
    batch = pool.sample(n_per_task=10, n_shots=(2, 5), seed=0, shuffle_labels=True)
    n_wrong = 0
    for i in range(len(batch)):
        task = batch.task_names[int(batch.task_ids[i])]
        demos, query, answer = decode(batch, tokenizer, i)
        if task == NULL_TASK:
            assert not any(noisy for *_, noisy in demos)
            continue
        assert answer == bitwise(task, query)
        assert Counter(y for _, y, _ in demos) == Counter(bitwise(task, x) for x, _, _ in demos)
        for x, y, noisy in demos:
            assert (y != bitwise(task, x)) == noisy
            n_wrong += noisy
    assert n_wrong > 0


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_shuffle_labels_must_be_a_bool(bad):
    with pytest.raises(TaskError, match="shuffle_labels must be True or False"):
        bitwise_pool(n_bits=2).sample(2, 2, seed=0, shuffle_labels=bad)
