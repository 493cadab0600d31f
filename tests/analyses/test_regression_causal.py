"""Head ablation and attention knockout on in-context regression (continuous answers, scored by squared error).

Han et al. (2025) ablate heads on regression families; the harm is then the squared-error increase of the query's
answer. Each number is checked against TransformerLens hooks written here, on a model that embeds its own inputs.
"""

from __future__ import annotations

import pytest
import torch

from tv_lens import ModelConfig
from tv_lens.analyses import AttentionKnockout, HeadAblation, head_attribution
from tv_lens.interventions import knockout_strategy
from tv_lens.interventions.sweep import align
from tv_lens.models import adapt
from tv_lens.models.continuous import build_continuous_model
from tv_lens.tasks import PROMPT_ROLES, position_roles, regression_pool

POOL = regression_pool(("linear", "quadratic"), d=3)


@pytest.fixture(scope="module")
def model():
    config = ModelConfig(d_vocab=4, n_layers=2, d_model=32, n_heads=4, n_ctx=64, dtype="float64")
    return build_continuous_model(config, d_in=POOL.d_in, d_out=POOL.d_out)


@pytest.fixture(scope="module")
def batch():
    return POOL.sample(3, n_shots=(2, 4), seed=0)


def answer_outputs(model, batch, hooks=()):
    """Each prompt alone through ``run_with_hooks``: its outputs at the answer position ``[prompt, d_out]``."""
    rows = []
    for p in range(len(batch.inputs)):
        length, answer = int(batch.attention_mask[p].sum()), int(batch.answer_pos[p])
        with torch.no_grad():
            outputs = model.run_with_hooks(batch.inputs[p : p + 1, :length], fwd_hooks=list(hooks))
        rows.append(outputs[0, answer, : batch.answers.shape[1]].double())
    return torch.stack(rows)


def squared_errors(model, batch, hooks=()):
    """Each prompt's squared error at the answer position (mean over the output coordinates)."""
    return (answer_outputs(model, batch, hooks) - batch.answers.double()).pow(2).mean(-1)


def zero_head(layer, head):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    return (f"blocks.{layer}.attn.hook_z", hook)


def test_head_ablation_on_regression_is_the_squared_error_increase(model, batch):
    result = HeadAblation(n_bootstrap=0, prune_steps=0).run_batch(model, batch)
    clean = squared_errors(model, batch)
    torch.testing.assert_close(result.clean_loss, clean, atol=1e-9, rtol=1e-7)
    for layer in range(2):
        for head in range(4):
            ablated = squared_errors(model, batch, [zero_head(layer, head)])
            torch.testing.assert_close(result.ablated_loss[layer, head], ablated, atol=1e-9, rtol=1e-7)
    assert float((result.ablated_loss - result.clean_loss).abs().max()) > 1e-3


@pytest.mark.parametrize("method", ["log_odds", "loss"])
def test_the_attribution_estimate_of_a_continuous_answer_is_its_first_order_change(model, batch, method):
    """Against a finite difference: the outputs moved a small step toward the ablated head, through hooks."""
    prompts = align(model, batch.inputs, batch.answer_pos, batch.attention_mask)
    zeros = torch.zeros(2, 4, 8, dtype=torch.float64)
    estimate = head_attribution(model, prompts, batch.answers, zeros, config=HeadAblation(attribution_method=method))
    clean = squared_errors(model, batch)
    step = 1e-6
    for layer, head in [(0, 1), (1, 3)]:

        def scaled(z, hook, head=head):
            z = z.clone()
            z[:, :, head] = (1 - step) * z[:, :, head]  # a step of `step` toward zero
            return z

        stepped = squared_errors(model, batch, [(f"blocks.{layer}.attn.hook_z", scaled)])
        if method == "loss":  # the first-order change of the squared error
            expected = (stepped - clean) / step
        else:  # the outputs' first-order change, through the exact squared error
            outputs = answer_outputs(model, batch)
            moved = answer_outputs(model, batch, [(f"blocks.{layer}.attn.hook_z", scaled)])
            error = outputs - batch.answers.double()
            expected = ((error + (moved - outputs) / step).pow(2) - error.pow(2)).mean(-1)
        torch.testing.assert_close(estimate[layer, head], expected, atol=1e-5, rtol=1e-4)


def test_attention_knockout_on_regression_is_the_squared_error_increase(model, batch):
    strategy = knockout_strategy(adapt(model))
    result = AttentionKnockout(n_bootstrap=0).run_batch(model, batch)
    roles = position_roles(batch)
    site = "hook_attn_scores" if strategy == "scores" else "hook_pattern"
    for r, role in enumerate(result.role_names):
        expected = []
        for p in range(len(batch.inputs)):
            answer = int(batch.answer_pos[p])
            keys = (roles[p] == PROMPT_ROLES.index(role)).nonzero().flatten().tolist()

            def block(attention, hook, keys=keys, answer=answer):
                attention = attention.clone()
                if strategy == "scores":
                    attention[:, :, answer, keys] = float("-inf")
                else:
                    attention[:, :, answer, keys] = 0.0
                    attention[:, :, answer] /= attention[:, :, answer].sum(-1, keepdim=True)
                return attention

            one = batch.select([p])
            hooks = [(f"blocks.1.attn.{site}", block)] if keys else []
            expected.append(squared_errors(model, one, hooks)[0])
        torch.testing.assert_close(result.knocked_loss[1, r], torch.stack(expected), atol=1e-9, rtol=1e-7)
    assert float((result.knocked_loss - result.clean_loss).abs().max()) > 1e-3
