"""The continuous-input wrapper: its pass equals a hand-written one on the inner TransformerLens model, and
probes, interventions, caches and the adapter work on it unchanged, on every available backend."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import BACKENDS, hook_snapshot, tiny_config

from tv_lens.errors import ModelNotSupportedError, PositionError, ShapeError
from tv_lens.interventions import ablate_head, add, replace, run_with_interventions
from tv_lens.metrics import mse
from tv_lens.models import ContinuousModel, ModelConfig, adapt, build_continuous_model, build_model
from tv_lens.probes import Representations, collect
from tv_lens.tasks import sparse_linear_pool

D_IN = 6


@pytest.fixture(scope="module", params=BACKENDS)
def cmodel(request) -> ContinuousModel:
    return build_continuous_model(tiny_config(request.param, dtype="float64"), d_in=D_IN, d_out=2)


def ragged_vectors(n: int = 5, width: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, D_IN, generator=gen, dtype=torch.float64)
    answer_pos = torch.randint(1, width, (n,), generator=gen)
    answer_pos[0] = width - 1
    return x, answer_pos


def reference_run(cm: ContinuousModel, x: torch.Tensor, hooks=()) -> torch.Tensor:
    """The wrapper's computation written directly with the inner model's TransformerLens API."""
    residual = x @ cm.read_in.weight.T + cm.read_in.bias + cm.model.pos_embed.W_pos[: x.shape[1]]
    dummy = torch.zeros(x.shape[:2], dtype=torch.long)
    overwrite = ("blocks.0.hook_resid_pre", lambda act, hook: residual)
    return cm.model.run_with_hooks(dummy, fwd_hooks=[overwrite, *hooks])


def test_adapter_reads_the_wrapper(cmodel: ContinuousModel) -> None:
    adapter = adapt(cmodel)
    assert (adapter.d_in, adapter.d_vocab, adapter.d_model, adapter.n_layers) == (D_IN, 2, 32, 3)
    assert cmodel.d_out == 2 and cmodel.cfg is cmodel.model.cfg
    assert adapt(cmodel.model).d_in is None  # plain TransformerLens models read float inputs as residuals
    assert "hook_embed" in cmodel.hook_dict and "blocks.2.attn.hook_z" in cmodel.hook_dict
    assert not any(name.startswith(("embed.", "pos_embed.")) for name in cmodel.hook_dict)


def test_forward_equals_hand_written_pass(cmodel: ContinuousModel) -> None:
    x, _ = ragged_vectors()
    out = cmodel(x)
    assert out.shape == (5, 12, 2)
    torch.testing.assert_close(out, reference_run(cmodel, x), atol=1e-10, rtol=1e-10)
    residual = cmodel(x, stop_at_layer=2)
    assert residual.shape == (5, 12, 32)
    torch.testing.assert_close(cmodel(residual, start_at_layer=2), out, atol=1e-10, rtol=1e-10)


def test_probe_rows_equal_hand_written_hooks(cmodel: ContinuousModel) -> None:
    x, answer_pos = ragged_vectors(n=7)
    before = hook_snapshot(cmodel)
    reps = collect(cmodel, x, answer_pos, progress=False, batch_size=3)
    assert hook_snapshot(cmodel) == before  # every hook removed
    assert reps.layers == (-1, 0, 1, 2)
    saved: dict[str, torch.Tensor] = {}
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(3)]
    reference_run(cmodel, x, [(name, lambda act, hook, n=name: saved.__setitem__(n, act)) for name in names])
    rows = torch.arange(len(x))
    for layer, name in zip(reps.layers, names, strict=True):
        torch.testing.assert_close(reps.at(layer), saved[name][rows, answer_pos], atol=1e-10, rtol=1e-10)


def test_interventions_equal_hand_written_hooks(cmodel: ContinuousModel) -> None:
    x, answer_pos = ragged_vectors(n=6, seed=1)
    vector = torch.linspace(-1, 1, 32, dtype=torch.float64)
    rows = torch.arange(len(x))
    run = run_with_interventions(cmodel, x, answer_pos, [add(1, vector), ablate_head(2, 3)])
    assert run.logits.shape == (6, 1, 2) and run.writes == (6, 6)

    def add_at_answer(act, hook):
        act = act.clone()
        act[rows, answer_pos] += vector
        return act

    def zero_head(act, hook):
        act = act.clone()
        act[:, :, 3] = 0.0
        return act

    expected = reference_run(
        cmodel, x, [("blocks.1.hook_resid_post", add_at_answer), ("blocks.2.attn.hook_z", zero_head)]
    )
    torch.testing.assert_close(run.logits[:, 0], expected[rows, answer_pos], atol=1e-10, rtol=1e-10)
    # The embedding layer (-1) is the wrapper's read-in plus positions, and can be patched too.
    patched = run_with_interventions(cmodel, x, answer_pos, [replace(-1, vector)])
    overwrite = torch.zeros(6, 12, 32, dtype=torch.float64)

    def replace_at_answer(act, hook):
        act = act.clone()
        act[rows, answer_pos] = vector
        return act

    expected = reference_run(cmodel, x, [("blocks.0.hook_resid_pre", replace_at_answer)])
    torch.testing.assert_close(patched.logits[:, 0], expected[rows, answer_pos], atol=1e-10, rtol=1e-10)
    assert overwrite.abs().sum() == 0


def test_patched_run_can_start_from_a_clean_residual(cmodel: ContinuousModel) -> None:
    x, answer_pos = ragged_vectors(n=4, seed=2)
    interventions = [add(2, torch.ones(32, dtype=torch.float64))]
    full = run_with_interventions(cmodel, x, answer_pos, interventions)
    clean = cmodel(x, stop_at_layer=2)
    started = run_with_interventions(cmodel, x, answer_pos, interventions, clean_residual=clean, clean_residual_layer=2)
    torch.testing.assert_close(started.logits, full.logits, atol=1e-10, rtol=1e-10)


def test_run_with_cache_answers_to_the_usual_names(cmodel: ContinuousModel) -> None:
    x, answer_pos = ragged_vectors(n=3, seed=3)
    _, cache = cmodel.run_with_cache(x)
    reps = Representations.from_cache(cache, answer_pos)
    assert reps.layers == (-1, 0, 1, 2)
    torch.testing.assert_close(reps.activations, collect(cmodel, x, answer_pos, progress=False).activations)
    read_in = x @ cmodel.read_in.weight.T + cmodel.read_in.bias
    torch.testing.assert_close(cache["hook_embed"], read_in)


def test_regression_batch_through_the_wrapper(cmodel: ContinuousModel) -> None:
    pool = sparse_linear_pool(d=D_IN, n_bases=2)
    batch = pool.sample(n_per_task=4, n_shots=(0, 6), seed=0)
    run = run_with_interventions(cmodel, batch.inputs, batch.answer_pos, [], n_answer_tokens=batch.n_answer_tokens)
    predictions = run.logits[:, 0, :1]
    full = cmodel(batch.inputs)[torch.arange(len(batch)), batch.answer_pos, :1]
    torch.testing.assert_close(predictions, full, atol=1e-10, rtol=1e-10)
    loss = mse(predictions.float(), batch.answers)
    assert loss.shape == (len(batch),) and torch.isfinite(loss).all()


def test_gradients_reach_read_in_and_blocks() -> None:
    cm = build_continuous_model(tiny_config(BACKENDS[-1]), d_in=D_IN).train()
    pool = sparse_linear_pool(d=D_IN, n_bases=2)
    batch = pool.sample(n_per_task=3, n_shots=4, seed=0)
    out = cm(batch.inputs)
    demo_pred = out[torch.arange(len(batch))[:, None], batch.demo_answer_pos.clamp(min=0), 0]
    loss = ((demo_pred - batch.demo_answers[..., 0]) ** 2).mean()
    loss.backward()
    assert cm.read_in.weight.grad is not None and cm.read_in.weight.grad.abs().sum() > 0
    block_grads = [p.grad for p in cm.model.blocks[0].parameters()]
    assert block_grads and all(g is not None for g in block_grads) and any(g.abs().sum() > 0 for g in block_grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_copies_and_checkpoints_behave_like_the_original(backend: str) -> None:
    original = build_continuous_model(tiny_config(backend, seed=1), d_in=D_IN)
    x, answer_pos = ragged_vectors(n=3, seed=4)
    x = x.float()
    # The copy's first pass is a hooked one (probe hooks attached before its forward runs).
    copied = collect(copy.deepcopy(original), x, answer_pos, progress=False)
    torch.testing.assert_close(copied.activations, collect(original, x, answer_pos, progress=False).activations)
    restored = build_continuous_model(tiny_config(backend, seed=2), d_in=D_IN)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(restored(x), original(x))


def test_build_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a = build_continuous_model(tiny_config(BACKENDS[0], seed=3), d_in=4)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_continuous_model(tiny_config(BACKENDS[0], seed=3), d_in=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_bad_inputs_name_the_fix(cmodel: ContinuousModel) -> None:
    x, answer_pos = ragged_vectors()
    with pytest.raises(ShapeError, match=r"embeds continuous inputs.*d_in=6.*not integer tokens"):
        collect(cmodel, torch.zeros(2, 5, dtype=torch.long), 4, progress=False)
    with pytest.raises(ShapeError, match=r"embeds continuous inputs: pass Float\[batch, pos, d_in=6\]"):
        run_with_interventions(cmodel, x[..., :4], answer_pos, [])
    with pytest.raises(ShapeError, match=r"d_in=6"):
        cmodel(x[..., :4])
    with pytest.raises(PositionError, match="n_ctx=40"):
        cmodel(torch.zeros(1, 41, D_IN, dtype=torch.float64))
    with pytest.raises(ShapeError, match="start_at_layer the input is the residual stream"):
        cmodel(x, start_at_layer=1)
    with pytest.raises(ModelNotSupportedError, match="already embeds continuous inputs"):
        ContinuousModel(cmodel, 3)
    with pytest.raises(ModelNotSupportedError, match="no TransformerLens"):
        ContinuousModel(torch.nn.Linear(3, 3), 3)
    with pytest.raises(ShapeError, match="d_in must be a positive int"):
        ContinuousModel(build_model(ModelConfig(d_vocab=1, n_layers=1, d_model=8, n_heads=2)), 0)
    with pytest.raises(ShapeError, match="d_out must be a positive int"):
        build_continuous_model(tiny_config(), d_in=3, d_out=0)
