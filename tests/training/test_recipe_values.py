"""The registered recipes, field by field: refactoring how they are written must not change what they train."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from tv_lens.training import recipes

# every field of every registered recipe, written out from the registry (a changed value changes a trained model)
EXPECTED: dict[str, dict[str, Any]] = json.loads((Path(__file__).parent / "recipe_values.json").read_text("utf-8"))


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def test_the_registry_holds_these_recipes_in_this_order() -> None:
    assert list(recipes) == list(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_recipe_fields_are_unchanged(name: str) -> None:
    recipe, expected = recipes[name], EXPECTED[name]
    assert recipe.name == name
    assert f"{recipe.pool.__module__}.{recipe.pool.__qualname__}" == expected["pool"]
    assert recipe.description == expected["description"]
    assert _as_json(asdict(recipe.model)) == expected["model"]
    assert _as_json(recipe.train.to_dict()) == expected["train"]
