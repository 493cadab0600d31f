"""Result fields as JSON and tensors, and back: the tagged encoding of a result file, with the decoded types checked.

Tensors found anywhere in the fields (also inside tuples, lists, dicts and nested results) are taken out under
their path (``"td"``, ``"results.1.coords"``) and replaced by references; tuples, dicts with non-string keys and
nested results are tagged, so decoding rebuilds the same Python types and the round trip is exact. Decoding
checks every field against its result type (names and declared types), so a file of another version or an
edited one is refused with a :class:`~tv_lens.errors.ResultFileError` instead of loading wrong values.
:mod:`tv_lens.results.storage` puts the encoded document and the tensors in one safetensors file.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from tv_lens.checks import is_int, is_number
from tv_lens.errors import ResultFileError

__all__ = ["Savable", "decode_value", "encode_value", "equal_values", "field_types", "mistyped_field"]


@runtime_checkable
class Savable(Protocol):
    """What a result file needs of a result (:class:`tv_lens.results.Result`): a dataclass with a stable type tag."""

    @classmethod
    def type_tag(cls) -> str:
        """The name a file records for the result's type."""
        ...


_TAGS = ("__tensor__", "__tuple__", "__dict__", "__result__")


def encode_value(value: Any, tensors: dict[str, Tensor], path: str) -> Any:
    """The JSON form of a field value; its tensors go to ``tensors`` under their path (``path`` is the value's)."""
    if isinstance(value, Tensor):
        key = path or "tensor"
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, Savable) and is_dataclass(value):
        encoded = {
            f.name: encode_value(getattr(value, f.name), tensors, _join(path, f.name))
            for f in fields(value)  # type: ignore[arg-type]  # every result is a dataclass
        }
        return {"__result__": type(value).type_tag(), "fields": encoded}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [encode_value(v, tensors, _join(path, str(i))) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_value(v, tensors, _join(path, str(i))) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            "__dict__": [
                [encode_value(k, tensors, _join(path, f"key{i}")), encode_value(v, tensors, _join(path, str(i)))]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    kind = "a dataclass" if is_dataclass(value) else type(value).__name__
    raise ResultFileError(
        f"Result field {path or '<root>'!r} holds {kind}, which cannot be saved; result fields must be tensors, "
        "numbers, strings, None, nested results, or tuples / lists / dicts of them (store a config as a dict)."
    )


def decode_value(value: Any, tensors: dict[str, Tensor], registry: Mapping[str, type[Savable]], source: str) -> Any:
    """The field value of :func:`encode_value`'s JSON form; results are rebuilt from ``registry`` and checked.

    Raises:
        ResultFileError: A malformed or untagged entry, a result type not in ``registry``, or a result whose fields
            are not those of its type (names, or declared types) or that its type refuses.
    """
    if isinstance(value, list):
        return [decode_value(v, tensors, registry, source) for v in value]
    if not isinstance(value, dict):
        return value
    tag = next((t for t in _TAGS if t in value), None)
    try:
        if tag == "__tensor__":
            return tensors[value["__tensor__"]]
        if tag == "__tuple__":
            return tuple(decode_value(v, tensors, registry, source) for v in value["__tuple__"])
        if tag == "__dict__":
            return {
                _freeze(decode_value(k, tensors, registry, source)): decode_value(v, tensors, registry, source)
                for k, v in value["__dict__"]
            }
        if tag == "__result__":
            return _build(value["__result__"], value["fields"], tensors, registry, source)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, ResultFileError):
            raise
        raise ResultFileError(f"{source} has a malformed entry ({error!r}); it is corrupt. Save it again.") from error
    raise ResultFileError(f"{source} has an untagged JSON object {sorted(value)}; it is corrupt. Save it again.")


def _build(
    tag: str, encoded: dict[str, Any], tensors: dict[str, Tensor], registry: Mapping[str, type[Savable]], source: str
) -> Savable:
    cls = registry.get(tag)
    if cls is None:
        raise ResultFileError(
            f"{source} holds a {tag!r} result, a type this process does not know; import the module that defines "
            "it before loading."
        )
    expected = {f.name for f in fields(cls) if f.init}  # type: ignore[arg-type]
    added = {f.name for f in fields(cls) if f.init and _has_default(f)}  # type: ignore[arg-type]
    if not set(encoded) <= expected or not expected - set(encoded) <= added:
        raise ResultFileError(
            f"{source} holds a {cls.__name__} with fields {sorted(encoded)}, but {cls.__name__} has "
            f"{sorted(expected)}; it was written by another tv_lens version. Re-run the analysis."
        )
    values = {name: decode_value(v, tensors, registry, source) for name, v in encoded.items()}
    wrong = mistyped_field(cls, values)
    if wrong:
        raise ResultFileError(
            f"{source} holds a {cls.__name__} whose {wrong}; it was edited or crafted. Re-run the analysis."
        )
    try:
        return cls(**values)
    except Exception as error:
        raise ResultFileError(
            f"{source} holds an invalid {cls.__name__} ({type(error).__name__}: {error}); it is corrupt. "
            "Re-run the analysis."
        ) from error


def field_types(cls: type) -> dict[str, Any]:
    """The declared type of every field of a result class (none where an annotation cannot be resolved)."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}


def mistyped_field(cls: type, values: Mapping[str, Any]) -> str | None:
    """The first of ``values`` that is not of its field's declared type, as ``field 'name' is ..., not ...``.

    ``None`` when every value fits (tensors by jaxtyping dtype and rank; a bool is not an int or a float).
    """
    hints = field_types(cls)
    for name, value in values.items():
        if name in hints and not _fits(value, hints[name]):
            return f"field {name!r} is {_kind(value)}, not {_hint_name(hints[name])}"
    return None


def _fits(value: Any, hint: Any) -> bool:
    """Whether a decoded field value is of its declared type (tensors by jaxtyping dtype and rank)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is None or hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(_fits(v, a) for v, a in zip(value, args, strict=True)))
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict) and (
            not args or all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
        )
    if hint is float:
        return is_number(value)
    if hint is int:
        return is_int(value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a typing construct not used by result fields: not checked


def _kind(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{value!r:.60}"


def _hint_name(hint: Any) -> str:
    """A declared type as written (``tuple[int, ...]``, ``int | None``, ``Float[Tensor, 'layer']``)."""
    if typing.get_origin(hint) is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _has_default(field: Any) -> bool:
    """Whether a dataclass field has a default: one added after a file was saved may be missing from it."""
    return field.default is not MISSING or field.default_factory is not MISSING


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def _freeze(key: Any) -> Any:
    """Dict keys decoded from JSON lists become tuples (lists are unhashable)."""
    return tuple(_freeze(k) for k in key) if isinstance(key, list) else key


def equal_values(a: Any, b: Any) -> bool:
    """Exact equality of result field values: tensors by dtype, shape and values (NaN equals NaN)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        a, b = a.detach().cpu(), b.detach().cpu()
        same = a == b
        if a.is_floating_point() or a.is_complex():
            same |= torch.isnan(a) & torch.isnan(b)
        return bool(same.all())
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(equal_values(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal_values(a[k], b[k]) for k in a)
    return bool(a == b)
