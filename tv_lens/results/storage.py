"""Result files: tensors in safetensors, every other field as JSON in the same file's header, written atomically.

A result is written as ONE safetensors file. Its tensors (found anywhere in the fields, also inside
tuples, lists, dicts and nested results) are stored under their path (``"td"``, ``"results.1.coords"``);
the safetensors header metadata holds a JSON document describing every field, with tensors replaced by
references. Tuples, dicts with non-string keys and nested results are tagged, so loading rebuilds the
same Python types and the round trip is exact (the encoding, and the checks of what a file decodes to:
:mod:`tv_lens.results.encoding`).

Integrity (format 2). The document records ``tensors``, the SHA-256 of every tensor's name, dtype, shape
and bytes, and ``digest``, the SHA-256 of the canonical JSON of the whole document except ``digest``
itself (keys sorted, no whitespace, ASCII). The digest therefore covers every field (numbers, names,
orders, settings, nested results) and, through ``tensors``, every tensor: a file altered anywhere after
it was saved fails to load instead of loading wrong numbers, and a format-2 file without a digest is
refused. The digest is a checksum, not a signature: it catches corruption and edits made without
tv_lens, not someone who deliberately recomputes it.

The document also records ``environment``, the :func:`~tv_lens.environment.software_environment` of the process
that saved the file (Python, torch, TransformerLens, transformers and tv_lens versions, torch's CPU threads and the
CPU kind), covered by the digest: :meth:`Result.saved_environment <tv_lens.results.Result.saved_environment>`
reads it back. Files saved before it was recorded load as before and record none.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from tv_lens.environment import is_environment, software_environment
from tv_lens.errors import ResultFileError, ResultWriteError
from tv_lens.results.encoding import Savable, decode_value, encode_value

__all__ = [
    "FORMAT_VERSION",
    "LEGACY_FORMAT_VERSIONS",
    "METADATA_KEY",
    "canonical_json",
    "check_overwritable",
    "document_digest",
    "environment_from_bytes",
    "result_from_bytes",
    "result_to_bytes",
    "tensor_digest",
    "write_atomically",
    "write_failure",
]


FORMAT_VERSION = 2
"""The result format this version writes: a digest over the whole document."""
LEGACY_FORMAT_VERSIONS = (1,)
"""Earlier formats that still load, with ``allow_unverified=True`` (their fields are not covered by a digest)."""
METADATA_KEY = "tv_lens.result"
_RERUN = "Re-run the analysis and save it again."


def result_to_bytes(result: Savable) -> bytes:
    """The bytes of the safetensors file holding ``result`` (format :data:`FORMAT_VERSION`, with its digest)."""
    tensors: dict[str, Tensor] = {}
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "result": encode_value(result, tensors, ""),
        "tensors": tensor_digest(tensors),
        "environment": software_environment(),
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
    document, tensors = _checked_document(data, source)
    version = document["format"]
    result = decode_value(document["result"], tensors, registry, source)
    if version != FORMAT_VERSION and not allow_unverified:
        checked = "its tensors are checked but" if "digest" in document else "it has no digest and"
        raise ResultFileError(
            f"{source} was saved by an earlier tv_lens (result format {version}): {checked} its other fields "
            "(numbers such as a Spearman correlation, layers, task names, settings) are covered by no digest, so "
            "an edit to them cannot be detected and it is not loaded by default. If you trust the file, load it "
            "with Result.load(path, allow_unverified=True) and save it again, which rewrites it in format "
            f"{FORMAT_VERSION} with every field checked; otherwise re-run the analysis."
        )
    return result


def environment_from_bytes(data: bytes, source: str) -> dict[str, str | int] | None:
    """The software, torch threads and CPU kind of the process that saved a result file, checked against its digest.

    Args:
        data: The file's bytes.
        source: Names the file in errors.

    Returns:
        The :func:`~tv_lens.environment.software_environment` at the time of saving, or ``None`` for a file
        saved before result files recorded it (every file of an earlier format, and early format-2 files).

    Raises:
        ResultFileError: The file is not a readable result, is of an unknown format, or was altered since it
            was saved (the environment is covered by the digest like every field).
    """
    document, _ = _checked_document(data, source)
    if document["format"] != FORMAT_VERSION or "environment" not in document:
        return None
    environment = document["environment"]
    if not is_environment(environment):
        raise ResultFileError(
            f"{source} records a malformed environment {environment!r} (versions by name and an int torch_threads "
            f"are expected); the file was not written by Result.save. {_RERUN}"
        )
    return dict(environment)


def _checked_document(data: bytes, source: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A result file's header document and tensors, of a known format, checked against the digests it records."""
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
    # The digests first: an altered file is named as such, and no result is built from unchecked values (a
    # result's own checks would name the symptom of the alteration instead).
    if version == FORMAT_VERSION:
        _verify(document, tensors, source)
    elif "digest" in document and document["digest"] != tensor_digest(tensors):
        raise ResultFileError(
            f"{source} is corrupt: its tensors do not match the digest recorded when it was saved. {_RERUN}"
        )
    return document, tensors


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


def check_overwritable(path: str | os.PathLike[str]) -> None:
    """Refuse to save a result over an existing file that is not a tv_lens result (a checkpoint, a dataset ...).

    A result file, of any format and even one altered after it was saved, may be saved over, and so may an empty file.

    Raises:
        ResultFileError: ``path`` is an existing file whose safetensors header has no tv_lens result metadata.
    """
    target = Path(path)
    if not target.is_file() or target.stat().st_size == 0:
        return
    try:
        with open(target, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(size)) if 0 < size <= _MAX_HEADER else {}
        is_result = METADATA_KEY in header.get("__metadata__", {})
    except (OSError, ValueError, AttributeError):
        is_result = False
    if not is_result:
        raise ResultFileError(
            f"{target} is an existing file that is not a tv_lens result (a checkpoint, or another tool's file?); it "
            "is not overwritten. Save the result to another path, or move that file away first."
        )


_MAX_HEADER = 100_000_000  # safetensors' own limit on a header's size


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
