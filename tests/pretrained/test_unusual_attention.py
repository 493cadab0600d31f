"""Architectures whose attention heads are not the config's ``n_heads`` outputs of ``d_head`` in every block.

DeepSeek-V3's multi-head latent attention (values of another width than the config's ``d_head``, no ``W_Q`` /
``W_K`` / ``W_V``), Gemma-4 (its global layers have heads of their own size; every layer also reads the token ids,
so a pass cannot start from residual rows), Qwen3-Next (linear-attention layers, without heads, between the
attention layers; TransformerLens 4 only) and Mamba-2 (no attention at all) are booted through the
bridge from small random HuggingFace models. What reads or writes the residual stream equals a hand-written
TransformerLens hook and runs the analyses built on it; what reads or writes single heads (head ablation,
attribution, function vectors, ``ablate_head``) is refused with an error naming the head output's shape (or the
block without heads), and no hook is left behind. Head attention reads each query head's weights, which latent and
per-layer heads have too; it names the blocks that have heads where some have none.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pretrained_helpers import one_thread, padded, prompt_tokens  # noqa: F401  (autouse: one thread)

from tv_lens import FunctionVectors, Geometry, TaskDecodability, TaskVectorPatching, TaskVectorPrompting
from tv_lens.analyses import HeadAblation, HeadAttention, head_attribution
from tv_lens.errors import HookNotFoundError, ModelNotSupportedError, TvLensError
from tv_lens.interventions import ablate_head, replace, run_with_interventions
from tv_lens.interventions.sweep import align
from tv_lens.models import hooked_transformer_available
from tv_lens.models.local_hf import build_tokenizer
from tv_lens.tasks import PROMPT_ROLES, TextPool, TextTask, position_roles

TOL = {"atol": 1e-5, "rtol": 1e-5}
PAIRS = (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("good", "bad"), ("old", "new"))
TASKS = (TextTask("antonym", PAIRS), TextTask("same", tuple((x, x) for x, _ in PAIRS)))
SIZES = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
}


def _config(arch: str, tokenizer) -> object:
    import transformers

    special = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "vocab_size": len(tokenizer)}
    if arch == "deepseek_v3":
        return transformers.DeepseekV3Config(
            **SIZES,
            **special,
            num_key_value_heads=4,
            q_lora_rank=32,
            kv_lora_rank=16,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=24,  # another width than the config's d_head
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
        )
    if arch == "qwen3_next":
        return transformers.Qwen3NextConfig(
            **SIZES,
            **special,
            num_key_value_heads=2,
            head_dim=16,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            layer_types=["linear_attention", "full_attention"],
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
        )
    if arch == "mamba2":
        return transformers.Mamba2Config(
            **special, hidden_size=64, num_hidden_layers=2, num_heads=4, head_dim=32, state_size=16, n_groups=1
        )
    return transformers.Gemma4TextConfig(**SIZES, **special, num_key_value_heads=2, head_dim=16)


ARCHITECTURES = ("deepseek_v3", "gemma4_text", "qwen3_next", "mamba2")
#: A block whose attention is unusual: latent (every DeepSeek-V3 block), global (Gemma-4's second), linear (Qwen3-Next's
#: first), none (Mamba-2, a state-space model).
UNUSUAL_LAYER = {"deepseek_v3": 1, "gemma4_text": 1, "qwen3_next": 0, "mamba2": 1}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(arch, tmp_path_factory):
    import transformers

    if arch == "qwen3_next" and hooked_transformer_available():
        pytest.skip("TransformerLens 3.9's bridge cannot run Qwen3-Next's linear attention")

    folder = Path(tmp_path_factory.mktemp(arch))
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(_config(arch, tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    from transformer_lens.model_bridge import TransformerBridge

    # as a user boots a folder of their own
    saved = transformers.AutoTokenizer.from_pretrained(folder)
    return TransformerBridge.boot_transformers(str(folder), tokenizer=saved, device="cpu").eval()


def _tokens(model):
    return padded(prompt_tokens(model.tokenizer), model.tokenizer.pad_token_id, "right")


def test_residual_writes_equal_hand_written_hooks(model):
    tokens, mask, answer_pos = _tokens(model)
    rows = torch.arange(len(tokens))
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def write(activation, hook):
        activation = activation.clone()
        activation[rows, answer_pos] = vector
        return activation

    with torch.no_grad():
        run = run_with_interventions(model, tokens, answer_pos, [replace(0, vector)], attention_mask=mask)
        expected = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", write)], attention_mask=mask)
        clean = model(tokens, attention_mask=mask)
    torch.testing.assert_close(run.logits[:, 0], expected[rows, answer_pos], **TOL)
    assert (expected - clean)[rows, answer_pos].abs().max() > 1e-3


def test_residual_analyses_run(model):
    pool = TextPool(TASKS, model.tokenizer, template="{x} -> {y}", null=True, bos=True)
    decodability = TaskDecodability(k=3, n_bootstrap=0).run(model, pool, 4, 2, seed=0)
    patching = TaskVectorPatching(n_bootstrap=0).run(model, pool, 3, 2, seed=0)
    prompting = TaskVectorPrompting(n_bootstrap=0).run(model, pool, 3, 2, seed=0)
    projection = Geometry().run(model, pool, 4, 2, seed=0)
    assert decodability.td.shape == (model.cfg.n_layers + 1,) and bool(decodability.td.isfinite().all())
    assert bool(patching.loss.isfinite().all()) and bool(prompting.tvp_loss.isfinite().all())
    assert bool(projection.coords.isfinite().all())


def _attribution(model, batch):
    aligned = align(model, batch.inputs, batch.answer_pos, n_answer_tokens=batch.answer_lengths)
    values = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    return head_attribution(model, aligned, batch.answers, values, config=HeadAblation())


@pytest.mark.parametrize(
    "run",
    [
        lambda m, pool, _: HeadAblation(n_bootstrap=0).run(m, pool, 3, 2, seed=0),
        lambda m, pool, _: HeadAblation(n_bootstrap=0, mode="mean").run(m, pool, 3, 2, seed=0),
        lambda m, pool, _: FunctionVectors(k=2, n_bootstrap=0).run(m, pool, 3, 2, seed=0),
        lambda m, pool, layer: run_with_interventions(m, pool.sample(1, 1, seed=0).inputs, 3, [ablate_head(layer, 1)]),
        lambda m, pool, _: _attribution(m, pool.sample(2, 1, seed=0)),
    ],
    ids=["head_ablation", "mean_ablation", "function_vectors", "ablate_head", "attribution"],
)
def test_what_reads_or_writes_single_heads_is_refused(arch, model, run):
    pool = TextPool(TASKS, model.tokenizer, template="{x} -> {y}", null=True, bos=True)
    with pytest.raises(TvLensError) as info:
        run(model, pool, UNUSUAL_LAYER[arch])
    message = str(info.value)
    if arch in ("qwen3_next", "mamba2"):  # a block without heads (Qwen3-Next's first), or no heads at all
        assert isinstance(info.value, HookNotFoundError), message
        which = "that block has no attention heads" if arch == "qwen3_next" else "no block of this model has attention"
        assert which in message and "do not apply to this model" in message, message
    else:
        assert isinstance(info.value, ModelNotSupportedError), message
        assert f"not [batch, pos, n_heads={model.cfg.n_heads}, d_head={model.cfg.d_head}]" in message, message
        assert "do not apply to it" in message
    assert not any(point.fwd_hooks for point in model.hook_dict.values())


def test_head_attention_reads_every_block_with_attention_weights(arch, model):
    """Latent and per-layer heads have one pattern per query head; a block without heads is named, with the fix."""
    pool = TextPool(TASKS, model.tokenizer, template="{x} -> {y}", null=True, bos=True)
    batch = pool.sample(2, 2, seed=0)
    if arch in ("qwen3_next", "mamba2"):
        with pytest.raises(HookNotFoundError) as info:
            HeadAttention(n_bootstrap=0).run_batch(model, batch)
        fix = "pass layers=(1,) (with heads)" if arch == "qwen3_next" else "Head attention does not apply to this model"
        assert fix in str(info.value), str(info.value)
        assert not any(point.fwd_hooks for point in model.hook_dict.values())
        if arch == "mamba2":
            return
    layers = (1,) if arch == "qwen3_next" else tuple(range(model.cfg.n_layers))
    result = HeadAttention(layers=layers, n_bootstrap=0).run_batch(model, batch)
    roles = position_roles(batch)
    for i in range(len(batch)):
        length, ap = int(batch.lengths[i]), int(batch.answer_pos[i])
        with torch.no_grad():
            _, cache = model.run_with_cache(batch.inputs[i : i + 1, :length])
        for entry, layer in enumerate(layers):
            row = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, ap, : ap + 1].double()
            by_role = torch.stack([row[:, roles[i, : ap + 1] == r].sum(-1) for r in range(len(PROMPT_ROLES))], dim=-1)
            torch.testing.assert_close(result.attention[entry, :, :, i], by_role, **TOL)
