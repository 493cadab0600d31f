"""Equivalence: every public analysis still gives the numbers frozen in ``frozen.json``.

What it checks: each entry of ``freeze.ANALYSES`` (one test per analysis or building block, so a failure names
the analysis that changed) is recomputed through the same code as ``freeze.py`` and compared with the frozen
numbers: integers, flags and strings exactly; floats within ``rtol=1e-6, atol=1e-7`` on the float64 models and
``1e-5`` on float32 stages. Every frozen number must still be produced; numbers a later version adds are not
checked until they are frozen. Training entries are frozen per TransformerLens major version (see ``freeze.py``).

Re-freezing is deliberate, for a change meant to change numbers: ``python -m tests.equivalence.freeze``, then
review the diff of ``frozen.json`` entry by entry. A refactor must never re-freeze; if it renames a result
field, map its new name to the frozen one in ``freeze.RENAMED_FIELDS``, not the numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from freeze import ANALYSES, FROZEN, Fixtures, compute


@pytest.fixture(scope="module")
def frozen() -> dict[str, Any]:
    return json.loads(FROZEN.read_text())


@pytest.fixture(scope="module")
def fixtures() -> Iterator[Fixtures]:
    """Models built once per module (each on first use)."""
    built = Fixtures()
    yield built
    built.close()


def test_every_analysis_is_frozen_and_nothing_else(frozen):
    keys = set(frozen["entries"])
    missing = [analysis.key(name) for name, analysis in ANALYSES.items() if analysis.key(name) not in keys]
    assert not missing, f"not frozen (for this TransformerLens): {missing}; freeze deliberately (module docstring)"
    assert {key.split("@")[0] for key in keys} == set(ANALYSES)


@pytest.mark.parametrize("name", list(ANALYSES))
def test_numbers_equal_the_frozen_ones(name: str, frozen: dict[str, Any], fixtures: Fixtures):
    expected = frozen["entries"][ANALYSES[name].key(name)]
    tolerance = frozen["tolerance"][name]
    got = compute(name, fixtures)
    problems = [f"{key}: no longer produced" for key in expected if key not in got]
    problems += [
        f"{key}: {problem}"
        for key, summary in expected.items()
        if key in got
        for problem in differences(got[key], summary, **tolerance)
    ]
    keys = len({problem.split(": ")[0] for problem in problems})
    summary = f"{name} changed: {len(problems)} differences in {keys} of {len(expected)} frozen keys"
    assert not problems, summary + ":\n" + "\n".join(problems[:40])


def differences(got: dict[str, Any], want: dict[str, Any], rtol: float, atol: float) -> list[str]:
    """What differs between a recomputed summary and the frozen one (empty: equal within tolerance)."""
    if got["kind"] != want["kind"]:
        return [f"kind {got['kind']} != frozen {want['kind']}"]
    kind = want["kind"]
    if kind in ("exact", "list") or (kind == "float" and not isinstance(want["value"], float)):
        field = "value" if kind != "list" else "values"
        return [] if _same(got[field], want[field], rtol, atol) else [f"{got[field]!r} != frozen {want[field]!r}"]
    if kind == "float":
        equal = close(got["value"], want["value"], rtol, atol)
        return [] if equal else [f"{got['value']!r} != frozen {want['value']!r}"]
    if got["shape"] != want["shape"]:
        return [f"shape {got['shape']} != frozen {want['shape']}"]
    problems = []
    field = "values" if "values" in want else "sample"
    exact = kind == "exact_tensor"
    for i, (a, b) in enumerate(zip(got[field], want[field], strict=True)):
        if not (a == b if exact else close(a, b, rtol, atol)):
            where = i if field == "values" else want["index"][i]
            problems.append(f"[{where}] {a!r} != frozen {b!r}")
    if field == "sample":
        n = math.prod(want["shape"])
        for part in ("n_nan", "n_inf"):
            if got.get(part) != want.get(part):
                problems.append(f"{part} {got.get(part)} != frozen {want.get(part)}")
        for part, scale in (("sum", want["abs_sum"]), ("abs_sum", want["abs_sum"]), ("sum_sq", want["sum_sq"])):
            bound = 0 if exact else atol * n + rtol * scale
            if abs(got[part] - want[part]) > bound:
                problems.append(f"{part} {got[part]!r} != frozen {want[part]!r}")
    return problems


def close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    """``|a - b| <= atol + rtol |b|``, with NaN equal to NaN and infinities (stored as strings) equal to themselves."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return abs(a - b) <= atol + rtol * abs(b)


def _same(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rtol, atol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return close(a, b, rtol, atol)
    return a == b
