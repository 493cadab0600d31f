"""The base of every analysis result: a frozen dataclass that tabulates, draws, saves and loads itself.

A new result type declares its fields and writes two methods::

    @dataclass(frozen=True, eq=False)          # eq=False keeps Result's exact, tensor-aware ==
    class Curve(Result):
        values: Float[Tensor, " layer"]
        layers: tuple[int, ...]

        def to_frame(self) -> pd.DataFrame: ...            # tidy: one row per observation
        def traces(self) -> list[BaseTraceType]: ...       # plotly traces, composable into subplots

and, if a report should lead with its numbers, ``headline()``. It gets ``figure()``, ``save(path)``,
``Result.load(path)`` and ``==`` for free. Fields may be tensors, numbers, strings, ``None``, nested results, and
tuples / lists / dicts of those; tensors go to safetensors and everything else to JSON metadata in the same file,
under a digest of both that ``load`` checks (see :mod:`tv_lens.results.storage`). A tensor field's annotation
names its axes, and every result checks its tensors against them on creation: ``values`` above must be as long
as ``layers`` once the type says so in ``_axes`` (``{"layer": len(self.layers)}``).

>>> import torch
>>> from tv_lens.analyses.decodability import TaskDecodability, task_decodability
>>> labels = torch.arange(4).repeat_interleave(10)
>>> result = task_decodability(torch.randn(2, 40, 8), labels, config=TaskDecodability(k=3))
>>> result.td.shape, list(result.to_frame().columns)[:3]
(torch.Size([2]), ['layer', 'layer_label', 'task'])
>>> from dataclasses import replace
>>> replace(result, td=torch.zeros(3))
Traceback (most recent call last):
    ...
tv_lens.errors.ShapeError: Decodability.td must have shape (2,), got (3,).
"""

from __future__ import annotations

import functools
import os
import typing
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from jaxtyping import AbstractArray
from torch import Tensor

from tv_lens.errors import MissingFileError, ResultFileError, ShapeError
from tv_lens.results.encoding import equal_values, field_types, mistyped_field
from tv_lens.results.storage import (
    check_overwritable,
    environment_from_bytes,
    result_from_bytes,
    result_to_bytes,
    write_atomically,
)

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.basedatatypes import BaseTraceType

__all__ = ["Result"]

R = TypeVar("R", bound="Result")

TASK_ID_FIELDS = ("task_ids", "labels", "predictions")
"""Fields that hold task ids: each an index into the result's ``task_names``."""


class Result:
    """Base class of analysis results (subclasses are ``@dataclass(frozen=True, eq=False)``)."""

    _registry: ClassVar[dict[str, type[Result]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Result._registry[cls.type_tag()] = cls

    @classmethod
    def type_tag(cls) -> str:
        """The name a saved file records for this type: ``module:QualifiedName``."""
        return f"{cls.__module__}:{cls.__qualname__}"

    def __post_init__(self) -> None:
        """Check every tensor field against the axes its annotation names (``Float[Tensor, "layer task 2"]``).

        An axis of :meth:`_axes` has the size given there, a number is that size, and any other name takes the
        size where it first appears (in field order) and must keep it in every later field.

        Every other field is first checked against its declared type, as a loaded file is, and every tensor field,
        once its shape is right, against its declared dtype.

        Raises:
            ShapeError: A field of another type, or a tensor field of another shape.
        """
        axes = _tensor_axes(type(self))  # type: ignore[arg-type]  # the class hashes; its results do not
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        self._check_types({name: value for name, value in values.items() if name not in axes})
        sizes = self._axes()
        for name, dims in axes.items():
            value = values[name]
            if not isinstance(value, Tensor):  # an optional tensor left out
                continue
            got = tuple(value.shape)
            if len(got) == len(dims):
                for dim, size in zip(dims, got, strict=True):
                    if isinstance(dim, str):
                        sizes.setdefault(dim, size)
            expected = tuple(sizes.get(dim, dim) if isinstance(dim, str) else dim for dim in dims)
            if got != expected:
                shape = str(expected).replace("'", "")
                raise ShapeError(f"{type(self).__name__}.{name} must have shape {shape}, got {got}.")
        self._check_types({name: values[name] for name in axes})
        self._check_task_ids()

    def _check_types(self, values: dict[str, Any]) -> None:
        """Raise a :class:`ShapeError` naming the first of ``values`` (by field name) not of its declared type."""
        wrong = mistyped_field(type(self), values)
        if wrong:
            raise ShapeError(
                f"A {type(self).__name__} whose {wrong}: build results with their analyses or Result.load, or pass "
                "values of the declared types."
            )

    def _check_task_ids(self) -> None:
        """Check that every task-id field (:data:`TASK_ID_FIELDS`, integer by its declared type) indexes ``task_names``.

        Raises:
            ShapeError: Ids outside ``0 .. len(task_names) - 1``.
        """
        names = getattr(self, "task_names", None)
        if not isinstance(names, tuple):
            return
        for name in TASK_ID_FIELDS:
            ids = getattr(self, name, None)
            if not isinstance(ids, Tensor):
                continue
            if ids.numel() and not (int(ids.min()) >= 0 and int(ids.max()) < len(names)):
                allowed = f"each id must lie in 0 .. {len(names) - 1}" if names else "there can be no ids"
                raise ShapeError(
                    f"{type(self).__name__}.{name} holds task ids {ids.unique().tolist()[:8]}, but task_names has "
                    f"{len(names)} names: {allowed}. Name every task in task_names, or re-run the analysis."
                )

    def _axes(self) -> dict[str, int]:
        """Sizes of the tensor axes that other fields fix, by axis name (e.g. ``layer``: ``len(self.layers)``)."""
        return {}

    def to_frame(self) -> pd.DataFrame:
        """The result as a tidy table (one row per observation; columns documented by each subclass)."""
        raise NotImplementedError(f"{type(self).__name__} does not define to_frame().")

    def headline(self) -> dict[str, Any]:
        """The numbers a report leads with (JSON-ready; documented by each subclass that has them)."""
        raise NotImplementedError(f"{type(self).__name__} does not define headline().")

    def traces(self) -> list[BaseTraceType]:
        """The plotly traces of :meth:`figure`, to compose into your own subplots."""
        raise NotImplementedError(f"{type(self).__name__} does not define traces().")

    def figure_layout(self) -> dict[str, Any]:
        """Layout (titles, axes) that :meth:`figure` puts around :meth:`traces`."""
        return {"title": type(self).__name__}

    def figure(self) -> go.Figure:
        """An interactive plotly figure of the result."""
        import plotly.graph_objects as go

        return go.Figure(data=self.traces(), layout=self.figure_layout())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the result to one safetensors file (JSON metadata in its header), atomically.

        The file is first written next to ``path`` and then moved over it, so an existing file at ``path``
        survives a failed or interrupted save. Parent directories are created. The file records a SHA-256
        digest of every field and every tensor, checked by :meth:`load`.

        Returns:
            The path written.

        Raises:
            ResultFileError: ``path`` is a directory or an existing file that is not a tv_lens result (it is not
                overwritten), or a field holds a value that cannot be saved.
            ResultWriteError: The file could not be written: a read-only directory, a full disk, or a parent
                path that is a file (also an ``OSError``; see :mod:`tv_lens.results.storage`).
        """
        check_overwritable(path)
        return write_atomically(path, result_to_bytes(self))

    @classmethod
    def load(cls: type[R], path: str | os.PathLike[str], *, allow_unverified: bool = False) -> R:
        """Read a result written by :meth:`save`, checked against its digest; tensors come back on the CPU.

        ``Result.load`` returns whatever type the file holds; ``SomeResult.load`` also checks the type.

        Args:
            path: A file written by :meth:`save`.
            allow_unverified: Also load a file saved by an earlier tv_lens (result format 1), whose digest, if
                any, covers only its tensors: its other fields (numbers, layers, task names, settings) cannot be
                checked, so such a file is refused unless you trust it and pass ``True``. Save it again to
                rewrite it in the current format. Files of the current format are always checked in full.

        Raises:
            MissingFileError: No file at ``path`` (also a ``FileNotFoundError``).
            ResultFileError: The file is corrupt or truncated, was altered after it was saved (any field or
                tensor), has no digest, is of an earlier format without ``allow_unverified``, is not a tv_lens
                result, holds another type, or ``path`` is a directory.
        """
        source, data = _read_result_file(path)
        result = result_from_bytes(data, source, Result._registry, allow_unverified=allow_unverified)
        if not isinstance(result, cls):
            raise ResultFileError(
                f"{source} holds a {type(result).__name__}, not a {cls.__name__}; load it with "
                f"{type(result).__name__}.load (or Result.load, which returns whatever the file holds)."
            )
        return result

    @staticmethod
    def saved_environment(path: str | os.PathLike[str]) -> dict[str, str | int] | None:
        """The software, torch threads and CPU kind of the process that saved the result file at ``path``.

        On a CPU, numbers are bit-identical for one torch version, number of torch threads and kind of CPU only:
        compare this with :func:`tv_lens.environment.software_environment` before expecting a re-run to match to
        the bit.

        Returns:
            Python, torch, TransformerLens, transformers and tv_lens versions, ``torch_threads`` and ``cpu``
            (checked against the file's digest), or ``None`` for a file saved before result files recorded them.

        Raises:
            MissingFileError: No file at ``path``.
            ResultFileError: The file is not a readable result, or was altered after it was saved.
        """
        source, data = _read_result_file(path)
        return environment_from_bytes(data, source)

    def __eq__(self, other: object) -> bool:
        """Exact equality: same type and every field equal (tensors by dtype, shape and values)."""
        if type(other) is not type(self):
            return NotImplemented
        return all(equal_values(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))  # type: ignore[arg-type]

    __hash__ = None  # type: ignore[assignment]


def _read_result_file(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    """The name of the file at ``path`` for messages, and its bytes (a clear error for a folder or no file)."""
    source = os.fspath(path)
    if Path(path).is_dir():
        raise ResultFileError(
            f"{source} is a directory, not a result file; pass the path of a file written by Result.save "
            "(e.g. a .safetensors file inside it)."
        )
    if not Path(path).is_file():
        raise MissingFileError(f"No result file at {source}; check the path, or save the result there first.")
    return source, Path(path).read_bytes()


@functools.cache
def _tensor_axes(cls: type) -> dict[str, tuple[int | str, ...]]:
    """The axes of every field annotated with a jaxtyping array of named or numbered axes, by field."""
    hints = field_types(cls)
    axes = {}
    for field in fields(cls):  # type: ignore[arg-type]  # every result is a dataclass
        hint = hints.get(field.name)
        array = next((h for h in (hint, *typing.get_args(hint)) if _is_array(h)), None)  # also in ``X | None``
        if array is None:
            continue
        parts = array.dim_str.split()
        if all(part.isdigit() or (part.isidentifier() and not part.startswith("_")) for part in parts):
            axes[field.name] = tuple(int(part) if part.isdigit() else part for part in parts)
    return axes


def _is_array(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, AbstractArray)
