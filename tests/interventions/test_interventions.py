import numpy as np
import pytest
import torch
from conftest import hook_snapshot, left_padded, ragged_prompts

import tv_lens.interventions.engine as engine
import tv_lens.models.row_logits as row_logits
from tv_lens.errors import (
    HookNotFoundError,
    InterventionNotAppliedError,
    LayerOutOfRangeError,
    NonFiniteError,
    PositionError,
    ShapeError,
)
from tv_lens.interventions import (
    Cell,
    ablate_head,
    add,
    align,
    knockout,
    knockout_strategy,
    replace,
    run_sweep,
    run_with_interventions,
)
from tv_lens.metrics import answer_logits
from tv_lens.models import ModelAdapter, adapt


def hand_patched_logits(model, tokens, answer_pos, hook_name, edit):
    """Independent reference: TransformerLens run_with_hooks with a hand-written hook over the padded batch."""

    def hook(activation, hook):
        activation = activation.clone()
        edit(activation)
        return activation

    logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])
    return answer_logits(logits, answer_pos)


def test_clean_run_equals_plain_forward(model):
    tokens, answer_pos, _ = ragged_prompts()
    run = run_with_interventions(model, tokens, answer_pos, [])
    torch.testing.assert_close(run.logits, answer_logits(model(tokens), answer_pos), atol=1e-5, rtol=0)
    assert run.writes == ()


def test_replacing_with_the_clean_activation_changes_nothing(model):
    tokens, answer_pos, _ = ragged_prompts(seed=1)
    _, cache = model.run_with_cache(tokens)
    rows = torch.arange(len(tokens))
    clean = run_with_interventions(model, tokens, answer_pos, []).logits
    for layer in range(3):
        own = cache[f"blocks.{layer}.hook_resid_mid"][rows, answer_pos]
        run = run_with_interventions(model, tokens, answer_pos, [replace(layer, own, site="resid_mid")])
        torch.testing.assert_close(run.logits, clean, atol=1e-5, rtol=0)
        assert run.writes == (len(tokens),)


def test_replace_and_add_equal_a_hand_written_hook(model):
    tokens, answer_pos, _ = ragged_prompts(seed=2)
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(len(tokens), 32, generator=generator, dtype=torch.float64)
    rows = torch.arange(len(tokens))

    def edit_replace(act):
        act[rows, answer_pos] = vectors

    def edit_add(act):
        act[rows, answer_pos] += vectors

    for kind, edit in (("replace", edit_replace), ("add", edit_add)):
        make = replace if kind == "replace" else add
        ours = run_with_interventions(model, tokens, answer_pos, [make(1, vectors)], batch_size=3).logits
        expected = hand_patched_logits(model, tokens, answer_pos, "blocks.1.hook_resid_post", edit)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_head_ablation_equals_a_hand_written_hook(model):
    tokens, answer_pos, _ = ragged_prompts(seed=3)
    mean = torch.linspace(-1, 1, 8, dtype=torch.float64)

    def zero(act):
        act[:, :, 2] = 0.0

    def mean_ablate(act):
        act[:, :, 2] = mean

    for intervention, edit in ((ablate_head(1, 2), zero), (ablate_head(1, 2, "mean", mean), mean_ablate)):
        ours = run_with_interventions(model, tokens, answer_pos, [intervention]).logits
        expected = hand_patched_logits(model, tokens, answer_pos, "blocks.1.attn.hook_z", edit)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    changed = run_with_interventions(model, tokens, answer_pos, [ablate_head(1, 2)]).logits
    assert (changed - run_with_interventions(model, tokens, answer_pos, []).logits).abs().max() > 1e-4


def test_per_prompt_positions_rows_and_left_padding(model):
    tokens, answer_pos, lengths = ragged_prompts(seed=4)
    positions = answer_pos // 2
    chosen = torch.tensor([3, 0, 2])  # values follow this order, not sorted row order
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def edit(act):
        act[chosen, positions[chosen]] += vectors

    intervention = add(0, vectors, pos=positions, rows=chosen)
    ours = run_with_interventions(model, tokens, answer_pos, [intervention])
    expected = hand_patched_logits(model, tokens, answer_pos, "blocks.0.hook_resid_post", edit)
    torch.testing.assert_close(ours.logits, expected, atol=1e-5, rtol=0)
    assert ours.writes == (3,)
    left_tokens, mask, left_pos = left_padded(tokens, lengths)
    shift = tokens.shape[1] - lengths
    left_intervention = add(0, vectors, pos=positions + shift, rows=chosen)
    left = run_with_interventions(model, left_tokens, left_pos, [left_intervention], attention_mask=mask)
    torch.testing.assert_close(left.logits, ours.logits, atol=1e-5, rtol=0)


def test_positions_of_prompts_rows_leaves_out_are_not_checked(model):
    """A per-prompt ``pos`` needs a position inside the prompts ``rows=`` selects only: the others are not written."""
    tokens, answer_pos, lengths = ragged_prompts(seed=4)
    left_tokens, mask, left_pos = left_padded(tokens, lengths)
    shift = tokens.shape[1] - lengths
    chosen = torch.tensor([3, 0])
    positions = answer_pos // 2
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def edit(act):
        act[chosen, positions[chosen]] = vectors

    expected = hand_patched_logits(model, tokens, answer_pos, "blocks.1.hook_resid_post", edit)
    given = positions + shift
    others = torch.ones(len(tokens), dtype=torch.bool)
    others[chosen] = False
    given[others] = 0  # on the left padding of every prompt but the longest: no prompt of these is written
    run = run_with_interventions(
        model, left_tokens, left_pos, [replace(1, vectors, pos=given, rows=chosen)], attention_mask=mask
    )
    torch.testing.assert_close(run.logits, expected, atol=1e-5, rtol=0)
    assert run.writes == (2,)
    with pytest.raises(PositionError, match="of prompt 3"):  # a selected prompt's position is still checked
        given[3] = 0
        run_with_interventions(
            model, left_tokens, left_pos, [replace(1, vectors, pos=given, rows=chosen)], attention_mask=mask
        )


def test_one_position_may_be_a_numpy_int_or_a_0d_tensor(model):
    """``batch.answer_pos[0]`` or a NumPy int is one position for every prompt, as a Python int is."""
    tokens = ragged_prompts(seed=6)[0][:, :9]
    vector = torch.randn(32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    knocks = knockout_strategy(adapt(model)) is not None  # not on TransformerLens 3.9's bridge

    def knocked(pos):
        return [knockout(2, [1], pos=pos)] if knocks else []

    expected = run_with_interventions(model, tokens, 8, [add(1, vector, pos=4), *knocked(6)])
    for one in (np.int64, torch.tensor):
        run = run_with_interventions(model, tokens, one(8), [add(1, vector, pos=one(4)), *knocked(one(6))])
        assert torch.equal(run.logits, expected.logits)
        assert str(add(1, vector, pos=one(4))) == "add(layer 1, resid_post, pos=4)"
    prompts = align(model, tokens, torch.tensor(8))
    sweep = run_sweep(model, prompts, [Cell((add(1, vector, pos=torch.tensor(4)),))], lambda logits, index: logits)
    torch.testing.assert_close(sweep.cells[0], run_with_interventions(model, tokens, 8, [add(1, vector, pos=4)]).logits)
    with pytest.raises(ShapeError, match="integer token positions"):
        run_with_interventions(model, tokens, torch.tensor(8.0), [])


def test_several_interventions_in_one_pass_and_multi_token_reads(model):
    tokens, answer_pos, _ = ragged_prompts(seed=5)
    reads_from = answer_pos - 2
    vector = torch.ones(32, dtype=torch.float64)

    def hook_resid(act, hook):
        act = act.clone()
        act[:, :] += vector
        return act

    def hook_head(act, hook):
        act = act.clone()
        act[:, :, 0] = 0
        return act

    logits = model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.0.hook_resid_pre", hook_resid), ("blocks.2.attn.hook_z", hook_head)]
    )
    ours = run_with_interventions(
        model, tokens, reads_from, [add(-1, vector, pos="all"), ablate_head(2, 0)], n_answer_tokens=3
    )
    torch.testing.assert_close(ours.logits, answer_logits(logits, reads_from, 3), atol=1e-5, rtol=0)


def test_starting_from_the_cached_residual_equals_the_full_pass(model, monkeypatch):
    tokens, answer_pos, _ = ragged_prompts(seed=6)
    vectors = torch.randn(len(tokens), 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    interventions = [replace(2, vectors), ablate_head(2, 1)]
    full = run_with_interventions(model, tokens, answer_pos, interventions)
    residual = model(tokens, stop_at_layer=2).detach()
    calls = []
    original = row_logits.forward  # the engine's passes run through logits_at
    monkeypatch.setattr(
        row_logits, "forward", lambda *a, **k: calls.append(k.get("start_at_layer")) or original(*a, **k)
    )
    resumed = run_with_interventions(
        model, tokens, answer_pos, interventions, clean_residual=residual, clean_residual_layer=2
    )
    torch.testing.assert_close(resumed.logits, full.logits, atol=1e-5, rtol=0)
    assert resumed.writes == full.writes
    assert calls == [2]  # every backend starts there: its own start_at_layer or tv_lens's block skipping


def test_the_cached_residual_of_left_padded_prompts_is_computed_with_their_mask(model):
    """As the docs say: for left padding, ``model(tokens, stop_at_layer=l, attention_mask=mask)`` gives the run's."""
    tokens, mask, answer_pos = left_padded(*ragged_prompts(seed=8)[::2])
    interventions = [add(2, torch.ones(32, dtype=torch.float64))]
    full = run_with_interventions(model, tokens, answer_pos, interventions, attention_mask=mask)
    residual = model(tokens, stop_at_layer=2, attention_mask=mask).detach()
    resumed = run_with_interventions(
        model, tokens, answer_pos, interventions, attention_mask=mask, clean_residual=residual, clean_residual_layer=2
    )
    torch.testing.assert_close(resumed.logits, full.logits, atol=1e-6, rtol=0)


def test_gradients_flow_through_a_replaced_vector(model):
    tokens, answer_pos, _ = ragged_prompts(seed=7)
    vector = torch.zeros(32, dtype=torch.float64, requires_grad=True)
    run = run_with_interventions(model, tokens, answer_pos, [replace(1, vector)])
    (gradient,) = torch.autograd.grad(run.logits.sum(), [vector])  # the shared model's weights keep no .grad
    assert gradient.abs().sum() > 0


def test_an_intervention_that_writes_nothing_raises(model):
    tokens, answer_pos, _ = ragged_prompts()
    expected = r"replace\(layer 1, resid_post, pos=answer\) wrote to no prompt"
    with pytest.raises(InterventionNotAppliedError, match=expected):
        run_with_interventions(model, tokens, answer_pos, [replace(1, torch.zeros(0, 32), rows=[])])


def test_a_hook_point_the_forward_never_calls_is_caught(model, monkeypatch):
    from transformer_lens.hook_points import HookPoint

    orphan = HookPoint()  # a hook point that no forward pass calls
    real_hook_point = ModelAdapter.hook_point

    def hook_point(self, name):
        return orphan if name.endswith("attn.hook_z") else real_hook_point(self, name)

    monkeypatch.setattr(ModelAdapter, "hook_point", hook_point)
    tokens, answer_pos, _ = ragged_prompts()
    with pytest.raises(InterventionNotAppliedError, match=r"ablate_head\(layer 2 head 0.*never ran"):
        run_with_interventions(model, tokens, answer_pos, [add(1, torch.ones(32)), ablate_head(2, 0)])
    assert not orphan.fwd_hooks


def test_hooks_are_removed_after_an_error_inside_a_hook(model, monkeypatch):
    tokens, answer_pos, _ = ragged_prompts()
    user_calls = []
    model.hook_dict["blocks.2.hook_resid_post"].add_hook(lambda act, hook: user_calls.append(1))
    try:
        before = hook_snapshot(model)
        original = engine.apply_plan
        count = {"n": 0}

        def faulty(*args, **kwargs):
            count["n"] += 1
            if count["n"] == 2:
                raise RuntimeError("injected fault")
            return original(*args, **kwargs)

        monkeypatch.setattr(engine, "apply_plan", faulty)
        weights = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(RuntimeError, match="injected fault"):
            run_with_interventions(model, tokens, answer_pos, [ablate_head(0, 1), add(1, torch.ones(32))])
        assert hook_snapshot(model) == before
        assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))
        monkeypatch.undo()
        run_with_interventions(model, tokens, answer_pos, [])
        assert user_calls  # the user's own hook is still attached and runs
    finally:
        model.hook_dict["blocks.2.hook_resid_post"].remove_hooks("fwd")


def test_bad_interventions_name_the_problem(model):
    tokens, answer_pos, _ = ragged_prompts()

    def run(*interventions, **kwargs):
        return run_with_interventions(model, tokens, answer_pos, list(interventions), **kwargs)

    with pytest.raises(ShapeError, match=r"expected \[d_model=32\]"):
        run(replace(1, torch.zeros(16)))
    with pytest.raises(ShapeError, match=r"expected \[d_head=8\]"):
        run(ablate_head(1, 0, "mean", torch.zeros(32)))
    with pytest.raises(LayerOutOfRangeError, match="Head 4 is out of range"):
        run(ablate_head(1, 4))
    with pytest.raises(LayerOutOfRangeError, match="Layer 3 is out of range"):
        run(add(3, torch.zeros(32)))
    with pytest.raises(HookNotFoundError, match="Unknown site 'residual'"):
        run(add(0, torch.zeros(32), site="residual"))
    with pytest.raises(PositionError, match="after its answer position"):
        run(add(0, torch.zeros(32), pos=answer_pos + 1))
    with pytest.raises(PositionError, match="outside the batch"):
        run(add(0, torch.zeros(32), rows=[40]))
    with pytest.raises(PositionError, match="selects a prompt twice"):
        run(add(0, torch.zeros(2, 32), rows=[1, -6]))
    with pytest.raises(NonFiniteError, match="NaN"):
        run(add(0, torch.full((32,), float("nan"))))
    with pytest.raises(ShapeError, match="mode='mean' needs mean="):
        ablate_head(0, 0, "mean")
    with pytest.raises(ShapeError, match="made by replace"):
        run("not an intervention")
    with pytest.raises(ShapeError, match="clean_residual must be the float residual stream entering block 1"):
        run(add(2, torch.zeros(32)), clean_residual=tokens, clean_residual_layer=1)
    with pytest.raises(ShapeError, match="residual_layer=1 says the inputs are the residual stream"):
        run(add(2, torch.zeros(32)), residual_layer=1)
    with pytest.raises(ShapeError, match="clean_residual_layer"):
        run(add(2, torch.zeros(32)), clean_residual=torch.zeros(7, 16, 32, dtype=torch.float64))
