"""Small randomly initialised TransformerLens models for synthetic ICL tasks.

No weights are downloaded: :func:`build_model` makes a GPT-2-style model from a :class:`ModelConfig`.
It returns a ``HookedTransformer`` where the installed TransformerLens still has one (≤ 3.x) and a
native ``TransformerBridge`` otherwise (4.x); ``backend=`` forces either where both exist.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch

from tv_lens.checks import is_int, is_seed
from tv_lens.environment import available_memory
from tv_lens.errors import ConfigError, TvLensError

__all__ = [
    "ACT_FNS",
    "DTYPES",
    "NORMALIZATION_TYPES",
    "PORTABLE_ACT_FNS",
    "Backend",
    "BackendUnavailableError",
    "ModelConfig",
    "build_model",
    "hooked_transformer_available",
]

Backend = Literal["auto", "hooked", "bridge"]


class BackendUnavailableError(TvLensError, ImportError):
    """The requested TransformerLens model class is not in the installed TransformerLens."""


ACT_FNS: tuple[str, ...] = (
    "gelu",
    "gelu_new",
    "relu",
    "silu",
    "swish",
    "solu",
    "solu_ln",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "relu2",
    "xielu",
)
"""MLP activations a TransformerLens backend may build (which ones depends on the backend and version)."""

PORTABLE_ACT_FNS = frozenset({"gelu", "gelu_new", "relu", "silu"})
"""The activations every backend of every supported TransformerLens builds."""

NORMALIZATION_TYPES: tuple[str | None, ...] = ("LN", "LNPre", "RMS", "RMSPre", None)
"""TransformerLens normalisations: LayerNorm, LayerNorm without weights, RMSNorm, RMSNorm without weights, none."""

DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")
"""Parameter dtypes a model can be built in."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a small GPT-2-style model.

    Attributes:
        d_vocab: Vocabulary size (a task pool declares the size it needs).
        n_layers: Transformer blocks.
        d_model: Residual-stream width.
        n_heads: Attention heads per block.
        n_ctx: Longest prompt, in tokens.
        d_head: Head width (a positive int); ``None`` means ``d_model // n_heads``.
        d_mlp: MLP hidden width (a positive int); ``None`` means ``4 * d_model``.
        act_fn: MLP activation, one of :data:`ACT_FNS` (e.g. ``"gelu"`` or ``"relu"``).
        normalization_type: ``"LN"`` (LayerNorm), ``"RMS"``, ``"LNPre"``, ``"RMSPre"`` or ``None`` (no norm).
        seed: Seed of the weight initialisation, an int in ``[0, 2**64)`` (the global RNG is left untouched).
        dtype: Parameter dtype name, one of :data:`DTYPES` (``"float64"`` for exact numerical comparisons).
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
    normalization_type: str | None = "LN"
    seed: int = 0
    dtype: str = "float32"
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_layers", "d_model", "n_heads", "n_ctx"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive int, got {value!r}.")
        for name, default in (("d_head", "d_model // n_heads"), ("d_mlp", "4 * d_model")):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ConfigError(f"ModelConfig.{name} must be a positive int or None (for {default}), got {value!r}.")
        if self.d_head is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; pick sizes that divide "
                "or set d_head explicitly."
            )
        if not isinstance(self.act_fn, str) or self.act_fn not in ACT_FNS:
            raise ConfigError(
                f"Unknown act_fn {self.act_fn!r}; use one of {list(ACT_FNS)} (names are lower case, e.g. 'gelu')."
            )
        if not (self.normalization_type is None or isinstance(self.normalization_type, str)) or (
            self.normalization_type not in NORMALIZATION_TYPES
        ):
            raise ConfigError(
                f"Unknown normalization_type {self.normalization_type!r}; use one of {list(NORMALIZATION_TYPES)} "
                "('LN' is LayerNorm, None no normalisation)."
            )
        if not is_seed(self.seed):
            raise ConfigError(f"ModelConfig.seed must be an int in [0, 2**64), got {self.seed!r}; e.g. seed=0.")
        if not isinstance(self.dtype, str) or not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ConfigError(f"dtype must name a torch dtype such as 'float32' (a string), got {self.dtype!r}.")
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"dtype {self.dtype!r} cannot hold trainable weights; use a floating-point dtype, one of "
                f"{list(DTYPES)}."
            )
        if not isinstance(self.backend, str) or self.backend not in get_args(Backend):
            raise ConfigError(f"backend must be one of {list(get_args(Backend))}, got {self.backend!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for checkpoints and saved results)."""
        return asdict(self)

    def _tl_kwargs(self) -> dict[str, Any]:
        return {
            "d_model": self.d_model,
            "d_head": self.d_model // self.n_heads if self.d_head is None else self.d_head,
            "n_layers": self.n_layers,
            "n_ctx": self.n_ctx,
            "n_heads": self.n_heads,
            "d_vocab": self.d_vocab,
            "d_mlp": 4 * self.d_model if self.d_mlp is None else self.d_mlp,
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

    Raises:
        ConfigError: ``config`` is not a :class:`ModelConfig`, its ``act_fn`` is not one the chosen backend
            builds, or ``device`` names no device this machine has (e.g. ``"cuda"`` without CUDA).
    """
    if not isinstance(config, ModelConfig):
        raise ConfigError(
            f"build_model needs a ModelConfig, got {type(config).__name__}; pass e.g. ModelConfig(d_vocab=16) "
            "(a dict of fields: ModelConfig(**fields))."
        )
    device = _checked_device(device)
    backend = config.backend
    if backend == "auto":
        backend = "hooked" if hooked_transformer_available() else "bridge"
    _check_activation(config.act_fn, backend)
    _check_fits(config, backend, device)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.manual_seed(config.seed)
        model = _build_hooked(config) if backend == "hooked" else _build_bridge(config)
    if device.type != "cpu":
        model = model.to(device)
    return model.eval()


def _check_fits(config: ModelConfig, backend: str, device: torch.device) -> None:
    """Raise a :class:`ConfigError` for a model that certainly does not fit in memory, before anything is allocated.

    The weights are built on the CPU (then moved), so they must fit there, and on ``device``. The bytes counted are
    a lower bound of a build's peak: the embedding, unembedding and positional weights and each block's attention
    and MLP matrices, plus HookedTransformer's boolean causal mask (``n_ctx**2`` bytes per block) or a
    TransformerBridge's one mask and second copy of its largest matrix while it is initialised (measured). A model is
    refused only where building it would fail or get the process killed part-way.
    """
    sizes = config._tl_kwargs()
    d_model, n_ctx = sizes["d_model"], sizes["n_ctx"]
    matrices = {
        "embed": sizes["d_vocab"] * d_model,
        "positions": n_ctx * d_model,
        "attention": sizes["n_heads"] * sizes["d_head"] * d_model,
        "mlp": d_model * sizes["d_mlp"],
    }
    per_block = 4 * matrices["attention"] + 2 * matrices["mlp"]
    n_weights = 2 * matrices["embed"] + matrices["positions"] + sizes["n_layers"] * per_block
    width = sizes["dtype"].itemsize
    # HookedTransformer: a boolean causal mask per block; a bridge: one, and a copy of its largest matrix at init
    masks = sizes["n_layers"] * n_ctx * n_ctx if backend == "hooked" else n_ctx * n_ctx
    extra = masks + (0 if backend == "hooked" else max(matrices.values()) * width)
    needed = n_weights * width + extra
    free = [available_memory(), torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None]
    known = [b for b in free if b is not None]
    if known and needed > min(known):
        raise ConfigError(
            f"A model of this ModelConfig needs at least {needed / 2**30:,.1f} GiB, but only {min(known) / 2**30:,.1f} "
            "GiB of memory is free; use smaller sizes (d_vocab, d_model, d_mlp, n_layers, n_ctx)."
        )


def _checked_device(device: object) -> torch.device:
    """``device`` as a ``torch.device`` that can hold tensors here, or a :class:`ConfigError` saying why not."""
    if not isinstance(device, (str, torch.device)):
        raise ConfigError(f"device must be a string such as 'cpu' or 'cuda' or a torch.device, got {device!r}.")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"Unknown device {device!r} ({error}); use e.g. 'cpu' or 'cuda'.") from error
    if parsed.type == "meta":
        raise ConfigError(
            f"device={str(device)!r} holds no weights (meta tensors have shapes but no values), so the model could "
            "not run; use device='cpu' or an available accelerator."
        )
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={str(device)!r} but CUDA is not available here (torch.cuda.is_available() is False); "
                "use device='cpu', or a machine and a torch build with CUDA."
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={str(device)!r} but this machine has {torch.cuda.device_count()} CUDA device(s); use an index "
                f"in [0, {torch.cuda.device_count() - 1}]."
            )
    try:
        torch.empty(0, device=parsed)
    except (RuntimeError, AssertionError, ValueError, TypeError) as error:
        raise ConfigError(
            f"device={str(device)!r} cannot hold tensors here ({error}); use device='cpu' or an available accelerator."
        ) from error
    return parsed


def _check_activation(act_fn: str, backend: str) -> None:
    """Raise a :class:`ConfigError` when the installed TransformerLens cannot build ``act_fn`` with ``backend``."""
    supported = _backend_activations(backend)
    if act_fn not in supported:
        other = "bridge" if backend == "hooked" else "hooked"
        raise ConfigError(
            f"act_fn={act_fn!r} is not built by the installed TransformerLens's {backend!r} backend; use one of "
            f"{sorted(supported)}, or backend={other!r} where it has this activation."
        )


def _backend_activations(backend: str) -> frozenset[str]:
    """Activation names the backend's model classes accept (the portable four where the table cannot be read)."""
    try:
        if backend == "hooked":
            from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS

            return frozenset(SUPPORTED_ACTIVATIONS)
        from transformer_lens.model_bridge.sources.native import model as native

        return frozenset(native._ACTIVATIONS)
    except (ImportError, AttributeError):
        return PORTABLE_ACT_FNS


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
