"""Result files: tensors in safetensors, every other field as JSON in the same file's header, written atomically.

A result is written as ONE safetensors file. Its tensors (found anywhere in the fields, also inside
tuples, lists, dicts and nested results) are stored under their path (``"td"``, ``"results.1.coords"``);
the safetensors header metadata holds a JSON document describing every field, with tensors replaced by
references. Tuples, dicts with non-string keys and nested results are tagged, so loading rebuilds the
same Python types and the round trip is exact. The header also records a SHA-256 digest of the tensors,
so a file whose bytes were altered fails to load instead of loading wrong numbers.

Writes go to a temporary file in the target directory, are flushed to disk, then moved over the target
with ``os.replace`` (atomic on POSIX and Windows): a write that fails or is killed never leaves a partly
written file under the target name, and never destroys the previous file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from tv_lens.errors import ResultFileError

if TYPE_CHECKING:
    from tv_lens.results.base import Result

FORMAT_VERSION = 1
METADATA_KEY = "tv_lens.result"
_TAGS = ("__tensor__", "__tuple__", "__dict__", "__result__")


def result_to_bytes(result: Result) -> bytes:
    """The bytes of the safetensors file holding ``result``."""
    tensors: dict[str, Tensor] = {}
    document = {"format": FORMAT_VERSION, "result": _encode(result, tensors, "")}
    document["digest"] = _digest(tensors)
    metadata = {METADATA_KEY: json.dumps(document, allow_nan=True)}
    return save_safetensors(tensors, metadata=metadata)


def result_from_bytes(data: bytes, source: str, registry: dict[str, type[Result]]) -> Result:
    """Rebuild a result from :func:`result_to_bytes` output; ``source`` names the file in errors."""
    try:
        tensors = load_safetensors(data)
    except Exception as error:  # safetensors raises its own error types, or OSError/ValueError on garbage
        raise ResultFileError(
            f"{source} is not a readable result file ({type(error).__name__}: {error}); it is corrupt or "
            "truncated, or was not written by Result.save. Re-run the analysis and save it again."
        ) from error
    document = _read_metadata(data, source)
    if document.get("format") != FORMAT_VERSION or "result" not in document:
        raise ResultFileError(
            f"{source} has result format {document.get('format')!r}, this tv_lens reads format {FORMAT_VERSION}; "
            "save it again with this version."
        )
    result = _decode(document["result"], tensors, registry, source)
    if "digest" in document and document["digest"] != _digest(tensors):
        raise ResultFileError(
            f"{source} is corrupt: its tensors do not match the digest recorded when it was saved. Re-run the "
            "analysis and save it again."
        )
    return result


def write_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; parents are created."""
    target = Path(path)
    if target.is_dir():
        raise ResultFileError(
            f"{target} is a directory; save to a file path inside it, e.g. {target / 'result.safetensors'}."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return target


def _read_metadata(data: bytes, source: str) -> dict[str, Any]:
    header_size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + header_size])
        document = json.loads(header["__metadata__"][METADATA_KEY])
    except (ValueError, KeyError, TypeError) as error:
        raise ResultFileError(
            f"{source} is a safetensors file but not a tv_lens result (no {METADATA_KEY!r} metadata); load it "
            "with safetensors, or pass a file written by Result.save."
        ) from error
    if not isinstance(document, dict):
        raise ResultFileError(f"{source} has malformed {METADATA_KEY!r} metadata; save the result again.")
    return document


def _encode(value: Any, tensors: dict[str, Tensor], path: str) -> Any:
    from tv_lens.results.base import Result

    if isinstance(value, Tensor):
        key = path or "tensor"
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, Result):
        encoded = {
            f.name: _encode(getattr(value, f.name), tensors, _join(path, f.name))
            for f in fields(value)  # type: ignore[arg-type]  # every Result subclass is a dataclass
        }
        return {"__result__": type(value).type_tag(), "fields": encoded}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, _join(path, str(i))) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, _join(path, str(i))) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            "__dict__": [
                [_encode(k, tensors, _join(path, f"key{i}")), _encode(v, tensors, _join(path, str(i)))]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    kind = "a dataclass" if is_dataclass(value) else type(value).__name__
    raise ResultFileError(
        f"Result field {path or '<root>'!r} holds {kind}, which cannot be saved; result fields must be tensors, "
        "numbers, strings, None, nested results, or tuples / lists / dicts of them (store a config as a dict)."
    )


def _decode(value: Any, tensors: dict[str, Tensor], registry: dict[str, type[Result]], source: str) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, registry, source) for v in value]
    if not isinstance(value, dict):
        return value
    tag = next((t for t in _TAGS if t in value), None)
    try:
        if tag == "__tensor__":
            return tensors[value["__tensor__"]]
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, registry, source) for v in value["__tuple__"])
        if tag == "__dict__":
            return {
                _freeze(_decode(k, tensors, registry, source)): _decode(v, tensors, registry, source)
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
    tag: str, encoded: dict[str, Any], tensors: dict[str, Tensor], registry: dict[str, type[Result]], source: str
) -> Result:
    cls = registry.get(tag)
    if cls is None:
        raise ResultFileError(
            f"{source} holds a {tag!r} result, a type this process does not know; import the module that defines "
            "it before loading."
        )
    expected = {f.name for f in fields(cls) if f.init}  # type: ignore[arg-type]
    if set(encoded) != expected:
        raise ResultFileError(
            f"{source} holds a {cls.__name__} with fields {sorted(encoded)}, but {cls.__name__} has "
            f"{sorted(expected)}; it was written by another tv_lens version. Re-run the analysis."
        )
    values = {name: _decode(v, tensors, registry, source) for name, v in encoded.items()}
    try:
        return cls(**values)
    except Exception as error:
        raise ResultFileError(
            f"{source} holds an invalid {cls.__name__} ({type(error).__name__}: {error}); it is corrupt. "
            "Re-run the analysis."
        ) from error


def _digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order."""
    hasher = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].contiguous().reshape(-1)
        hasher.update(f"{key}|{tensor.dtype}|{tuple(tensors[key].shape)}|".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return hasher.hexdigest()


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
