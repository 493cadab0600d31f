"""Regression recipes: continuous models from a recipe, short runs, checkpoints, and the least-squares references."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from sklearn.linear_model import LinearRegression, Ridge
from training_helpers import one_thread  # noqa: F401  (autouse: tiny models run on one thread)

from tv_lens.errors import ConfigError
from tv_lens.models import ContinuousModel, adapt
from tv_lens.tasks import NULL_TASK, RegressionPool, regression_pool, sparse_linear_pool
from tv_lens.tasks.regression_baselines import demonstrations, least_squares_predictions, ridge_predictions
from tv_lens.training import Recipe, RegressionObjective, load_checkpoint, recipes


def sparse_recipe() -> Recipe:
    """A recipe of one's own on Han et al.'s sparse mixture (2 bases in d = 8, plus Null), as a user registers it."""
    linear = recipes["linear_regression"]
    return replace(linear, name="sparse", pool=partial(sparse_linear_pool, d=8, n_bases=2, null=True))


def registered(name: str) -> Recipe:
    return recipes[name]


# every registered recipe on a regression pool (registering one is enough), and one of a user's own
REGRESSION_RECIPES: dict[str, Callable[[], Recipe]] = {
    **{name: partial(registered, name) for name in recipes if isinstance(recipes[name].build_pool(), RegressionPool)},
    "sparse": sparse_recipe,
}


def tiny(recipe: Recipe, steps: int) -> Recipe:
    """``recipe`` on a 1-block, d_model 32 model for ``steps`` steps: seconds, not minutes."""
    data = replace(recipe.train.data, n_per_task=16, eval_n_per_task=16)
    schedule = replace(recipe.train.schedule, max_steps=steps, warmup_steps=2)
    return replace(
        recipe,
        model=replace(recipe.model, n_layers=1, d_model=32),
        train=replace(recipe.train, data=data, schedule=schedule, eval_every=steps),
    )


@pytest.mark.parametrize("name", REGRESSION_RECIPES)
def test_a_regression_recipe_builds_a_continuous_model_that_fits_its_prompts(name: str) -> None:
    recipe = REGRESSION_RECIPES[name]()
    pool = recipe.build_pool()
    assert isinstance(pool, RegressionPool) and pool.d_out == recipe.model.d_vocab == 1
    model = recipe.build_model()
    assert isinstance(model, ContinuousModel) and (model.d_in, model.d_out) == (pool.d_in, pool.d_out)
    longest = recipe.train.data.n_shots if isinstance(recipe.train.data.n_shots, int) else recipe.train.data.n_shots[1]
    assert longest >= 15  # the benchmark reads the query error up to 15 shots
    batch = pool.sample(2, longest, seed=0)
    assert int(batch.lengths.max()) <= recipe.model.n_ctx
    with torch.no_grad():
        assert model(batch.inputs).shape == (len(batch), batch.inputs.shape[1], 1)


def test_the_linear_regression_recipe_trains_yang_et_al_s_pool() -> None:
    pool = recipes["linear_regression"].build_pool()
    assert [t.name for t in pool.tasks] == ["linear"] and 4 <= pool.d <= 8 and not pool.null
    assert "linear_regression" in recipes and "linear regression" in recipes["linear_regression"].description


def test_the_sparse_linear_recipe_trains_han_et_al_s_mixture_with_null() -> None:
    pool = recipes["sparse_linear"].build_pool()
    assert isinstance(pool, RegressionPool) and pool.d == 4
    assert pool.task_names == ("sparse_linear(0)", "sparse_linear(1)", NULL_TASK)
    assert {"linear_regression", "sparse_linear"} <= set(REGRESSION_RECIPES)
    assert "sparse linear regression" in recipes["sparse_linear"].description


def test_a_token_recipe_still_builds_a_token_model() -> None:
    assert adapt(recipes["quick"].build_model()).d_in is None


@pytest.mark.parametrize("name", REGRESSION_RECIPES)
def test_a_short_run_of_a_regression_recipe_lowers_the_loss(name: str) -> None:
    recipe = tiny(REGRESSION_RECIPES[name](), 30)
    pool = recipe.build_pool()
    fixed = pool.sample(128, recipe.train.data.n_shots, seed=11)  # one large batch: the same prompts before and after

    def loss(model: ContinuousModel) -> float:
        with torch.no_grad():
            return float(RegressionObjective().context_loss(adapt(model.eval()), fixed))

    before = loss(recipe.build_model())  # the run's initial model: same config, same seed
    result = recipe.run(progress=False)
    assert isinstance(result.model, ContinuousModel) and result.history["loss"].notna().all()
    # the first thing 30 steps learn is to drop the random initial outputs: the loss falls towards Var(y)
    assert loss(result.model) < before - 0.1
    assert set(result.evals["task"]) == set(pool.task_names)


def test_a_regression_recipe_run_whose_config_names_a_vocabulary_still_trains() -> None:
    # a recipe written with a token model's d_vocab: the continuous model's vocabulary is its read-out, d_out
    short = tiny(recipes["linear_regression"], 2)
    recipe = replace(short, model=replace(short.model, d_vocab=7))
    result = recipe.run(progress=False)
    assert result.model_config is not None and result.model_config.d_vocab == 1


def test_a_checkpoint_of_a_regression_recipe_gives_identical_outputs(tmp_path: Path) -> None:
    recipe = tiny(sparse_recipe(), 4)
    result = recipe.run(progress=False, checkpoint_dir=tmp_path, checkpoint_every=4)
    loaded = load_checkpoint(result.checkpoints[-1]).load_model()
    assert isinstance(loaded, ContinuousModel) and (loaded.d_in, loaded.d_out) == (8, 1)
    batch = recipe.build_pool().sample(3, 10, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch.inputs), result.model.eval()(batch.inputs), rtol=0, atol=0)


def test_least_squares_and_ridge_equal_sklearn_prompt_by_prompt() -> None:
    # noisy outputs and shot counts on both sides of d = 4: under-determined fits are the minimum-norm ones
    batch = regression_pool(("linear",), d=4, null=False, noise_std=0.3).sample(12, (1, 9), seed=3)
    assert int(batch.n_shots.min()) < 4 < int(batch.n_shots.max())
    x, y, query = demonstrations(batch)
    least_squares, ridge = least_squares_predictions(batch), ridge_predictions(batch, 0.5)
    for i in range(len(batch)):
        n = int(batch.n_shots[i])
        xs, ys, xq = x[i, :n].double().numpy(), y[i, :n, 0].double().numpy(), query[i : i + 1].double().numpy()
        expected_ls = LinearRegression(fit_intercept=False).fit(xs, ys).predict(xq)[0]
        expected_ridge = Ridge(alpha=0.5, fit_intercept=False).fit(xs, ys).predict(xq)[0]
        assert math.isclose(float(least_squares[i, 0]), expected_ls, rel_tol=1e-4, abs_tol=1e-4)
        assert math.isclose(float(ridge[i, 0]), expected_ridge, rel_tol=1e-4, abs_tol=1e-4)


def test_the_demonstrations_are_the_prompt_vectors() -> None:
    batch = sparse_linear_pool(d=4, n_bases=2).sample(2, (2, 4), seed=0)
    x, y, query = demonstrations(batch)
    for i in range(len(batch)):
        for j in range(int(batch.n_shots[i])):
            torch.testing.assert_close(x[i, j], batch.inputs[i, 2 * j])
            assert float(y[i, j, 0]) == float(batch.inputs[i, 2 * j + 1, 0])
        assert not bool(x[i, int(batch.n_shots[i]) :].any())  # padding rows are zero
        torch.testing.assert_close(query[i], batch.inputs[i, int(batch.answer_pos[i])])


def test_least_squares_is_exact_on_noiseless_prompts_with_enough_shots() -> None:
    pool = regression_pool(("linear",), d=5, null=False)
    enough, few, none = (pool.sample(32, shots, seed=1) for shots in (5, 3, 0))
    assert torch.allclose(least_squares_predictions(enough), enough.answers, atol=1e-4)
    assert float(((ridge_predictions(enough, 1.0) - enough.answers) ** 2).mean()) > 1e-3  # ridge shrinks
    # below d shots the minimum-norm fit misses part of w: E[error] = (d - n) / d * E[y^2] = 0.4 * 5
    assert 0.5 < float(((least_squares_predictions(few) - few.answers) ** 2).mean()) < 4.0
    assert not bool(least_squares_predictions(none).any()) and not bool(ridge_predictions(none, 1.0).any())


@pytest.mark.parametrize("alpha", [0, -1.0, math.inf, math.nan, True, "0.1"])
def test_ridge_refuses_a_penalty_that_is_not_positive(alpha: object) -> None:
    batch = regression_pool(("linear",), d=4, null=False).sample(2, 3, seed=0)
    with pytest.raises(ConfigError, match="alpha must be a finite number > 0"):
        ridge_predictions(batch, alpha)  # type: ignore[arg-type]
