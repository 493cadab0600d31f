"""Griffe extension for the API pages: render the reST habits of tv_lens docstrings as Markdown.

tv_lens docstrings hold ``>>>`` examples, Sphinx roles (``:func:`name```) and ``::`` literal-block markers.
Markdown would turn the examples into nested block quotes and print the roles verbatim, so when the docs
are built this extension rewrites every loaded docstring: examples become ``pycon`` code blocks, roles
become code spans and a trailing ``::`` becomes ``:``. The source files are not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc|const):`~?([^`]+)`")


def to_markdown(text: str) -> str:
    """``text`` with Sphinx roles as code spans and doctest examples fenced as ``pycon`` blocks."""
    out: list[str] = []
    in_example = False
    for line in ROLE.sub(lambda match: f"`{''.join(match.group(1).split())}`", text).splitlines():
        is_prompt = line.lstrip().startswith(">>>")
        if is_prompt and not in_example:
            if out and out[-1].strip():
                out.append("")
            out.append("```pycon")
            in_example = True
        elif in_example and not line.strip():
            out.append("```")
            in_example = False
        if not in_example and line.endswith("::") and not line.endswith(":::"):
            line = line[:-1]
        out.append(line)
    if in_example:
        out.append("```")
    return "\n".join(out)


class DocstringMarkdown(griffe.Extension):
    """Rewrites each object's docstring with :func:`to_markdown` as Griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of ``obj``, if it has one."""
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
