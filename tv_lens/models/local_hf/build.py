"""Writing a small random HuggingFace model of a real architecture, and its tokenizer, to a folder.

:func:`build_local_model` records its settings next to the weights (:func:`recorded_settings` reads them back),
so a folder that already holds the same build is reused and one of other settings is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from tv_lens.checks import is_int
from tv_lens.errors import ArtefactError, ConfigError
from tv_lens.models.local_hf.tokenizer import build_tokenizer

__all__ = ["ARCHITECTURES", "build_local_model", "local_model_settings", "recorded_settings"]

ARCHITECTURES: tuple[str, ...] = (
    "gpt2",
    "gpt_neox",
    "llama",
    "qwen2",
    "gemma2",
    "qwen3",
    "gemma3_text",
    "mistral",
    "phi3",
    "olmo2",
    "mixtral",
    "qwen3_moe",
    "gpt_oss",
    "llama4_text",
    "olmo3",
    "smollm3",
    "gptj",
    "gpt_neo",
)
"""Architectures :func:`build_local_model` builds (HuggingFace ``model_type`` names)."""

#: Architectures without grouped-query attention (one key/value head per head).
_FULL_HEADS = ("gpt2", "gpt_neox", "gptj", "gpt_neo")
_SETTINGS_FILE = "tv_lens_build.json"
_FORMAT = 1  # bump when what a build writes changes, so old builds are rebuilt
_INIT_STD = 0.1  # weight init std: larger than HF's 0.02, so attention patterns are far from uniform
_SLIDING_WINDOW = 8  # sliding windows and attention chunks, shorter than test prompts so that they mask keys
_SOFTCAP = 5.0  # Gemma-2's attention and final-logit soft-caps, small enough to bind at these sizes


def local_model_settings(
    arch: str,
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    vocab_size: int = 1024,
    n_ctx: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """The checked settings of a build (what :func:`build_local_model` records next to the weights).

    Args:
        arch: One of :data:`ARCHITECTURES`.
        n_layers: Transformer blocks.
        d_model: Residual-stream width.
        n_heads: Query heads per block (``d_head = d_model // n_heads``).
        n_kv_heads: Key/value heads (grouped-query attention); ``None`` means ``n_heads // 2`` for architectures
            with grouped-query attention, else ``n_heads``.
        vocab_size: Tokenizer and embedding size.
        n_ctx: Longest sequence (position embeddings, rotary cache).
        seed: Seed of the weight initialisation (the global RNG is left untouched).

    Raises:
        ConfigError: An unknown architecture or sizes that cannot work.
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"Unknown architecture {arch!r}; build_local_model builds one of {list(ARCHITECTURES)}.")
    sizes = {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "n_ctx": n_ctx}
    lowest = {**dict.fromkeys(sizes, 1), "vocab_size": 260, "seed": 0}  # 260: 256 bytes, 3 special tokens, 1 merge
    for name, value in {**sizes, "vocab_size": vocab_size, "seed": seed}.items():
        if not is_int(value) or value < lowest[name]:
            raise ConfigError(f"{name} must be an int >= {lowest[name]}, got {value!r}.")
    if d_model % n_heads:
        raise ConfigError(f"d_model={d_model} is not divisible by n_heads={n_heads}; pick sizes that divide.")
    if n_kv_heads is None:
        n_kv_heads = max(n_heads // 2, 1) if arch not in _FULL_HEADS else n_heads
    if arch in _FULL_HEADS and n_kv_heads != n_heads:
        raise ConfigError(f"{arch} has no grouped-query attention: leave n_kv_heads unset (it equals n_heads).")
    if not is_int(n_kv_heads) or n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ConfigError(f"n_kv_heads must be a positive divisor of n_heads={n_heads}, got {n_kv_heads!r}.")
    return {"arch": arch, **sizes, "n_kv_heads": n_kv_heads, "vocab_size": vocab_size, "seed": seed}


def _hf_config(settings: dict[str, Any], tokenizer: Any) -> Any:
    """The ``transformers`` config of ``settings`` (special-token ids from ``tokenizer``)."""
    import transformers

    d_model, n_heads, n_layers = settings["d_model"], settings["n_heads"], settings["n_layers"]
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "initializer_range": _INIT_STD,
    }
    arch = settings["arch"]
    if arch == "gpt2":
        common["n_ctx"] = settings["n_ctx"]  # GPT-2's config.json also has the legacy n_ctx, which TL 3.x reads
        return transformers.GPT2Config(
            n_positions=settings["n_ctx"], n_embd=d_model, n_layer=n_layers, n_head=n_heads, **common
        )
    if arch == "gptj":  # GPT-J: parallel attention and MLP, rotary on part of each head, untied unembedding with bias
        return transformers.GPTJConfig(
            n_positions=settings["n_ctx"],
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            rotary_dim=max(d_model // n_heads // 4 * 2, 2),  # half of each head, even
            tie_word_embeddings=False,
            **common,
        )
    if arch == "gpt_neo":  # GPT-Neo: learned positions, global and local (sliding-window) attention alternating
        neo_layers = [[["global", "local"], n_layers // 2], [["global"], n_layers % 2]]
        return transformers.GPTNeoConfig(
            max_position_embeddings=settings["n_ctx"],
            hidden_size=d_model,
            num_layers=n_layers,
            num_heads=n_heads,
            attention_types=neo_layers,
            window_size=_SLIDING_WINDOW,
            **common,
        )
    llama_like = {
        "hidden_size": d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "intermediate_size": 4 * d_model,
        "max_position_embeddings": settings["n_ctx"],
    }
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(**llama_like, use_parallel_residual=True, **common)
    llama_like["num_key_value_heads"] = settings["n_kv_heads"]
    d_head = d_model // n_heads
    gemma = {"head_dim": d_head, "sliding_window": _SLIDING_WINDOW}
    alternating = [("sliding_attention", "full_attention")[i % 2] for i in range(n_layers)]  # Gemma-3, GPT-OSS, OLMo-3
    config_class, options = {
        "llama": (transformers.LlamaConfig, {}),
        "qwen2": (transformers.Qwen2Config, {}),
        "qwen3": (transformers.Qwen3Config, {"head_dim": d_head}),
        "mistral": (transformers.MistralConfig, {"sliding_window": _SLIDING_WINDOW}),
        "phi3": (transformers.Phi3Config, {}),
        "olmo2": (transformers.Olmo2Config, {}),
        "mixtral": (transformers.MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2}),
        "qwen3_moe": (
            transformers.Qwen3MoeConfig,
            {"head_dim": d_head, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 2 * d_model},
        ),
        "gpt_oss": (  # YaRN rotary stretched 32 times, as GPT-OSS's own config has it, over this context
            transformers.GptOssConfig,
            {
                "head_dim": d_head,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "sliding_window": _SLIDING_WINDOW,
                "layer_types": alternating,
                "rope_parameters": {
                    "rope_type": "yarn",
                    "factor": 32.0,
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                    "truncate": False,
                    "rope_theta": 150000.0,
                    "original_max_position_embeddings": max(settings["n_ctx"] // 32, 1),
                },
            },
        ),
        "llama4_text": (  # chunked attention with rotary positions, then a global layer without (NoPE)
            transformers.Llama4TextConfig,
            {
                "head_dim": d_head,
                "num_local_experts": 4,
                "num_experts_per_tok": 1,
                "intermediate_size_mlp": 4 * d_model,
                "attention_chunk_size": _SLIDING_WINDOW,
                "layer_types": [("chunked_attention", "full_attention")[i % 2] for i in range(n_layers)],
                "no_rope_layers": [1 - i % 2 for i in range(n_layers)],
            },
        ),
        "olmo3": (transformers.Olmo3Config, {"sliding_window": _SLIDING_WINDOW, "layer_types": alternating}),
        "smollm3": (transformers.SmolLM3Config, {"no_rope_layers": [1 - i % 2 for i in range(n_layers)]}),
        "gemma2": (
            transformers.Gemma2Config,
            {**gemma, "attn_logit_softcapping": _SOFTCAP, "final_logit_softcapping": _SOFTCAP},
        ),
        "gemma3_text": (  # sliding and global attention alternate here (5 : 1 in Gemma-3's own configs)
            transformers.Gemma3TextConfig,
            {
                **gemma,
                "query_pre_attn_scalar": d_head,
                "layer_types": alternating,
            },
        ),
    }[arch]
    return config_class(**llama_like, **options, **common)


def build_local_model(arch: str, folder: Path | str, **sizes: Any) -> Path:
    """Write a small random model of ``arch`` and its tokenizer to ``folder`` (``save_pretrained``); return it.

    Idempotent: a folder that already holds a complete build with the same settings is returned as it is. A
    build is written to a temporary folder and moved into place, so a folder never holds half a build.

    Args:
        arch: One of :data:`ARCHITECTURES`.
        folder: Where to write (created; replaced if it holds a build of other settings).
        **sizes: The keyword settings of :func:`local_model_settings` (``n_layers``, ``d_model``, ``n_heads``,
            ``n_kv_heads``, ``vocab_size``, ``n_ctx``, ``seed``), its defaults where left out.

    Returns:
        ``folder`` as a ``Path``: ``config.json``, weights, tokenizer files and the build settings.

    Raises:
        ConfigError: Unknown architecture or sizes that cannot work.
        ArtefactError: ``folder`` exists and holds something other than a build of this function.
    """
    import transformers

    settings = local_model_settings(arch, **sizes)
    record = {"format": _FORMAT, "transformers": transformers.__version__, **settings}
    folder = Path(folder)
    recorded = recorded_settings(folder)
    if recorded == record:
        return folder
    if folder.exists() and recorded is None and any(folder.iterdir()):
        raise ArtefactError(
            f"{folder} is not empty and holds no model written by build_local_model; pass a new or empty folder."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tokenizer = build_tokenizer(settings["vocab_size"])
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(settings["seed"])
            model = transformers.AutoModelForCausalLM.from_config(_hf_config(settings, tokenizer))
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _SETTINGS_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def recorded_settings(folder: Path) -> dict[str, Any] | None:
    """The settings a complete build in ``folder`` recorded, or ``None``."""
    try:
        recorded = json.loads((folder / _SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None
