"""Booting a :func:`~tv_lens.models.local_hf.build_local_model` folder through TransformerLens, offline.

``"bridge"`` boots it as a ``TransformerBridge`` (any TransformerLens ≥ 3), ``"hooked"`` as a ``HookedTransformer``
(TransformerLens ≤ 3, for the architectures it can convert from a config).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from tv_lens.errors import ArtefactError, ConfigError
from tv_lens.models.builders import BackendUnavailableError
from tv_lens.models.local_hf.build import recorded_settings

__all__ = ["LOADERS", "Loader", "load_local_model"]

Loader = Literal["bridge", "hooked"]
LOADERS: tuple[str, ...] = get_args(Loader)
"""How :func:`load_local_model` loads a folder: ``TransformerBridge`` or ``HookedTransformer``."""


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
    settings = recorded_settings(folder)
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
