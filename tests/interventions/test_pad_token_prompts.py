"""Prompts whose first token is the tokenizer's pad token, given with their attention mask, are not left padding.

A local GPT-2 whose tokenizer pads with id 0, and prompts of a token pool, where 0 is an ordinary token: a sweep over
the aligned prompts and the zero-shot passes of task-vector prompting take them as they are.
"""

from __future__ import annotations

import torch
from pretrained_helpers import loaded, one_thread  # noqa: F401  (autouse: tiny models run on one thread)

from tv_lens.interventions import add, run_with_interventions
from tv_lens.interventions.prompting import prompted_outputs
from tv_lens.interventions.sweep import Cell, align, run_sweep
from tv_lens.tasks import offset_pool

POOL = offset_pool(offsets=(1, 2), n_values=6)


def pad_first_batch(pad: int):
    """A batch of the pool in which some prompts, and some zero-shot queries, start with token ``pad``."""
    batch = POOL.sample(6, 2, seed=3)
    assert bool((batch.inputs[:, 0] == pad).any()) and bool((batch.zero_shot().inputs[:, 0] == pad).any())
    return batch


def test_a_sweep_takes_aligned_prompts_that_start_with_the_pad_token(tmp_path_factory):
    model = loaded(tmp_path_factory, "gpt2", "bridge").model
    batch = pad_first_batch(model.tokenizer.pad_token_id)
    prompts = align(model, batch.inputs, batch.answer_pos, batch.attention_mask)
    vector = torch.linspace(-1, 1, model.cfg.d_model)
    sweep = run_sweep(model, prompts, [Cell((add(1, vector),))], lambda logits, index: logits.flatten(1))
    with torch.no_grad():
        expected = run_with_interventions(
            model, batch.inputs, batch.answer_pos, [add(1, vector)], attention_mask=batch.attention_mask
        ).logits
    torch.testing.assert_close(sweep.cells[0], expected.flatten(1), atol=1e-5, rtol=1e-5)


def test_prompted_outputs_take_zero_shot_queries_that_start_with_the_pad_token(tmp_path_factory):
    model = loaded(tmp_path_factory, "gpt2", "bridge").model
    zero_shot = pad_first_batch(model.tokenizer.pad_token_id).zero_shot()
    vectors = torch.randn(len(zero_shot), model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = prompted_outputs(model, zero_shot, vectors, 1, "add")
        expected = run_with_interventions(
            model,
            zero_shot.inputs,
            zero_shot.answer_pos,
            [add(1, vectors)],
            attention_mask=zero_shot.attention_mask,
            n_answer_tokens=zero_shot.answer_lengths,
        ).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
