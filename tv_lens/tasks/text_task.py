"""A text task: a named list of ``(input, output)`` strings, checked to be text a tokenizer can read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tv_lens.errors import TaskError

__all__ = ["Example", "TextTask", "check_text"]

Example = tuple[str, str]


@dataclass(frozen=True)
class TextTask:
    """A named task given by examples.

    Attributes:
        name: Task name, unique within a pool.
        examples: ``(input, output)`` string pairs (at least one).
    """

    name: str
    examples: tuple[Example, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TaskError(f"TextTask name must be a non-empty string, got {self.name!r}.")
        object.__setattr__(self, "examples", _example_pairs(self.name, self.examples))
        if not self.examples:
            raise TaskError(f"TextTask {self.name!r} has no examples; pass at least one (input, output) pair.")


def _example_pairs(name: str, examples: object) -> tuple[Example, ...]:
    """``examples`` as a tuple of ``(input, output)`` string pairs, or a :class:`TaskError` naming what is not one.

    Only a sequence (or other iterable) of two-element tuples or lists is read: a dict or a string is refused, as
    iterating it would split each key or string into characters.
    """
    if isinstance(examples, Mapping):
        raise TaskError(
            f"TextTask {name!r}: examples is a {type(examples).__name__}, but a TextTask takes (input, output) pairs "
            "(iterating a dict gives its keys only); pass its pairs: TextTask(name, tuple(mapping.items()))."
        )
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Iterable):
        raise TaskError(
            f"TextTask {name!r}: examples must be a sequence of (input, output) string pairs, got "
            f"{type(examples).__name__} {examples!r:.60}; pass e.g. (('hot', 'cold'), ('big', 'small'))."
        )
    pairs = []
    for example in examples:
        if not isinstance(example, (tuple, list)) or len(example) != 2:
            raise TaskError(
                f"TextTask {name!r}: every example must be an (input, output) pair of strings, got {example!r:.80}; "
                "pass e.g. ('hot', 'cold')."
            )
        x, y = example
        if not (isinstance(x, str) and isinstance(y, str) and y.strip()):
            raise TaskError(f"TextTask {name!r}: examples must be (str, non-empty str) pairs, got {example!r:.80}.")
        pairs.append((x, y))
    check_text(f"TextTask {name!r}: example", [text for pair in pairs for text in pair])
    return tuple(pairs)


def check_text(what: str, texts: Iterable[str]) -> None:
    """Raise a :class:`TaskError` for a string no tokenizer can read (a lone surrogate is not Unicode text)."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise TaskError(
                f"{what} {text!r:.60} holds the lone surrogate {text[error.start]!r}, which is not a Unicode "
                "character and cannot be tokenized; decode the source text properly (e.g. as UTF-8)."
            ) from error
