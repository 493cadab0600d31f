"""Function vectors: mean head activations, CIE, the vector and its layer sweep against hand-written hook loops."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from causal_helpers import POOL, editing_hook, failing_user_hook, left_pad
from conftest import hook_snapshot
from pretrained_helpers import GQA_ARCHITECTURES, folder_of, load, loaded, one_thread  # noqa: F401  (fixture)

from tv_lens.analyses import (
    FunctionVectors,
    Prompts,
    causal_indirect_effects,
    function_vector,
    function_vector_prompting,
    mean_head_activations,
)
from tv_lens.errors import AnalysisError, LayerOutOfRangeError, ShapeError, TaskError, TvLensError
from tv_lens.interventions import ablate_head, run_with_interventions
from tv_lens.results import FunctionVector, FunctionVectorResult, IndirectEffects, MeanHeadActivations, Result
from tv_lens.results.axes import layer_label
from tv_lens.tasks import TextPool, TextTask

N_LAYERS, N_HEADS = 3, 4
PAIRS = (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("good", "bad"), ("old", "new"))
TEXT_TASKS = (
    TextTask("antonym", PAIRS),
    TextTask("same", tuple((x, x) for x, _ in PAIRS)),
    TextTask("twice", tuple((x, f"{x} {x}") for x, _ in PAIRS)),
)


@pytest.fixture(scope="module")
def analysed(model):
    """The analysis on the float64 tiny model: 3 offset tasks (Null left out), 4 prompts per task and batch."""
    config = FunctionVectors(k=3, n_bootstrap=20)
    clean, corrupted, evaluation = (POOL.sample(4, 3, seed) for seed in (0, 1, 2))
    corrupted = POOL.sample(4, 3, 1, label_noise=0.9)
    return model, clean, corrupted, evaluation, config.run_batch(model, clean, corrupted, evaluation)


def real(batch):
    return batch.select(batch.task_ids != batch.task_names.index("null"))


def hand_means(model, batch):
    """Reference: every head's hook_z at the answer position from run_with_cache, averaged per task."""
    batch = real(batch)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.inputs, names_filter=lambda name: name.endswith("hook_z"))
    rows = torch.arange(len(batch))
    z = torch.stack([cache[f"blocks.{layer}.attn.hook_z"][rows, batch.answer_pos] for layer in range(N_LAYERS)], 1)
    return torch.stack([z[batch.task_ids == t].double().mean(0) for t in range(int(batch.task_ids.max()) + 1)])


def answer_probability(logits, batch):
    """Probability of the first answer token and teacher-forced loss over every answer token, per prompt."""
    probs, losses = [], []
    for i in range(len(batch)):
        ap, n = int(batch.answer_pos[i]), int(batch.answer_lengths[i])
        row = logits[i, ap : ap + n].double()
        probs.append(row[0].softmax(-1)[batch.answers[i, 0]])
        losses.append(F.cross_entropy(row, batch.answers[i, :n]))
    return torch.stack(probs), torch.stack(losses)


def patched_run(model, batch, layer, head, values, one_by_one=False):
    """Reference: one run_with_hooks hook on blocks.{layer}.attn.hook_z writing ``values[prompt]`` into ``head``."""

    def run(tokens, positions, rows_values):
        def edit(z):
            z[torch.arange(len(tokens)), positions, head] = rows_values.to(z.dtype)

        with torch.no_grad():
            return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", editing_hook(edit))])

    if not one_by_one:
        return run(batch.inputs, batch.answer_pos, values)
    logits = []
    for i in range(len(batch)):
        length = int(batch.lengths[i])
        out = run(batch.inputs[i : i + 1, :length], batch.answer_pos[i : i + 1], values[i : i + 1])[0]
        logits.append(F.pad(out, (0, 0, 0, batch.inputs.shape[1] - length)))
    return torch.stack(logits)


def test_mean_head_activations_equal_the_cache(analysed):
    model, clean, _, _, result = analysed
    torch.testing.assert_close(result.means.activations, hand_means(model, clean), atol=1e-10, rtol=0)
    assert result.means.task_names == ("offset(1)", "offset(2)", "offset(3)")
    assert result.means.n_prompts.tolist() == [4, 4, 4]


def test_cie_equals_a_hand_written_hook_per_head(analysed):
    model, _, corrupted, _, result = analysed
    batch = real(corrupted)
    effects = result.effects
    with torch.no_grad():
        corrupted_prob, corrupted_loss = answer_probability(model(batch.inputs), batch)
    torch.testing.assert_close(effects.corrupted_prob, corrupted_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(effects.corrupted_loss, corrupted_loss, atol=1e-5, rtol=0)
    means = result.means.activations
    for layer in range(N_LAYERS):
        for head in range(N_HEADS):
            values = means[batch.task_ids, layer, head]
            prob, loss = answer_probability(patched_run(model, batch, layer, head, values), batch)
            torch.testing.assert_close(effects.patched_prob[layer, head], prob, atol=1e-5, rtol=0)
            torch.testing.assert_close(effects.patched_loss[layer, head], loss, atol=1e-5, rtol=0)
            for t in range(3):
                members = batch.task_ids == t
                expected = float((prob - corrupted_prob)[members].mean())
                assert abs(float(effects.cie[layer, head, t]) - expected) < 1e-5
            assert abs(float(effects.overall[layer, head]) - float((prob - corrupted_prob).mean())) < 1e-5
    assert torch.equal(effects.writes, torch.full((N_LAYERS, N_HEADS), len(batch)))
    assert 0.8 < effects.label_noise < 1
    low, high = effects.overall_ci[..., 0], effects.overall_ci[..., 1]
    assert bool((low <= effects.overall + 1e-12).all() and (effects.overall <= high + 1e-12).all())


def test_function_vector_is_the_hand_computed_sum_through_w_o(analysed):
    model, _, _, _, result = analysed
    vector, effects = result.vector, result.effects
    flat = effects.overall.flatten()
    expected_heads = [(int(i) // N_HEADS, int(i) % N_HEADS) for i in torch.argsort(flat, descending=True)[:3]]
    assert list(vector.heads) == expected_heads and vector.k == 3
    means = result.means.activations
    expected = sum(
        means[:, layer, head] @ model.blocks[layer].attn.W_O[head].detach().double() for layer, head in expected_heads
    )
    torch.testing.assert_close(vector.vectors, expected, atol=1e-10, rtol=0)
    again = function_vector(model, result.means, [(0, 1), (2, 3)])
    torch.testing.assert_close(
        again.get("offset(2)"),
        means[1, 0, 1] @ model.blocks[0].attn.W_O[1].double() + means[1, 2, 3] @ model.blocks[2].attn.W_O[3].double(),
        atol=1e-10,
        rtol=0,
    )


def test_heads_rank_by_the_mean_over_tasks_of_each_tasks_mean_cie(model, analysed):
    """Todd et al. average the CIE per task, then over tasks: a task with more prompts must not weigh more."""
    *_, result = analysed  # every task has four corrupted prompts: both means agree
    torch.testing.assert_close(result.effects.mean_over_tasks, result.effects.overall, atol=1e-12, rtol=0)
    clean = real(POOL.sample(2, 3, 0))
    corrupted = real(POOL.sample(3, 3, 1, label_noise=0.9))
    first_of_task_1 = int((corrupted.task_ids == 1).nonzero()[0])
    kept = (corrupted.task_ids == 0) | (torch.arange(len(corrupted)) == first_of_task_1)
    corrupted = corrupted.select(kept)  # task 0: three prompts, task 1: one, task 2: none
    means = mean_head_activations(model, clean)
    effects = causal_indirect_effects(model, corrupted, means, config=FunctionVectors(n_bootstrap=0))
    gain = effects.patched_prob - effects.corrupted_prob
    task_means = [gain[..., corrupted.task_ids == t].mean(-1) for t in (0, 1)]
    torch.testing.assert_close(effects.mean_over_tasks, (task_means[0] + task_means[1]) / 2, atol=1e-12, rtol=0)
    # Head (0, 1) lifts task 0's three prompts by 0.3, head (2, 3) task 1's one prompt by 0.4: over prompts the
    # first leads (0.225 against 0.1), over tasks the second (0.2 against 0.15).
    planted = torch.zeros_like(gain)
    planted[0, 1, corrupted.task_ids == 0] = 0.3
    planted[2, 3, corrupted.task_ids == 1] = 0.4
    nan = float("nan")
    per_task = torch.zeros(N_LAYERS, N_HEADS, 3, dtype=torch.float64)
    per_task[0, 1, 0], per_task[2, 3, 1], per_task[..., 2] = 0.3, 0.4, nan
    planted_effects = replace(
        effects, patched_prob=effects.corrupted_prob + planted, cie=per_task, overall=planted.mean(-1)
    )
    assert planted_effects.top_heads(2) == ((2, 3), (0, 1))
    assert function_vector(model, means, planted_effects, config=FunctionVectors(k=1)).heads == ((2, 3),)
    assert float(planted_effects.overall[0, 1]) > float(planted_effects.overall[2, 3])  # the prompt mean would not


def test_layer_sweep_equals_a_hand_written_add_hook(analysed):
    model, _, _, evaluation, result = analysed
    batch = real(evaluation)
    zero = batch.zero_shot()
    sweep = result.prompting
    rows = torch.arange(len(zero))
    fv = result.vector.vectors[batch.task_ids]
    with torch.no_grad():
        plain = model(zero.inputs)[rows, zero.answer_pos].argmax(-1) == zero.answers[:, 0]
        icl = model(batch.inputs)[rows, batch.answer_pos].argmax(-1) == batch.answers[:, 0]
    assert sweep.zero_shot_accuracy == pytest.approx(float(plain.double().mean()))
    assert sweep.icl_accuracy == pytest.approx(float(icl.double().mean()))
    for layer in range(N_LAYERS):

        def add(resid):
            resid[rows, zero.answer_pos] += fv.to(resid.dtype)

        hook = (f"blocks.{layer}.hook_resid_post", editing_hook(add))
        with torch.no_grad():
            logits = model.run_with_hooks(zero.inputs, fwd_hooks=[hook])
        correct = (logits[rows, zero.answer_pos].argmax(-1) == zero.answers[:, 0]).double()
        assert torch.equal(sweep.prompting.tvp_correct[layer], correct)
        assert float(sweep.accuracy[layer]) == pytest.approx(float(correct.mean()))
    assert sweep.best_layer == int(torch.argmax(sweep.accuracy))
    assert sweep.layers == (0, 1, 2) and sweep.heads == result.vector.heads
    assert list(sweep.to_frame().columns)[3] == "fv_accuracy"


def test_results_save_and_load_exactly(analysed, tmp_path):
    *_, result = analysed
    path = result.save(tmp_path / "fv.safetensors")
    again = Result.load(path)
    assert isinstance(again, FunctionVectorResult) and again == result
    for part, kind in ((result.means, MeanHeadActivations), (result.effects, IndirectEffects)):
        assert kind.load(part.save(tmp_path / f"{kind.__name__}.safetensors")) == part
    assert FunctionVector.load(result.vector.save(tmp_path / "v.safetensors")) == result.vector
    for figure in (result.figure(), result.prompting.figure(), result.vector.figure(), result.means.figure()):
        assert figure.data
    assert result.figure().data[0].type == "heatmap"
    assert len(result.effects.to_frame()) == N_LAYERS * N_HEADS * 4


def test_left_padding_and_prompt_order_do_not_change_the_numbers(analysed):
    model, clean, corrupted, _, result = analysed
    batch = real(corrupted)
    tokens, mask, answer_pos = left_pad(batch)
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))
    for inputs, mask_, positions, order in (
        (tokens, mask, answer_pos, torch.arange(len(batch))),
        (batch.inputs[perm], batch.attention_mask[perm], batch.answer_pos[perm], perm),
    ):
        prompts = Prompts(inputs, positions, batch.answers[order], batch.task_ids[order], batch.task_names, mask_)
        effects = causal_indirect_effects(model, prompts, result.means, config=FunctionVectors(n_bootstrap=0))
        torch.testing.assert_close(effects.patched_prob, result.effects.patched_prob[..., order], atol=1e-8, rtol=0)
    clean = real(clean)
    tokens, mask, answer_pos = left_pad(clean)
    means = mean_head_activations(model, Prompts(tokens, answer_pos, None, clean.task_ids, clean.task_names, mask))
    torch.testing.assert_close(means.activations, result.means.activations, atol=1e-8, rtol=0)


def test_answer_columns_that_are_padding_in_every_row_change_nothing(analysed):
    model, _, corrupted, _, result = analysed
    batch = real(corrupted)
    padded = torch.cat([batch.answers, torch.full((len(batch), 2), -1)], dim=1)  # as selected from longer answers

    def effects(answers):
        prompts = Prompts(batch.inputs, batch.answer_pos, answers, batch.task_ids, batch.task_names)
        return causal_indirect_effects(model, prompts, result.means, config=FunctionVectors(n_bootstrap=0))

    assert effects(padded) == effects(batch.answers)


def test_run_samples_three_seeded_batches_and_leaves_null_out(model):
    config = FunctionVectors(k=2, n_bootstrap=0, layers=(1, 2))
    result = config.run(model, POOL, n_per_task=2, n_shots=2, seed=3)
    clean, corrupted, evaluation = POOL.sample(2, 2, 3), POOL.sample(2, 2, 4, label_noise=0.99), POOL.sample(2, 2, 5)
    assert result == config.run_batch(model, clean, corrupted, evaluation, seed=3)
    assert "null" not in result.effects.task_names and result.prompting.layers == (1, 2)


def test_shuffled_labels_corrupt_as_todd_et_al_do(model):
    config = FunctionVectors(k=2, label_noise=0, shuffle_labels=True, n_bootstrap=0, layers=(1,))
    result = config.run(model, POOL, n_per_task=4, n_shots=3, seed=3)
    corrupted = POOL.sample(4, 3, 4, shuffle_labels=True)
    assert result == config.run_batch(model, POOL.sample(4, 3, 3), corrupted, POOL.sample(4, 3, 5), seed=3)
    real = corrupted.task_names.index("null")
    moved = corrupted.demo_noisy[corrupted.task_ids != real]
    assert 0 < result.effects.label_noise == float(moved[corrupted.demo_answer_pos[corrupted.task_ids != real] >= 0]
        .double().mean())  # fmt: skip


@pytest.mark.parametrize("arch", [*GQA_ARCHITECTURES, "gptj", "gpt_neo"])
def test_a_head_patch_changes_exactly_that_query_head_and_cie_matches(tmp_path_factory, arch):
    """On every architecture with grouped-query attention (a key/value head shared by query heads), and on GPT-J, the
    model of Todd et al.'s function vectors, and GPT-Neo, through the bridge."""
    pretrained = loaded(tmp_path_factory, arch, "bridge")
    model, layer, head = pretrained.model, 1, 3
    pool = TextPool(TEXT_TASKS, pretrained.tokenizer, template="{x} -> {y}", bos=True)
    clean, corrupted = pool.sample(2, 2, seed=0), pool.sample(2, 2, seed=1, label_noise=0.9)
    corrupted = corrupted.select(torch.argsort(corrupted.answer_pos, stable=True))  # the engine's pass order
    assert len(set(corrupted.answer_lengths.tolist())) > 1
    means = mean_head_activations(model, clean)
    assert means.activations.shape == (3, 2, model.cfg.n_heads, model.cfg.d_head)
    # the write: the output projection moves by (mean - z)[head] @ W_O[head] at the answer position only
    values = means.activations[corrupted.task_ids, layer, head]
    seen = {}

    def keep(name):
        def hook(activation, hook):
            seen[name] = activation.detach().clone()

        return hook

    z_name, out_name = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.attn.o.hook_out"
    with torch.no_grad(), model.hooks(fwd_hooks=[(z_name, keep(z_name)), (out_name, keep(out_name))]):
        run_with_interventions(model, corrupted.inputs, corrupted.answer_pos, [])
        z_clean, out_clean = seen[z_name], seen[out_name]
        intervention = ablate_head(layer, head, "mean", mean=values, pos="answer")
        run_with_interventions(model, corrupted.inputs, corrupted.answer_pos, [intervention])
        out_patched = seen[out_name]
    assert z_clean.shape[2] == model.cfg.n_heads
    if arch in GQA_ARCHITECTURES:
        assert model.cfg.n_key_value_heads < model.cfg.n_heads
    rows = torch.arange(len(corrupted))
    delta = torch.zeros_like(z_clean)
    delta[rows, corrupted.answer_pos, head] = values.float() - z_clean[rows, corrupted.answer_pos, head]
    expected = torch.einsum("bphd,hdm->bpm", delta, model.blocks[layer].attn.W_O.detach())
    torch.testing.assert_close(out_patched - out_clean, expected, atol=2e-5, rtol=1e-4)
    assert expected.abs().max() > 1e-3
    # the CIE of that head against one prompt at a time through run_with_hooks
    effects = causal_indirect_effects(model, corrupted, means, config=FunctionVectors(n_bootstrap=0))
    logits = patched_run(model, corrupted, layer, head, values, one_by_one=True)
    prob, loss = answer_probability(logits, corrupted)
    torch.testing.assert_close(effects.patched_prob[layer, head], prob, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(effects.patched_loss[layer, head], loss, atol=2e-4, rtol=1e-4)
    vector = function_vector(model, means, effects, config=FunctionVectors(k=2))
    heads = effects.top_heads(2)
    w_o = {lay: model.blocks[lay].attn.W_O.detach().double() for lay, _ in heads}
    expected_fv = sum(means.activations[:, lay, h] @ w_o[lay][h] for lay, h in heads)
    torch.testing.assert_close(vector.vectors, expected_fv, atol=1e-10, rtol=0)
    config = FunctionVectors(layers=(0,), scoring="exact_match", n_bootstrap=0)
    sweep = function_vector_prompting(model, clean, clean.zero_shot(), vector, config=config)
    assert sweep.prompting.scoring == "exact_match" and sweep.prompting.tvp_correct.shape == (1, len(clean))


def test_folded_value_biases_leave_the_cie_and_take_b_v_out_of_the_means(tmp_path_factory):
    """As the function-vector page says: compatibility mode (as HookedTransformer) folds each head's value bias, with
    LayerNorm's bias through W_V, into b_O, so its means are the raw bridge's minus that bias; the CIE is the same."""
    import transformers

    folder = tmp_path_factory.mktemp("gpt2-biases")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder_of(tmp_path_factory, "gpt2"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if name.endswith("bias"):  # random initialisation leaves them zero
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    hf.save_pretrained(folder)
    for file in folder_of(tmp_path_factory, "gpt2").iterdir():
        if not (folder / file.name).exists():
            (folder / file.name).write_bytes(file.read_bytes())
    raw, folded = load(folder, "bridge"), load(folder, "bridge-compat")
    pool = TextPool(TEXT_TASKS, raw.tokenizer, template="{x} -> {y}", bos=True)
    clean, corrupted = pool.sample(2, 2, seed=0), pool.sample(2, 2, seed=1, label_noise=0.9)
    means = {kind: mean_head_activations(model, clean) for kind, model in (("raw", raw), ("folded", folded))}
    d_model, n_heads = hf.config.n_embd, hf.config.n_head
    for layer, block in enumerate(hf.transformer.h):
        w_v = block.attn.c_attn.weight[:, 2 * d_model :].detach().double()  # Conv1D: [d_in, d_out]
        b_v = block.attn.c_attn.bias[2 * d_model :].detach().double() + block.ln_1.bias.detach().double() @ w_v
        gap = means["raw"].activations[:, layer] - means["folded"].activations[:, layer]
        torch.testing.assert_close(gap, b_v.view(n_heads, -1).expand_as(gap), atol=2e-6, rtol=0)
        assert b_v.abs().max() > 0.1
    effects = [
        causal_indirect_effects(model, corrupted, means[kind], config=FunctionVectors(n_bootstrap=0))
        for kind, model in (("raw", raw), ("folded", folded))
    ]
    torch.testing.assert_close(effects[0].patched_prob, effects[1].patched_prob, atol=1e-6, rtol=0)


def test_bad_input_is_a_clear_error(model, analysed):
    *_, result = analysed
    clean, evaluation = POOL.sample(2, 2, 0), POOL.sample(2, 2, 2)
    corrupted = POOL.sample(2, 2, 1, label_noise=0.9)
    with pytest.raises(AnalysisError, match="k must be an int in"):
        FunctionVectors(k=N_LAYERS * N_HEADS + 1, n_bootstrap=0).run_batch(model, clean, corrupted, evaluation)
    with pytest.raises(AnalysisError, match="k must be an int in"):
        function_vector(model, result.means, result.effects, config=FunctionVectors(k=13))
    with pytest.raises(AnalysisError, match="k"):
        FunctionVectors(k=0)
    with pytest.raises(AnalysisError, match="label_noise"):
        FunctionVectors(label_noise=1.0)
    with pytest.raises(AnalysisError, match="leaves the CIE prompts uncorrupted"):
        FunctionVectors(label_noise=0)
    with pytest.raises(AnalysisError, match="shuffle_labels must be True or False"):
        FunctionVectors(shuffle_labels="yes")  # type: ignore[arg-type]
    with pytest.raises(AnalysisError, match="scoring"):
        FunctionVectors(scoring="bleu")
    with pytest.raises(LayerOutOfRangeError, match="out of range"):
        FunctionVectors(layers=(7,), n_bootstrap=0).run_batch(model, clean, corrupted, evaluation)
    with pytest.raises(LayerOutOfRangeError):
        function_vector(model, result.means, [(5, 0)])
    with pytest.raises(
        LayerOutOfRangeError, match=r"Head 9 is out of range: blocks have 4 heads, so use a head in \[0, 3\]"
    ):
        function_vector(model, result.means, [(0, 9)])
    with pytest.raises(AnalysisError, match="distinct"):
        function_vector(model, result.means, [(0, 1), (0, 1)])
    shuffled_once = FunctionVectors(k=2, label_noise=0, shuffle_labels=True, n_bootstrap=0)
    with pytest.raises(AnalysisError, match="None of the corrupted prompts' demonstrations has a wrong label"):
        shuffled_once.run_batch(model, clean, POOL.sample(2, 1, 1, shuffle_labels=True), evaluation)
    only_null = clean.select(clean.task_ids == 3)
    with pytest.raises(AnalysisError, match="no task but Null"):
        FunctionVectors(n_bootstrap=0).run_batch(model, only_null, corrupted, evaluation)
    with pytest.raises(TaskError, match="No mean head activations"):  # the Null task's prompts have no mean
        causal_indirect_effects(model, corrupted, result.means)
    other = MeanHeadActivations(torch.zeros(1, 1, 2, 8), ("offset(1)",), (0,), torch.ones(1, dtype=torch.long))
    with pytest.raises(ShapeError, match="heads"):
        function_vector(model, other, [(0, 0)])
    with pytest.raises(TaskError):
        result.vector.get("xor")
    for head in (1.0, N_HEADS, -1):
        with pytest.raises(LayerOutOfRangeError, match=rf"Head {head!r} is not a head index.*\[0, {N_HEADS - 1}\]"):
            result.means.get("offset(1)", 0, head)
    assert torch.equal(result.means.get("offset(1)", 0, 1), result.means.activations[0, 0, 1])
    with pytest.raises(TaskError, match="No function vector for tasks \\['null'\\]"):
        function_vector_prompting(model, clean, clean.zero_shot(), result.vector)
    with pytest.raises(TaskError, match="prompts must be a batch of prompts or tv_lens\\.Prompts, got a Tensor"):
        function_vector_prompting(model, clean.inputs, clean.zero_shot(), result.vector)
    with pytest.raises(AnalysisError, match="k must be an int in"):
        result.effects.top_heads(0)
    assert issubclass(AnalysisError, TvLensError)


def test_options_of_the_last_step_are_refused_before_the_first_pass(model):
    """A bad sweep layer, a generation scoring without a tokenizer or prompts of a task without clean prompts must
    not cost the means and the CIE sweep."""
    clean, evaluation = POOL.sample(2, 2, 0), POOL.sample(2, 2, 2)
    corrupted = POOL.sample(2, 2, 1, label_noise=0.9)
    assert getattr(model, "tokenizer", None) is None
    for config, error, message in (
        (FunctionVectors(layers=(7,)), LayerOutOfRangeError, "Layer 7 is out of range"),
        (FunctionVectors(layers=(1, 1)), LayerOutOfRangeError, r"layers names a block twice, \(1, 1\)"),
        (FunctionVectors(scoring="exact_match"), AnalysisError, "which needs a tokenizer"),
    ):
        with (
            failing_user_hook(model, "blocks.0.attn.hook_z", fail_on_call=0) as passes,
            pytest.raises(error, match=message),
        ):
            replace(config, k=2, n_bootstrap=0).run_batch(model, clean, corrupted, evaluation)
        assert passes == []
    without_offset_2 = clean.select(clean.task_ids != 1)
    for batches in (
        (without_offset_2, corrupted, evaluation),
        (without_offset_2, corrupted.select(corrupted.task_ids != 1), evaluation),
    ):
        with (
            failing_user_hook(model, "blocks.0.attn.hook_z", fail_on_call=0) as passes,
            pytest.raises(TaskError, match=r"have tasks \['offset\(2\)'\] that no clean prompt has"),
        ):
            FunctionVectors(k=2, n_bootstrap=0).run_batch(model, *batches)
        assert passes == []


def test_no_hook_is_left_after_an_error(model, analysed):
    *_, result = analysed
    batch = real(POOL.sample(2, 2, 1, label_noise=0.9))
    before = hook_snapshot(model)
    with (
        failing_user_hook(model, "blocks.1.attn.hook_z", fail_on_call=2),
        pytest.raises(RuntimeError, match="injected"),
    ):
        causal_indirect_effects(model, batch, result.means)
    assert hook_snapshot(model) == before
    with (
        failing_user_hook(model, "blocks.2.attn.hook_z", fail_on_call=1),
        pytest.raises(RuntimeError, match="injected"),
    ):
        mean_head_activations(model, batch)
    assert hook_snapshot(model) == before
    with pytest.raises(LayerOutOfRangeError):
        function_vector_prompting(model, batch, batch.zero_shot(), result.vector, config=FunctionVectors(layers=(0, 9)))
    assert hook_snapshot(model) == before


def test_figure_titles_name_the_best_layer_as_the_axes_do(analysed):
    """The titles gave the best layer as a bare block index (-1 for the embedding output); now with its axis label."""
    result = analysed[-1]
    best = result.prompting.prompting.best_layer
    label = layer_label(best, result.prompting.prompting.site)
    assert f"at layer {best} ({label}; zero-shot" in result.figure().layout.title.text
    assert result.prompting.figure().layout.title.text.endswith(f"best layer {best} ({label})")
    assert result.prompting.prompting.figure().layout.title.text.endswith(f"best layer {best} ({label})")
    assert layer_label(-1) == "embed"
