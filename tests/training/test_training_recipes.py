"""The recipe registry, and the quick recipe actually learning (trained once per module)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from training_helpers import one_thread  # noqa: F401  (autouse: tiny models run on one thread)

from tv_lens.errors import ConfigError, TvLensError
from tv_lens.tasks import NULL_TASK
from tv_lens.training import Recipe, recipes


@pytest.fixture(scope="module")
def quick_result():
    return recipes["quick"].run(progress=False)


def test_quick_recipe_is_clearly_above_chance(quick_result) -> None:
    pool = recipes["quick"].build_pool()
    chance = 1 / pool.output_values
    accuracy = quick_result.accuracy()
    real_tasks = [task for task in pool.task_names if task != NULL_TASK]
    assert quick_result.icl_accuracy() >= 0.6  # chance is 1/8; the recipe measured 100% on both backends
    assert all(accuracy[task] > 3 * chance for task in real_tasks), accuracy  # in-context, not one fixed offset
    assert accuracy[NULL_TASK] < 3 * chance  # random outputs cannot be predicted
    history = quick_result.history
    assert history["loss"].iloc[-10:].mean() < history["loss"].iloc[:10].mean()


def test_registry_lookup_and_registration() -> None:
    assert {"default", "quick"} <= set(recipes)
    with pytest.raises(KeyError, match=r"No recipe named 'nope'; available: \['default', .*'quick'"):
        recipes["nope"]
    with pytest.raises(TvLensError):
        recipes["nope"]
    with pytest.raises(ConfigError, match="exists; pass overwrite=True"):
        recipes.register(recipes["quick"])


@pytest.mark.parametrize("name", ["default", "quick"])
def test_recipes_are_consistent(name: str) -> None:
    recipe = recipes[name]
    assert isinstance(recipe, Recipe) and recipe.name == name
    pool = recipe.build_pool()
    assert recipe.model.d_vocab == pool.vocab_size
    longest = recipe.train.data.n_shots if isinstance(recipe.train.data.n_shots, int) else recipe.train.data.n_shots[1]
    assert int(pool.sample(1, longest, seed=0).lengths.max()) <= recipe.model.n_ctx
    assert NULL_TASK in pool.task_names


def test_default_recipe_is_the_demo_model() -> None:
    default = recipes["default"]
    assert (default.model.n_layers, default.model.d_model) == (4, 128)
    assert default.build_pool().task_names == ("offset(1)", "offset(2)", "offset(3)", "offset(4)", NULL_TASK)


def test_with_seed_changes_the_init_and_the_data_seeds_only():
    recipe = recipes["quick"]
    seeded = recipe.with_seed(7)
    assert (seeded.model.seed, seeded.train.data.seed) == (7, 7)
    assert replace(seeded.model, seed=recipe.model.seed) == recipe.model
    assert replace(seeded.train.data, seed=recipe.train.data.seed) == recipe.train.data
    assert (seeded.name, seeded.pool, seeded.train.schedule) == (recipe.name, recipe.pool, recipe.train.schedule)
