"""Error messages as the application prints them: on one line."""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(error: BaseException, limit: int | None = None) -> str:
    r"""The error's message on one line (a message never spans lines on the terminal), cut to ``limit`` characters.

    >>> one_line(ValueError("no such\n  file"), limit=10)
    'no such...'
    """
    text = " ".join(str(error).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
