"""The one home of what a model's forward can do: probed once per model object, in a neutral state, held weakly."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from conftest import BACKENDS, tiny_config

from tv_lens.generation import kv_cache_support
from tv_lens.interventions import masking_strategy
from tv_lens.models import ModelAdapter, adapt, build_model
from tv_lens.models.block_skipping import supports_block_skipping
from tv_lens.models.row_logits import supports_row_unembedding


@pytest.fixture(params=BACKENDS)
def fresh_model(request):
    model = build_model(tiny_config(request.param))
    with torch.no_grad():  # a bridge wires its own permanent hooks on its first pass
        model(torch.zeros(1, 2, dtype=torch.long))
    return model


def test_a_capability_is_probed_once_per_model_object(fresh_model):
    calls = []

    def detect(adapter: ModelAdapter) -> int:
        calls.append(adapter.model)
        return len(calls)

    assert adapt(fresh_model).capability("test_probe", detect) == 1
    assert adapt(fresh_model).capability("test_probe", detect) == 1  # another adapter of the same model
    other = build_model(tiny_config())
    assert adapt(other).capability("test_probe", detect) == 2
    assert calls == [fresh_model, other]


def test_the_probe_sees_the_model_in_eval_mode_without_grad_or_user_hooks(fresh_model):
    fired = []
    hook_point = fresh_model.hook_dict["blocks.0.hook_resid_post"]
    hook_point.add_hook(lambda activation, hook: fired.append(1))
    block = fresh_model.blocks[0]  # plain PyTorch hooks of the user's, next to those the model installs itself
    internal = {**block._forward_pre_hooks}
    handle = block.register_forward_pre_hook(lambda module, args: fired.append(2))
    fresh_model.train()
    seen = {}

    def detect(adapter: ModelAdapter) -> bool:
        seen["training"] = any(module.training for module in adapter.model.modules())
        seen["grad"] = torch.is_grad_enabled()
        adapter.model(torch.zeros(1, 3, dtype=torch.long))
        return True

    try:
        adapt(fresh_model).capability("neutral_state", detect)
        assert seen == {"training": False, "grad": False}
        assert fired == []  # the user's hooks were set aside during the probe ...
        fresh_model(torch.zeros(1, 3, dtype=torch.long))
        assert sorted(fired) == [1, 2]  # ... and are back afterwards, in their order
        assert list(block._forward_pre_hooks) == [*internal, handle.id]
        assert all(module.training for module in fresh_model.modules())
    finally:
        hook_point.remove_hooks()
        handle.remove()


@pytest.mark.parametrize("backend", BACKENDS)
def test_findings_do_not_keep_a_deleted_model_alive(backend):
    model = build_model(tiny_config(backend))
    assert supports_block_skipping(model) and supports_row_unembedding(adapt(model))
    kv_cache_support(model)
    masking_strategy(adapt(model))
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None


def test_adapt_checks_a_model_once(fresh_model, monkeypatch):
    first = adapt(fresh_model)

    def refuse(model):
        raise AssertionError("the model was checked again")

    monkeypatch.setattr(ModelAdapter, "from_model", classmethod(lambda cls, model: refuse(model)))
    again = adapt(fresh_model)
    assert again.model is fresh_model
    assert (again.n_layers, again.d_model, again.n_heads, again.d_vocab, again.d_in) == (
        first.n_layers,
        first.d_model,
        first.n_heads,
        first.d_vocab,
        first.d_in,
    )
