"""Batched reads: prompts in batches of similar length, cut to each batch's width, read through hooks."""

from functools import partial

import pytest
import torch
from conftest import hook_snapshot, ragged_prompts

import tv_lens.positions as positions
from tv_lens.errors import ShapeError
from tv_lens.models import adapt
from tv_lens.models.running import forward, read_batches
from tv_lens.positions import length_sorted_batches, prompt_batches


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_prompt_batches_follow_length_sorted_batches_cut_to_the_longest_end(batch_size):
    generator = torch.Generator().manual_seed(0)
    ends = torch.tensor([5, 2, 9, 2, 7, 5, 1])
    inputs = torch.randint(0, 24, (7, 12), generator=generator)
    batches = list(prompt_batches(inputs, ends, batch_size, "cpu"))
    indices = [index for index, _ in batches]
    expected = length_sorted_batches(ends, batch_size)
    assert [index.tolist() for index in indices] == [index.tolist() for index in expected]
    assert sorted(torch.cat(indices).tolist()) == list(range(7))
    for index, batch in batches:
        width = max(int(ends[i]) for i in index)
        assert torch.equal(batch, inputs[index, :width])


def test_prompt_batches_cut_residual_inputs_and_sort_by_length():
    inputs = torch.randn(5, 8, 3, generator=torch.Generator().manual_seed(1))
    ends = torch.tensor([8, 2, 6, 3, 2])
    batches = list(prompt_batches(inputs, ends, 2, "cpu"))
    assert [index.tolist() for index, _ in batches] == [[1, 4], [3, 2], [0]]  # shortest first, ties in order
    assert [tuple(batch.shape) for _, batch in batches] == [(2, 2, 3), (2, 6, 3), (1, 8, 3)]
    assert torch.equal(batches[1][1], inputs[[3, 2], :6])


def test_prompt_batches_put_the_inputs_on_the_requested_device():
    batches = list(prompt_batches(torch.ones(4, 6, dtype=torch.long), torch.tensor([3, 6, 2, 4]), 2, "meta"))
    assert len(batches) == 2
    assert all(batch.device.type == "meta" for _, batch in batches)
    assert all(index.device.type == "cpu" for index, _ in batches)


def test_prompt_batches_of_no_prompts_are_none_and_a_bad_batch_size_is_refused():
    assert list(prompt_batches(torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, dtype=torch.long), 2, "cpu")) == []
    with pytest.raises(ShapeError, match="batch_size must be an int ≥ 1"):
        next(prompt_batches(torch.zeros(2, 4, dtype=torch.long), torch.tensor([1, 2]), 0, "cpu"))


@pytest.mark.parametrize(("progress", "batch_size", "shown"), [(True, 2, True), (True, 8, False), (False, 2, False)])
def test_prompt_batches_show_a_labelled_bar_only_over_several_batches(monkeypatch, progress, batch_size, shown):
    bars = []

    def recording_tqdm(iterable, **kwargs):
        bars.append(kwargs)
        return iterable

    monkeypatch.setattr(positions, "tqdm", recording_tqdm)
    ends = torch.tensor([3, 4, 2, 4])
    list(prompt_batches(torch.ones(4, 4, dtype=torch.long), ends, batch_size, "cpu", desc="reading", progress=progress))
    assert len(bars) == 1
    assert bars[0]["desc"] == "reading"
    assert bars[0]["disable"] is not shown


@pytest.mark.parametrize("batch_size", [2, 64])
def test_read_batches_rows_equal_run_with_cache(model, batch_size):
    tokens, answer_pos, lengths = ragged_prompts(n_prompts=7, seed=4)
    adapter = adapt(model)
    names = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_mid"]
    read = {name: torch.full((*tokens.shape, adapter.d_model), torch.nan, dtype=torch.float64) for name in names}
    seen, grad_enabled = [], []

    def keep(activation, hook, *, name, index):
        grad_enabled.append(torch.is_grad_enabled())
        assert activation.shape[1] == int(lengths[index].max())
        read[name][index, : activation.shape[1]] = activation.detach().cpu()

    def hooks_for(index):
        seen.append(index)
        return [(name, partial(keep, name=name, index=index)) for name in names]

    with torch.no_grad():
        model(tokens[:1])  # a bridge adds its own permanent hooks on its first pass
    before = hook_snapshot(model)
    read_batches(adapter, tokens, answer_pos + 1, batch_size, hooks_for, desc="reading")
    assert hook_snapshot(model) == before
    assert [index.tolist() for index in seen] == [
        index.tolist() for index in length_sorted_batches(lengths, batch_size)
    ]
    assert grad_enabled and not any(grad_enabled)
    _, cache = model.run_with_cache(tokens, names_filter=names)
    for name in names:
        for row, length in enumerate(lengths.tolist()):
            torch.testing.assert_close(read[name][row, :length], cache[name][row, :length].double(), atol=1e-6, rtol=0)


def test_a_residual_input_is_what_the_users_hooks_on_the_entry_block_see(model):
    """Where the pass starts by overwriting ``blocks.0.hook_resid_pre`` (TL 3.9's bridge), a user hook there
    sees, and changes, the residual given, as it does where the model itself starts at the block."""
    tokens, _, _ = ragged_prompts(n_prompts=3, seed=1)
    adapter = adapt(model)
    shift = torch.linspace(-1, 1, adapter.d_model, dtype=torch.float64)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pre"])
        residual = cache["blocks.0.hook_resid_pre"]
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: act + shift)]):
            expected = model(tokens)
            got = forward(adapter, residual)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
