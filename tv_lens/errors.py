"""The library's exceptions.

Every error tv_lens raises for bad input is a :class:`TvLensError`, so callers can catch one type.
Subclasses also derive from the builtin they refine (``ValueError``, ``KeyError`` ...), so code
written against the builtins keeps working. Messages name the problem and the fix.
"""

from __future__ import annotations

__all__ = [
    "AnalysisError",
    "ArtefactError",
    "CheckpointError",
    "ConfigError",
    "HookNotFoundError",
    "InterventionNotAppliedError",
    "LayerOutOfRangeError",
    "MissingFileError",
    "ModelNotSupportedError",
    "NonFiniteError",
    "OutOfMemoryError",
    "PositionError",
    "ResultFileError",
    "ResultWriteError",
    "ShapeError",
    "TaskError",
    "TvLensError",
    "UnknownNameError",
]


class TvLensError(Exception):
    """Base class of every exception tv_lens raises for bad input or a failed check."""


class ModelNotSupportedError(TvLensError, TypeError):
    """The object is not a TransformerLens model, or lacks a hook point tv_lens needs."""


class HookNotFoundError(TvLensError, KeyError):
    """A hook name or site that the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly instead.
        return str(self.args[0]) if self.args else ""


class UnknownNameError(TvLensError, KeyError):
    """A name that is not among those available (e.g. an analysis a suite result does not hold)."""

    __str__ = HookNotFoundError.__str__


class MissingFileError(TvLensError, FileNotFoundError):
    """A file to read that does not exist (a saved result ...)."""


class LayerOutOfRangeError(TvLensError, IndexError):
    """A layer or head index outside the model."""


class PositionError(TvLensError, IndexError):
    """A token position outside a prompt, or a prompt longer than the model's context."""


class ShapeError(TvLensError, ValueError):
    """A tensor with the wrong shape or dtype (e.g. a vector whose size is not d_model)."""


class TaskError(TvLensError, ValueError):
    """A task, task pool or sampling request that cannot work (unknown op, vocabulary too small ...)."""


class InterventionNotAppliedError(TvLensError, RuntimeError):
    """An intervention that wrote nothing during a forward pass."""


class NonFiniteError(TvLensError, ValueError):
    """NaN or infinite values where finite numbers are required."""


class AnalysisError(TvLensError, ValueError):
    """Analysis settings that cannot work with the data given (k too large for the prompts, unknown metric ...)."""


class ResultFileError(TvLensError, ValueError):
    """A saved result file that is corrupt, truncated, or holds another kind of result."""


class ResultWriteError(ResultFileError, OSError):
    """A file that could not be written (read-only directory, full disk, a parent path that is a file).

    Also an ``OSError``, so code that catches failed writes as ``OSError`` keeps working.
    """


class ConfigError(TvLensError, ValueError):
    """A model or training setting that cannot work (d_vocab 0, negative λ, warmup longer than training ...)."""


class CheckpointError(TvLensError, ValueError):
    """A checkpoint that cannot be used: truncated or corrupt, or written by a run with another config."""


class ArtefactError(TvLensError, ValueError):
    """Saved artefacts that are missing or do not fit the request (a directory without results or model ...)."""


class OutOfMemoryError(TvLensError, RuntimeError):
    """A pass did not fit in the accelerator's memory even with one prompt per pass."""
