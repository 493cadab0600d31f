"""Checkpoints: everything a run needs to continue exactly where it stopped, written so a crash cannot spoil them.

A checkpoint holds the model's parameters (by name, so it works for every backend and for LoRA-adapted
models), the optimiser state, the step, the run's config, the model's config (to rebuild the model for
later analysis), the random state of stochastic modules, and the history so far. Training batches are
drawn from seeds derived from the step, so with these a resumed run repeats the uninterrupted one
bit for bit on CPU.

Writing is atomic: the file is written under a temporary name, synced, then renamed over the final
name (``os.replace``), so a write that fails half-way leaves the previous checkpoints untouched; a write
that cannot happen (read-only directory, full disk, a path under a file) raises
:class:`CheckpointWriteError`, and :func:`check_checkpoint_directory` finds an unwritable directory before a
run starts.

Loading is defensive. The file is unpickled with ``weights_only=True`` (tensors, numbers, strings and
containers only), so a file that asks to run code on loading is refused as not being a tv_lens checkpoint.
Every checkpoint carries a SHA-256 digest of its whole contents, which must be present and match, and the
fields are then checked (a step within the run's schedule, random states a generator accepts ...): a
truncated, altered or crafted file fails to load with a :class:`~tv_lens.errors.CheckpointError` instead of
resuming from garbage.

Versions. A checkpoint records the TransformerLens version it was written under. Settings this tv_lens does
not know (a checkpoint of a newer version) are named in the error; a model whose parameters do not fit the
model this TransformerLens builds from the same config (TransformerLens 4 and 3 name a bridge's parameters
differently) is reported as a checkpoint of another TransformerLens version, not as a wrong config; an
optimiser state whose tensors do not fit the model's parameters is refused on resume.

This module writes, lists and reads the files. A loaded checkpoint and the model it rebuilds are
:class:`~tv_lens.training.checkpoint_record.Checkpoint`; the checks of its fields live in
:mod:`tv_lens.training.checkpoint_fields`, the restoring of an optimiser state in
:mod:`tv_lens.training.optimizer_state`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tv_lens.environment import software_environment
from tv_lens.errors import CheckpointError
from tv_lens.results.storage import write_failure
from tv_lens.training.checkpoint_fields import checkpoint_of
from tv_lens.training.checkpoint_record import Checkpoint, load_parameters, transformer_lens_version
from tv_lens.training.optimizer_state import load_optimizer_state

__all__ = [
    "Checkpoint",
    "CheckpointWriteError",
    "check_checkpoint_directory",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_optimizer_state",
    "load_parameters",
    "save_checkpoint",
]

FORMAT = "tv_lens.training.checkpoint/1"
_NAME = re.compile(r"^step-(\d+)\.pt$")
# What torch names when a weights_only load meets a global it does not allow (``GLOBAL posix.system``).
_FORBIDDEN_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint that could not be written (read-only directory, full disk, a parent path that is a file).

    Also an ``OSError``, so code that catches failed writes as ``OSError`` keeps working.
    """


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """File name of the checkpoint of ``step`` in ``directory``."""
    return Path(directory) / f"step-{step:07d}.pt"


def checkpoint_step(path: str | Path) -> int:
    """The step of a checkpoint file named by :func:`checkpoint_path` (``step-0000100.pt`` → 100)."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path} is not named as a checkpoint (step-0000100.pt); pass a checkpoint file.")
    return int(match.group(1))


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest step first (temporary files of unfinished writes excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint of the highest step in ``directory``, or ``None`` if there is none."""
    paths = list_checkpoints(directory)
    return paths[-1] if paths else None


def check_checkpoint_directory(directory: str | Path) -> Path:
    """Create ``directory`` if needed and check that checkpoints can be written there, before a run starts.

    A temporary file is created and removed, so a read-only directory or file system, or a ``directory``
    that is (or lies under) a file, fails here rather than at the first checkpoint, after training time
    was spent. A full disk may still only show at a save, which then raises :class:`CheckpointWriteError`.

    Args:
        directory: Where the run's checkpoints go.

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        CheckpointWriteError: Checkpoints cannot be written to ``directory`` (the message says why).
    """
    directory = Path(directory)
    probe = directory / "step-0000000.pt"
    if directory.exists() and not directory.is_dir():
        raise CheckpointWriteError(
            f"The checkpoint directory {directory} is a file, not a directory; pass a directory as "
            "checkpoint_dir= (it is created if missing)."
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".write-check.", suffix=".tmp")
        os.close(handle)
        os.unlink(temporary)
    except OSError as error:
        raise CheckpointWriteError(
            f"Cannot write checkpoints to {directory}: {write_failure(error, probe)}; or pass another "
            "checkpoint_dir=, or set checkpoint_every=0 to train without checkpoints."
        ) from error
    return directory


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (see :func:`load_checkpoint` for the keys) atomically, with its digest.

    Raises:
        CheckpointWriteError: The file could not be written (read-only directory, full disk, a parent path
            that is a file); earlier checkpoints are untouched and the run can resume from the latest.
    """
    path = Path(path)
    record = {
        "transformer_lens": transformer_lens_version(),
        "environment": software_environment(),
        **payload,
        "format": FORMAT,
    }
    record["digest"] = _digest(record)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # of an earlier write of this checkpoint, killed
            leftover.unlink(missing_ok=True)
        try:
            with open(temporary, "wb") as file:
                torch.save(record, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as error:
        raise CheckpointWriteError(
            f"Cannot save checkpoint {path}: {write_failure(error, path)}. Earlier checkpoints are untouched: "
            f"fix this, then resume the run with resume_from={str(path.parent)!r}."
        ) from error
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    The file is unpickled with ``weights_only=True``; its digest must be present and match its contents,
    and its fields must be well formed (a step within the run's schedule, random states a generator
    accepts, tensors where tensors belong ...).

    Raises:
        CheckpointError: The file is missing, truncated, corrupt, altered, crafted, or not a tv_lens
            checkpoint (also one that would run code when unpickled: it is never loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint file at {path}; list a run's checkpoints with list_checkpoints(dir).")
    fix = "delete it and resume from an earlier checkpoint of the run (list_checkpoints(dir)), or start afresh"
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files: the error says it all
            warnings.simplefilter("ignore", UserWarning)
            record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        forbidden = _FORBIDDEN_GLOBAL.search(str(error))
        if forbidden is not None or "allowed global" in str(error):
            name = forbidden.group(1) if forbidden is not None else "a Python global"
            raise CheckpointError(
                f"{path} is not a tv_lens checkpoint and must not be loaded: it asks to import {name} when "
                "unpickled, which a tv_lens checkpoint never does and which could run code on this machine. It "
                "was not loaded; delete it (or keep it away from torch.load and pickle), and resume from a "
                "checkpoint tv_lens wrote."
            ) from None
        if "weights only" in str(error).lower() or "weights_only" in str(error):
            raise CheckpointError(
                f"{path} is truncated or corrupt, or not a tv_lens checkpoint at all, and must not be loaded: its "
                "pickled data holds instructions that no tv_lens checkpoint holds. It was not loaded; delete it (or "
                "keep it away from torch.load and pickle), and resume from an earlier checkpoint of the run "
                "(list_checkpoints(dir)), or start afresh."
            ) from None
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt (its pickled data is unreadable); {fix}."
        ) from None
    except Exception as error:
        reason = "" if "weights_only" in str(error) else f" ({error})"  # never repeat torch's advice to unpickle
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt{reason}; {fix}.") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a tv_lens training checkpoint (expected format {FORMAT!r}); pass a file that "
            "tv_lens.training.train wrote (list_checkpoints(dir) lists a run's)."
        )
    if "digest" not in record:
        raise CheckpointError(
            f"Checkpoint {path} has no digest, which every tv_lens checkpoint records: it was altered or not "
            f"written by tv_lens, so its contents cannot be checked; {fix}."
        )
    digest = record.pop("digest")
    if digest != _digest(record):
        raise CheckpointError(f"Checkpoint {path} is corrupt: its contents do not match its digest; {fix}.")
    try:
        return checkpoint_of(path, record, fix)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"Checkpoint {path} lacks or mangles a field ({error!r}); {fix}.") from error


def _digest(record: Any) -> str:
    hasher = hashlib.sha256()
    _feed(hasher, record)
    return hasher.hexdigest()


def _feed(hasher: Any, value: Any) -> None:
    """Hash a nest of dicts, lists, tensors and plain values in a canonical order."""
    if isinstance(value, Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        hasher.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, dict):
        hasher.update(b"{")
        for key in sorted(value, key=repr):
            hasher.update(repr(key).encode())
            _feed(hasher, value[key])
        hasher.update(b"}")
    elif isinstance(value, list | tuple):
        hasher.update(b"[")
        for item in value:
            _feed(hasher, item)
        hasher.update(b"]")
    else:
        hasher.update(repr(value).encode())
