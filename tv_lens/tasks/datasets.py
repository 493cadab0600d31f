"""Loaders for the two public JSON layouts of ICL task datasets.

- **dict**: one JSON object mapping each input to its output, ``{"hot": "cold", ...}`` (the task-vector
  datasets of Hendel et al. 2023).
- **records**: a JSON list of ``{"input": ..., "output": ...}`` objects, other keys ignored (the
  function-vector datasets of Todd et al. 2024); outputs may be several words.

One file is one task, named after the file by default. Leading and trailing whitespace of inputs and
outputs is stripped (the prompt template decides the spacing). Put the tasks in a
:class:`~tv_lens.tasks.text.TextPool` with the model's tokenizer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from tv_lens.errors import MissingFileError, TaskError
from tv_lens.tasks.text import Example, TextTask

__all__ = ["load_examples", "load_task", "load_tasks"]

_FORMATS = 'a {"input": "output", ...} object or a [{"input": ..., "output": ...}, ...] list'


def load_examples(path: str | Path) -> tuple[Example, ...]:
    """The ``(input, output)`` pairs of a dict- or records-format JSON file.

    Raises:
        MissingFileError: No file at ``path``.
        TaskError: ``path`` is a directory or cannot be read, the file is not UTF-8 text or not valid JSON
            (nested too deeply, an object with a key given twice), is of neither format (among them one object
            with ``"input"`` and ``"output"`` keys: a record not in a list, or columns), or holds no example.
    """
    path = _task_path(path)
    data = _read_json(path)
    if isinstance(data, dict):
        _check_not_a_record(path, data)
        pairs = list(data.items())
    elif isinstance(data, list):
        pairs = []
        for i, record in enumerate(data):
            if not isinstance(record, dict) or "input" not in record or "output" not in record:
                raise TaskError(
                    f"{path}: record {i} is {str(record)[:80]!r}, not an object with 'input' and 'output' keys; "
                    f"a task file must be {_FORMATS}."
                )
            pairs.append((record["input"], record["output"]))
    else:
        raise TaskError(f"{path} holds a JSON {type(data).__name__}; a task file must be {_FORMATS}.")
    bad = [pair for pair in pairs if not all(isinstance(v, str) and v.strip() for v in pair)]
    if bad:
        raise TaskError(
            f"{path}: inputs and outputs must be non-empty strings, got {bad[0]!r:.120}. Write numbers and other "
            'values as JSON strings ("7", not 7), drop empty examples, and give each output as one string (several '
            'valid answers: one record per answer, [{"input": ..., "output": ...}, ...]).'
        )
    if not pairs:
        raise TaskError(f"{path} holds no example; a task file must be a non-empty {_FORMATS}.")
    return tuple((x.strip(), y.strip()) for x, y in pairs)


def _check_not_a_record(path: Path, data: dict[str, Any]) -> None:
    """Refuse a JSON object that is not an input → output map, though the dict format would read it as one.

    That is an object with ``"input"`` and ``"output"`` keys (one record, or columns), or one of objects or lists of
    records (a wrapper such as ``{"train": [...]}``). Read as the dict format, ``{"input": "hot", "output": "cold"}``
    would be two examples, ``input -> hot`` and ``output -> cold``.
    """
    if "input" in data and "output" in data:
        columns = isinstance(data["input"], list) and isinstance(data["output"], list)
        shape = "columns of inputs and outputs" if columns else "one record"
        fix = (
            'write one record per example, [{"input": ..., "output": ...}, ...]'
            if columns
            else 'wrap it in a list, [{"input": ..., "output": ...}], to load it as the records format'
        )
        raise TaskError(
            f"{path} is one JSON object with 'input' and 'output' keys: {shape}, which the dict format would read "
            f"as the examples 'input' -> ... and 'output' -> ...; {fix}. (If 'input' and 'output' are inputs of "
            "your task, build it with TextTask(name, pairs).)"
        )
    parts = [value for value in data.values() if value != []]  # a wrapper may hold an empty split
    if parts and all(_holds_examples(value) for value in parts):
        key = next(key for key, value in data.items() if value != [])
        raise TaskError(
            f"{path} is one JSON object of {'objects' if isinstance(data[key], dict) else 'lists of objects'} "
            f"({key!r:.40}: ...), not an input -> output map: a wrapper around the examples (such as "
            f'{{"train": [...], "test": [...]}}) is neither task-file layout. Save the part to load on its own, as '
            f"{_FORMATS}."
        )


def _holds_examples(value: Any) -> bool:
    """Whether a JSON value is an object, or a non-empty list of objects (records): a wrapper's part, not an output."""
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
    )


def _task_path(path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TaskError(f"A task file path must be a str or pathlib.Path, got {type(path).__name__} {path!r:.60}.")
    return Path(path)


def _read_json(path: Path) -> Any:
    """The parsed JSON of ``path``; every way reading it can fail is a :class:`TvLensError` naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise MissingFileError(f"No task file at {path}; check the path (a task file is {_FORMATS}).") from error
    except IsADirectoryError as error:
        raise TaskError(f"{path} is a directory, not a task file; pass the path of a JSON file in it.") from error
    except (OSError, ValueError) as error:  # permissions, a path through a file, a NUL byte in the path ...
        raise TaskError(f"Cannot read the task file {path} ({error}); check the path and its permissions.") from error
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TaskError(
            f"{path} is not UTF-8 text (byte {error.start} is {raw[error.start : error.start + 1]!r}); save the task "
            "file as UTF-8 JSON."
        ) from error
    try:
        return json.loads(text, object_pairs_hook=partial(_object_without_repeats, path))
    except TaskError:  # a key given twice (raised by the hook)
        raise
    except json.JSONDecodeError as error:
        raise TaskError(f"{path} is not valid JSON ({error}); a task file must be {_FORMATS}.") from error
    except RecursionError as error:
        raise TaskError(
            f"{path} nests JSON arrays or objects too deeply to read; a task file must be {_FORMATS}, nested two "
            "levels at most."
        ) from error
    except ValueError as error:  # e.g. an integer literal too long to convert
        raise TaskError(f"{path} is not valid JSON ({error}); a task file must be {_FORMATS}.") from error


def _object_without_repeats(path: Path, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice (``json`` would keep only the last value).

    One pass over the keys, so a file that maps hundreds of thousands of inputs reads in linear time.
    """
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise TaskError(
                f"{path}: the key {key!r:.60} appears more than once in one JSON object, so all but its last "
                "value would be dropped. Give each input once, or use the records format "
                '[{"input": ..., "output": ...}, ...] to list an input several times.'
            )
        seen.add(key)
    return dict(pairs)


def load_task(path: str | Path, name: str | None = None) -> TextTask:
    """One task from a JSON file (named after the file's stem unless ``name`` is given)."""
    return TextTask(_task_path(path).stem if name is None else name, load_examples(path))


def load_tasks(paths: Sequence[str | Path]) -> tuple[TextTask, ...]:
    """One task per JSON file, each named after its file's stem (stems must differ).

    Raises:
        TaskError: ``paths`` is one path rather than a sequence of them, or two files have the same stem.
    """
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Iterable):
        raise TaskError(f"load_tasks takes a list of task file paths, got {paths!r:.80}; wrap one path: [path].")
    paths = list(paths)
    first_of: dict[str, int] = {}  # the index of each stem's first path: one pass, for thousands of files
    for i, path in enumerate(paths):
        stem = _task_path(path).stem
        first = first_of.setdefault(stem, i)
        if first != i:
            raise TaskError(
                f"load_tasks: {paths[first]} and {path} would both be named {stem!r}, and task names must be unique; "
                "rename one file, or load them with load_task(path, name=...)."
            )
    return tuple(load_task(path) for path in paths)
