"""One model used safely: threads, train mode, capability checks, and inputs that are not silently reinterpreted."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from pretrained_helpers import loaded, one_thread  # noqa: F401  (fixture)

from tv_lens import ICLPerformance, Prompts, TaskDecodability, TaskVectorPatching, TaskVectors, generate
from tv_lens.analyses import HeadAblation, head_importance, patch_task_vectors, task_vector_prompting
from tv_lens.analyses.performance import clean_outputs
from tv_lens.errors import NonFiniteError, PositionError, ShapeError, TaskError
from tv_lens.interventions import add, masking_strategy, replace, run_with_interventions
from tv_lens.models import ModelConfig, build_model
from tv_lens.models.adapter import ModelAdapter
from tv_lens.models.local_hf import build_tokenizer
from tv_lens.probes import collect
from tv_lens.tasks import TextPool, TextTask

PAIRS = (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("good", "bad"), ("old", "new"))
TASKS = (TextTask("antonym", PAIRS), TextTask("same", tuple((x, x) for x, _ in PAIRS)))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    model = loaded(tmp_path_factory, "gpt2", "bridge").model
    pool = TextPool(TASKS, model.tokenizer, template="{x} -> {y}", null=True, bos=True)
    return model, pool


def test_two_threads_on_one_model_get_their_own_rows(gpt2) -> None:
    model, pool = gpt2
    batches = [pool.sample(n_per_task=4, n_shots=(1, 3), seed=seed) for seed in range(4)]
    expected = [collect(model, b.inputs, b.answer_pos, progress=False, batch_size=3).activations for b in batches]
    got: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                b = batches[i]
                got[i] = collect(model, b.inputs, b.answer_pos, progress=False, batch_size=3).activations
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for i in range(4):
        assert torch.equal(got[i], expected[i])


def test_analyses_run_in_eval_mode_and_give_the_mode_back(gpt2) -> None:
    model, pool = gpt2
    batch = pool.sample(n_per_task=3, n_shots=2, seed=0)
    vectors = TaskVectors.from_model(model, batch, layers=(0,), progress=False)
    patching = TaskVectorPatching(layers=(0,), n_bootstrap=0)
    expected = patching.run_batch(model, batch, vectors).loss
    model.train()
    try:
        with torch.no_grad():  # dropout makes a training-mode pass random: the check is not vacuous
            assert not torch.equal(model(batch.inputs), model(batch.inputs))
        reps = collect(model, batch.inputs, batch.answer_pos, progress=False).activations
        assert torch.equal(reps, collect(model, batch.inputs, batch.answer_pos, progress=False).activations)
        torch.testing.assert_close(patching.run_batch(model, batch, vectors).loss, expected)
        assert all(module.training for module in model.modules())
    finally:
        model.eval()


def test_capability_checks_do_not_run_the_users_hooks() -> None:
    model = build_model(ModelConfig(d_vocab=16, n_layers=2, d_model=32, n_heads=4, n_ctx=32, seed=1))
    calls: list[str] = []

    def hostile(activation, hook):
        calls.append(hook.name)
        raise RuntimeError("a user hook that fails")

    for name in ("blocks.1.hook_resid_pre", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_attn_scores"):
        model.hook_dict[name].add_hook(hostile)
    try:
        adapter = ModelAdapter.from_model(model)
        start = adapter.supports_start_at_layer
        masking = masking_strategy(adapter)
    finally:
        model.reset_hooks()
    assert calls == []
    clean = build_model(ModelConfig(d_vocab=16, n_layers=2, d_model=32, n_heads=4, n_ctx=32, seed=1))
    clean_adapter = ModelAdapter.from_model(clean)
    assert (start, masking) == (clean_adapter.supports_start_at_layer, masking_strategy(clean_adapter))


def test_inputs_are_not_reinterpreted(gpt2) -> None:
    model, pool = gpt2
    batch = pool.sample(n_per_task=2, n_shots=1, seed=0)
    n, d = len(batch), model.cfg.d_model
    tokens, answer_pos, mask = batch.inputs, batch.answer_pos, batch.attention_mask
    vector = torch.ones(d)
    as_mask = torch.zeros(n, dtype=torch.bool)
    as_mask[[1, 3]] = True
    by_mask = run_with_interventions(model, tokens, answer_pos, [add(0, vector, rows=as_mask)], attention_mask=mask)
    by_index = run_with_interventions(model, tokens, answer_pos, [add(0, vector, rows=[1, 3])], attention_mask=mask)
    assert by_mask.writes == (2,) and torch.equal(by_mask.logits, by_index.logits)
    with pytest.raises(PositionError, match="integer prompt indices"):
        run_with_interventions(model, tokens, answer_pos, [add(0, vector, rows=torch.tensor([1.0, 3.0]))])
    with pytest.raises(PositionError, match="one entry per prompt"):
        run_with_interventions(model, tokens, answer_pos, [add(0, vector, rows=as_mask[:-1])], attention_mask=mask)
    for bad in (mask * 2, mask - 1, mask * 0.5):
        with pytest.raises(ShapeError, match="1 on real tokens and 0 on padding"):
            collect(model, tokens, answer_pos, attention_mask=bad, progress=False)
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        run_with_interventions(model, tokens, answer_pos, [replace(0, torch.full((d,), 3e38))], attention_mask=mask)


def test_answers_tokenized_apart_from_their_prompts_are_refused(gpt2) -> None:
    """An answer tokenized alone loses the space before it (``hot``, not `` hot``): scored by teacher forcing, the
    model would read the prompt's tokens while being scored on others. Every scoring path refuses it."""
    model, _ = gpt2
    twice = TextTask("twice", tuple((x, f"{x} {x}") for x, _ in PAIRS))
    pool = TextPool((twice, TASKS[1]), model.tokenizer, template="{x} -> {y}", null=False, bos=True)
    batch = pool.sample(n_per_task=3, n_shots=1, seed=0)
    outputs = dict(pool.examples[0] + pool.examples[1])
    alone = torch.full_like(batch.answers, -1)
    for i, x in enumerate(pool.query_inputs(batch)):
        ids = model.tokenizer(outputs[x] if batch.task_ids[i] == 1 else f"{x} {x}", add_special_tokens=False).input_ids
        alone[i, : len(ids)] = torch.tensor(ids)
    assert bool((alone[batch.task_ids == 0, 1] >= 0).all()) and not torch.equal(alone, batch.answers)
    own = Prompts(batch.inputs, batch.answer_pos, batch.answers, batch.task_ids, batch.task_names, batch.attention_mask)
    apart = Prompts(batch.inputs, batch.answer_pos, alone, batch.task_ids, batch.task_names, batch.attention_mask)
    vectors = TaskVectors.from_model(model, batch, layers=(0,))
    config = HeadAblation(n_bootstrap=0, prune_steps=0)
    head_importance(model, own, config=config)
    match = r"answer token 0 is id \d+, but the prompt holds id \d+ in its place .*the prompt's own tokens"
    calls = (
        lambda prompts: head_importance(model, prompts, config=config),
        lambda prompts: patch_task_vectors(model, prompts, vectors),
        lambda prompts: task_vector_prompting(model, prompts, batch.zero_shot(), vectors=vectors),
        lambda prompts: clean_outputs(model, prompts),
    )
    for call in calls:
        with pytest.raises(PositionError, match=match):
            call(apart)


def test_a_pad_token_the_model_lacks_is_never_read(gpt2) -> None:
    """A pad token added to the tokenizer (``add_special_tokens({"pad_token": "[PAD]"})``, the usual way to batch with
    Llama's tokenizer) has an id past the model's vocabulary. It only pads the prompts, so the analyses give what the
    tokenizer without it gives; before, every run was refused for a token id outside the vocabulary."""
    model, pool = gpt2
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    assert tokenizer.pad_token_id >= model.cfg.d_vocab
    padded = TextPool(TASKS, tokenizer, template="{x} -> {y}", null=True, bos=True)
    batches = [each.sample(n_per_task=3, n_shots=(1, 3), seed=0) for each in (pool, padded)]
    real = batches[0].attention_mask.bool()
    assert torch.equal(batches[0].inputs[real], batches[1].inputs[real])
    assert bool((batches[1].inputs[~real] == tokenizer.pad_token_id).all()) and bool((~real).any())
    for analysis in (TaskDecodability(k=2, n_bootstrap=0), TaskVectorPatching(n_bootstrap=0)):
        assert analysis.run(model, padded, n_per_task=3, n_shots=(1, 3)) == analysis.run(
            model, pool, n_per_task=3, n_shots=(1, 3)
        )
    performance = ICLPerformance(shots=(0, 2), n_bootstrap=0)
    assert performance.run(model, padded, n_per_task=3) == performance.run(model, pool, n_per_task=3)
    assert torch.equal(
        generate(model, batches[1], max_new_tokens=2).tokens, generate(model, batches[0], max_new_tokens=2).tokens
    )


def test_a_text_pool_of_another_tokenizer_is_refused(gpt2) -> None:
    """One pool run on two models: the second model's tokenizer splits the text otherwise, and the pool's ids (all
    within its vocabulary) would be read as other tokens. Refused; the model's tokenizer loaded apart is accepted."""
    model, pool = gpt2
    other = build_tokenizer(512)
    foreign = TextPool(TASKS, other, template="{x} -> {y}", null=True, bos=True)
    assert foreign.vocab_size <= model.cfg.d_vocab
    analyses = (
        TaskDecodability(k=2, n_bootstrap=0),
        TaskVectorPatching(n_bootstrap=0),
        HeadAblation(n_bootstrap=0, prune_steps=0),
        ICLPerformance(shots=(0, 1), n_bootstrap=0),
    )
    for analysis in analyses:
        with pytest.raises(TaskError, match=r"Build the pool with the model's own tokenizer"):
            analysis.run(model, foreign, n_per_task=3)
    with pytest.raises(TaskError, match=r"Build the pool with the model's own tokenizer"):
        TaskVectors.from_model(model, foreign, layers=(0,), n_per_task=3)
    apart = copy.deepcopy(model.tokenizer)
    same = TextPool(TASKS, apart, template="{x} -> {y}", null=True, bos=True)
    decodability = TaskDecodability(k=2, n_bootstrap=0)
    assert decodability.run(model, same, n_per_task=3) == decodability.run(model, pool, n_per_task=3)


def test_task_vectors_of_a_text_pool_are_those_of_its_batch(gpt2) -> None:
    """``TaskVectors.from_model`` samples a text pool as it samples a token pool (it refused a ``TextPool``)."""
    model, pool = gpt2
    from_pool = TaskVectors.from_model(model, pool, layers=(0, 1), n_per_task=3, n_shots=2, seed=4)
    from_batch = TaskVectors.from_model(model, pool.sample(3, 2, seed=4), layers=(0, 1))
    assert from_pool.task_names == from_batch.task_names
    assert torch.equal(from_pool.vectors, from_batch.vectors)


def test_left_padding_without_a_mask_is_refused(gpt2) -> None:
    model, pool = gpt2
    pad = model.tokenizer.pad_token_id
    row = pool.sample(n_per_task=1, n_shots=1, seed=0)
    tokens = row.inputs[:1, : int(row.lengths[0])]
    left = torch.cat([torch.full((1, 2), pad), tokens], dim=1)
    answer_pos = row.answer_pos[:1] + 2
    expected = "looks left-padded" if pad == model.tokenizer.bos_token_id else "starts with the pad token"
    with pytest.raises(PositionError, match=expected):
        collect(model, left, answer_pos, progress=False)
    mask = torch.ones_like(left)
    mask[:, :2] = 0
    with_mask = collect(model, left, answer_pos, attention_mask=mask, progress=False).activations
    torch.testing.assert_close(with_mask, collect(model, tokens, row.answer_pos[:1], progress=False).activations)


def test_half_precision_residual_inputs_keep_their_positions() -> None:
    model = build_model(ModelConfig(d_vocab=16, n_layers=1, d_model=32, n_heads=4, n_ctx=300, dtype="bfloat16"))
    residual = torch.randn(1, 300, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).repeat(2, 1, 1)
    answer_pos = torch.tensor([257, 258])  # equal in bfloat16 (its integers are exact only up to 256)
    rows = collect(model, residual, answer_pos, layers=(0,), progress=False).activations[0]
    with torch.no_grad():
        _, cache = model.run_with_cache(residual, start_at_layer=0, names_filter="blocks.0.hook_resid_post")
    expected = cache["blocks.0.hook_resid_post"][torch.arange(2), answer_pos].float()
    assert not torch.equal(rows[0], rows[1])
    torch.testing.assert_close(rows, expected)
