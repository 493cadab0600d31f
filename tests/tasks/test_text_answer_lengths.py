"""Answers of different token lengths: every scoring path reads each prompt's own answer tokens.

References are independent: each prompt run alone, unpadded, through ``model.run_with_hooks`` with a
hand-written TransformerLens hook, and scored over its own answer tokens only.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS, tiny_config
from text_tokenizers import byte_bpe

from tv_lens import ICLPerformance, TaskVectorPatching, TaskVectors
from tv_lens.analyses import HeadAblation, TaskVectorPrompting
from tv_lens.analyses.performance import score_batch
from tv_lens.interventions import add, run_with_interventions
from tv_lens.metrics import token_accuracy, token_cross_entropy
from tv_lens.models import build_model
from tv_lens.probes import collect
from tv_lens.tasks import NULL_TASK, TextPool, TextTask, bitwise_text_tasks

PAIRS = (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("good", "bad"), ("old", "new"))
TASKS = (
    TextTask("antonym", PAIRS),
    TextTask("same", tuple((x, x) for x, _ in PAIRS)),
    TextTask("twice", tuple((x, f"{x} {x}") for x, _ in PAIRS)),
    *bitwise_text_tasks(ops=("and", "xor"), n_bits=4, n_examples=8, seed=3),
)


def _pool() -> TextPool:
    tokenizer = byte_bpe(tuple(f"{x} -> {y}" for task in TASKS for x, y in task.examples))
    return TextPool(TASKS[:3], tokenizer, template="{x} -> {y}", null=True, bos=True)


@pytest.fixture(scope="module", params=BACKENDS)
def setup(request):
    pool = _pool()
    model = build_model(tiny_config(request.param, d_vocab=pool.vocab_size, n_layers=2, n_ctx=96, dtype="float64"))
    batch = pool.sample(n_per_task=3, n_shots=(1, 3), seed=0)
    assert len(set(batch.answer_lengths.tolist())) > 1  # the point of these tests
    return pool, model, batch


def _alone(model, batch, i: int, hooks=()) -> torch.Tensor:
    """Logits of prompt ``i`` run alone (unpadded) at its own answer positions ``[n_answer_i, d_vocab]``."""
    length, ap, n = int(batch.lengths[i]), int(batch.answer_pos[i]), int(batch.answer_lengths[i])
    with torch.no_grad():
        logits = model.run_with_hooks(batch.inputs[i : i + 1, :length], fwd_hooks=list(hooks))
    return logits[0, ap : ap + n]


def _left_padded(batch):
    width = batch.inputs.shape[1]
    tokens, mask = torch.zeros_like(batch.inputs), torch.zeros_like(batch.inputs)
    for i, length in enumerate(batch.lengths.tolist()):
        tokens[i, width - length :], mask[i, width - length :] = batch.inputs[i, :length], 1
    return tokens, mask, batch.answer_pos + width - batch.lengths


@pytest.mark.parametrize("padding", ["right", "left"])
def test_engine_reads_each_prompts_own_answer_tokens(setup, padding: str) -> None:
    _, model, batch = setup
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tokens, mask, answer_pos = (batch.inputs, batch.attention_mask, batch.answer_pos)
    if padding == "left":
        tokens, mask, answer_pos = _left_padded(batch)
    run = run_with_interventions(
        model, tokens, answer_pos, [add(0, vector)], attention_mask=mask, n_answer_tokens=batch.answer_lengths
    )
    assert run.logits.shape[1] == batch.n_answer_tokens and run.writes == (len(batch),)
    for i in range(len(batch)):
        ap = int(batch.answer_pos[i])

        def write(resid, hook, ap=ap):
            resid[:, ap] += vector
            return resid

        reference = _alone(model, batch, i, [("blocks.0.hook_resid_post", write)])
        n = len(reference)
        torch.testing.assert_close(run.logits[i, :n], reference, atol=1e-9, rtol=1e-9)
        # columns after a prompt's own answer repeat its last one (never scored)
        torch.testing.assert_close(run.logits[i, n:], reference[-1:].expand(batch.n_answer_tokens - n, -1))


def test_scores_cover_each_prompts_own_answer(setup) -> None:
    pool, model, batch = setup
    correct, loss = [], []
    for i in range(len(batch)):
        reference = _alone(model, batch, i)
        target = batch.answers[i, : len(reference)]
        correct.append(float((reference.argmax(-1) == target).all()))
        loss.append(float(F.cross_entropy(reference, target)))
    torch.testing.assert_close(score_batch(model, batch, "accuracy"), torch.tensor(correct))
    torch.testing.assert_close(
        score_batch(model, batch, "cross_entropy").double(), torch.tensor(loss, dtype=torch.float64)
    )
    performance = ICLPerformance(metric="cross_entropy", n_bootstrap=0).run_batch(model, batch)
    losses = torch.tensor(loss, dtype=torch.float64)
    for t in range(len(pool)):
        for j, shots in enumerate(performance.shots):
            cell = (batch.task_ids == t) & (batch.n_shots == shots)
            expected = losses[cell].mean() if cell.any() else torch.tensor(float("nan"), dtype=torch.float64)
            torch.testing.assert_close(performance.values[t, j], expected, equal_nan=True)


def test_metrics_ignore_the_padding_of_shorter_answers() -> None:
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    answers = torch.tensor([[1, 2, -1], [0, 4, 3]])
    expected_loss = torch.stack(
        [F.cross_entropy(logits[0, :2], answers[0, :2]), F.cross_entropy(logits[1], answers[1])]
    )
    torch.testing.assert_close(token_cross_entropy(logits, answers), expected_loss)
    hit = logits.argmax(-1)
    hit[0, 2] = 4  # whatever the padded column predicts is ignored
    exact = torch.nn.functional.one_hot(hit, 5).double() * 10
    fitted = torch.tensor([[1, 2, -1], [0, 4, 3]])
    fitted[0, :2], fitted[1] = hit[0, :2], hit[1]
    assert token_accuracy(exact, fitted).tolist() == [1.0, 1.0]
    fitted[0, 1] = (hit[0, 1] + 1) % 5
    assert token_accuracy(exact, fitted).tolist() == [0.0, 1.0]


def test_target_answers_of_a_text_pool(setup) -> None:
    pool, _, batch = setup
    targets = pool.target_answers(batch, pool.task_names)
    assert targets.shape == (len(pool), len(batch), 1)
    for i in range(len(batch)):
        task = pool.task_names[int(batch.task_ids[i])]
        if task == NULL_TASK:
            continue
        # a task's own answer to the query, computed apart from the prompt, is the prompt's own answer
        assert int(targets[pool.task_names.index(task), i, 0]) == int(batch.answers[i, 0])
    assert (targets[pool.task_names.index(NULL_TASK)] == -1).all()
    queries = pool.query_inputs(batch)
    assert set(queries) <= {x for x, _ in PAIRS}
    # 'same' and 'twice' start with the query word itself: their first answer token agrees
    assert torch.equal(targets[pool.task_names.index("same")], targets[pool.task_names.index("twice")])


def test_patching_on_a_text_pool_matches_hand_written_hooks(setup) -> None:
    pool, model, batch = setup
    vectors = TaskVectors.from_model(model, pool.sample(3, (1, 3), seed=1), layers=(0, 1))
    effects = TaskVectorPatching(layers=(0, 1), n_bootstrap=0).run_batch(model, batch, vectors, pool=pool)
    targets = pool.target_answers(batch, vectors.task_names)
    for li, layer in enumerate((0, 1)):
        for t in range(len(vectors.task_names)):
            vector = vectors.vectors[t, li]
            for i in range(len(batch)):
                ap = int(batch.answer_pos[i])

                def write(resid, hook, ap=ap, vector=vector):
                    resid[:, ap] = vector
                    return resid

                logits = _alone(model, batch, i, [(f"blocks.{layer}.hook_resid_post", write)])
                answer = batch.answers[i, : len(logits)]
                torch.testing.assert_close(
                    effects.loss[li, t, i], F.cross_entropy(logits, answer).to(effects.loss.dtype), atol=1e-9, rtol=0
                )
                follows = effects.follows[li, t, i]
                target = int(targets[t, i, 0])
                if target < 0 or target == int(answer[0]):
                    assert torch.isnan(follows)
                else:
                    assert float(follows) == float(int(logits[0].argmax()) == target)


def test_prompting_and_heads_score_each_prompts_own_answer(setup) -> None:
    _, model, batch = setup
    prompting = TaskVectorPrompting(layers=(0,), source="same_prompt", n_bootstrap=0).run_batch(model, batch)
    zero = batch.zero_shot()
    heads = HeadAblation(n_bootstrap=0, prune_steps=0).run_batch(model, batch)
    for i in range(len(batch)):
        icl = _alone(model, batch, i)
        torch.testing.assert_close(prompting.icl_loss[i], F.cross_entropy(icl, batch.answers[i, : len(icl)]).double())
        alone = _alone(model, zero, i)
        expected = F.cross_entropy(alone, zero.answers[i, : len(alone)]).double()
        torch.testing.assert_close(prompting.zero_shot_loss[i], expected)

        def ablate(z, hook):
            z[:, :, 1] = 0.0
            return z

        ablated = _alone(model, batch, i, [("blocks.1.attn.hook_z", ablate)])
        expected = F.cross_entropy(ablated, batch.answers[i, : len(ablated)]).double()
        torch.testing.assert_close(heads.ablated_loss[1, 1, i], expected)


def test_collect_stops_once_every_row_is_read(setup) -> None:
    _, model, batch = setup
    calls: list[str] = []
    after_blocks = [name for name in model.hook_dict if name.startswith(("ln_final", "unembed"))]
    watched = ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", *after_blocks]
    assert after_blocks
    for name in watched:
        model.hook_dict[name].add_hook(lambda act, hook, name=name: calls.append(name))
    try:
        reps = collect(model, batch.inputs, batch.answer_pos, layers=(0,), progress=False)
        assert calls == []  # block 1 never ran
        collect(model, batch.inputs, batch.answer_pos, layers=(1,), progress=False)
        assert set(calls) == set(watched[:2])  # it ran up to the last row read, never the unembedding
    finally:
        for name in watched:
            model.hook_dict[name].remove_hooks()
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.inputs)
    rows = cache["blocks.0.hook_resid_post"][torch.arange(len(batch)), batch.answer_pos]
    torch.testing.assert_close(reps.activations[0], rows)
