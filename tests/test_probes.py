import pytest
import torch
from conftest import hook_snapshot, left_padded, ragged_prompts

from tv_lens.errors import HookNotFoundError, LayerOutOfRangeError, NonFiniteError, PositionError, ShapeError
from tv_lens.probes import Representations, collect


def reference_rows(model, tokens, lengths, hook_name):
    """Each prompt alone, unpadded, through run_with_cache: the row at its last token."""
    rows = []
    for row, length in enumerate(lengths.tolist()):
        _, cache = model.run_with_cache(tokens[row : row + 1, :length], names_filter=[hook_name])
        rows.append(cache[hook_name][0, length - 1])
    return torch.stack(rows)


def test_rows_equal_run_with_cache_for_ragged_prompts(model):
    tokens, answer_pos, lengths = ragged_prompts()
    reps = collect(model, tokens, answer_pos, batch_size=3, progress=False)
    assert reps.layers == (-1, 0, 1, 2)
    for i, layer in enumerate(reps.layers):
        name = "blocks.0.hook_resid_pre" if layer == -1 else f"blocks.{layer}.hook_resid_post"
        torch.testing.assert_close(reps.activations[i], reference_rows(model, tokens, lengths, name), atol=1e-6, rtol=0)


def test_float32_rows_match_run_with_cache_of_the_padded_batch(model32):
    tokens, answer_pos, _ = ragged_prompts(seed=6)
    _, cache = model32.run_with_cache(tokens)
    reps = collect(model32, tokens, answer_pos, layers=[1, 2], batch_size=3, progress=False)
    rows = torch.arange(len(tokens))
    for i, layer in enumerate((1, 2)):
        expected = cache[f"blocks.{layer}.hook_resid_post"][rows, answer_pos]
        torch.testing.assert_close(reps.activations[i], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("site", ["resid_pre", "resid_mid", "attn_out", "mlp_out"])
def test_other_sites_equal_run_with_cache(model, site):
    tokens, answer_pos, lengths = ragged_prompts(seed=1)
    reps = collect(model, tokens, answer_pos, layers=[0, 2], site=site, progress=False)
    for i, layer in enumerate((0, 2)):
        expected = reference_rows(model, tokens, lengths, f"blocks.{layer}.hook_{site}")
        torch.testing.assert_close(reps.activations[i], expected, atol=1e-6, rtol=0)


def test_left_and_right_padding_give_the_same_rows(model):
    tokens, answer_pos, lengths = ragged_prompts(seed=2)
    right = collect(model, tokens, answer_pos, progress=False)
    left_tokens, mask, left_pos = left_padded(tokens, lengths)
    left = collect(model, left_tokens, left_pos, attention_mask=mask, progress=False)
    torch.testing.assert_close(left.activations, right.activations, atol=1e-6, rtol=0)


def test_batch_size_and_prompt_order_do_not_change_rows(model):
    tokens, answer_pos, _ = ragged_prompts(n_prompts=9, seed=3)
    whole = collect(model, tokens, answer_pos, batch_size=64, progress=False).activations
    small = collect(model, tokens, answer_pos, batch_size=2, progress=False).activations
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    shuffled = collect(model, tokens[perm], answer_pos[perm], batch_size=4, progress=False).activations
    torch.testing.assert_close(small, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(shuffled, whole[:, perm], atol=1e-6, rtol=0)


def test_pass_stops_after_last_requested_layer_and_user_hooks_survive(model):
    calls = []
    hook_point = model.hook_dict["blocks.2.hook_resid_mid"]  # inside block 2: its input may be read, nothing more
    hook_point.add_hook(lambda act, hook: calls.append(hook.name))
    try:
        before = hook_snapshot(model)
        tokens, answer_pos, _ = ragged_prompts()
        collect(model, tokens, answer_pos, layers=[0, 1], progress=False)
        assert calls == []
        assert hook_snapshot(model) == before
        collect(model, tokens, answer_pos, layers=[2], progress=False)
        assert len(calls) == 1
    finally:
        hook_point.remove_hooks("fwd")


def test_residual_inputs_give_the_same_rows_as_tokens(model):
    tokens, answer_pos, _ = ragged_prompts(seed=4)
    embedded = model(tokens, stop_at_layer=0).detach()
    assert embedded.shape == (*tokens.shape, 32)
    from_tokens = collect(model, tokens, answer_pos, progress=False)
    from_residual = collect(model, embedded, answer_pos, progress=False)
    torch.testing.assert_close(from_residual.activations, from_tokens.activations, atol=1e-5, rtol=0)


def test_from_cache_equals_collect(model):
    tokens, answer_pos, _ = ragged_prompts(seed=5)
    _, cache = model.run_with_cache(tokens)
    from_cache = Representations.from_cache(cache, answer_pos)
    collected = collect(model, tokens, answer_pos, progress=False)
    assert from_cache.layers == collected.layers
    torch.testing.assert_close(from_cache.activations, collected.activations, atol=1e-6, rtol=0)
    assert torch.equal(from_cache.at(1), from_cache.activations[2])
    with pytest.raises(HookNotFoundError, match="was not collected"):
        from_cache.at(7)


def test_bad_inputs_name_the_problem(model):
    tokens, answer_pos, _ = ragged_prompts()
    with pytest.raises(HookNotFoundError, match="Unknown site 'resid_postt'"):
        collect(model, tokens, answer_pos, site="resid_postt", progress=False)
    with pytest.raises(LayerOutOfRangeError, match="Layer 5 is out of range"):
        collect(model, tokens, answer_pos, layers=[5], progress=False)
    with pytest.raises(PositionError, match="answer_pos 16 of prompt 0 lies outside"):
        collect(model, tokens, answer_pos + 1, progress=False)
    with pytest.raises(PositionError, match="n_ctx=40"):
        collect(model, torch.ones(2, 50, dtype=torch.long), [45, 3], progress=False)
    with pytest.raises(ShapeError, match="one position per prompt"):
        collect(model, tokens, answer_pos[:3], progress=False)
    with pytest.raises(ShapeError, match=r"Token ids must lie in \[0, 24\)"):
        collect(model, tokens + 30, answer_pos, progress=False)
    with pytest.raises(ShapeError, match="d_model=32"):
        collect(model, torch.zeros(2, 5, 16, dtype=torch.float64), [4, 4], progress=False)


def test_nan_activations_are_reported(model):
    weight = next(p for n, p in model.named_parameters() if "mlp" in n and p.ndim == 2)
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0, 0] = float("nan")
        tokens, answer_pos, _ = ragged_prompts()
        with pytest.raises(NonFiniteError, match=r"NaN or infinite activations at layers \[0, 1, 2\]"):
            collect(model, tokens, answer_pos, progress=False)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
