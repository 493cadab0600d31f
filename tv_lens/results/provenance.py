"""Where a saved vector came from: the model it was read from, and how it is meant to be applied.

A task vector or function vector only means something in the residual stream of the model it was read from.
:class:`VectorProvenance` travels with :class:`~tv_lens.task_vectors.TaskVectors` and
:class:`~tv_lens.results.FunctionVector` when they are saved: the source model's :class:`ModelSignature`
(architecture, sizes, a fingerprint of its weights, a name the user gives), the residual site and layers the
vector is meant for, the operation (``"replace"`` or ``"add"``, times ``scale``) and the task pool it was built
from.

Applying a vector to a model checks the signature (:func:`check_vector_model`):

- other sizes (``n_layers``, ``d_model``, ``n_heads``, ``d_vocab``) raise :class:`~tv_lens.errors.ShapeError`:
  the vector's coordinates mean nothing there;
- the same sizes with other weights warn (:class:`OtherWeightsWarning`) and go on: a fine-tuned relative of the
  source model is a legitimate target (how far a task vector survives fine-tuning is a question worth asking).

The weight fingerprint (:func:`weights_fingerprint`) is a SHA-256 over a few named tensors, each cast to float32
on the CPU: ``W_E``, ``W_U``, and ``attn.W_Q``, ``attn.W_K``, ``attn.W_V``, ``attn.W_O``, ``mlp.W_in``,
``mlp.W_out`` of the first and the last block (those the model has). Of each tensor it hashes its name, shape
and at most :data:`FINGERPRINT_ENTRIES` evenly spaced entries (all of them when it has fewer), so the cost
stays small on large models; any fine-tune that changes those matrices changes the fingerprint. The same
weights held in another dtype (bfloat16 against float32) hash differently unless the values are equal in
float32.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import warnings
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from tv_lens.checks import is_finite_number, is_index
from tv_lens.errors import AnalysisError, ShapeError
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.results.base import Result

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FINGERPRINT_ENTRIES",
    "OPERATIONS",
    "ModelSignature",
    "OtherWeightsWarning",
    "VectorProvenance",
    "check_vector_model",
    "describe_tasks",
    "weights_fingerprint",
    "with_application",
]

#: Most entries of each fingerprinted tensor that are hashed (evenly spaced over its flattened values).
FINGERPRINT_ENTRIES = 65536
#: How a saved vector is applied: overwrite the residual, or add to it (each times ``scale``).
OPERATIONS = ("replace", "add")
_MODEL_TENSORS = ("W_E", "W_U")
_BLOCK_TENSORS = ("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out")
# Fingerprint per model object, with the identity and version of the tensors it was computed from.
_FINGERPRINTS: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], str, tuple[str, ...]]] = (
    weakref.WeakKeyDictionary()
)


class OtherWeightsWarning(UserWarning):
    """A vector applied to a model of the same sizes as its source but with other weights (e.g. a fine-tune)."""


def _named_tensors(model: Any, n_layers: int) -> list[tuple[str, torch.Tensor]]:
    """The fingerprinted tensors the model has, by TransformerLens name."""
    found = []
    for name in _MODEL_TENSORS:
        value = getattr(model, name, None)
        if isinstance(value, torch.Tensor):
            found.append((name, value))
    blocks = getattr(model, "blocks", None)
    for layer in sorted({0, n_layers - 1}):
        for name in _BLOCK_TENSORS:
            part_of: Any = blocks[layer] if blocks is not None else None
            for part in name.split("."):
                try:
                    part_of = getattr(part_of, part, None)
                except (NotImplementedError, ValueError):  # a weight the bridge cannot give in TransformerLens's
                    part_of = None  # layout: DeepSeek's latent attention, Gemma-4's layers of their own head sizes
            if isinstance(part_of, torch.Tensor):
                found.append((f"blocks.{layer}.{name}", part_of))
    return found


def weights_fingerprint(model: Any) -> tuple[str, tuple[str, ...]]:
    """SHA-256 of a few named weight tensors of ``model`` (see the module docstring), and their names.

    Computed in float32 on the CPU; cached per model until one of the tensors changes.
    """
    adapter = adapt(model)
    with torch.no_grad():
        tensors = _named_tensors(adapter.model, adapter.n_layers)
        key = tuple((name, t.data_ptr(), t._version, tuple(t.shape)) for name, t in tensors)
        cached = _FINGERPRINTS.get(adapter.model)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        hasher = hashlib.sha256()
        for name, tensor in tensors:
            flat = tensor.detach().reshape(-1)
            if flat.numel() > FINGERPRINT_ENTRIES:
                index = torch.linspace(0, flat.numel() - 1, FINGERPRINT_ENTRIES, dtype=torch.float64).long()
                flat = flat[index.to(flat.device)]
            values = flat.to("cpu", torch.float32).contiguous()
            hasher.update(f"{name}|{tuple(tensor.shape)}|".encode())
            hasher.update(values.numpy().tobytes())
    names = tuple(name for name, _ in tensors)
    digest = hasher.hexdigest()
    with contextlib.suppress(TypeError):  # a model object that takes no weak reference is simply not cached
        _FINGERPRINTS[adapter.model] = (key, digest, names)
    return digest, names


@dataclass(frozen=True, eq=False)
class ModelSignature(Result):
    """The model a vector was read from: its architecture, sizes and a fingerprint of its weights.

    Attributes:
        model_name: ``cfg.model_name`` (``"custom"`` or ``"native"`` for models built here).
        architecture: ``cfg.original_architecture`` where the model was converted from HuggingFace, else ``""``.
        n_layers: Transformer blocks.
        d_model: Width of the residual stream.
        n_heads: Attention heads per block.
        d_vocab: Vocabulary size.
        weights_sha256: :func:`weights_fingerprint` of the weights.
        fingerprinted: Names of the tensors the fingerprint covers.
        name: A name the user gave the model (e.g. a checkpoint), or ``None``.
    """

    model_name: str
    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    d_vocab: int
    weights_sha256: str
    fingerprinted: tuple[str, ...]
    name: str | None = None

    @classmethod
    def of(cls, model: Any, name: str | None = None) -> ModelSignature:
        """The signature of ``model`` (its weights fingerprinted now), with an optional name of the user's."""
        if name is not None and not isinstance(name, str):
            raise AnalysisError(f"name must be a string naming the model (e.g. a checkpoint), got {name!r}.")
        adapter = adapt(model)
        cfg = getattr(adapter.model, "cfg", None)
        digest, names = weights_fingerprint(adapter.model)
        return cls(
            model_name=str(getattr(cfg, "model_name", "") or ""),
            architecture=str(getattr(cfg, "original_architecture", "") or ""),
            n_layers=adapter.n_layers,
            d_model=adapter.d_model,
            n_heads=adapter.n_heads,
            d_vocab=adapter.d_vocab,
            weights_sha256=digest,
            fingerprinted=names,
            name=name,
        )

    @property
    def sizes(self) -> dict[str, int]:
        """``n_layers``, ``d_model``, ``n_heads`` and ``d_vocab``."""
        return {"n_layers": self.n_layers, "d_model": self.d_model, "n_heads": self.n_heads, "d_vocab": self.d_vocab}

    def describe(self) -> str:
        """One line: name or architecture, sizes, the start of the fingerprint."""
        label = self.name or self.architecture or self.model_name or "model"
        sizes = ", ".join(f"{key}={value}" for key, value in self.sizes.items())
        return f"{label} ({sizes}; weights sha256 {self.weights_sha256[:12]})"

    def to_frame(self) -> pd.DataFrame:
        """One row: every field (``fingerprinted`` joined by commas)."""
        import pandas as pd

        row = {**self.__dict__, "fingerprinted": ",".join(self.fingerprinted)}
        return pd.DataFrame([row])

    def traces(self) -> list[Any]:
        """A one-column table of the signature."""
        return [_table(self.to_frame())]


@dataclass(frozen=True, eq=False)
class VectorProvenance(Result):
    """Where a saved vector came from and how it is meant to be applied.

    Attributes:
        model: Signature of the source model.
        site: Residual site the vector is read from and written to (``"resid_post"`` ...).
        layers: Blocks the vector is meant for (``()``: not chosen; a task-vector set covers its own layers).
        operation: ``"replace"`` (overwrite the residual, as in task-vector prompting) or ``"add"`` (as a
            function vector).
        scale: Factor the vector is multiplied by when applied.
        pool: The prompts it was built from, in words (their type, tasks and number).
    """

    model: ModelSignature
    site: str = "resid_post"
    layers: tuple[int, ...] = ()
    operation: str = "replace"
    scale: float = 1.0
    pool: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.operation not in OPERATIONS:
            raise AnalysisError(f"Unknown operation {self.operation!r}; use one of {list(OPERATIONS)}.")
        scale = self.scale
        if not is_finite_number(scale):
            raise AnalysisError(f"scale must be a finite number (the vector's factor), got {scale!r}.")
        object.__setattr__(self, "scale", float(scale))
        if len(set(self.layers)) != len(self.layers):
            raise AnalysisError(f"VectorProvenance layers must be distinct, got {self.layers}.")

    def to_frame(self) -> pd.DataFrame:
        """One row: the application settings next to the source model's signature."""
        frame = self.model.to_frame()
        settings = {"site": self.site, "layers": ",".join(map(str, self.layers)), "operation": self.operation}
        for key, value in {**settings, "scale": self.scale, "pool": self.pool}.items():
            frame[key] = value
        return frame

    def traces(self) -> list[Any]:
        """A one-column table of the provenance."""
        return [_table(self.to_frame())]


def _table(frame: pd.DataFrame) -> Any:
    """A two-column plotly table (field, value) of a one-row frame."""
    import plotly.graph_objects as go

    return go.Table(header={"values": ["field", "value"]}, cells={"values": [list(frame), frame.iloc[0].tolist()]})


def check_vector_model(
    adapter: ModelAdapter, d_model: int, provenance: VectorProvenance | None, what: str, rebuild: str
) -> None:
    """Raise unless vectors of width ``d_model`` (from ``provenance``'s model) fit ``adapter``'s; warn on other weights.

    Args:
        adapter: The model the vectors are applied to.
        d_model: Width of the vectors.
        provenance: Where they came from (``None``: only the width is checked).
        what: Names the vectors in messages (``"These task vectors"``).
        rebuild: How to build them on this model, for messages.

    Raises:
        ShapeError: Another ``d_model``, or a source model of other sizes.
    """
    if d_model != adapter.d_model:
        raise ShapeError(
            f"{what} have d_model={d_model} but the model has d_model={adapter.d_model}; build them from this model "
            f"({rebuild})."
        )
    if provenance is None:
        return
    source = provenance.model
    here = {"n_layers": adapter.n_layers, "d_model": adapter.d_model, "n_heads": adapter.n_heads}
    here["d_vocab"] = adapter.d_vocab
    differ = {key: (value, here[key]) for key, value in source.sizes.items() if here[key] != value}
    if differ:
        listed = ", ".join(f"{key} {a} there, {b} here" for key, (a, b) in differ.items())
        raise ShapeError(
            f"{what} were read from {source.describe()}, a model of other sizes than this one ({listed}); a vector's "
            f"coordinates mean nothing in another model's residual stream. Build them on this model ({rebuild})."
        )
    digest, _ = weights_fingerprint(adapter.model)
    if digest != source.weights_sha256:
        warnings.warn(
            f"{what} were read from {source.describe()}, whose weights differ from this model's (sha256 "
            f"{digest[:12]}); the sizes match, so they are applied. This is expected for a fine-tuned relative of the "
            "source model; otherwise build them on this model.",
            OtherWeightsWarning,
            stacklevel=3,
        )


def describe_tasks(data: Any, task_names: Sequence[str]) -> str:
    """A batch of prompts (or a pool) in words: its type, the tasks and its number of prompts (a pool: its format)."""
    parts = [f"tasks={list(task_names)}"]
    for key in ("fmt", "n_inputs", "input_values", "output_values", "answer", "null"):
        if hasattr(data, key) and not callable(getattr(data, key)):
            parts.append(f"{key}={getattr(data, key)!r}")
    if hasattr(data, "__len__") and not hasattr(data, "sample"):
        parts.append(f"n_prompts={len(data)}")
    return f"{type(data).__name__}({', '.join(parts)})"


def with_application(
    provenance: VectorProvenance | None,
    layers: int | Sequence[int] | None,
    operation: str | None,
    scale: float | None,
    what: str,
) -> VectorProvenance:
    """``provenance`` with new application settings (those given; ``None`` keeps the recorded one).

    Raises:
        AnalysisError: No provenance to update (``what`` names the vectors), or a bad setting.
    """
    if provenance is None:
        raise AnalysisError(
            f"{what} record no source model, so how to apply them cannot be recorded; build them from a model "
            "(TaskVectors.from_model, FunctionVectors.run) or set "
            "provenance=VectorProvenance(ModelSignature.of(model))."
        )
    changes: dict[str, Any] = {}
    if layers is not None:
        given: Any = layers
        iterable = isinstance(given, Iterable) and not isinstance(given, (str, bytes))
        entries: list[Any] = [given] if is_index(given) else list(given) if iterable else [None]
        if not all(map(is_index, entries)):
            raise AnalysisError(
                f"layers must be a block index or a sequence of block indices (ints), e.g. 2 or (1, 2); got {layers!r}."
            )
        changes["layers"] = tuple(operator.index(layer) for layer in entries)
    if operation is not None:
        changes["operation"] = operation
    if scale is not None:
        changes["scale"] = scale
    return replace(provenance, **changes)
