"""TVP-loss: value and gradients against a hand-written TransformerLens hook computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pretrained_helpers import loaded
from training_helpers import (
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    tiny_config,
    tiny_model,
    tiny_pool,
)

from tv_lens.interventions.prompting import vector_sources
from tv_lens.tasks import offset_pool
from tv_lens.training import TVPConfig, train, tvp_accuracy, tvp_losses
from tv_lens.training.objectives import TokenObjective
from tv_lens.training.tvp_loss import vector_partners


def hand_partners(batch) -> torch.Tensor:
    """Each prompt's partner written out by hand: the next prompt of its task (wrapping around) whose query differs
    from its own, -1 where there is none."""
    zero_shot = batch.zero_shot()
    query = [tuple(zero_shot.inputs[i, : int(zero_shot.answer_pos[i]) + 1].tolist()) for i in range(len(batch))]
    partner = torch.full((len(batch),), -1)
    for t in set(batch.task_ids.tolist()):
        members = [i for i in range(len(batch)) if int(batch.task_ids[i]) == t]
        for j, i in enumerate(members):
            later = [members[(j + step) % len(members)] for step in range(1, len(members))]
            partner[i] = next((k for k in later if query[k] != query[i]), -1)
    return partner


def hand_tvp_losses(model, batch, layer: int, mode: str, detach: bool, source: str = "same_prompt"):
    """L_ICL and L_TVP computed with plain run_with_hooks: capture, then overwrite/add in the zero-shot pass."""
    name = f"blocks.{layer}.hook_resid_post"
    rows = torch.arange(len(batch))
    store = {}

    def capture(activation, hook):
        store["vector"] = activation[rows, batch.answer_pos]

    logits = model.run_with_hooks(batch.inputs, fwd_hooks=[(name, capture)])
    icl_terms = []
    for i in range(len(batch)):
        positions = [int(p) for p in batch.demo_answer_pos[i] if p >= 0] + [int(batch.answer_pos[i])]
        icl_terms += [F.cross_entropy(logits[i, p], batch.inputs[i, p + 1]) for p in positions]
    vector = store["vector"].detach() if detach else store["vector"]
    zero_shot = batch.zero_shot()
    if source == "other_prompt":  # prompts without a partner of another query have no TVP term
        partner = hand_partners(batch)
        vector, zero_shot = vector[partner[partner >= 0]], zero_shot.select(partner >= 0)
        rows = torch.arange(len(zero_shot))

    def write(activation, hook):
        activation = activation.clone()
        if mode == "replace":
            activation[rows, zero_shot.answer_pos] = vector
        else:
            activation[rows, zero_shot.answer_pos] = activation[rows, zero_shot.answer_pos] + vector
        return activation

    zero_logits = model.run_with_hooks(zero_shot.inputs, fwd_hooks=[(name, write)])
    answer_logits = zero_logits[rows, zero_shot.answer_pos]
    return torch.stack(icl_terms).mean(), F.cross_entropy(answer_logits, zero_shot.answers[:, 0]), answer_logits


@pytest.fixture(scope="module")
def batch():
    return tiny_pool().sample(3, (2, 4), seed=3)


def position_embedding(model) -> torch.Tensor:
    (weight,) = list(model.pos_embed.parameters())
    return weight


@pytest.mark.parametrize(
    ("mode", "source"), [("replace", "same_prompt"), ("add", "same_prompt"), ("replace", "other_prompt")]
)
def test_tvp_loss_value_and_gradients_match_hand_hooks(model, batch, mode: str, source: str) -> None:
    layer = 1
    params = [p for _, p in model.named_parameters()]
    grads = {}
    for detach in (False, True):
        config = TVPConfig(layer=layer, lam=0.7, mode=mode, detach=detach, source=source)
        losses = tvp_losses(model, batch, config)
        hand_icl, hand_tvp, _ = hand_tvp_losses(model, batch, layer, mode, detach, source)
        torch.testing.assert_close(losses.icl, hand_icl, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(losses.tvp, hand_tvp, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(losses.total, hand_icl + 0.7 * hand_tvp, rtol=1e-10, atol=1e-12)
        ours = torch.autograd.grad(losses.tvp, params, allow_unused=True)
        theirs = torch.autograd.grad(hand_tvp, params, allow_unused=True)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(
                a if a is not None else torch.zeros(()), b if b is not None else torch.zeros(()), rtol=1e-9, atol=1e-12
            )
        grads[detach] = dict(zip([n for n, _ in model.named_parameters()], ours, strict=True))

    # Position rows the zero-shot prompt never uses get gradient only through the extracted vector.
    zero_shot_length = batch.zero_shot().inputs.shape[1]
    pos_name = next(n for n, p in model.named_parameters() if p is position_embedding(model))
    through_vector = grads[False][pos_name][zero_shot_length:]
    assert through_vector.abs().sum() > 1e-8
    assert grads[True][pos_name] is None or torch.count_nonzero(grads[True][pos_name][zero_shot_length:]) == 0
    # Every block up to the extraction layer gets a different gradient when the vector is not detached.
    for block in range(layer + 1):
        block_names = {n for n, _ in model.named_parameters() if f"blocks.{block}." in n or f"layers.{block}." in n}
        differs = [
            n for n in block_names if grads[True][n] is not None and not torch.allclose(grads[False][n], grads[True][n])
        ]
        assert differs, f"block {block} gets no gradient through the task vector"


@pytest.mark.parametrize("source", ["same_prompt", "other_prompt"])
def test_tvp_accuracy_matches_hand_hooks(model, batch, source: str) -> None:
    with torch.no_grad():
        _, _, answer_logits = hand_tvp_losses(model, batch, 2, "replace", detach=True, source=source)
    paired = hand_partners(batch) >= 0 if source == "other_prompt" else torch.ones(len(batch), dtype=torch.bool)
    expected = torch.full((len(batch),), torch.nan, dtype=torch.float64)
    expected[paired] = (answer_logits.argmax(-1) == batch.answers[paired, 0]).double()
    torch.testing.assert_close(tvp_accuracy(model, batch, layer=2, source=source).double(), expected)
    in_pieces = tvp_accuracy(model, batch, layer=2, source=source, batch_size=2)
    torch.testing.assert_close(in_pieces.double(), expected)


def test_other_prompt_source_never_pairs_a_prompt_with_itself(batch) -> None:
    partner = vector_sources(batch.task_ids, batch.task_names, "other_prompt")
    assert (partner != torch.arange(len(batch))).all()
    assert torch.equal(batch.task_ids[partner], batch.task_ids)


def test_the_tvp_loss_pairs_prompts_of_other_queries_only(model, batch) -> None:
    """A partner of the same query carries the answer: such prompts are not paired, others get another query's."""
    partner = hand_partners(batch)
    assert (partner >= 0).any() and torch.equal(
        vector_partners(model, batch, batch.zero_shot(), "other_prompt"), partner
    )
    assert batch.task_ids[0] != batch.task_ids[3]
    twice = batch.select(torch.tensor([0, 0, 3, 3]))  # two tasks whose two prompts share their query
    assert (vector_partners(model, twice, twice.zero_shot(), "other_prompt") == -1).all()
    losses = tvp_losses(model, twice, TVPConfig(layer=1, lam=0.5))
    assert losses.tvp is not None and losses.tvp.isnan() and torch.equal(losses.total, losses.icl)
    assert tvp_accuracy(model, twice, layer=1).isnan().all()


def test_tvp_loss_and_accuracy_skip_partners_of_the_same_query(model, batch) -> None:
    """Repeated prompts: each gets the vector of the next prompt of its task with another query (hand-written)."""
    mixed = batch.select(torch.tensor([0, 0, 1, 3, 3, 4, 5]))
    partner = hand_partners(mixed)
    assert partner.tolist()[:3] == [2, 2, 0] and (partner >= 0).all()
    config = TVPConfig(layer=1, lam=0.7, source="other_prompt")
    hand_icl, hand_tvp, _ = hand_tvp_losses(model, mixed, 1, "replace", detach=False, source="other_prompt")
    losses = tvp_losses(model, mixed, config)
    torch.testing.assert_close(losses.tvp, hand_tvp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(losses.total, hand_icl + 0.7 * hand_tvp, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        _, _, answer_logits = hand_tvp_losses(model, mixed, 1, "replace", detach=True, source="other_prompt")
    expected = (answer_logits.argmax(-1) == mixed.answers[:, 0]).double()
    torch.testing.assert_close(tvp_accuracy(model, mixed, layer=1), expected)


def test_training_with_tvp_loss_reports_tvp_accuracy() -> None:
    config = tiny_config(max_steps=3, tvp=TVPConfig(layer=1, lam=0.5))
    result = train(tiny_model("auto"), tiny_pool(), config, progress=False)
    history = result.history
    assert history["loss_tvp"].notna().all()
    torch.testing.assert_close(
        torch.tensor(history["loss"].to_numpy()),
        torch.tensor((history["loss_icl"] + 0.5 * history["loss_tvp"]).to_numpy()),
        rtol=1e-6,
        atol=1e-6,
    )
    assert {"tvp_accuracy", "zero_shot_accuracy"} <= set(result.evals.columns)
    assert result.evals["tvp_accuracy"].between(0, 1).all()


def test_tvp_accuracy_runs_a_model_left_in_train_mode_without_dropout(tmp_path_factory) -> None:
    """A HuggingFace GPT-2 with dropout 0.1, in train mode: the zero-shot outputs are those of eval mode (scored here
    by their largest logit, which any dropout would move), and every module keeps its own mode."""
    model = loaded(tmp_path_factory, "gpt2", "bridge").model
    batch = offset_pool(offsets=(1, 2), n_values=6).sample(4, 2, seed=1)

    class LargestLogit(TokenObjective):
        def answer_accuracy(self, outputs, batch):
            return outputs[:, 0].max(-1).values

    expected = tvp_accuracy(model, batch, 0, objective=LargestLogit())  # the model is in eval mode here
    model.train()
    model.blocks[1].eval()  # a module in a mode of its own
    try:
        got = tvp_accuracy(model, batch, 0, objective=LargestLogit())
        modes = {name: module.training for name, module in model.named_modules()}
    finally:
        model.eval()
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert modes[""] and modes["blocks.0"] and not modes["blocks.1"]
