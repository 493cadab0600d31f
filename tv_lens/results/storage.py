"""Result files: tensors in safetensors, every other field as JSON in the same file's header, written atomically.

A result is written as ONE safetensors file. Its tensors (found anywhere in the fields, also inside
tuples, lists, dicts and nested results) are stored under their path (``"td"``, ``"results.1.coords"``);
the safetensors header metadata holds a JSON document describing every field, with tensors replaced by
references. Tuples, dicts with non-string keys and nested results are tagged, so loading rebuilds the
same Python types and the round trip is exact.

Integrity (format 2). The document records ``tensors``, the SHA-256 of every tensor's name, dtype, shape
and bytes, and ``digest``, the SHA-256 of the canonical JSON of the whole document except ``digest``
itself (keys sorted, no whitespace, ASCII). The digest therefore covers every field (numbers, names,
orders, settings, nested results) and, through ``tensors``, every tensor: a file altered anywhere after
it was saved fails to load instead of loading wrong numbers, and a format-2 file without a digest is
refused. The digest is a checksum, not a signature: it catches corruption and edits made without
tv_lens, not someone who deliberately recomputes it.

Fields added to a result type later come with a default, and a file saved before they existed loads with
that default (its digest covers what it holds); a file with a field the type does not know, or without one
that has no default, was written by another version and is refused.

Format 1 (tv_lens before the format was bumped) recorded a digest of the tensors only, and early files
none at all, so their other fields cannot be checked. They are refused unless the caller opts in with
``allow_unverified=True`` (their tensors are still checked where a digest exists); saving such a result
again writes format 2.

Writes go to a temporary file in the target directory, are flushed to disk, then moved over the target
with ``os.replace`` (atomic on POSIX and Windows): a write that fails or is killed never leaves a partly
written file under the target name, and never destroys the previous file. A write that fails (read-only
directory, full disk, a parent path that is a file) raises :class:`ResultWriteError`, which is both a
:class:`~tv_lens.errors.ResultFileError` and an ``OSError``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from tv_lens.errors import ResultFileError, ResultWriteError

__all__ = [
    "FORMAT_VERSION",
    "LEGACY_FORMAT_VERSIONS",
    "METADATA_KEY",
    "Savable",
    "canonical_json",
    "document_digest",
    "equal_values",
    "field_types",
    "result_from_bytes",
    "result_to_bytes",
    "tensor_digest",
    "write_atomically",
    "write_failure",
]


@runtime_checkable
class Savable(Protocol):
    """What this module needs of a result (:class:`tv_lens.results.Result`): a dataclass with a stable type tag."""

    @classmethod
    def type_tag(cls) -> str:
        """The name a file records for the result's type."""
        ...


FORMAT_VERSION = 2
"""The result format this version writes: a digest over the whole document."""
LEGACY_FORMAT_VERSIONS = (1,)
"""Earlier formats that still load, with ``allow_unverified=True`` (their fields are not covered by a digest)."""
METADATA_KEY = "tv_lens.result"
_TAGS = ("__tensor__", "__tuple__", "__dict__", "__result__")
_RERUN = "Re-run the analysis and save it again."


def result_to_bytes(result: Savable) -> bytes:
    """The bytes of the safetensors file holding ``result`` (format :data:`FORMAT_VERSION`, with its digest)."""
    tensors: dict[str, Tensor] = {}
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "result": _encode(result, tensors, ""),
        "tensors": tensor_digest(tensors),
    }
    document["digest"] = document_digest(document)
    metadata = {METADATA_KEY: canonical_json(document)}
    return save_safetensors(tensors, metadata=metadata)


def result_from_bytes(
    data: bytes, source: str, registry: Mapping[str, type[Savable]], allow_unverified: bool = False
) -> Savable:
    """Rebuild a result from :func:`result_to_bytes` output, checking it against its digest.

    Args:
        data: The file's bytes.
        source: Names the file in errors.
        registry: Result types by the tag a file records.
        allow_unverified: Also load a file of an earlier format (:data:`LEGACY_FORMAT_VERSIONS`), whose
            fields no digest covers (its tensors are still checked where it recorded their digest).

    Raises:
        ResultFileError: The file is unreadable, not a result, of an unknown format, altered since it was
            saved (or without a digest), holds fields or a type this version does not know, or is of an
            earlier format and ``allow_unverified`` is false.
    """
    try:
        tensors = load_safetensors(data)
    except Exception as error:  # safetensors raises its own error types, or OSError/ValueError on garbage
        raise ResultFileError(
            f"{source} is not a readable result file ({type(error).__name__}: {error}); it is corrupt or "
            "truncated, or was not written by Result.save. Re-run the analysis and save it again."
        ) from error
    document = _read_metadata(data, source)
    version = document.get("format")
    known = version == FORMAT_VERSION or version in LEGACY_FORMAT_VERSIONS
    if isinstance(version, bool) or not known or "result" not in document:
        raise ResultFileError(
            f"{source} has result format {version!r}, this tv_lens reads format {FORMAT_VERSION} (and "
            f"{', '.join(map(str, LEGACY_FORMAT_VERSIONS))} with allow_unverified=True); save it again with this "
            "version."
        )
    # Decoding first names a type or fields this version does not know (which no digest can fix); nothing
    # decoded is returned before the checks below pass.
    result = _decode(document["result"], tensors, registry, source)
    if version == FORMAT_VERSION:
        _verify(document, tensors, source)
        return result
    if "digest" in document and document["digest"] != tensor_digest(tensors):
        raise ResultFileError(
            f"{source} is corrupt: its tensors do not match the digest recorded when it was saved. {_RERUN}"
        )
    if not allow_unverified:
        checked = "its tensors are checked but" if "digest" in document else "it has no digest and"
        raise ResultFileError(
            f"{source} was saved by an earlier tv_lens (result format {version}): {checked} its other fields "
            "(numbers such as a Spearman correlation, layers, task names, settings) are covered by no digest, so "
            "an edit to them cannot be detected and it is not loaded by default. If you trust the file, load it "
            "with Result.load(path, allow_unverified=True) and save it again, which rewrites it in format "
            f"{FORMAT_VERSION} with every field checked; otherwise re-run the analysis."
        )
    return result


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order (format 1's ``digest``)."""
    hasher = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].contiguous().reshape(-1)
        hasher.update(f"{key}|{tensor.dtype}|{tuple(tensors[key].shape)}|".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return hasher.hexdigest()


def canonical_json(document: Any) -> str:
    """The one JSON text of ``document``: keys sorted, no whitespace, ASCII only, floats as ``repr``.

    Parsing the text and serialising it again gives the same text, so a digest of it depends only on the
    values the document holds (not on how a file happened to spell them).
    """
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def document_digest(document: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``document`` without its ``digest`` key.

    The document holds every field and the digest of the tensors, so this covers the whole file.
    """
    covered = {key: value for key, value in document.items() if key != "digest"}
    return hashlib.sha256(f"{METADATA_KEY}\n{canonical_json(covered)}".encode("ascii")).hexdigest()


def _verify(document: dict[str, Any], tensors: dict[str, Tensor], source: str) -> None:
    """Raise unless a format-2 document carries a digest and both it and the tensors' digest match."""
    if "digest" not in document:
        raise ResultFileError(
            f"{source} has no digest, which every format-{FORMAT_VERSION} result file records when it is saved: "
            "the digest was removed, or the file was written by other means than Result.save, so its numbers "
            f"cannot be checked and it is not loaded. {_RERUN}"
        )
    if document.get("tensors") != tensor_digest(tensors):
        raise ResultFileError(
            f"{source} is corrupt: its tensors do not match the digest recorded when it was saved. {_RERUN}"
        )
    if document["digest"] != document_digest(document):
        raise ResultFileError(
            f"{source} is corrupt: its fields (the JSON header with its numbers, layers, task names and settings) "
            f"do not match the digest recorded when it was saved, so the file was altered after saving. {_RERUN}"
        )


def write_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; parents are created.

    Raises:
        ResultFileError: ``path`` is a directory.
        ResultWriteError: The file could not be written (the message says why); the previous file at
            ``path``, if any, is untouched and no temporary file is left.
    """
    target = Path(path)
    if target.is_dir():
        raise ResultFileError(
            f"{target} is a directory; save to a file path inside it, e.g. {target / 'result.safetensors'}."
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise ResultWriteError(f"Cannot save {target}: {write_failure(error, target)}.") from error
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise ResultWriteError(
                f"Cannot save {target}: {write_failure(error, target)}. Any previous file there is untouched."
            ) from error
        raise
    return target


def write_failure(error: OSError, target: Path) -> str:
    """Why writing ``target`` failed with ``error``, and what to do: read-only, full, a file in the way ...

    Args:
        error: The error the write raised.
        target: The file that was being written.

    Returns:
        A clause naming the problem and the fix, to follow "Cannot save <target>: ".
    """
    what = f"{type(error).__name__}: {error}"
    in_the_way = _file_in_the_way(target)
    if in_the_way is not None:
        return (
            f"{in_the_way} is a file, not a directory, so nothing can be saved under it ({what}); choose a path "
            "whose parent folders are directories, or move that file away"
        )
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"the disk holding {target.parent} is full ({what}); free some space, or save to another disk"
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"the directory {target.parent} is not writable ({what}); save to a directory you can write to, or "
            "make this one writable"
        )
    return f"the write failed ({what}); check the path and the disk, then save again"


def _file_in_the_way(target: Path) -> Path | None:
    """The nearest ancestor of ``target`` that exists and is not a directory, if any."""
    for parent in target.parents:
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else parent
    return None


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
    if isinstance(value, Tensor):
        key = path or "tensor"
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, Savable) and is_dataclass(value):
        encoded = {
            f.name: _encode(getattr(value, f.name), tensors, _join(path, f.name))
            for f in fields(value)  # type: ignore[arg-type]  # every result is a dataclass
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


def _decode(value: Any, tensors: dict[str, Tensor], registry: Mapping[str, type[Savable]], source: str) -> Any:
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
    values = {name: _decode(v, tensors, registry, source) for name, v in encoded.items()}
    hints = field_types(cls)
    wrong = [name for name, value in values.items() if name in hints and not _fits(value, hints[name])]
    if wrong:
        name = wrong[0]
        raise ResultFileError(
            f"{source} holds a {cls.__name__} whose field {name!r} is {_kind(values[name])}, not "
            f"{_hint_name(hints[name])}; it was edited or crafted. Re-run the analysis."
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
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a typing construct not used by result fields: not checked


def _kind(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{value!r:.60}"


def _hint_name(hint: Any) -> str:
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
