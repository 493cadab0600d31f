"""Passes started at a block by skipping the blocks below it equal the full pass, on every bridge of every architecture.

Each bridge fixture (2 blocks) starts at block 1 from the clean residual entering it, with intervention hooks in
block 1, and is compared with the full pass with the same hooks (``atol = rtol = 1e-5``), for prompts of different
lengths right-padded (no mask, as tv_lens passes them), right-padded with their attention mask, and left-padded with
their attention mask (positions derived from the mask).
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
from pretrained_helpers import (
    COMBINATIONS,
    loaded,
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    padded,
    prompt_tokens,
)
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from tv_lens.errors import LayerOutOfRangeError, ModelNotSupportedError, ShapeError
from tv_lens.models import ModelConfig, adapt, build_model, hooked_transformer_available
from tv_lens.models.block_skipping import skipping_blocks, supports_block_skipping
from tv_lens.models.running import attached_hooks

TOL = {"atol": 1e-5, "rtol": 1e-5}
START = 1
BRIDGES = [(arch, loader) for arch, loader in COMBINATIONS if loader != "hooked"]
#: (padding side, whether the model gets the attention mask)
LAYOUTS = [("right", False), ("right", True), ("left", True)]


@pytest.fixture(scope="module", params=BRIDGES, ids=[f"{arch}-{loader}" for arch, loader in BRIDGES])
def bridge(request, tmp_path_factory):
    """Every architecture booted as a ``TransformerBridge`` (raw HF numerics and compatibility mode)."""
    return loaded(tmp_path_factory, *request.param)


def prompts(fixture, side):
    """The test prompts (different lengths) padded on ``side``: (tokens, mask)."""
    tokens, mask, _ = padded(prompt_tokens(fixture.tokenizer), fixture.tokenizer.pad_token_id, side)
    return tokens, mask


def interventions(model):
    """Hooks in block ``START``: add a vector to the residual entering it at column 2, zero head 1's output."""
    vector = torch.linspace(-1, 1, model.cfg.d_model)

    def add(activation, hook):
        activation = activation.clone()
        activation[:, 2] += vector
        return activation

    def ablate(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    return [(f"blocks.{START}.hook_resid_pre", add), (f"blocks.{START}.attn.hook_z", ablate)]


def clean_residual(model, tokens, **kwargs):
    """The residual entering block ``START`` in an unhooked pass ``[batch, pos, d_model]``."""
    kept = []
    run(model, tokens, [(f"blocks.{START}.hook_resid_pre", lambda a, hook: kept.append(a))], **kwargs)
    return kept[0].clone()


def run(model, tokens, hooks, **kwargs):
    with torch.no_grad(), attached_hooks(adapt(model), hooks):
        return model(tokens, **kwargs)


def run_skipping(model, residual, hooks, *, stop_at_layer=None, **kwargs):
    """A pass started at ``START`` from ``residual`` (``kwargs``: what the full pass gets besides tokens)."""
    if stop_at_layer is not None:
        kwargs["stop_at_layer"] = stop_at_layer
    with torch.no_grad(), skipping_blocks(model, START, residual, stop_at_layer=stop_at_layer) as tokens:
        assert tokens.shape == residual.shape[:2] and not tokens.is_floating_point()
        with attached_hooks(adapt(model), hooks):
            return model(tokens, **kwargs)


def hook_state(model):
    """Every hook anywhere in the model and every instance-level ``forward``, by identity."""
    state = {}
    for name, module in model.named_modules():
        hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
        state[name] = (*(tuple(h) for h in hooks), id(module.__dict__.get("forward")))
    for name, hook_point in model.hook_dict.items():
        state["hook:" + name] = (tuple(map(id, hook_point.fwd_hooks)), tuple(map(id, hook_point.bwd_hooks)))
    return state


def test_every_bridge_supports_block_skipping(bridge):
    assert supports_block_skipping(bridge.model)


@pytest.mark.parametrize(("side", "with_mask"), LAYOUTS, ids=[f"{s}-{'mask' if m else 'nomask'}" for s, m in LAYOUTS])
def test_pass_started_at_a_block_equals_the_full_pass(bridge, side, with_mask):
    model = bridge.model
    tokens, mask = prompts(bridge, side)
    kwargs = {"attention_mask": mask} if with_mask else {}
    residual = clean_residual(model, tokens, **kwargs)
    hooks = interventions(model)
    expected = run(model, tokens, hooks, **kwargs)
    started = run_skipping(model, residual, hooks, **kwargs)
    real = mask.bool()  # padding columns are compared too where nothing is masked
    assert not torch.equal(expected, run(model, tokens, [], **kwargs))  # the hooks change the output
    torch.testing.assert_close(started[real], expected[real], **TOL)
    if not with_mask:
        torch.testing.assert_close(started, expected, **TOL)


def test_stopping_at_the_start_block_returns_the_hooked_residual(bridge):
    model = bridge.model
    tokens, _ = prompts(bridge, "right")
    residual = clean_residual(model, tokens)
    hooks = interventions(model)[:1]
    expected = run(model, tokens, hooks, stop_at_layer=START)
    torch.testing.assert_close(run_skipping(model, residual, hooks, stop_at_layer=START), expected, **TOL)
    with pytest.raises(LayerOutOfRangeError, match="stop_at_layer"):
        run_skipping(model, residual, hooks, stop_at_layer=START - 1)


def test_blocks_below_the_start_do_not_run(bridge):
    model = bridge.model
    tokens, _ = prompts(bridge, "right")
    residual = clean_residual(model, tokens)
    calls = {}

    def count(activation, hook, *, name):
        calls[name] = calls.get(name, 0) + 1

    below = [name for name in model.hook_dict if name.startswith("blocks.0.")]
    counters = [(name, partial(count, name=name)) for name in below]
    run(model, tokens, counters)
    assert "blocks.0.hook_in" in calls and sum(calls.values()) >= 4  # the full pass runs block 0
    calls.clear()
    run_skipping(model, residual, counters)
    assert calls == {}
    # the modules inside block 0 (attention, MLP, norms, the wrapped HF layer) are never called either, but those the
    # model also holds outside its blocks (GPT-OSS's attention refers to the model's rotary embedding, which runs once
    # before the layer loop)
    outside = {id(m) for name, child in model.named_children() if name != "blocks" for m in child.modules()}
    inner = [0]
    block = model.blocks[0]
    own = [m for m in block.modules() if id(m) not in outside]
    handles = [m.register_forward_pre_hook(lambda *a: inner.__setitem__(0, inner[0] + 1)) for m in own]
    try:
        run_skipping(model, residual, [])
    finally:
        for handle in handles:
            handle.remove()
    assert inner[0] == 1  # only the block module itself is called (its forward passes the input through)


def test_an_error_in_the_pass_leaves_the_model_unchanged(bridge):
    model = bridge.model
    tokens, _ = prompts(bridge, "right")
    residual = clean_residual(model, tokens)
    before_state, before = hook_state(model), run(model, tokens, [])

    def fail(activation, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_skipping(model, residual, [(f"blocks.{START}.hook_resid_post", fail)])
    with (
        pytest.raises(ShapeError, match="dummy tokens"),
        torch.no_grad(),
        skipping_blocks(model, START, residual) as dummy,
    ):
        model(dummy[:, :-1])  # tokens of another length than the residual
    assert hook_state(model) == before_state
    assert all("forward" not in block.__dict__ for block in model.blocks)
    torch.testing.assert_close(run(model, tokens, []), before, atol=0, rtol=0)


def test_bad_inputs_are_clear_errors(bridge):
    model = bridge.model
    residual = torch.zeros(2, 3, model.cfg.d_model)
    with pytest.raises(ShapeError, match="d_model"), skipping_blocks(model, START, residual[..., :-1]):
        pass
    with pytest.raises(LayerOutOfRangeError), skipping_blocks(model, model.cfg.n_layers, residual):
        pass


def native_model(backend):
    return build_model(ModelConfig(d_vocab=24, n_layers=3, d_model=32, n_heads=4, n_ctx=40, backend=backend))


NATIVE = ["bridge", *(["hooked"] if hooked_transformer_available() else [])]


@pytest.mark.parametrize("backend", NATIVE)
def test_native_models_start_at_a_block_equal_to_the_full_pass(backend):
    model = native_model(backend)
    training = model.train()
    assert supports_block_skipping(model)
    assert all(module.training for module in training.modules())  # the probe restores the training flags
    model.eval()
    tokens = torch.randint(1, 24, (3, 9), generator=torch.Generator().manual_seed(0))
    hooks = [("blocks.2.attn.hook_z", lambda z, hook: z * 0.5)]
    kept: list[torch.Tensor] = []
    run(model, tokens, [("blocks.2.hook_resid_pre", lambda a, hook: kept.append(a))])
    with torch.no_grad(), skipping_blocks(model, 2, kept[0]) as dummy, attached_hooks(adapt(model), hooks):
        started = model(dummy)
    torch.testing.assert_close(started, run(model, tokens, hooks), **TOL)


class _Block(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.hook_resid_pre, self.hook_resid_post = HookPoint(), HookPoint()
        self.linear = nn.Linear(d_model, d_model)

    def forward(self, hidden):
        hidden = self.hook_resid_pre(hidden)
        return self.hook_resid_post(hidden + torch.tanh(self.linear(hidden)))


class EmbeddingShortcut(HookedRootModule):
    """A model with ``blocks`` whose output also reads the embedding directly when ``shortcut`` is set: skipping
    the blocks on dummy tokens cannot keep that path, and the probe must see it."""

    def __init__(self, shortcut):
        super().__init__()
        self.cfg = SimpleNamespace(n_layers=3, n_heads=1, d_model=8, d_head=8, n_ctx=16, d_vocab=10)
        self.shortcut = shortcut
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList(_Block(8) for _ in range(3))
        self.unembed = nn.Linear(8, 10)
        self.setup()

    def forward(self, tokens, **kwargs):
        embedding = self.embed(tokens)
        hidden = embedding
        for block in self.blocks:
            hidden = block(hidden)
        return self.unembed(hidden + embedding if self.shortcut else hidden)


def test_the_probe_refuses_a_model_whose_output_reads_the_tokens_past_the_blocks():
    torch.manual_seed(0)
    assert supports_block_skipping(EmbeddingShortcut(shortcut=False))
    model = EmbeddingShortcut(shortcut=True)
    assert not supports_block_skipping(model)
    with (
        pytest.raises(ModelNotSupportedError, match="supports_block_skipping"),
        skipping_blocks(model, 1, torch.zeros(1, 4, 8)),
    ):
        pass
