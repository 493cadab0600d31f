"""The attribution screen's estimates against independent computations, an exactly linear case, and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from causal_helpers import editing_hook, hooked_scores, sample
from conftest import BACKENDS, hook_snapshot, tiny_config
from pretrained_helpers import loaded

from tv_lens.analyses.attribution import head_attribution
from tv_lens.analyses.heads import HeadAblation
from tv_lens.errors import AnalysisError
from tv_lens.interventions.sweep import align
from tv_lens.models import build_model
from tv_lens.tasks import offset_pool


def _log_odds(logits):
    """Reference: ``logit[answer] - log Σ_{other tokens} exp(logit)``, from the probabilities. ``[batch, vocab]``."""
    return logits[:, 0] - torch.log(torch.exp(logits[:, 1:]).sum(-1))


def _scaled_direction_scores(model, batch, layer, head, value, eps):
    """Answer logits (answer token first) with head ``(layer, head)`` moved ``eps`` of the way to ``value``."""

    def edit(act):
        act[:, :, head] += eps * (value - act[:, :, head])

    _, _, logits = hooked_scores(
        model, batch.inputs, batch.answer_pos, batch.answers, [(f"blocks.{layer}.attn.hook_z", editing_hook(edit))]
    )
    rows = torch.arange(len(batch))
    answer = batch.answers[:, 0]
    others = torch.stack([logits[r][torch.arange(logits.shape[1]) != answer[r]] for r in rows.tolist()])
    return torch.cat([logits[rows, answer][:, None], others], dim=1).double()


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_log_odds_estimate_equals_a_hand_written_computation(model, mode):
    batch = sample(n_per_task=3, n_shots=(1, 3), seed=0)
    result = HeadAblation(mode=mode, n_bootstrap=0, prune_steps=0).run_batch(model, batch)
    assert result.attribution_method == "log_odds"
    eps = 1e-5
    for layer, head in [(0, 1), (1, 3), (2, 0)]:
        value = result.ablation_values[layer, head]
        plus, minus, clean = (_scaled_direction_scores(model, batch, layer, head, value, e) for e in (eps, -eps, 0.0))
        odds = _log_odds(clean)
        shift = (_log_odds(plus) - _log_odds(minus)) / (2 * eps)  # Σ_pos ⟨∂lo/∂z, value − z⟩ by central difference
        torch.testing.assert_close(F.softplus(-odds), result.clean_loss, atol=1e-10, rtol=0)  # the mapping is exact
        expected = F.softplus(-(odds + shift)) - F.softplus(-odds)
        torch.testing.assert_close(result.attribution[layer, head], expected, atol=1e-6, rtol=1e-5)


def _linear_model(backend):
    """One block, no normalisation, MLP weights zeroed: the answer logits are affine in every head's ``hook_z``."""
    model = build_model(tiny_config(backend, d_vocab=2, n_layers=1, normalization_type=None, dtype="float64"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "mlp" in name:
                parameter.zero_()
    return model


@pytest.mark.parametrize("backend", BACKENDS)
def test_log_odds_estimate_is_exact_where_the_log_odds_are_linear(backend):
    model = _linear_model(backend)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 2, (6, 9), generator=generator)
    answer_pos = torch.tensor([8, 7, 8, 6, 8, 5])
    answers = torch.randint(0, 2, (6, 1), generator=generator)
    values = torch.randn(1, 4, 8, generator=generator, dtype=torch.float64)
    _, clean, _ = hooked_scores(model, inputs, answer_pos, answers)
    prompts = align(model, inputs, answer_pos)
    estimates = {
        m: head_attribution(model, prompts, answers, values, config=HeadAblation(attribution_method=m))
        for m in ("log_odds", "loss")
    }
    for head in range(4):

        def edit(act, head=head):
            act[:, :, head] = values[0, head]

        _, loss, _ = hooked_scores(model, inputs, answer_pos, answers, [("blocks.0.attn.hook_z", editing_hook(edit))])
        torch.testing.assert_close(estimates["log_odds"][0, head], loss - clean, atol=1e-10, rtol=1e-9)
    # The plain first-order estimate of the loss is not exact here: the loss is softplus of the log-odds.
    assert (estimates["loss"] - estimates["log_odds"]).abs().max() > 1e-3


def test_loss_method_is_the_plain_first_order_estimate(model):
    batch = sample(n_per_task=3, n_shots=(1, 3), seed=1)
    loss = HeadAblation(n_bootstrap=0, prune_steps=0, attribution_method="loss").run_batch(model, batch)
    odds = HeadAblation(n_bootstrap=0, prune_steps=0).run_batch(model, batch)
    assert loss.attribution_method == "loss" and odds.attribution_method == "log_odds"
    torch.testing.assert_close(loss.ablated_loss, odds.ablated_loss, atol=0, rtol=0)
    assert not torch.allclose(loss.attribution, odds.attribution, atol=1e-6)
    # Both are first-order exact: where the ablation moves the loss little they agree to second order.
    small = (loss.ablated_loss - loss.clean_loss).abs() < 1e-3
    assert small.any()
    torch.testing.assert_close(odds.attribution[small], loss.attribution[small], atol=2e-4, rtol=0)


def test_multi_token_answers_average_each_tokens_estimate(model):
    batch = sample(n_per_task=2, n_shots=2, seed=2)
    prompts = align(model, batch.inputs, batch.answer_pos, batch.attention_mask, 2)
    answers = torch.stack([batch.answers[:, 0], batch.inputs[:, 0]], dim=1)  # second token: any token
    values = torch.zeros(3, 4, 8, dtype=torch.float64)
    config = HeadAblation()
    both = head_attribution(model, prompts, answers, values, config=config)
    first = head_attribution(
        model, align(model, batch.inputs, batch.answer_pos, batch.attention_mask), answers[:, :1], values, config=config
    )
    shifted = align(model, batch.inputs, batch.answer_pos + 1, batch.attention_mask)
    second = head_attribution(model, shifted, answers[:, 1:], values, config=config)
    torch.testing.assert_close(both, (first + second) / 2, atol=1e-9, rtol=1e-9)


def test_an_unknown_method_is_refused_when_the_config_is_built():
    """head_importance and head_attribution read the method from a HeadAblation, so no pass starts with it."""
    with pytest.raises(AnalysisError, match="Unknown attribution method 'exact'"):
        HeadAblation(attribution_method="exact")


@pytest.mark.parametrize("method", ["log_odds", "loss"])
def test_no_hooks_or_gradients_are_left_after_a_fault_in_the_backward_pass(model, monkeypatch, method):
    import tv_lens.analyses.attribution as attribution

    batch = sample(n_per_task=2, seed=5)
    original = attribution._add_zero

    def faulty(activation, hook, *, layer, **options):
        if layer == 2:
            raise RuntimeError("injected fault")
        return original(activation, hook, layer=layer, **options)

    monkeypatch.setattr(attribution, "_add_zero", faulty)
    with torch.no_grad():
        model(batch.inputs[:1])  # a bridge attaches its own permanent hooks at its first pass: not ours to count
    before = hook_snapshot(model)
    with pytest.raises(RuntimeError, match="injected fault"):
        HeadAblation(n_bootstrap=0, attribution_method=method).run_batch(model, batch)
    assert hook_snapshot(model) == before
    assert all(p.grad is None for p in model.parameters())


def test_a_model_left_in_train_mode_is_estimated_without_dropout(tmp_path_factory):
    """A HuggingFace GPT-2 with dropout 0.1, in train mode: the estimates are those of eval mode, and every module
    keeps its own mode."""
    model = loaded(tmp_path_factory, "gpt2", "bridge").model
    batch = offset_pool(offsets=(1, 2), n_values=6).sample(3, 2, seed=2)
    prompts = align(model, batch.inputs, batch.answer_pos, batch.attention_mask)
    values = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    config = HeadAblation(n_bootstrap=0)
    expected = head_attribution(model, prompts, batch.answers, values, config=config)  # in eval mode here
    model.train()
    model.blocks[1].eval()  # a module in a mode of its own
    try:
        got = head_attribution(model, prompts, batch.answers, values, config=config)
        modes = {name: module.training for name, module in model.named_modules()}
    finally:
        model.eval()
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert modes[""] and modes["blocks.0"] and not modes["blocks.1"]
