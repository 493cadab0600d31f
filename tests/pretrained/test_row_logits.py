"""Logits at the answer positions only: equal to the full pass's rows, computed without unembedding the rest."""

from __future__ import annotations

import torch
from conftest import hook_snapshot, ragged_prompts
from pretrained_helpers import (
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    pretrained_fixture,  # noqa: F401  (fixture `pretrained`: every architecture x loader)
    prompt_tokens,
)

from tv_lens.interventions import add, run_with_interventions
from tv_lens.models.adapter import adapt
from tv_lens.models.row_logits import logits_at, supports_row_unembedding


def full_rows(model, tokens, columns, fwd_hooks=()):
    """Reference: the full pass's logits (TransformerLens's run_with_hooks) at ``columns`` of each row."""
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))
    return logits[torch.arange(len(tokens))[:, None], columns]


def test_rows_equal_the_full_pass_and_only_they_are_unembedded(model, monkeypatch):
    tokens, answer_pos, _ = ragged_prompts(seed=3)
    columns = torch.stack([answer_pos - 1, answer_pos], dim=1)
    adapter = adapt(model)
    assert supports_row_unembedding(adapter)
    shapes: list[tuple[int, ...]] = []
    unembed = type(model.unembed).forward

    def spy(module, residual, *args, **kwargs):  # not a hook: a hook of the user's there would get the full pass
        shapes.append(tuple(residual.shape))
        return unembed(module, residual, *args, **kwargs)

    monkeypatch.setattr(type(model.unembed), "forward", spy)
    with torch.no_grad():
        ours = logits_at(adapter, tokens, columns)
    monkeypatch.undo()
    torch.testing.assert_close(ours, full_rows(model, tokens, columns), atol=1e-10, rtol=1e-10)
    assert shapes == [(len(tokens) * 2, 1, model.cfg.d_model)]  # the answer rows only


def test_a_write_at_the_last_block_is_in_the_rows(model):
    """The pass ends after the last block's hook_resid_post, after the interventions written there."""
    tokens, answer_pos, _ = ragged_prompts(seed=4)
    vector = torch.linspace(-2, 2, model.cfg.d_model, dtype=torch.float64)
    last = model.cfg.n_layers - 1
    before = hook_snapshot(model)
    run = run_with_interventions(model, tokens, answer_pos, [add(last, vector)])
    assert hook_snapshot(model) == before

    def hook(activation, hook):
        activation[torch.arange(len(tokens)), answer_pos] += vector
        return activation

    expected = full_rows(model, tokens, answer_pos[:, None], [(f"blocks.{last}.hook_resid_post", hook)])
    torch.testing.assert_close(run.logits, expected, atol=1e-10, rtol=1e-10)


def test_a_users_hook_on_the_final_norm_or_unembedding_sees_the_full_pass(model):
    """A hook there that changes one position (here the first) changes the logits as in a plain forward pass."""
    tokens, answer_pos, _ = ragged_prompts(seed=6)

    def first_position_zeroed(activation, hook):
        activation = activation.clone()
        activation[:, 0] = 0
        return activation

    for name in ("ln_final.hook_normalized", "unembed.hook_out"):
        with torch.no_grad(), model.hooks(fwd_hooks=[(name, first_position_zeroed)]):
            expected = full_rows(model, tokens, answer_pos[:, None])
            run = run_with_interventions(model, tokens, answer_pos, [])
        torch.testing.assert_close(run.logits, expected, atol=1e-10, rtol=1e-10)
    # a plain PyTorch hook on the unembedding module, as well
    handle = model.unembed.register_forward_pre_hook(lambda module, args: (first_position_zeroed(args[0], None),))
    try:
        expected = full_rows(model, tokens, answer_pos[:, None])
        run = run_with_interventions(model, tokens, answer_pos, [])
    finally:
        handle.remove()
    torch.testing.assert_close(run.logits, expected, atol=1e-10, rtol=1e-10)


def test_a_model_whose_logits_are_not_the_composition_gets_the_full_pass(model):
    """A model that changes its logits after the unembedding fails the probe; its rows still equal its logits."""

    class Doubled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.cfg, self.hook_dict = inner, inner.cfg, inner.hook_dict
            self.ln_final, self.unembed = inner.ln_final, inner.unembed

        def forward(self, tokens, **kwargs):
            return 2 * self.inner(tokens, **kwargs)

    doubled = Doubled(model)
    adapter = adapt(doubled)
    assert not supports_row_unembedding(adapter)
    tokens, answer_pos, _ = ragged_prompts(seed=5)
    with torch.no_grad():
        got = logits_at(adapter, tokens, answer_pos[:, None])
    torch.testing.assert_close(got, 2 * full_rows(model, tokens, answer_pos[:, None]), atol=1e-10, rtol=1e-10)


def test_every_real_architecture_gives_the_full_pass_rows(pretrained):
    """GPT-2, GPT-NeoX, Llama, Qwen2, Gemma-2 (its logit soft-cap included), every loader."""
    model = pretrained.model
    rows = prompt_tokens(pretrained.tokenizer)
    width = min(len(row) for row in rows)
    tokens = torch.tensor([row[:width] for row in rows])
    columns = torch.stack([torch.arange(width - 3, width)] * len(tokens))
    adapter = adapt(model)
    assert supports_row_unembedding(adapter)
    with torch.no_grad():
        ours = logits_at(adapter, tokens, columns)
    torch.testing.assert_close(ours, full_rows(model, tokens, columns), atol=1e-5, rtol=1e-5)
