"""Real architectures (GPT-2, GPT-NeoX, Llama 2/3/4, Qwen2/3, Gemma-2/3, Mistral, Phi-3, OLMo-2/3, SmolLM3, MoEs).

Through every loader, tv_lens equals independent paths.

Every model is float32 and every comparison uses ``atol = rtol = 1e-5``: tv_lens against TransformerLens's own
passes (``run_with_cache``, hand-written hooks through ``run_with_hooks``), the bridge against HuggingFace's hidden
states, and HookedTransformer against the bridge in compatibility mode (two implementations of one processed model;
they differ by at most ~3e-6 here).
"""

from __future__ import annotations

import json

import pytest
import torch
from pretrained_helpers import (
    COMBINATIONS,
    GQA_ARCHITECTURES,
    HOOKED_ARCHITECTURES,
    HOOKED_UNSUPPORTED,
    PROMPTS,
    SIZES,
    decoder,
    folder_of,
    load,
    loaded,
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    padded,
    pretrained_fixture,  # noqa: F401  (fixture `pretrained`: every architecture x loader)
    pretrained_folder_fixture,  # noqa: F401  (fixture `pretrained_folder`: every architecture's folder)
    prompt_tokens,
)

from tv_lens.errors import ArtefactError, ConfigError, TvLensError
from tv_lens.interventions import ablate_head, add, replace, run_with_interventions
from tv_lens.models import hooked_transformer_available
from tv_lens.models.builders import BackendUnavailableError
from tv_lens.models.local_hf import ARCHITECTURES, build_local_model, build_tokenizer, load_local_model
from tv_lens.probes import collect

TOL = {"atol": 1e-5, "rtol": 1e-5}
SIDES = ("right", "left")


def batch(fixture, side):
    """The test prompts of ``fixture``'s tokenizer, padded on ``side``: (tokens, mask, answer_pos)."""
    return padded(prompt_tokens(fixture.tokenizer), fixture.tokenizer.pad_token_id, side)


def reference_rows(model, tokens, mask, answer_pos, names, *, pass_mask):
    """Rows at the answer positions from ``run_with_cache`` (``pass_mask``: with ``attention_mask=mask``)."""
    kwargs = {"attention_mask": mask} if pass_mask else {}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names, **kwargs)
    rows = torch.arange(len(tokens))
    return torch.stack([cache[name][rows, answer_pos] for name in names])


def test_every_architecture_and_loader_is_covered():
    archs = {arch for arch, _ in COMBINATIONS}
    assert archs == set(ARCHITECTURES)
    if hooked_transformer_available():
        assert {a for a, loader in COMBINATIONS if loader == "hooked"} == set(ARCHITECTURES) - set(HOOKED_UNSUPPORTED)


def test_models_have_the_architecture_features(pretrained):
    cfg = pretrained.model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads) == (SIZES["n_layers"], SIZES["d_model"], SIZES["n_heads"])
    hf_config = json.loads((pretrained.folder / "config.json").read_text())
    assert hf_config["model_type"] == pretrained.arch
    heads = hf_config.get("n_head", hf_config.get("num_attention_heads", hf_config.get("num_heads")))
    kv_heads = hf_config.get("num_key_value_heads", heads)
    assert (kv_heads < cfg.n_heads) == (pretrained.arch in GQA_ARCHITECTURES)
    if pretrained.arch in GQA_ARCHITECTURES:  # TransformerLens sees the grouped-query attention
        assert cfg.n_key_value_heads == kv_heads
    if pretrained.arch == "gpt_neox":
        assert hf_config["use_parallel_residual"]
    if pretrained.arch == "gemma2":
        assert hf_config["attn_logit_softcapping"] and hf_config["final_logit_softcapping"]
    longest = max(map(len, prompt_tokens(pretrained.tokenizer)))
    if pretrained.arch in ("gemma2", "gemma3_text", "mistral", "gpt_oss", "olmo3"):
        assert hf_config["sliding_window"] < longest
    if pretrained.arch in ("gemma3_text", "gpt_oss", "olmo3"):
        assert set(hf_config["layer_types"]) == {"sliding_attention", "full_attention"}
    if pretrained.arch == "llama4_text":  # chunked attention, and a layer without rotary positions
        assert hf_config["attention_chunk_size"] < longest and hf_config["no_rope_layers"] == [1, 0]
    if pretrained.arch == "smollm3":
        assert hf_config["no_rope_layers"] == [1, 0]
    if pretrained.arch == "gptj":  # rotary on part of each head
        assert hf_config["rotary_dim"] < cfg.d_head
    if pretrained.arch == "gpt_neo":  # global and local (sliding-window) attention alternate
        assert hf_config["attention_layers"] == ["global", "local"] and hf_config["window_size"] < longest


# Weights of block 0 that set an architecture apart from Llama's, with their shapes (d_head 16, 2 key/value heads).
DISTINCT_WEIGHTS = {
    "qwen3": {"self_attn.q_norm.weight": (16,), "self_attn.k_norm.weight": (16,)},
    "gemma3_text": {"self_attn.q_norm.weight": (16,), "pre_feedforward_layernorm.weight": (64,)},
    "olmo2": {"self_attn.q_norm.weight": (64,), "post_feedforward_layernorm.weight": (64,)},
    "phi3": {"self_attn.qkv_proj.weight": (128, 64), "mlp.gate_up_proj.weight": (512, 64)},
    "mixtral": {"block_sparse_moe.gate.weight": (4, 64), "block_sparse_moe.experts.3.w1.weight": (256, 64)},
    "qwen3_moe": {"mlp.gate.weight": (4, 64), "mlp.experts.3.up_proj.weight": (128, 64)},
    "gpt_oss": {"self_attn.sinks": (4,), "mlp.router.weight": (4, 64), "mlp.experts.gate_up_proj": (4, 64, 512)},
}


@pytest.mark.parametrize("arch", DISTINCT_WEIGHTS)
def test_models_have_the_weights_that_set_their_architecture_apart(tmp_path_factory, arch):
    from safetensors.torch import load_file

    shapes = {
        name: tuple(w.shape) for name, w in load_file(folder_of(tmp_path_factory, arch) / "model.safetensors").items()
    }
    for name, shape in DISTINCT_WEIGHTS[arch].items():
        assert shapes.get(f"model.layers.0.{name}") == shape, name
    if arch == "olmo2":  # norms after attention and MLP, none before
        assert "model.layers.0.input_layernorm.weight" not in shapes


@pytest.mark.parametrize("side", SIDES)
def test_collect_equals_run_with_cache(pretrained, side):
    model = pretrained.model
    tokens, mask, answer_pos = batch(pretrained, side)
    reps = collect(model, tokens, answer_pos, attention_mask=mask, progress=False)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    expected = reference_rows(model, tokens, mask, answer_pos, names, pass_mask=side == "left")
    assert reps.layers == (-1, *range(model.cfg.n_layers))
    torch.testing.assert_close(reps.activations, expected, **TOL)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_collect_equals_huggingface_hidden_states(tmp_path_factory, arch, side):
    """Bridge rows are HF's own hidden states (HF eager attention; positions from the mask for left padding).

    Only the bridge without compatibility mode keeps HF's raw weights, hence HF's numerics.
    """
    pretrained = loaded(tmp_path_factory, arch, "bridge")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(pretrained.folder, attn_implementation="eager").eval()
    tokens, mask, answer_pos = batch(pretrained, side)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden = hf(tokens, attention_mask=mask, position_ids=position_ids, output_hidden_states=True).hidden_states
    rows = torch.arange(len(tokens))
    expected = torch.stack([state[rows, answer_pos] for state in hidden])  # embedding, blocks 0 .. n-2, final norm
    reps = collect(pretrained.model, tokens, answer_pos, attention_mask=mask, progress=False)
    torch.testing.assert_close(reps.activations[:-1], expected[:-1], **TOL)
    with torch.no_grad():  # HF's last hidden state is after the final norm
        final = _final_norm(hf)(reps.activations[-1])
    torch.testing.assert_close(final, expected[-1], **TOL)


def _final_norm(hf):
    """HF's final norm module (Llama/Qwen2/Gemma-2 ``norm``, GPT-2 ``ln_f``, GPT-NeoX ``final_layer_norm``)."""
    base = decoder(hf)
    name = next(name for name in ("norm", "ln_f", "final_layer_norm") if hasattr(base, name))
    return getattr(base, name)


def _intervention_cases(model, answer_pos):
    """(name, interventions, hand-written hooks) triples over the model's blocks."""
    generator = torch.Generator().manual_seed(1)
    d_model, d_head, last = model.cfg.d_model, model.cfg.d_head, model.cfg.n_layers - 1
    vector = torch.randn(d_model, generator=generator)
    mean = torch.randn(d_head, generator=generator)
    rows = torch.arange(len(answer_pos))

    def at_answer(fn):
        def hook(activation, hook):
            activation = activation.clone()
            activation[rows, answer_pos] = fn(activation[rows, answer_pos])
            return activation

        return hook

    def head_hook(head, value, positions=None):
        def hook(z, hook):
            z = z.clone()
            if positions is None:
                z[:, :, head] = value
            else:
                z[rows, positions, head] = value
            return z

        return hook

    replace_hook = ("blocks.0.hook_resid_post", at_answer(lambda old: vector.expand_as(old)))
    add_hook = (f"blocks.{last}.hook_resid_pre", at_answer(lambda old: old + vector))
    zero_hook = (f"blocks.{last}.attn.hook_z", head_hook(1, 0.0))
    mean_hook = ("blocks.0.attn.hook_z", head_hook(2, mean, answer_pos))
    embed_hook = ("blocks.0.hook_resid_pre", at_answer(lambda old: old + 2 * vector))
    return [
        ("replace", [replace(0, vector)], [replace_hook]),
        ("add", [add(last, vector, site="resid_pre")], [add_hook]),
        ("ablate_zero", [ablate_head(last, 1)], [zero_hook]),
        ("ablate_mean", [ablate_head(0, 2, "mean", mean=mean, pos="answer")], [mean_hook]),
        (
            "several",
            [add(-1, 2 * vector), ablate_head(0, 2, "mean", mean=mean, pos="answer"), ablate_head(last, 1)],
            [embed_hook, mean_hook, zero_hook],
        ),
    ]


def test_interventions_equal_hand_written_hooks(pretrained):
    """On a batch mixing right- and left-padded prompts (attention mask given to both runs)."""
    model = pretrained.model
    tokens, mask, answer_pos = batch(pretrained, "mixed")
    rows = torch.arange(len(tokens))
    with torch.no_grad():
        clean = model(tokens, attention_mask=mask)[rows, answer_pos]
    for name, interventions, hooks in _intervention_cases(model, answer_pos):
        with torch.no_grad():
            run = run_with_interventions(model, tokens, answer_pos, interventions, attention_mask=mask)
            expected = model.run_with_hooks(tokens, fwd_hooks=hooks, attention_mask=mask)[rows, answer_pos]
        assert run.writes == (len(tokens),) * len(interventions), name
        torch.testing.assert_close(run.logits[:, 0], expected, **TOL, msg=lambda m, name=name: f"{name}: {m}")
        assert (expected - clean).abs().max() > 1e-3, f"{name} did not change the logits"


# HookedTransformer's OLMo-3 has no hook on the output projection before its post-attention norm (hook_attn_out is
# after it), so a head's share of the output cannot be read there.
GQA_COMBINATIONS = [c for c in COMBINATIONS if c[0] in GQA_ARCHITECTURES and c != ("olmo3", "hooked")]


@pytest.mark.parametrize("head", [0, 3])
@pytest.mark.parametrize(("arch", "loader"), GQA_COMBINATIONS, ids=[f"{a}-{loader}" for a, loader in GQA_COMBINATIONS])
def test_gqa_head_ablation_changes_only_that_head(tmp_path_factory, arch, loader, head):
    """Heads sharing a key/value head stay untouched: the attention output moves by head ``head``'s share only."""
    pretrained = loaded(tmp_path_factory, arch, loader)
    model, layer = pretrained.model, 1
    assert model.cfg.n_heads > json.loads((pretrained.folder / "config.json").read_text())["num_key_value_heads"]
    tokens, _, answer_pos = batch(pretrained, "right")
    # The output projection's output before any norm: the bridge's `attn.o.hook_out`, HookedTransformer's attn_out.
    out_name = f"blocks.{layer}.attn.o.hook_out"
    if out_name not in model.hook_dict:
        out_name = f"blocks.{layer}.hook_attn_out"
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(activation, hook):
            seen[name] = activation.detach().clone()

        return hook

    z_name = f"blocks.{layer}.attn.hook_z"
    readers = [(z_name, keep(z_name)), (out_name, keep(out_name))]  # attached first: z is read before the write
    with torch.no_grad(), model.hooks(fwd_hooks=readers):
        clean_logits = run_with_interventions(model, tokens, answer_pos, []).logits
        z_clean, out_clean = seen[z_name], seen[out_name]
        ablated_logits = run_with_interventions(model, tokens, answer_pos, [ablate_head(layer, head)]).logits
        out_ablated = seen[out_name]
    assert z_clean.shape[2] == model.cfg.n_heads  # one z per query head, not per key/value head
    w_o = model.blocks[layer].attn.W_O.detach()  # [n_heads, d_head, d_model]
    expected_change = torch.einsum("bph,hm->bpm", z_clean[:, :, head], w_o[head])
    torch.testing.assert_close(out_clean - out_ablated, expected_change, **TOL)
    assert expected_change.abs().max() > 1e-3
    assert (clean_logits - ablated_logits).abs().max() > 1e-4


@pytest.mark.skipif(not hooked_transformer_available(), reason="HookedTransformer needs TransformerLens <= 3")
@pytest.mark.parametrize("arch", HOOKED_ARCHITECTURES)
def test_hooked_equals_bridge_in_compatibility_mode(tmp_path_factory, arch):
    hooked = loaded(tmp_path_factory, arch, "hooked")
    bridge = loaded(tmp_path_factory, arch, "bridge-compat")
    tokens, _, answer_pos = batch(bridge, "right")
    assert torch.equal(tokens, batch(hooked, "right")[0])
    reps = [collect(fixture.model, tokens, answer_pos, progress=False).activations for fixture in (hooked, bridge)]
    torch.testing.assert_close(reps[0], reps[1], **TOL)
    with torch.no_grad():
        logits = [fixture.model(tokens).log_softmax(-1) for fixture in (hooked, bridge)]
    torch.testing.assert_close(logits[0], logits[1], **TOL)


@pytest.mark.skipif(not hooked_transformer_available(), reason="HookedTransformer needs TransformerLens <= 3")
@pytest.mark.parametrize("arch", HOOKED_UNSUPPORTED)
def test_hooked_loader_names_the_architectures_it_cannot_load(tmp_path_factory, arch):
    with pytest.raises(BackendUnavailableError, match="loader='bridge'"):
        load_local_model(folder_of(tmp_path_factory, arch), "hooked")


def test_left_padding_with_bos_as_pad_keeps_the_bos(tmp_path_factory, pretrained):
    """A tokenizer padding on the left whose pad id is the BOS id (Qwen2 through TransformerLens): the BOS that
    starts each prompt is a real token, so tv_lens's rows and logits equal an explicit all-ones-mask reference
    (and, for HookedTransformer, the bridge's rows)."""
    model = load(pretrained.folder, pretrained.loader, padding_side="left", bos_as_pad=True)
    tokenizer = model.tokenizer
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == tokenizer.bos_token_id
    tokens, _, answer_pos = padded(prompt_tokens(tokenizer), tokenizer.pad_token_id, "right")
    ones = torch.ones_like(tokens)
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    expected = reference_rows(model, tokens, ones, answer_pos, names, pass_mask=True)
    # The reference does not depend on the tokenizer's settings: the same weights with the default tokenizer agree.
    default = reference_rows(pretrained.model, tokens, ones, answer_pos, names, pass_mask=True)
    torch.testing.assert_close(default, expected, **TOL)
    reps = collect(model, tokens, answer_pos, layers=range(model.cfg.n_layers), progress=False)
    torch.testing.assert_close(reps.activations, expected, **TOL)
    rows = torch.arange(len(tokens))
    with torch.no_grad():
        logits = run_with_interventions(model, tokens, answer_pos, []).logits[:, 0]
        expected_logits = model(tokens, attention_mask=ones)[rows, answer_pos]
    torch.testing.assert_close(logits, expected_logits, **TOL)
    if pretrained.loader == "hooked":
        bridge = loaded(tmp_path_factory, pretrained.arch, "bridge-compat").model
        bridge_rows = collect(bridge, tokens, answer_pos, layers=range(model.cfg.n_layers), progress=False)
        torch.testing.assert_close(reps.activations, bridge_rows.activations, **TOL)


def test_build_is_idempotent_and_guards_foreign_folders(tmp_path, pretrained_folder):
    before = {path.name: path.stat().st_mtime_ns for path in pretrained_folder.iterdir()}
    arch = json.loads((pretrained_folder / "tv_lens_build.json").read_text())["arch"]
    assert build_local_model(arch, pretrained_folder, **SIZES) == pretrained_folder
    assert {path.name: path.stat().st_mtime_ns for path in pretrained_folder.iterdir()} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ArtefactError, match="empty folder"):
        build_local_model(arch, foreign, **SIZES)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_rebuild_with_other_settings_replaces_the_build(tmp_path):
    folder = build_local_model("gpt2", tmp_path / "m", n_layers=1, d_model=32, n_heads=2, vocab_size=300)
    first = (folder / "model.safetensors").read_bytes()
    build_local_model("gpt2", folder, n_layers=1, d_model=32, n_heads=2, vocab_size=300, seed=1)
    assert (folder / "model.safetensors").read_bytes() != first
    assert json.loads((folder / "tv_lens_build.json").read_text())["seed"] == 1
    assert not [path for path in tmp_path.iterdir() if path.name != "m"]  # no staging folder left


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda tmp: build_local_model("mamba", tmp / "x"), "Unknown architecture 'mamba'"),
        (lambda tmp: build_local_model("gpt2", tmp / "x", n_kv_heads=2), "leave n_kv_heads unset"),
        (lambda tmp: build_local_model("llama", tmp / "x", n_kv_heads=3), "divisor of n_heads"),
        (lambda tmp: build_local_model("llama", tmp / "x", d_model=30), "not divisible"),
        (lambda tmp: load_local_model(tmp, "vllm"), "Unknown loader 'vllm'"),
        (lambda tmp: load_local_model(tmp, "bridge"), "build it first"),
        (lambda tmp: load_local_model(tmp, "hooked", compatibility_mode=True), "compatibility_mode"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path, call, match):
    with pytest.raises(TvLensError, match=match) as error:
        call(tmp_path)
    assert isinstance(error.value, (ConfigError, ArtefactError))


@pytest.mark.skipif(hooked_transformer_available(), reason="TransformerLens <= 3 has HookedTransformer")
def test_hooked_loader_without_hooked_transformer_is_a_clear_error(tmp_path_factory):
    with pytest.raises(BackendUnavailableError, match="HookedTransformer"):
        load_local_model(folder_of(tmp_path_factory, "gpt2"), "hooked")


def test_module_example_runs():
    import doctest

    from tv_lens.models import local_hf

    assert doctest.testmod(local_hf, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_tokenizer_learns_the_task_words():
    tokenizer = build_tokenizer()
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert len(tokenizer) == 1024
    for word in ("cold", " cold", "Paris", " Paris", "->", "\n", " the", " forest"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    for text in PROMPTS:
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
