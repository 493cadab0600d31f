"""steer / steering: a saved task or function vector applied in one call, against hand-written TransformerLens hooks."""

from __future__ import annotations

import pytest
import torch
from causal_helpers import POOL, editing_hook, failing_user_hook, left_pad
from conftest import BACKENDS, hook_snapshot, tiny_config
from pretrained_helpers import loaded

from tv_lens import collect, steer, steering
from tv_lens.analyses import TaskDecodability, function_vector, mean_head_activations
from tv_lens.errors import AnalysisError, LayerOutOfRangeError, PositionError, ShapeError, TaskError, TvLensError
from tv_lens.generation import generate
from tv_lens.models import build_model
from tv_lens.task_vectors import TaskVectors

N_NEW = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=BACKENDS)
def setup(request):
    """A float64 tiny model, its task vectors at blocks 0-2, a function vector of two heads, ragged prompts."""
    model = build_model(tiny_config(request.param, dtype="float64"))
    vectors = TaskVectors.from_model(model, POOL, layers=(0, 1, 2), n_per_task=4, n_shots=3, seed=0)
    clean = POOL.sample(4, 3, 0)
    means = mean_head_activations(model, clean)
    fv = function_vector(model, means, [(0, 1), (2, 3)]).applied_as(layers=(1,))
    prompts = POOL.sample(2, (1, 3), 7)  # right-padded, of different lengths
    return model, vectors, fv, prompts


def hand_logits(model, tokens, positions, layer, value, kind):
    """Reference: one run_with_hooks writing ``value`` at ``positions[row]`` of blocks.{layer}.hook_resid_post."""
    rows = torch.arange(len(tokens))

    def edit(resid):
        v = value.to(resid.dtype)
        resid[rows, positions] = v if kind == "replace" else resid[rows, positions] + v

    with torch.no_grad():
        logits = model.run_with_hooks(
            tokens,
            fwd_hooks=[(f"blocks.{layer}.hook_resid_post", editing_hook(edit))],
            attention_mask=torch.ones_like(tokens),
        )
    return logits[rows, positions]


def hand_generation(model, prompt, layer, value, kind):
    """Reference: greedy tokens of one unpadded prompt, the whole sequence each step, the vector at its last token."""
    sequence, position = list(prompt), len(prompt) - 1
    for _ in range(N_NEW):
        tokens = torch.tensor([sequence])
        with torch.no_grad():
            logits = model.run_with_hooks(
                tokens,
                fwd_hooks=[(f"blocks.{layer}.hook_resid_post", _writer(position, value, kind))],
                attention_mask=torch.ones_like(tokens),
            )
        sequence.append(int(logits[0, -1].argmax()))
    return sequence[len(prompt) :]


def _writer(position, value, kind):
    def edit(resid):
        v = value.to(resid.dtype)
        resid[0, position] = v if kind == "replace" else resid[0, position] + v

    return editing_hook(edit)


def test_forward_equals_a_hand_written_hook(setup):
    model, vectors, fv, batch = setup
    v = vectors.get("offset(2)", 1)
    logits = steer(model, vectors, batch, task="offset(2)", layer=1)  # task vectors replace by default
    expected = hand_logits(model, batch.inputs, batch.answer_pos, 1, v, "replace")
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    added = steer(model, vectors, batch, task="offset(2)", layer=1, operation="add", scale=2.5)
    torch.testing.assert_close(
        added, hand_logits(model, batch.inputs, batch.answer_pos, 1, 2.5 * v, "add"), atol=1e-6, rtol=0
    )
    tokens, mask, answer_pos = left_pad(batch)
    padded = steer(model, vectors, tokens, task="offset(2)", layer=1, answer_pos=answer_pos, attention_mask=mask)
    torch.testing.assert_close(padded, logits, atol=1e-6, rtol=0)
    # the function vector adds at the layer its provenance records
    by_fv = steer(model, fv, batch, task="offset(3)")
    expected = hand_logits(model, batch.inputs, batch.answer_pos, 1, fv.get("offset(3)"), "add")
    torch.testing.assert_close(by_fv, expected, atol=1e-6, rtol=0)
    # a plain tensor; the recorded application of applied_as is the default
    raw = steer(model, 3 * v, batch, layer=1, operation="replace")
    tripled = steer(model, vectors.applied_as(layers=(1,), scale=3.0), batch, task="offset(2)")
    torch.testing.assert_close(raw, tripled, atol=0, rtol=0)


def test_batch_size_bounds_the_prompts_per_pass_and_keeps_the_numbers(setup):
    model, vectors, _, batch = setup  # 8 prompts
    whole = steer(model, vectors, batch, task="offset(2)", layer=1)
    with failing_user_hook(model, "blocks.0.hook_resid_pre", fail_on_call=0) as rows:
        parts = steer(model, vectors, batch, task="offset(2)", layer=1, batch_size=3)
        generated = steer(model, vectors, batch, task="offset(2)", layer=1, batch_size=3, max_new_tokens=2)
    assert rows and max(rows) <= 3
    torch.testing.assert_close(parts, whole, atol=1e-10, rtol=0)
    all_at_once = steer(model, vectors, batch, task="offset(2)", layer=1, max_new_tokens=2)
    assert torch.equal(generated.tokens, all_at_once.tokens)


def test_generation_equals_a_hand_written_loop_token_for_token(setup):
    model, vectors, fv, batch = setup
    out = steer(model, vectors, batch, task="offset(1)", layer=2, max_new_tokens=N_NEW, stop_tokens=None)
    fv_out = steer(model, fv, batch, task="offset(1)", max_new_tokens=N_NEW, stop_tokens=None)
    for row in range(len(batch)):
        prompt = batch.inputs[row, : int(batch.answer_pos[row]) + 1].tolist()
        expected = hand_generation(model, prompt, 2, vectors.get("offset(1)", 2), "replace")
        assert out.tokens[row].tolist() == expected
        assert fv_out.tokens[row].tolist() == hand_generation(model, prompt, 1, fv.get("offset(1)"), "add")
    assert out.writes == (len(batch),)


def test_steering_context_keeps_the_hook_for_own_calls_and_removes_it(setup):
    model, vectors, _, batch = setup
    tokens = batch.inputs[:, :6]
    v = vectors.get("offset(3)", 0)
    before = hook_snapshot(model)
    with steering(model, vectors, task="offset(3)", layer=0, operation="add") as steered, torch.no_grad():
        logits = model(tokens)
        _, cache = model.run_with_cache(tokens)
    last = torch.full((len(tokens),), tokens.shape[1] - 1)
    expected = hand_logits(model, tokens, last, 0, v, "add")
    torch.testing.assert_close(logits[:, -1], expected, atol=1e-6, rtol=0)
    assert steered.writes == 2 and steered.hook_name == "blocks.0.hook_resid_post"
    assert hook_snapshot(model) == before
    with torch.no_grad():
        clean = model.run_with_cache(tokens)[1]["blocks.0.hook_resid_post"]
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"][:, -1], clean[:, -1] + v, atol=1e-10, rtol=0)
    with steering(model, v, layer=0, operation="replace", pos="all"), torch.no_grad():
        everywhere = model.run_with_cache(tokens)[1]["blocks.0.hook_resid_post"]
    assert torch.equal(everywhere, v.expand_as(everywhere))


def test_tv_lens_passes_refuse_a_steering_block_at_one_position_and_run_under_every_position(setup):
    model, vectors, _, prompts = setup
    v = vectors.get("offset(3)", 0)
    before = hook_snapshot(model)
    calls = {
        "collect": lambda: collect(model, prompts.inputs, prompts.answer_pos, layers=(1,), progress=False),
        "analysis": lambda: TaskDecodability(n_bootstrap=0).run(model, POOL, n_per_task=4, n_shots=2, seed=0),
        "generation": lambda: generate(model, prompts.inputs[:1, :4], [], max_new_tokens=2, use_cache=False),
    }
    with steering(model, v, layer=0, operation="add", pos=-1) as steered, torch.no_grad():
        for call in calls.values():
            with pytest.raises(PositionError, match=r"(?s)one position of every pass.*pos='all'"):
                call()
        own = model(prompts.inputs[:, :4])  # the user's own calls are still steered
    assert steered.writes == 1 and hook_snapshot(model) == before
    torch.testing.assert_close(
        own[:, -1], hand_logits(model, prompts.inputs[:, :4], torch.full((len(prompts),), 3), 0, v, "add")
    )
    with steering(model, v, layer=0, operation="replace", pos="all"), torch.no_grad():
        rows = collect(model, prompts.inputs, prompts.answer_pos, layers=(0,), progress=False)
    torch.testing.assert_close(rows.activations[0], v.expand(len(prompts), -1).to(rows.activations.dtype))


def test_no_hook_is_left_after_an_error(setup):
    model, vectors, _, batch = setup
    before = hook_snapshot(model)
    with pytest.raises(RuntimeError, match="inside"), steering(model, vectors, task="offset(1)", layer=1):
        with torch.no_grad():
            model(batch.inputs)
        raise RuntimeError("raised inside the block")
    assert hook_snapshot(model) == before
    with failing_user_hook(model, "blocks.2.hook_resid_post", fail_on_call=1), pytest.raises(RuntimeError):
        steer(model, vectors, batch, task="offset(1)", layer=1)
    assert hook_snapshot(model) == before
    with failing_user_hook(model, "blocks.2.hook_resid_post", fail_on_call=2), pytest.raises(RuntimeError):
        steer(model, vectors, batch, task="offset(1)", layer=1, max_new_tokens=3, stop_tokens=None, use_cache=False)
    assert hook_snapshot(model) == before


def test_bad_input_is_a_clear_error(setup):
    model, vectors, fv, batch = setup
    cases = [
        (AnalysisError, "task=", lambda: steer(model, vectors, batch, layer=1)),
        (AnalysisError, "layer=", lambda: steer(model, vectors, batch, task="offset(1)")),
        (TaskError, "xor", lambda: steer(model, vectors, batch, task="xor", layer=1)),
        (
            LayerOutOfRangeError,
            "layers",
            lambda: steer(model, vectors.select(layers=(0, 1)), batch, task="null", layer=2),
        ),
        (AnalysisError, "operation", lambda: steer(model, fv, batch, task="offset(1)", operation="mul")),
        (ShapeError, "^steer needs integer tokens", lambda: steer(model, fv, batch.inputs.double(), task="offset(1)")),
        (AnalysisError, "scale", lambda: steer(model, fv, batch, task="offset(1)", scale=float("nan"))),
        (AnalysisError, "scale", lambda: steer(model, fv, batch, task="offset(1)", scale=10**400)),  # not a float
        (AnalysisError, "max_new_tokens", lambda: steer(model, fv, batch, task="offset(1)", do_sample=True)),
        (ShapeError, "d_model=32", lambda: steer(model, torch.ones(5), batch, layer=0)),
        (AnalysisError, "layer=", lambda: steer(model, torch.ones(32), batch)),
        (LayerOutOfRangeError, "out of range", lambda: steer(model, torch.ones(32), batch, layer=9)),
        (ShapeError, "TaskVectors", lambda: steer(model, "vector", batch, layer=0)),
        (PositionError, "pos", lambda: steering(model, torch.ones(32), layer=0, pos=1.5).__enter__()),
    ]
    before = hook_snapshot(model)
    for error, match, call in cases:
        with pytest.raises(error, match=match) as info:
            call()
        assert isinstance(info.value, TvLensError)
    assert hook_snapshot(model) == before


def test_steer_runs_a_model_left_in_train_mode_without_dropout(tmp_path_factory):
    """A HuggingFace GPT-2 with dropout 0.1, in train mode: the logits are the eval-mode ones of a hand-written hook
    (as the generated tokens are), and every module keeps its own mode."""
    model = loaded(tmp_path_factory, "gpt2", "bridge").model
    tokens = torch.randint(0, 1024, (3, 7), generator=torch.Generator().manual_seed(0))
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    last = torch.full((3,), 6)
    expected = hand_logits(model, tokens, last, 0, v, "add")  # the model is in eval mode here
    model.train()
    model.blocks[1].eval()  # a module in a mode of its own
    try:
        logits = steer(model, v, tokens, layer=0, operation="add")
        modes = {name: module.training for name, module in model.named_modules()}
    finally:
        model.eval()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert not any(modes[name] for name in modes if name == "blocks.1" or name.startswith("blocks.1."))
    assert modes[""] and modes["blocks.0"]


def test_a_vector_that_requires_grad_gets_the_gradient_of_a_hand_written_hook(setup):
    """Optimising a steering vector: steer's logits and a pass inside steering() carry the vector's gradient."""
    model, vectors, _, batch = setup
    start = vectors.get("offset(1)", 1)
    weights = torch.linspace(-1, 1, model.cfg.d_vocab, dtype=torch.float64)
    rows = torch.arange(len(batch))
    tokens = batch.inputs[:, :5]

    def hand_gradient(positions, inputs):
        v = start.clone().requires_grad_(True)

        def edit(resid):
            resid[rows, positions] = resid[rows, positions] + 2 * v

        logits = model.run_with_hooks(
            inputs, fwd_hooks=[("blocks.1.hook_resid_post", editing_hook(edit))], attention_mask=torch.ones_like(inputs)
        )
        (logits[rows, positions] @ weights).sum().backward()
        return v.grad

    v = start.clone().requires_grad_(True)
    (steer(model, v, batch, layer=1, operation="add", scale=2.0) @ weights).sum().backward()
    torch.testing.assert_close(v.grad, hand_gradient(batch.answer_pos, batch.inputs), atol=1e-8, rtol=1e-8)
    v = start.clone().requires_grad_(True)
    with steering(model, v, layer=1, operation="add", scale=2.0):
        (model(tokens)[:, -1] @ weights).sum().backward()
    torch.testing.assert_close(v.grad, hand_gradient(torch.full((len(batch),), 4), tokens), atol=1e-8, rtol=1e-8)
    model.zero_grad(set_to_none=True)
