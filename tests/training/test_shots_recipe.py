"""The "shots" recipe: parity-dependent offsets, which one demonstration cannot pin down (a short run only)."""

from __future__ import annotations

from dataclasses import replace

import torch
from training_helpers import one_thread  # noqa: F401  (autouse: tiny models run on one thread)

from tv_lens.tasks import NULL_TASK
from tv_lens.training import Recipe, recipes


def test_shots_recipe_is_registered_and_fits_its_model() -> None:
    recipe = recipes["shots"]
    assert isinstance(recipe, Recipe) and recipe.name == "shots"
    pool = recipe.build_pool()
    assert recipe.model.d_vocab == pool.vocab_size == 11
    assert pool.task_names == ("offset(1,1)", "offset(1,3)", "offset(3,1)", "offset(3,3)", NULL_TASK)
    assert recipe.train.data.n_shots == 8
    assert int(pool.sample(1, recipe.train.data.n_shots, seed=0).lengths.max()) <= recipe.model.n_ctx


def test_one_demonstration_shows_one_offset_only() -> None:
    rules = {task.name: task for task in recipes["shots"].build_pool().tasks}
    x = torch.arange(8)[:, None]
    even, odd = x[:, 0] % 2 == 0, x[:, 0] % 2 == 1
    torch.testing.assert_close(rules["offset(1,3)"](x), (x[:, 0] + torch.where(even, 1, 3)) % 8)
    same_on_even = rules["offset(1,1)"](x) == rules["offset(1,3)"](x)
    assert bool(same_on_even[even].all()) and not bool(same_on_even[odd].any())


def test_a_short_run_trains_and_lowers_the_loss() -> None:
    recipe = recipes["shots"]
    schedule = replace(recipe.train.schedule, max_steps=25, warmup_steps=5)
    data = replace(recipe.train.data, eval_n_per_task=16)
    result = recipe.run(progress=False, schedule=schedule, data=data, eval_every=25)
    assert result.steps == 25
    loss = result.history["loss"]
    assert loss.iloc[-5:].mean() < loss.iloc[:5].mean() - 0.3  # from about ln(11) = 2.4 towards the 8 values
    assert set(result.accuracy()) == set(recipe.build_pool().task_names)
