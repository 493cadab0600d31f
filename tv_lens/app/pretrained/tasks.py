"""The text tasks of a pretrained run, named as on the command line, and their pool with the model's tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tv_lens.app.messages import one_line
from tv_lens.errors import MissingFileError, ModelNotSupportedError, TaskError
from tv_lens.tasks import POS_TAGS, TextPool, TextTask, bitwise_text_tasks, load_task, pos_tasks
from tv_lens.tasks.tokens import BITWISE_OPS

__all__ = ["TEXT_FAMILIES", "text_pool", "text_tasks"]


@dataclass(frozen=True)
class _Family:
    """A built-in text family: its task names and how to build its tasks."""

    names: tuple[str, ...]
    build: Callable[[tuple[str, ...], int, int], tuple[TextTask, ...]]
    description: str


TEXT_FAMILIES: dict[str, _Family] = {
    "bitwise": _Family(
        BITWISE_OPS,
        lambda names, n, seed: bitwise_text_tasks(ops=names, n_bits=5, n_examples=n, seed=seed),
        "two 5-digit binary numbers 'a b' -> op(a, b) as 5 digits, op in and, nand, or, nor, xor, xnor",
    ),
    "pos": _Family(
        POS_TAGS,
        lambda names, n, seed: pos_tasks(tags=names, n_sentences=n, seed=seed),
        "a sentence -> its first word with a part-of-speech tag: noun, adjective, verb, adverb, preposition, pronoun",
    ),
}
"""Built-in text families by name (:mod:`tv_lens.tasks.text_families`): ``FAMILY`` is every task of the family,
``FAMILY:a,b`` only tasks ``a`` and ``b``."""


def text_tasks(specs: Sequence[str], n_examples: int = 256, seed: int = 0) -> tuple[TextTask, ...]:
    """The text tasks named by ``specs``, in order.

    Each spec is a built-in family of :data:`TEXT_FAMILIES` (``"bitwise"``: every op; ``"bitwise:and,xor"``:
    those ops; likewise ``"pos"`` and ``"pos:noun,verb"``) or a JSON task file (a path ending in ``.json``, or
    any existing file): ``{"input": "output", ...}`` or ``[{"input": ..., "output": ...}, ...]``, one task named
    after the file.

    Args:
        specs: Family names and task files.
        n_examples: Examples per task of a built-in family.
        seed: Seed of the built-in families' examples.

    Raises:
        TaskError: An unknown family or task name, or a task file that cannot be read.
        MissingFileError: A task file that does not exist.
    """
    specs = (specs,) if isinstance(specs, str) else tuple(specs)
    if not specs:
        raise TaskError(f"No tasks named; pass a built-in family ({', '.join(TEXT_FAMILIES)}) or a JSON task file.")
    tasks: list[TextTask] = []
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise TaskError(f"A task must be a family name or a JSON file path, got {spec!r}.")
        path = Path(spec).expanduser()
        if spec.lower().endswith(".json") or path.is_file():
            tasks.append(_task_file(path))
        else:
            tasks.extend(_family_tasks(spec, n_examples, seed))
    return tuple(tasks)


def _family_tasks(spec: str, n_examples: int, seed: int) -> tuple[TextTask, ...]:
    name, _, selection = spec.partition(":")
    family = TEXT_FAMILIES.get(name.strip().lower())
    if family is None:
        raise TaskError(
            f"Unknown task family {name.strip()!r}; built-in families are {list(TEXT_FAMILIES)} (e.g. 'bitwise' or "
            "'pos:noun,verb'), or pass a JSON task file ending in .json."
        )
    names = tuple(n.strip().lower() for n in selection.split(",") if n.strip()) if selection else family.names
    unknown = [n for n in names if n not in family.names]
    if unknown or not names:
        raise TaskError(
            f"Unknown task(s) {unknown or [selection]} in {spec!r}; the tasks of {name.strip()!r} are "
            f"{list(family.names)}."
        )
    return family.build(names, n_examples, seed)


def _task_file(path: Path) -> TextTask:
    if not path.exists():
        raise MissingFileError(
            f"No task file {path}; pass an existing JSON file, or a built-in family ({', '.join(TEXT_FAMILIES)})."
        )
    try:
        return load_task(path)
    except (OSError, UnicodeDecodeError) as error:
        raise TaskError(
            f"Cannot read task file {path} ({one_line(error, 300)}); pass a readable UTF-8 JSON file."
        ) from error


def text_pool(
    model: Any,
    tasks: Sequence[TextTask],
    template: str = "{x}->{y}",
    separator: str = "\n",
    null: bool = True,
) -> TextPool:
    """A :class:`~tv_lens.tasks.TextPool` of ``tasks`` with ``model.tokenizer``, starting prompts as the model expects.

    Prompts start with the tokenizer's BOS token where TransformerLens prepends one for this model
    (``model.cfg.default_prepend_bos``) and the tokenizer has one.

    Raises:
        ModelNotSupportedError: The model has no tokenizer.
        TaskError: A tokenizer that cannot represent the tasks (see :class:`~tv_lens.tasks.TextPool`).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ModelNotSupportedError(
            f"{type(model).__name__} has no tokenizer (model.tokenizer is None); boot it with its tokenizer, e.g. "
            "TransformerBridge.boot_transformers(name_or_folder)."
        )
    prepend = bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", True))
    bos = prepend and getattr(tokenizer, "bos_token_id", None) is not None
    return TextPool(tuple(tasks), tokenizer, template=template, separator=separator, null=null, bos=bos)
