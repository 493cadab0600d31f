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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tv_lens.errors import TaskError
from tv_lens.tasks.text import Example, TextTask

__all__ = ["load_examples", "load_task", "load_tasks"]

_FORMATS = 'a {"input": "output", ...} object or a [{"input": ..., "output": ...}, ...] list'


def load_examples(path: str | Path) -> tuple[Example, ...]:
    """The ``(input, output)`` pairs of a dict- or records-format JSON file.

    Raises:
        TaskError: The file is not valid JSON, is of neither format, or holds no example.
    """
    path = Path(path)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TaskError(f"{path} is not valid JSON ({error}); a task file must be {_FORMATS}.") from error
    if isinstance(data, dict):
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
        raise TaskError(f"{path}: inputs and outputs must be non-empty strings, got {bad[0]!r}.")
    if not pairs:
        raise TaskError(f"{path} holds no example; a task file must be a non-empty {_FORMATS}.")
    return tuple((x.strip(), y.strip()) for x, y in pairs)


def load_task(path: str | Path, name: str | None = None) -> TextTask:
    """One task from a JSON file (named after the file's stem unless ``name`` is given)."""
    return TextTask(name or Path(path).stem, load_examples(path))


def load_tasks(paths: Sequence[str | Path]) -> tuple[TextTask, ...]:
    """One task per JSON file, each named after its file's stem (stems must differ)."""
    return tuple(load_task(path) for path in paths)
