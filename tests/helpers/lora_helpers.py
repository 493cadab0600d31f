"""LoRA on real architectures, and the independent reference it is checked against: the update written by hand.

``adapted(model, arch)`` puts LoRA with random (non-zero) ``B`` matrices on every weight of both blocks of a copy;
``edit_huggingface`` writes an update into the Hugging Face model's own layers (GPT-2's fused ``c_attn``, GPT-NeoX's
head-interleaved ``query_key_value``, Phi-3's fused ``qkv_proj`` and ``gate_up_proj``, GPT-J's and GPT-Neo's own
names); ``edit_transformer_lens`` writes it into the weights a HookedTransformer or a bridge's layer holds.
"""

from __future__ import annotations

import copy

import torch
from pretrained_helpers import decoder

from tv_lens.models.local_hf import ARCHITECTURES
from tv_lens.training import LoRAConfig, apply_lora

# No single MLP weight to adapt: LoRA on the attention only.
MIXTURES_OF_EXPERTS = ("mixtral", "qwen3_moe", "gpt_oss", "llama4_text")
UNGATED = ("gpt2", "gpt_neox", "gptj", "gpt_neo")  # an MLP of two weights
GATED = tuple(a for a in ARCHITECTURES if a not in (*UNGATED, *MIXTURES_OF_EXPERTS))  # the rest: gated MLPs
TOKENS = torch.tensor([[1, 17, 230, 5, 99, 42, 7, 300], [2, 64, 64, 11, 8, 150, 3, 9]])


def targets_of(arch: str) -> tuple[str, ...]:
    if arch in MIXTURES_OF_EXPERTS:
        return ("W_Q", "W_K", "W_V", "W_O")
    return ("W_Q", "W_K", "W_V", "W_O", "W_in", *(("W_gate",) if arch in GATED else ()), "W_out")


def adapted(model, arch: str):
    """A copy of ``model`` with LoRA on every weight of both blocks and random (non-zero) ``B`` matrices.

    Returns the copy and ``[(block, target, delta [d_in, d_out])]`` of every update, in the order applied.
    """
    copied = copy.deepcopy(model)
    targets = targets_of(arch)
    updates = apply_lora(copied, (0, 1), LoRAConfig(rank=2, alpha=3.0, targets=targets, seed=5))
    generator = torch.Generator().manual_seed(0)
    deltas = []
    for index, update in enumerate(updates):
        with torch.no_grad():
            update.lora_B.copy_(torch.randn(update.lora_B.shape, generator=generator) * 0.05)
        deltas.append(
            (index // len(targets), targets[index % len(targets)], update.scale * update.lora_A @ update.lora_B)
        )
    return copied.eval(), deltas


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).double()


def edit_huggingface(hf, arch: str, block: int, target: str, delta: torch.Tensor) -> None:
    """Add ``delta`` (``[d_in, d_out]``, heads concatenated) to the Hugging Face layer that holds ``target``."""
    base = decoder(hf)
    with torch.no_grad():
        if arch == "gpt2":  # Conv1D layers, [in, out]; c_attn holds q | k | v side by side
            layer = base.h[block]
            d = hf.config.n_embd
            fused = {"W_Q": slice(0, d), "W_K": slice(d, 2 * d), "W_V": slice(2 * d, 3 * d)}
            if target in fused:
                layer.attn.c_attn.weight[:, fused[target]] += delta
            else:
                {"W_O": layer.attn.c_proj, "W_in": layer.mlp.c_fc, "W_out": layer.mlp.c_proj}[target].weight += delta
        elif arch == "gpt_neox":  # nn.Linear, [out, in]; query_key_value rows are [head, (q, k, v), d_head]
            layer = base.layers[block]
            if target in ("W_Q", "W_K", "W_V"):
                n_heads = hf.config.num_attention_heads
                rows = layer.attention.query_key_value.weight.view(n_heads, 3, -1, delta.shape[0])
                rows[:, ("W_Q", "W_K", "W_V").index(target)] += delta.T.reshape(n_heads, -1, delta.shape[0])
            else:
                module = {
                    "W_O": layer.attention.dense,
                    "W_in": layer.mlp.dense_h_to_4h,
                    "W_out": layer.mlp.dense_4h_to_h,
                }
                module[target].weight += delta.T
        elif arch in ("gptj", "gpt_neo"):  # nn.Linear, [out, in]; GPT-Neo's projections sit in attn.attention
            layer = base.h[block]
            attention = layer.attn if arch == "gptj" else layer.attn.attention
            names = {"W_Q": "q_proj", "W_K": "k_proj", "W_V": "v_proj", "W_O": "out_proj"}
            mlp = {"W_in": "fc_in", "W_out": "fc_out"} if arch == "gptj" else {"W_in": "c_fc", "W_out": "c_proj"}
            module = getattr(attention, names[target]) if target in names else getattr(layer.mlp, mlp[target])
            module.weight += delta.T
        elif arch == "phi3":  # nn.Linear, [out, in]; qkv_proj rows are q | k | v, gate_up_proj rows gate | up
            layer = base.layers[block]
            d_q = hf.config.hidden_size
            d_kv = hf.config.num_key_value_heads * (d_q // hf.config.num_attention_heads)
            fused = {
                "W_Q": (layer.self_attn.qkv_proj, slice(0, d_q)),
                "W_K": (layer.self_attn.qkv_proj, slice(d_q, d_q + d_kv)),
                "W_V": (layer.self_attn.qkv_proj, slice(d_q + d_kv, d_q + 2 * d_kv)),
                "W_gate": (layer.mlp.gate_up_proj, slice(0, hf.config.intermediate_size)),
                "W_in": (layer.mlp.gate_up_proj, slice(hf.config.intermediate_size, None)),
                "W_O": (layer.self_attn.o_proj, slice(None)),
                "W_out": (layer.mlp.down_proj, slice(None)),
            }
            module, rows = fused[target]
            module.weight[rows] += delta.T
        else:  # Llama, Qwen2/3, Gemma-2/3, Mistral, OLMo-2: nn.Linear, [out, in]
            layer = base.layers[block]
            attention = {"W_Q": "q_proj", "W_K": "k_proj", "W_V": "v_proj", "W_O": "o_proj"}
            mlp = {"W_in": "up_proj", "W_gate": "gate_proj", "W_out": "down_proj"}
            module = (
                getattr(layer.self_attn, attention[target]) if target in attention else getattr(layer.mlp, mlp[target])
            )
            module.weight += delta.T


def edit_transformer_lens(model, block: int, target: str, delta: torch.Tensor) -> None:
    """Add ``delta`` (``[d_in, d_out]``) to ``target`` as a HookedTransformer or a bridge's layer holds it."""
    layer = model.blocks[block]
    with torch.no_grad():
        if hasattr(layer.attn, "W_Q") and isinstance(layer.attn.W_Q, torch.nn.Parameter):
            part = layer.attn if target.startswith(("W_Q", "W_K", "W_V", "W_O")) else layer.mlp
            name = target if hasattr(part, target) and target in dict(part.named_parameters()) else f"_{target}"
            weight = getattr(part, name)
            if target in ("W_Q", "W_K", "W_V"):  # [heads, d_in, d_head]
                weight += delta.reshape(delta.shape[0], weight.shape[0], weight.shape[2]).permute(1, 0, 2)
            else:  # W_O [heads, d_head, d_model]; MLP [d_in, d_out]
                weight += delta.reshape(weight.shape)
            return
        path = {"W_Q": "attn.q", "W_K": "attn.k", "W_V": "attn.v", "W_O": "attn.o"}.get(target)
        path = path or {"W_in": "mlp.in", "W_gate": "mlp.gate", "W_out": "mlp.out"}[target]
        module = layer.get_submodule(path).original_component
        module.weight += delta.T if isinstance(module, torch.nn.Linear) else delta


def huggingface(folder):
    """The Hugging Face model of a ``save_pretrained`` folder, eager attention, eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def assert_same_weights(found, expected) -> None:
    """The two models hold the same weights under the same names."""
    found, expected = found.state_dict(), expected.state_dict()
    assert found.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(found[name], tensor, atol=1e-6, rtol=1e-6, msg=name)


# The linear layers of each architecture's blocks, by their Hugging Face names.
TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    **{arch: ["q_proj", "k_proj", "v_proj", "o_proj"] for arch in MIXTURES_OF_EXPERTS},
}
GATED_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_adapter(arch: str, folder, saved, **options):
    """A PEFT model of the architecture with random LoRA matrices (rank 2, rank 3 on the first target), saved.

    ``options`` go to PEFT's ``LoraConfig`` (e.g. ``use_rslora=True``).
    """
    from peft import LoraConfig, get_peft_model

    targets = TARGETS.get(arch, GATED_LAYERS)
    config = LoraConfig(
        r=2,
        lora_alpha=3,
        target_modules=targets,
        rank_pattern={targets[0]: 3},
        alpha_pattern={targets[0]: 5},
        fan_in_fan_out=arch == "gpt2",
        init_lora_weights=False,
        **options,
    )
    model = get_peft_model(huggingface(folder), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.save_pretrained(saved)
    return model.eval()
