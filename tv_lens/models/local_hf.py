r"""Small randomly initialised HuggingFace models of real architectures, built and loaded offline.

Pretrained language models differ from the GPT-2-style models tv_lens trains in ways that matter to hooks:
rotary positions, grouped-query attention, parallel attention and MLP, RMSNorm, soft-capped logits, sliding-window
attention. :func:`build_local_model` writes a small model of a real architecture with ``transformers`` from a
config (random weights, no download) and a byte-level BPE tokenizer trained on a built-in English corpus with the
``tokenizers`` package, both with ``save_pretrained``; :func:`load_local_model` boots the folder through
TransformerLens as a ``TransformerBridge`` (any TransformerLens ≥ 3) or a ``HookedTransformer`` (TransformerLens
≤ 3, for the architectures it can convert from a config).

Architectures (:data:`ARCHITECTURES`):

- ``"gpt2"``: ``GPT2LMHeadModel`` (learned positions, LayerNorm, GELU MLP, tied unembedding).
- ``"gpt_neox"``: ``GPTNeoXForCausalLM`` in Pythia's layout (parallel attention and MLP, partial rotary).
- ``"llama"``: ``LlamaForCausalLM`` (RoPE, RMSNorm, gated MLP, grouped-query attention).
- ``"qwen2"``: ``Qwen2ForCausalLM`` (like Llama, with query/key/value biases and grouped-query attention).
- ``"gemma2"``: ``Gemma2ForCausalLM`` (attention and final-logit soft-capping, sliding-window attention on
  alternate layers, pre- and post-norms around attention and MLP, grouped-query attention).

The tokenizer has ``<|pad|>``, ``<|bos|>`` and ``<|eos|>`` special tokens (ids 0, 1, 2) and learns whole words
with their leading space (``" cold"``), the ``"->"`` and newline of ICL prompts and pieces of binary strings.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     model = load_local_model(build_local_model("llama", Path(tmp) / "llama"), "bridge")
>>> tokens = model.tokenizer("hot->cold\nbig->", return_tensors="pt")["input_ids"]  # BOS first
>>> model.tokenizer.convert_ids_to_tokens(tokens[0])
['<|bos|>', 'hot', '->', 'cold', 'Ċ', 'big', '->']
>>> model(tokens).shape, model.cfg.n_heads, model.cfg.n_key_value_heads
(torch.Size([1, 7, 1024]), 4, 2)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from tv_lens.errors import ArtefactError, ConfigError
from tv_lens.models.builders import BackendUnavailableError

__all__ = [
    "ARCHITECTURES",
    "LOADERS",
    "build_local_model",
    "build_tokenizer",
    "load_local_model",
    "local_model_settings",
]

ARCHITECTURES: tuple[str, ...] = ("gpt2", "gpt_neox", "llama", "qwen2", "gemma2")
"""Architectures :func:`build_local_model` builds (HuggingFace ``model_type`` names)."""

LOADERS: tuple[str, ...] = ("bridge", "hooked")
"""How :func:`load_local_model` loads a folder: ``TransformerBridge`` or ``HookedTransformer``."""

Loader = Literal["bridge", "hooked"]

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"
_GQA = ("llama", "qwen2", "gemma2")  # architectures with grouped-query attention
_SETTINGS_FILE = "tv_lens_build.json"
_FORMAT = 1  # bump when what a build writes changes, so old builds are rebuilt
_INIT_STD = 0.1  # weight init std: larger than HF's 0.02, so attention patterns are far from uniform
_SLIDING_WINDOW = 8  # Gemma-2's sliding window, shorter than test prompts so that it masks keys
_SOFTCAP = 5.0  # Gemma-2's attention and final-logit soft-caps, small enough to bind at these sizes

# The built-in corpus: ICL-style lines of the text tasks (antonyms, capitals, plurals, bitwise strings) and plain
# English sentences, so that common words are single tokens with and without their leading space.
_ANTONYMS = (
    "hot cold", "big small", "up down", "left right", "good bad", "old new", "young old", "fast slow",
    "happy sad", "open closed", "light dark", "high low", "long short", "rich poor", "hard soft", "early late",
    "full empty", "strong weak", "wet dry", "near far", "loud quiet", "first last", "true false", "win lose",
    "buy sell", "push pull", "in out", "on off", "yes no", "day night", "black white", "love hate",
    "thick thin", "clean dirty", "heavy light", "cheap expensive", "safe dangerous", "alive dead",
)  # fmt: skip
_CAPITALS = (
    "France Paris", "Germany Berlin", "Italy Rome", "Spain Madrid", "Japan Tokyo", "China Beijing",
    "Russia Moscow", "Egypt Cairo", "Canada Ottawa", "Brazil Brasilia", "India Delhi", "Kenya Nairobi",
    "Greece Athens", "Norway Oslo", "Sweden Stockholm", "Poland Warsaw", "Peru Lima", "Chile Santiago",
    "Cuba Havana", "Ireland Dublin", "Austria Vienna", "Portugal Lisbon", "Turkey Ankara", "Iran Tehran",
)  # fmt: skip
_PLURALS = ("dog dogs", "cat cats", "box boxes", "child children", "mouse mice", "city cities", "tree trees")
_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "She walked slowly into the dark forest and found an old wooden house near the lake.",
    "They ran across the bridge, and we waited quietly under the big green tree.",
    "The capital of France is Paris; the capital of Japan is Tokyo.",
    "The opposite of hot is cold, and the opposite of big is small.",
    "He said that the answer was yes, but I think it is no.",
    "In the morning the teacher read a story to the children in the garden.",
    "Numbers such as one, two, three, four, five, six, seven, eight, nine and ten are words too.",
)


def _corpus() -> list[str]:
    """Training text of the tokenizer: ICL prompts of the built-in tasks, sentences, bitwise strings."""
    from tv_lens.tasks.lexicon import LEXICON, generate_sentences, sentence_text

    lines = []
    for pairs in (_ANTONYMS, _CAPITALS, _PLURALS):
        examples = [pair.split() for pair in pairs]
        lines += ["\n".join(f"{x}->{y}" for x, y in examples)] * 4
        lines.append("\n".join(f"{x} -> {y}" for x, y in examples))
        lines.append(" ".join(word for pair in examples for word in pair))
    lines += [sentence_text(sentence) for sentence in generate_sentences(200, seed=0)]
    lines += [" ".join(words) for words in LEXICON.values()]
    generator = torch.Generator().manual_seed(0)
    for n_bits in (3, 4, 5, 6, 8):
        a, b, c = torch.randint(0, 1 << n_bits, (3, 40), generator=generator).tolist()
        lines.append(
            "\n".join(f"{x:0{n_bits}b} {y:0{n_bits}b}->{z:0{n_bits}b}" for x, y, z in zip(a, b, c, strict=True))
        )
    return lines + list(_SENTENCES) * 3


def build_tokenizer(vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style) trained on the built-in corpus, as a ``PreTrainedTokenizerFast``.

    Every string is representable (bytes are the base alphabet); ids 0, 1, 2 are ``<|pad|>``, ``<|bos|>`` and
    ``<|eos|>``. The same ``vocab_size`` gives the same tokenizer.

    Args:
        vocab_size: Number of token ids, special tokens and the 256 byte tokens included (> 259).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD_TOKEN, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN
    )


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

    ``n_kv_heads=None`` means ``n_heads // 2`` for architectures with grouped-query attention, else ``n_heads``.

    Raises:
        ConfigError: An unknown architecture or sizes that cannot work.
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"Unknown architecture {arch!r}; build_local_model builds one of {list(ARCHITECTURES)}.")
    sizes = {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "n_ctx": n_ctx}
    lowest = {**dict.fromkeys(sizes, 1), "vocab_size": 260, "seed": 0}  # 260: 256 bytes, 3 special tokens, 1 merge
    for name, value in {**sizes, "vocab_size": vocab_size, "seed": seed}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest[name]:
            raise ConfigError(f"{name} must be an int >= {lowest[name]}, got {value!r}.")
    if d_model % n_heads:
        raise ConfigError(f"d_model={d_model} is not divisible by n_heads={n_heads}; pick sizes that divide.")
    if n_kv_heads is None:
        n_kv_heads = max(n_heads // 2, 1) if arch in _GQA else n_heads
    if arch not in _GQA and n_kv_heads != n_heads:
        raise ConfigError(f"{arch} has no grouped-query attention: leave n_kv_heads unset (it equals n_heads).")
    if isinstance(n_kv_heads, bool) or not isinstance(n_kv_heads, int) or n_kv_heads < 1 or n_heads % n_kv_heads:
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
    if arch == "llama":
        return transformers.LlamaConfig(**llama_like, **common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**llama_like, **common)
    return transformers.Gemma2Config(
        **llama_like,
        head_dim=d_model // n_heads,
        sliding_window=_SLIDING_WINDOW,
        attn_logit_softcapping=_SOFTCAP,
        final_logit_softcapping=_SOFTCAP,
        **common,
    )


def build_local_model(
    arch: str,
    folder: Path | str,
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    vocab_size: int = 1024,
    n_ctx: int = 256,
    seed: int = 0,
) -> Path:
    """Write a small random model of ``arch`` and its tokenizer to ``folder`` (``save_pretrained``); return it.

    Idempotent: a folder that already holds a complete build with the same settings is returned as it is. A
    build is written to a temporary folder and moved into place, so a folder never holds half a build.

    Args:
        arch: One of :data:`ARCHITECTURES`.
        folder: Where to write (created; replaced if it holds a build of other settings).
        n_layers: Transformer blocks.
        d_model: Residual-stream width.
        n_heads: Query heads per block (``d_head = d_model // n_heads``).
        n_kv_heads: Key/value heads (grouped-query attention); see :func:`local_model_settings`.
        vocab_size: Tokenizer and embedding size.
        n_ctx: Longest sequence (position embeddings, rotary cache).
        seed: Seed of the weight initialisation (the global RNG is left untouched).

    Returns:
        ``folder`` as a ``Path``: ``config.json``, weights, tokenizer files and the build settings.

    Raises:
        ConfigError: Unknown architecture or sizes that cannot work.
        ArtefactError: ``folder`` exists and holds something other than a build of this function.
    """
    import transformers

    settings = local_model_settings(
        arch,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=vocab_size,
        n_ctx=n_ctx,
        seed=seed,
    )
    record = {"format": _FORMAT, "transformers": transformers.__version__, **settings}
    folder = Path(folder)
    recorded = _recorded_settings(folder)
    if recorded == record:
        return folder
    if folder.exists() and recorded is None and any(folder.iterdir()):
        raise ArtefactError(
            f"{folder} is not empty and holds no model written by build_local_model; pass a new or empty folder."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tokenizer = build_tokenizer(vocab_size)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
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


def _recorded_settings(folder: Path) -> dict[str, Any] | None:
    """The settings a complete build in ``folder`` recorded, or ``None``."""
    try:
        recorded = json.loads((folder / _SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def load_local_model(
    folder: Path | str,
    loader: Loader = "bridge",
    *,
    compatibility_mode: bool = False,
    padding_side: Literal["left", "right"] | None = None,
    bos_as_pad: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Load a :func:`build_local_model` folder as a TransformerLens model, offline, in eval mode.

    Args:
        folder: A folder written by :func:`build_local_model`.
        loader: ``"bridge"``: ``TransformerBridge.boot_transformers(folder)`` (raw HF weights, HF numerics).
            ``"hooked"``: ``HookedTransformer`` (TransformerLens ≤ 3) with its config converted from the HF config
            and its weights from the HF model, processed as ``HookedTransformer.from_pretrained`` does (LayerNorm
            folded, writing weights and unembedding centred, value biases folded).
        compatibility_mode: Bridge only: call ``enable_compatibility_mode()``, which processes the weights as the
            hooked loader does (HookedTransformer numerics).
        padding_side: Set the model tokenizer's ``padding_side`` (``None`` keeps TransformerLens's choice).
        bos_as_pad: Make the pad token the BOS token (``bos_token_id == pad_token_id``, as Qwen2's tokenizer has
            once TransformerLens sets it up).
        device: Device of the model.
        dtype: Parameter dtype.

    Returns:
        The ``TransformerBridge`` or ``HookedTransformer``; its tokenizer is ``model.tokenizer``.

    Raises:
        ConfigError: Unknown loader, or ``compatibility_mode`` with the hooked loader.
        ArtefactError: ``folder`` holds no build of :func:`build_local_model`.
        BackendUnavailableError: The installed TransformerLens lacks the loader's class, or cannot convert this
            architecture to a ``HookedTransformer``.
    """
    if loader not in LOADERS:
        raise ConfigError(
            f"Unknown loader {loader!r}; use 'bridge' (TransformerBridge) or 'hooked' (HookedTransformer)."
        )
    if loader == "hooked" and compatibility_mode:
        raise ConfigError("compatibility_mode applies to the bridge; the hooked loader always processes weights.")
    folder = Path(folder)
    settings = _recorded_settings(folder)
    if settings is None:
        raise ArtefactError(f"{folder} holds no model built by build_local_model; build it first.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if loader == "bridge":
            model = _load_bridge(folder, compatibility_mode, device, dtype)
        else:
            model = _load_hooked(folder, settings["arch"], device, dtype)
    tokenizer = model.tokenizer
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if bos_as_pad:
        tokenizer.pad_token = tokenizer.bos_token
    return model.eval()


def _tokenizer(folder: Path) -> Any:
    """The folder's tokenizer, with BOS prepended by default (what TransformerLens would otherwise reload).

    Read as a plain ``PreTrainedTokenizerFast``: ``AutoTokenizer`` of transformers ≥ 5 picks the class from the
    model type and, for Qwen2, swaps in Qwen2's own pre-tokenizer and adds a token the embeddings lack.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(folder), add_bos_token=True)


def _load_bridge(folder: Path, compatibility_mode: bool, device: str | torch.device, dtype: torch.dtype) -> Any:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as error:
        raise BackendUnavailableError(
            "loader='bridge' needs TransformerLens ≥ 3.0 (TransformerBridge); upgrade transformer-lens."
        ) from error
    bridge = TransformerBridge.boot_transformers(  # type: ignore[attr-defined]
        str(folder), tokenizer=_tokenizer(folder), device=device, dtype=dtype
    )
    if compatibility_mode:
        bridge.enable_compatibility_mode()
    return bridge


def _load_hooked(folder: Path, arch: str, device: str | torch.device, dtype: torch.dtype) -> Any:
    """``HookedTransformer.from_pretrained`` without the official-name lookup (which needs the Hub).

    TransformerLens's own converters build the config from the folder's HF config and the weights from the HF
    model; the weights are processed as ``from_pretrained`` does by default.
    """
    try:
        from transformer_lens import HookedTransformer
        from transformer_lens import loading_from_pretrained as loading
    except ImportError as error:
        raise BackendUnavailableError(
            "loader='hooked' needs TransformerLens ≤ 3.x (HookedTransformer was removed in 4.0); use "
            "loader='bridge', with compatibility_mode=True for HookedTransformer numerics."
        ) from error
    from transformers import AutoModelForCausalLM

    hf_model: Any = AutoModelForCausalLM.from_pretrained(folder)
    hf_model = hf_model.to(dtype)
    # TransformerLens picks the architecture from the model *name* when it contains "llama" or "gemma", so it
    # reads the config from a copy in a folder of a neutral name.
    with tempfile.TemporaryDirectory(prefix="hf-config-") as config_dir:
        shutil.copy(folder / "config.json", config_dir)
        try:
            cfg = loading.get_pretrained_model_config(
                config_dir, hf_cfg=hf_model.config.to_dict(), fold_ln=True, device=device, dtype=dtype
            )
        except NotImplementedError as error:  # e.g. Gemma-2: sizes known by official model name only
            raise BackendUnavailableError(
                f"TransformerLens's HookedTransformer cannot load {arch} from a config ({error}). Use "
                "loader='bridge', with compatibility_mode=True for HookedTransformer numerics."
            ) from error
        state_dict = loading.get_pretrained_state_dict(config_dir, cfg, hf_model, dtype=dtype)
    model = HookedTransformer(cfg, _tokenizer(folder), move_to_device=False)
    softcap = (getattr(cfg, "output_logits_soft_cap", 0) or 0) > 0  # centring would change soft-capped logits
    model.load_and_process_state_dict(
        state_dict, fold_ln=True, center_writing_weights=True, center_unembed=not softcap, fold_value_biases=True
    )
    model.move_model_modules_to_device()
    return model
