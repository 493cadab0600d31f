import pytest
import torch
from conftest import BACKENDS, tiny_config

from tv_lens.errors import HookNotFoundError, LayerOutOfRangeError, ModelNotSupportedError, TvLensError
from tv_lens.models import EMBED_LAYER, ModelConfig, adapt, build_model, hooked_transformer_available


def test_adapter_reads_sizes_and_hook_names(model):
    adapter = adapt(model)
    assert (adapter.n_layers, adapter.n_heads, adapter.d_model, adapter.d_head) == (3, 4, 32, 8)
    assert (adapter.n_ctx, adapter.d_vocab) == (40, 24)
    assert adapter.hook_name("resid_post", 2) == "blocks.2.hook_resid_post"
    assert adapter.hook_name("resid_mid", 0) == "blocks.0.hook_resid_mid"
    assert adapter.hook_name("attn.hook_z", 1) == "blocks.1.attn.hook_z"
    assert adapter.hook_name("resid_post", EMBED_LAYER) == "blocks.0.hook_resid_pre"
    _, cache = model.run_with_cache(torch.zeros(1, 3, dtype=torch.long))
    for site in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "attn.hook_z"):
        assert adapter.hook_name(site, 1) in cache


def test_start_at_layer_capability_matches_transformer_lens(model):
    is_old_bridge = hooked_transformer_available() and type(model).__name__ == "TransformerBridge"
    assert adapt(model).supports_start_at_layer is not is_old_bridge


def test_unknown_site_and_layer_out_of_range_name_the_fix(model):
    adapter = adapt(model)
    with pytest.raises(HookNotFoundError, match=r"Unknown site 'resid'.*resid_post"):
        adapter.hook_name("resid", 0)
    with pytest.raises(LayerOutOfRangeError, match=r"Layer 3 is out of range.*\[-1, 2\]"):
        adapter.hook_name("resid_post", 3)
    with pytest.raises(LayerOutOfRangeError, match=r"\[0, 2\]"):
        adapter.hook_name("attn.hook_z", -1)


def test_object_without_transformer_lens_hooks_is_rejected():
    with pytest.raises(ModelNotSupportedError, match=r"Linear.*HookedTransformer or TransformerBridge"):
        adapt(torch.nn.Linear(3, 3))


def test_model_missing_a_hook_gets_an_error_naming_it(model):
    class Stripped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = model.cfg
            dropped = {"blocks.1.hook_out", "blocks.1.hook_resid_post"}
            self.hook_dict = {k: v for k, v in model.hook_dict.items() if k not in dropped}

        def forward(self, tokens):
            return model(tokens)

    with pytest.raises(ModelNotSupportedError, match=r"'blocks\.1\.hook_resid_post'"):
        adapt(Stripped())
    assert isinstance(ModelNotSupportedError("x"), TvLensError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_builder_is_seeded_and_leaves_global_rng_alone(backend):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, again = build_model(tiny_config(backend)), build_model(tiny_config(backend))
    assert torch.equal(torch.rand(1), expected_next)
    other = build_model(tiny_config(backend, seed=1))
    pairs = list(zip(first.parameters(), again.parameters(), other.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)
    assert type(first).__name__ == ("HookedTransformer" if backend == "hooked" else "TransformerBridge")


def test_auto_backend_prefers_hooked_transformer_where_it_exists():
    expected = "HookedTransformer" if hooked_transformer_available() else "TransformerBridge"
    assert type(build_model(tiny_config())).__name__ == expected


def test_bad_model_config_is_a_clear_error():
    with pytest.raises(TvLensError, match="not divisible by n_heads"):
        ModelConfig(d_vocab=10, d_model=30, n_heads=4)
    with pytest.raises(TvLensError, match="n_layers must be a positive int"):
        ModelConfig(d_vocab=10, n_layers=0)
