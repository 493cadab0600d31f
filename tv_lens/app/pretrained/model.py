"""Booting a pretrained HuggingFace model through TransformerLens, with errors that name a fix, and its facts."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from tv_lens.app.messages import one_line
from tv_lens.app.pretrained.config import DTYPES
from tv_lens.environment import package_version
from tv_lens.errors import ArtefactError, ConfigError, MissingFileError, TvLensError
from tv_lens.models import adapt

__all__ = ["ModelLoadError", "boot_model", "check_model_source", "model_facts", "resolve_device"]


class ModelLoadError(TvLensError, RuntimeError):
    """A model that TransformerLens could not boot (unknown name, missing weights, unsupported architecture)."""


def boot_model(
    model: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    compatibility_mode: bool = False,
    progress: bool = True,
) -> Any:
    """``TransformerBridge.boot_transformers(model, device=..., dtype=...)`` in eval mode, with errors that name a fix.

    ``model`` is a HuggingFace model id or a local folder that holds ``config.json``, the weights and the tokenizer
    files (``save_pretrained``). The bridge keeps HuggingFace's numerics; ``compatibility_mode=True`` processes the
    weights as ``HookedTransformer.from_pretrained`` does (LayerNorm folded, weights centred).

    Args:
        model: Model id or folder.
        device: Device (``None``: ``"cuda"`` when available, else ``"cpu"``).
        dtype: Parameter dtype (a ``torch.dtype`` or a key of :data:`DTYPES`).
        compatibility_mode: Call ``enable_compatibility_mode()`` after booting.
        progress: Show the weight-loading progress bar of ``transformers``.

    Raises:
        MissingFileError: ``model`` names a local path that does not exist.
        ArtefactError: A local folder without ``config.json``, or a file instead of a folder.
        ModelLoadError: TransformerLens could not boot the model (the underlying error is chained).
    """
    check_model_source(model)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"Unknown dtype {dtype!r}; use one of {list(DTYPES)}.")
        dtype = DTYPES[dtype]
    device = resolve_device(device)
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as error:
        raise ModelLoadError(
            "Booting a HuggingFace model needs TransformerLens >= 3.0 (TransformerBridge); upgrade transformer-lens."
        ) from error
    source = str(Path(model).expanduser()) if Path(model).expanduser().is_dir() else model
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    try:
        if not progress:
            hf_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # conversion notes of TransformerLens and transformers
            bridge = TransformerBridge.boot_transformers(source, device=device, dtype=dtype)  # type: ignore[attr-defined]
            if compatibility_mode:
                bridge.enable_compatibility_mode()
    except (KeyboardInterrupt, TvLensError):
        raise
    except Exception as error:  # any failure inside TransformerLens / transformers / the hub
        local = Path(model).expanduser().is_dir()
        hint = (
            "check that the folder holds a causal language model that TransformerLens supports, with its weights"
            if local
            else "check the name on the HuggingFace Hub (offline, the model must be in the local HF cache), or pass "
            "a local folder holding config.json, the weights and the tokenizer"
        )
        raise ModelLoadError(
            f"TransformerLens could not boot {model!r} ({type(error).__name__}: {one_line(error, 300)}); {hint}."
        ) from error
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return bridge.eval()


def check_model_source(model: str) -> None:
    """Raise a clear error for a local model path that cannot be booted, before importing TransformerLens.

    A string that exists on disk is a local folder; one that looks like a path (``./x``, ``/x``, ``~/x``,
    ``a/b/c``) but does not exist is a missing folder; anything else is taken as a HuggingFace model id.

    Raises:
        MissingFileError: A path that does not exist.
        ArtefactError: A file instead of a folder, or a folder without ``config.json``.
    """
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ArtefactError(
                f"{model} is a file; pass the folder that holds config.json, the weights and the tokenizer files."
            )
        if not (path / "config.json").is_file():
            raise ArtefactError(
                f"{model} holds no config.json; pass a folder written by save_pretrained (config.json, the weights "
                "and the tokenizer files), or a HuggingFace model id."
            )
        return
    looks_like_path = model.startswith((".", "/", "~")) or model.endswith("/") or model.count("/") > 1
    if looks_like_path:
        raise MissingFileError(
            f"No model folder {model}; pass an existing folder holding config.json, the weights and the tokenizer "
            "files, or a HuggingFace model id such as 'gpt2'."
        )


def resolve_device(device: str | torch.device | None) -> str | torch.device:
    """``device``, or ``"cuda"`` when it is ``None`` and a GPU is available, else ``"cpu"``."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_facts(model: Any) -> dict[str, Any]:
    """Class, sizes and TransformerLens version of a booted model (stored in ``run.json``)."""
    adapter = adapt(model)
    return {
        "class": type(model).__name__,
        "n_layers": adapter.n_layers,
        "n_heads": adapter.n_heads,
        "d_model": adapter.d_model,
        "d_vocab": int(model.cfg.d_vocab),
        "transformer_lens": package_version("transformer-lens"),
    }
