"""Every example in a docstring of the package runs and prints what it shows (``doctest``, one test per module)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tv_lens

FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def examples(name: str) -> int:
    """Number of docstring examples in module ``name`` (its functions, classes and methods included)."""
    module = importlib.import_module(name)
    return sum(len(test.examples) for test in doctest.DocTestFinder().find(module))


MODULES = sorted(info.name for info in pkgutil.walk_packages(tv_lens.__path__, "tv_lens."))
WITH_EXAMPLES = [name for name in MODULES if examples(name)]


def test_examples_are_found_where_they_are():
    assert len(WITH_EXAMPLES) >= 30
    assert {"tv_lens.generation", "tv_lens.tasks.pool", "tv_lens.training.recipe"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("module", WITH_EXAMPLES)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=FLAGS, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {module} failed"
