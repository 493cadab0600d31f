"""Attention knockout: the harm of blocking the answer position from each prompt role, against hand-written hooks."""

from __future__ import annotations

import pytest
import torch
from conftest import hook_snapshot

import tv_lens.interventions.knockouts as knockouts
from tv_lens import Result, offset_pool
from tv_lens.analyses import AttentionKnockout, Prompts, attention_knockout
from tv_lens.app.sections import headline_numbers, summary_lines
from tv_lens.errors import AnalysisError, ModelNotSupportedError, TaskError
from tv_lens.interventions import knockout_strategy
from tv_lens.models import adapt
from tv_lens.tasks import PROMPT_ROLES, demonstration_roles, position_roles

POOL = offset_pool(offsets=(1, 2), n_values=8)


@pytest.fixture
def model(model):
    """The shared model where its attention can be knocked out (not on TransformerLens 3.9's bridge)."""
    if knockout_strategy(adapt(model)) is None:
        pytest.skip(f"{type(model).__name__}: its attention runs past the hooks here")
    return model


def batch_of(n_per_task: int = 3, seed: int = 0):
    return POOL.sample(n_per_task, 3, seed)


def has_role(batch, role, roles=None, names=PROMPT_ROLES, labels=False):
    """Reference: whether each prompt has a position of ``role`` up to its answer (``labels``: up to its last label)."""
    roles = position_roles(batch) if roles is None else roles
    plain = position_roles(batch)
    rows = []
    for p in range(len(batch.inputs)):
        demo_answers = (plain[p] == PROMPT_ROLES.index("demo_answer")).nonzero().flatten()
        end = (int(demo_answers.max()) if len(demo_answers) else -1) if labels else int(batch.answer_pos[p])
        rows.append(bool((roles[p, : end + 1] == names.index(role)).any()))
    return torch.tensor(rows)


def means_where_present(harm, present, rows):
    """Reference: the mean of ``harm [window, role, prompt]`` over ``rows`` that have the role (NaN where none)."""
    means = torch.full(harm.shape[:2], float("nan"), dtype=torch.float64)
    for r in range(harm.shape[1]):
        if bool((present[r] & rows).any()):
            means[:, r] = harm[:, r][:, present[r] & rows].double().mean(-1)
    return means


def hand_knocked_loss(model, batch, blocks, role, roles=None, names=PROMPT_ROLES, labels=False):
    """Independent reference: run_with_hooks keeping the query rows from the ``role`` keys in ``blocks``, per prompt.

    The query is the answer position, or with ``labels`` every demonstration answer token (kept from the keys at or
    before it).
    """
    strategy = knockout_strategy(adapt(model))
    plain = position_roles(batch)
    roles = plain if roles is None else roles
    losses = []
    for p in range(len(batch.inputs)):
        answer = int(batch.answer_pos[p])
        keys = (roles[p] == names.index(role)).nonzero().flatten().tolist()
        queries = (plain[p] == PROMPT_ROLES.index("demo_answer")).nonzero().flatten().tolist() if labels else [answer]
        edges = [(q, [k for k in keys if k <= q]) for q in queries]

        def scores_hook(scores, hook, edges=edges):
            scores = scores.clone()
            for q, blocked in edges:
                scores[:, :, q, blocked] = float("-inf")
            return scores

        def pattern_hook(pattern, hook, edges=edges):
            pattern = pattern.clone()
            for q, blocked in edges:
                pattern[:, :, q, blocked] = 0.0
                pattern[:, :, q] = pattern[:, :, q] / pattern[:, :, q].sum(-1, keepdim=True)
            return pattern

        site, hook = ("hook_attn_scores", scores_hook) if strategy == "scores" else ("hook_pattern", pattern_hook)
        hooks = [(f"blocks.{block}.attn.{site}", hook) for block in blocks] if keys and queries else []
        tokens = batch.inputs[p : p + 1, : answer + 1]
        with torch.no_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks)[0, answer].double()
        losses.append(-torch.log_softmax(logits, -1)[int(batch.answers[p, 0])])
    return torch.stack(losses)


def test_knocking_out_the_labels_equals_hand_written_hooks(model):
    """query="demo_answer": every demonstration's answer token is kept from the role's positions at or before it."""
    batch = POOL.sample(3, (0, 3), seed=2)  # zero-shot prompts have no label to knock out: their loss stays clean
    result = AttentionKnockout(query="demo_answer", n_bootstrap=0).run_batch(model, batch)
    assert result.role_names == ("prefix", "demo_input", "demo_answer", "separator") and result.query == "demo_answer"
    changed = False
    for r, role in enumerate(result.role_names):
        expected = hand_knocked_loss(model, batch, (0,), role, labels=True)
        torch.testing.assert_close(result.knocked_loss[0, r], expected, atol=1e-6, rtol=1e-6)
        changed |= bool((expected - result.clean_loss).abs().max() > 1e-4)
    assert changed
    assert bool((result.knocked_loss[-1] == result.clean_loss).all())  # after the last block no one reads a label
    zero_shot = batch.n_shots == 0
    assert bool(zero_shot.any()) and torch.equal(
        result.knocked_loss[..., zero_shot], result.clean_loss[zero_shot].expand(3, 4, -1)
    )
    expected = torch.stack([has_role(batch, role, labels=True) for role in result.role_names])
    assert torch.equal(result.present, expected) and not bool(result.present[:, zero_shot].any())


@pytest.mark.parametrize("window", [1, 2])
def test_knocked_losses_equal_hand_written_hooks(model, window):
    batch = batch_of()
    result = AttentionKnockout(window=window, n_bootstrap=0).run_batch(model, batch)
    assert result.windows == tuple(tuple(range(s, s + window)) for s in range(3 - window + 1))
    changed = False
    for w, blocks in enumerate(result.windows):
        for r, role in enumerate(result.role_names):
            expected = hand_knocked_loss(model, batch, blocks, role)
            torch.testing.assert_close(result.knocked_loss[w, r], expected, atol=1e-6, rtol=1e-6)
            changed |= bool((expected - result.clean_loss).abs().max() > 1e-4)
    assert changed, "no knockout changed a loss: the comparison says nothing"
    assert bool((result.writes == len(batch.inputs)).all())


def test_by_demonstration_knocks_out_each_demonstration_apart(model):
    batch = POOL.sample(3, (2, 3), seed=1)  # two or three shots
    result = AttentionKnockout(roles=("demo_answer", "query"), by_demonstration=True, n_bootstrap=0).run_batch(
        model, batch
    )
    assert result.role_names == ("demo_answer[-3]", "demo_answer[-2]", "demo_answer[-1]", "query")
    roles, names = demonstration_roles(batch)
    for r, role in enumerate(result.role_names):
        expected = hand_knocked_loss(model, batch, (1,), role, roles, names)
        torch.testing.assert_close(result.knocked_loss[1, r], expected, atol=1e-6, rtol=1e-6)
    two_shots = batch.n_shots == 2  # no third demonstration from the query: nothing to knock out
    assert torch.equal(result.knocked_loss[:, 0, two_shots], result.clean_loss[two_shots].expand(3, -1))
    assert torch.equal(result.present[0], ~two_shots) and bool(result.present[1:].all())
    harm = result.knocked_loss - result.clean_loss  # the far demonstration's mean leaves out the prompts without it
    real = torch.tensor([result.task_names[i] != result.null_task for i in result.task_ids.tolist()])
    torch.testing.assert_close(result.overall[:, 0], harm[:, 0, ~two_shots & real].double().mean(-1))
    assert bool((two_shots & real).any())
    assert not torch.allclose(result.overall[:, 0], harm[:, 0, real].double().mean(-1))
    with pytest.raises(TaskError, match="no demonstration parts of the roles"):
        AttentionKnockout(roles=("demo_answer",), by_demonstration=True).run_batch(model, POOL.sample(2, 0, seed=0))


def test_harm_is_the_loss_increase_or_accuracy_drop_averaged_per_task(model):
    batch = batch_of(n_per_task=4)
    loss = AttentionKnockout(n_bootstrap=20).run_batch(model, batch, seed=3)
    harm = loss.knocked_loss - loss.clean_loss
    ids = loss.task_ids
    present = torch.stack([has_role(batch, role) for role in loss.role_names])
    assert torch.equal(loss.present, present) and not bool(present[loss.role_names.index("separator")].any())
    for t in range(len(loss.task_names)):
        expected = means_where_present(harm, present, ids == t)
        torch.testing.assert_close(loss.per_task[..., t], expected, equal_nan=True)
    real = torch.tensor([loss.task_names[i] != loss.null_task for i in ids.tolist()])
    torch.testing.assert_close(loss.overall, means_where_present(harm, present, real), equal_nan=True)
    measured = loss.overall.isfinite()
    assert bool((loss.overall_ci[..., 0][measured] <= loss.overall[measured] + 1e-12).all())
    accuracy = AttentionKnockout(metric="accuracy", n_bootstrap=0).run_batch(model, batch)
    torch.testing.assert_close(accuracy.knocked_correct, loss.knocked_correct)
    drop = accuracy.clean_correct - accuracy.knocked_correct
    torch.testing.assert_close(accuracy.overall, means_where_present(drop, present, real), equal_nan=True)


def test_a_role_without_positions_changes_nothing_and_has_no_mean(model):
    """Token prompts have no separator: its knockout blocks no key, so every output is the clean one."""
    result = AttentionKnockout(roles=("separator", "demo_answer"), n_bootstrap=10).run_batch(model, batch_of())
    assert torch.equal(result.knocked_loss[:, 0], result.clean_loss.expand(len(result.windows), -1))
    assert not bool(result.present[0].any()) and bool(result.present[1].all())
    assert bool(result.overall[:, 0].isnan().all() and result.overall_ci[:, 0].isnan().all())
    assert bool(result.overall[:, 1].isfinite().all() and result.overall_ci[:, 1].isfinite().all())
    assert result.headline()["role"] == "demo_answer"  # the role no prompt has is never the largest harm
    ((_, _, line),) = summary_lines(headline_numbers({"knockout": result}))
    assert "largest harm per role: separator absent, demo_answer " in line


def test_result_tabulates_draws_and_saves_exactly(model, tmp_path):
    result = AttentionKnockout(n_bootstrap=10).run_batch(model, batch_of())
    frame = result.to_frame()
    assert len(frame) == len(result.windows) * len(result.role_names) * (len(result.task_names) + 1)
    row = frame[(frame.role == "demo_answer") & (frame.task == "all") & (frame.start == 1)].iloc[0]
    assert row.harm == pytest.approx(float(result.harm("demo_answer")[1]))
    assert [trace.name for trace in result.figure().data] == list(result.role_names)
    headline = result.headline()
    assert headline["harm"] == pytest.approx(float(result.overall.nan_to_num(nan=-1.0).max()))
    result.save(tmp_path / "knockout.safetensors")
    assert Result.load(tmp_path / "knockout.safetensors") == result
    with pytest.raises(TaskError, match="No role 'prefix'"):
        result.harm("prefix")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"window": 0}, "window must be an int >= 1"),
        ({"window": 1.5}, "window must be an int >= 1"),
        ({"roles": "demo_answer"}, "roles must be a non-empty tuple"),
        ({"roles": ("demo_answer", "label")}, "'label' is not a role"),
        ({"roles": ("query", "query")}, "a role twice"),
        ({"metric": "kl"}, "Unknown knockout metric 'kl'"),
        ({"by_demonstration": "yes"}, "by_demonstration must be True or False"),
        ({"query": "label"}, "Unknown knockout query 'label'"),
    ],
)
def test_bad_options_name_the_problem(options, match):
    with pytest.raises(AnalysisError, match=match):
        AttentionKnockout(**options)


def test_a_model_whose_attention_cannot_be_knocked_out_is_refused_and_keeps_no_hook(model, monkeypatch):
    monkeypatch.setattr(knockouts, "knockout_strategy", lambda adapter: None)
    before = hook_snapshot(model)
    with pytest.raises(ModelNotSupportedError, match="cannot be knocked out through its hook points"):
        AttentionKnockout(n_bootstrap=0).run_batch(model, batch_of())
    assert hook_snapshot(model) == before


def test_bad_inputs_name_the_problem(model):
    with pytest.raises(AnalysisError, match="window must be at most the model's 3 blocks"):
        AttentionKnockout(window=4).run_batch(model, batch_of())
    batch = batch_of()
    prompts = Prompts(batch.inputs, batch.answer_pos, batch.answers, batch.task_ids, batch.task_names)
    with pytest.raises(TaskError, match="carry no demonstration spans"):
        attention_knockout(model, prompts)
