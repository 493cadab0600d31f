"""Small randomly initialised TransformerLens models for synthetic ICL tasks.

No weights are downloaded: :func:`build_model` makes a GPT-2-style model from a :class:`ModelConfig`.
It returns a ``HookedTransformer`` where the installed TransformerLens still has one (≤ 3.x) and a
native ``TransformerBridge`` otherwise (4.x); ``backend=`` forces either where both exist.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from tv_lens.errors import ConfigError, TvLensError

Backend = Literal["auto", "hooked", "bridge"]


class BackendUnavailableError(TvLensError, ImportError):
    """The requested TransformerLens model class is not in the installed TransformerLens."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a small GPT-2-style model.

    Attributes:
        d_vocab: Vocabulary size (a task pool declares the size it needs).
        n_layers: Transformer blocks.
        d_model: Residual-stream width.
        n_heads: Attention heads per block.
        n_ctx: Longest prompt, in tokens.
        d_head: Head width; ``None`` means ``d_model // n_heads``.
        d_mlp: MLP hidden width; ``None`` means ``4 * d_model``.
        act_fn: MLP activation (a TransformerLens name such as ``"gelu"`` or ``"relu"``).
        normalization_type: ``"LN"`` (LayerNorm) or ``"RMS"``.
        seed: Seed of the weight initialisation (the global RNG is left untouched).
        dtype: Parameter dtype name (``"float32"``, or ``"float64"`` for exact numerical comparisons).
        backend: ``"hooked"`` (HookedTransformer), ``"bridge"`` (native TransformerBridge) or ``"auto"``.
    """

    d_vocab: int
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_ctx: int = 128
    d_head: int | None = None
    d_mlp: int | None = None
    act_fn: str = "gelu"
    normalization_type: str = "LN"
    seed: int = 0
    dtype: str = "float32"
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_layers", "d_model", "n_heads", "n_ctx"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive int, got {value!r}.")
        if self.d_head is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; pick sizes that divide "
                "or set d_head explicitly."
            )
        if not isinstance(self.dtype, str) or not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ConfigError(f"dtype must name a torch dtype such as 'float32' (a string), got {self.dtype!r}.")
        if self.backend not in ("auto", "hooked", "bridge"):
            raise ConfigError(f"backend must be 'auto', 'hooked' or 'bridge', got {self.backend!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for checkpoints and saved results)."""
        return asdict(self)

    def _tl_kwargs(self) -> dict[str, Any]:
        return {
            "d_model": self.d_model,
            "d_head": self.d_head or self.d_model // self.n_heads,
            "n_layers": self.n_layers,
            "n_ctx": self.n_ctx,
            "n_heads": self.n_heads,
            "d_vocab": self.d_vocab,
            "d_mlp": self.d_mlp or 4 * self.d_model,
            "act_fn": self.act_fn,
            "normalization_type": self.normalization_type,
            "dtype": getattr(torch, self.dtype),
        }


def hooked_transformer_available() -> bool:
    """Whether the installed TransformerLens still has ``HookedTransformer`` (removed in 4.0)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def build_model(config: ModelConfig, device: str | torch.device = "cpu") -> Any:
    """A randomly initialised model of ``config``'s shape, in eval mode.

    >>> model = build_model(ModelConfig(d_vocab=16, n_layers=2, d_model=32, n_heads=4, n_ctx=32))
    >>> model(torch.zeros(1, 5, dtype=torch.long)).shape
    torch.Size([1, 5, 16])
    """
    backend = config.backend
    if backend == "auto":
        backend = "hooked" if hooked_transformer_available() else "bridge"
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.manual_seed(config.seed)
        model = _build_hooked(config) if backend == "hooked" else _build_bridge(config)
    device = torch.device(device)
    if device.type != "cpu":
        model = model.to(device)
    return model.eval()


def _build_hooked(config: ModelConfig) -> Any:
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as error:
        raise BackendUnavailableError(
            "backend='hooked' needs TransformerLens ≤ 3.x (HookedTransformer was removed in 4.0); "
            "use backend='bridge' or 'auto'."
        ) from error
    return HookedTransformer(HookedTransformerConfig(**config._tl_kwargs()))


def _build_bridge(config: ModelConfig) -> Any:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as error:
        raise BackendUnavailableError(
            "backend='bridge' needs TransformerLens ≥ 3.0 (TransformerBridge); upgrade transformer-lens."
        ) from error
    try:
        from transformer_lens.config import TransformerBridgeConfig
    except ImportError:
        from transformer_lens.model_bridge import TransformerBridgeConfig  # type: ignore[no-redef,attr-defined]
    bridge_config = TransformerBridgeConfig(**config._tl_kwargs())
    return TransformerBridge.boot_native(bridge_config, dtype=getattr(torch, config.dtype))  # type: ignore[attr-defined]
