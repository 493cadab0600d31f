"""Output paths checked before any work starts: ``--out`` (a directory) and ``--output`` (the report)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tv_lens.errors import ArtefactError

__all__ = ["check_out", "check_output"]


def check_out(out: Path) -> None:
    """Fail before any work if ``--out`` cannot be an output directory: a file, a path under a file, not writable.

    Nothing is created: the write check makes and removes a temporary file in the nearest existing folder.
    """
    if out.exists() and not out.is_dir():
        raise ArtefactError(
            f"--out {out} is a file, not a directory; pass a directory (it is created if missing), e.g. "
            f"--out {out.with_name(out.name + '-run')}."
        )
    _check_folder(
        f"--out {out}",
        out,
        "pass a directory whose parent folders are directories",
        "cannot be written to",
        "pass a directory you can write to, or make that one writable",
    )


def check_output(path: Path) -> None:
    """Fail before any work if the report cannot be written to ``--output``."""
    from tv_lens.app.report import check_report_target
    from tv_lens.app.run_files import RESULT_SUFFIX

    check_report_target(path)  # a directory, or a file that is not a report
    if path.name.endswith(RESULT_SUFFIX):
        raise ArtefactError(
            f"--output {path} ends in {RESULT_SUFFIX}, the suffix of result files: a report there is HTML that the "
            f"next `tv-lens report` would try to read as a result; name the report .html, e.g. "
            f"--output {path.with_suffix('.html')}."
        )
    _check_folder(
        f"--output {path}",
        path.parent,
        "pass a report path whose folders are directories",
        "cannot be written",
        "pass a path in a directory you can write to",
    )


def _check_folder(given: str, path: Path, folders_fix: str, written: str, writable_fix: str) -> None:
    """Raise if the nearest existing folder of ``path`` is a file or not writable; ``given`` names the option."""
    folder = _nearest_existing(path)
    if not folder.is_dir():
        raise ArtefactError(f"{given} lies under {folder}, which is a file, not a directory; {folders_fix}.")
    problem = _unwritable(folder)
    if problem is not None:
        raise ArtefactError(f"{given} {written}: {folder} is not writable ({problem}); {writable_fix}.")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (the working directory for a relative path)."""
    return next((folder for folder in (path, *path.parents) if folder.exists()), Path.cwd())


def _unwritable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (``None`` if one can); the probe file is removed again."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".tv-lens-write-check.", suffix=".tmp")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        return f"{type(error).__name__}: {error.strerror or error}"
    return None
