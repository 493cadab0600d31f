"""Named training recipes: a task pool, a model shape and a training config that are known to work.

``recipes["default"]`` trains the benchmarks' model (``tv-lens demo`` trains ``"shots"``): a 4-block,
``d_model=128`` model on four offset tasks (``y = x + c mod 16``) plus the Null task, 8 shots, where
task vectors are expected (Yang et al.'s discrete offset tasks). ICL emerges around step 150-250 and
the 400 steps end at ≥ 95% held-out ICL accuracy on the offset tasks (measured 99-100% on both
backends; Null is at chance by construction), in about 80 s of one CPU thread.
``recipes["quick"]`` is a much smaller run for tests and CI: 2 blocks, 200 steps, about 15 s of one
CPU thread, ending far above chance (measured 100% on both backends).
``recipes["shots"]`` (the demo's) is a run where the number of shots matters: offsets mod 8 that depend on the parity of
``x`` (``offset(a,b)``: ``y = x + a`` for even ``x``, ``x + b`` for odd ``x``, ``a, b`` in 1 and 3) plus Null.
A demonstration shows only the offset of its own parity, so even an ideal reader is right at 1, 2, 4, 8 shots
only 75%, 87.5%, 97%, 99.8% of the time. The 600 steps (4 blocks, ``d_model=64``, about 90 s of one CPU thread)
follow that curve: measured 73-75% at 1 shot and ≥ 99% held-out ICL accuracy at 8 shots, on both backends.
``recipes["linear_regression"]`` learns linear regression in context (Yang et al.; ``y = w·x`` in d = 4, a fresh
``w ~ N(0, I)`` per prompt, 16 shots): a recipe whose pool is a :class:`~tv_lens.tasks.RegressionPool` trains a
continuous-input model (:func:`~tv_lens.models.build_continuous_model`, ``d_vocab`` = the pool's ``d_out``). The
2000 steps (4 blocks, ``d_model=64``, 64 prompts per step, about 5-6 minutes of one CPU thread) end with a query MSE
at 10 and 15 shots of 3-12% of the variance of ``y`` (the mean predictor's MSE), on both backends.
``recipes["sparse_linear"]`` is Han et al.'s sparse linear mixture scaled down (2 bases of 2 coordinates in d = 4,
plus Null): the same model and schedule with 32 prompts per task and step; the 2000 steps (about 9 minutes of one CPU
thread) end with a query MSE at 10 and 15 shots of 21-23% of the variance of ``y``, on both backends.
``recipes["shifted_linear"]`` trains the same model on linear regressions whose weights differ in their mean
(``w ~ N(3 e_t, I)`` for three tasks in d = 4, plus Null; 24 prompts per task and step): the latent task moves ``w``
itself, and TD rises from chance with the fall of the query MSE over training (docs/replication.md).

>>> sorted(recipes)
['default', 'linear_regression', 'quick', 'shifted_linear', 'shots', 'sparse_linear']
>>> recipes["default"].model.n_layers
4
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tv_lens.errors import ConfigError, UnknownNameError
from tv_lens.models import ModelConfig, build_continuous_model, build_model
from tv_lens.tasks import (
    RegressionPool,
    TaskPool,
    offset_pool,
    regression_pool,
    shifted_linear_pool,
    sparse_linear_pool,
)
from tv_lens.tasks import parity_offset_pool as _parity_offset_pool
from tv_lens.training.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from tv_lens.training.loop import train
from tv_lens.training.result import TrainResult

__all__ = ["Recipe", "RecipeRegistry", "recipes"]


@dataclass(frozen=True)
class Recipe:
    """A pool factory, a model config and a training config, under a name.

    A token pool (:class:`~tv_lens.tasks.TaskPool`) trains a token model (:func:`~tv_lens.models.build_model`);
    a :class:`~tv_lens.tasks.RegressionPool` trains a continuous-input model
    (:func:`~tv_lens.models.build_continuous_model` with the pool's ``d_in`` and ``d_out``), whose config's
    ``d_vocab`` is the output width ``pool.d_out``.

    Attributes:
        name: Registry key.
        description: One line on what the recipe trains and what it reaches.
        pool: Builds the task pool (a factory, so recipes stay cheap to import).
        model: Shape of the model (``d_vocab`` matches the pool's vocabulary, or its ``d_out`` for regression).
        train: Training settings.
    """

    name: str
    description: str
    pool: Callable[[], TaskPool | RegressionPool]
    model: ModelConfig
    train: TrainConfig

    def build_pool(self) -> TaskPool | RegressionPool:
        """A fresh task pool."""
        return self.pool()

    def build_model(self, backend: str | None = None, device: str = "cpu") -> Any:
        """A freshly initialised model of the recipe's shape (``backend`` overrides the config's)."""
        return self._build(self.build_pool(), self.model_config(backend), device)

    def with_seed(self, seed: int) -> Recipe:
        """This recipe with ``seed`` for the model initialisation and the training and held-out prompt streams."""
        data = replace(self.train.data, seed=seed)
        return replace(self, model=replace(self.model, seed=seed), train=replace(self.train, data=data))

    def model_config(self, backend: str | None = None) -> ModelConfig:
        """The model config, with ``backend`` replaced if given."""
        return self.model if backend is None else replace(self.model, backend=backend)  # type: ignore[arg-type]

    def run(
        self,
        *,
        backend: str | None = None,
        device: str = "cpu",
        checkpoint_dir: str | Path | None = None,
        progress: bool = True,
        **overrides: Any,
    ) -> TrainResult:
        """Build the pool and a fresh model and train it; ``overrides`` replace fields of the train config."""
        pool = self.build_pool()
        model_config = self.model_config(backend)
        if isinstance(pool, RegressionPool):  # the inner model's vocabulary is the read-out: d_vocab = d_out
            model_config = replace(model_config, d_vocab=pool.d_out)
        config = replace(self.train, **overrides) if overrides else self.train
        return train(
            self._build(pool, model_config, device),
            pool,
            config,
            model_config=model_config,
            checkpoint_dir=checkpoint_dir,
            progress=progress,
        )

    @staticmethod
    def _build(pool: TaskPool | RegressionPool, model_config: ModelConfig, device: str) -> Any:
        """A token model for a token pool, a continuous-input model for a regression pool."""
        if isinstance(pool, RegressionPool):
            return build_continuous_model(model_config, d_in=pool.d_in, d_out=pool.d_out, device=device)
        return build_model(model_config, device=device)


class RecipeRegistry(Mapping[str, Recipe]):
    """Read-only mapping of recipe names to :class:`Recipe` s; :meth:`register` adds one."""

    def __init__(self) -> None:
        self._recipes: dict[str, Recipe] = {}

    def register(self, recipe: Recipe, *, overwrite: bool = False) -> Recipe:
        """Add ``recipe`` under ``recipe.name`` (a taken name needs ``overwrite=True``)."""
        if recipe.name in self._recipes and not overwrite:
            raise ConfigError(f"A recipe named {recipe.name!r} exists; pass overwrite=True to replace it.")
        self._recipes[recipe.name] = recipe
        return recipe

    def __getitem__(self, name: str) -> Recipe:
        if name not in self._recipes:
            raise UnknownNameError(
                f"No recipe named {name!r}; available: {sorted(self._recipes)}. Use one of those names, or "
                "recipes.register(Recipe(...)) your own."
            )
        return self._recipes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._recipes)

    def __len__(self) -> int:
        return len(self._recipes)


def _offset_pool_16() -> TaskPool:
    return offset_pool(offsets=(1, 2, 3, 4), n_values=16, null=True)


def _offset_pool_8() -> TaskPool:
    return offset_pool(offsets=(1, 3), n_values=8, null=True)


recipes = RecipeRegistry()
_DEFAULT = recipes.register(
    Recipe(
        name="default",
        description="4 blocks, d_model 128, offsets 1-4 mod 16 + Null, 8 shots, 400 steps; >= 95% held-out ICL.",
        pool=_offset_pool_16,
        model=ModelConfig(d_vocab=19, n_layers=4, d_model=128, n_heads=4, n_ctx=32, seed=0),
        train=TrainConfig(
            data=DataConfig(n_per_task=16, n_shots=8, eval_n_per_task=64),
            optim=OptimConfig(weight_decay=0.1, grad_clip=1.0),
            schedule=ScheduleConfig(max_steps=400, lr=2e-3, min_lr=2e-4, warmup_steps=30),
            eval_every=100,
        ),
    )
)
recipes.register(  # the default recipe scaled down: 2 blocks on offsets mod 8, 6 shots, 200 steps
    replace(
        _DEFAULT,
        name="quick",
        description="2 blocks, d_model 64, offsets 1 and 3 mod 8 + Null, 6 shots, 200 steps; far above chance.",
        pool=_offset_pool_8,
        model=replace(_DEFAULT.model, d_vocab=11, n_layers=2, d_model=64, n_ctx=24),
        train=replace(
            _DEFAULT.train,
            data=replace(_DEFAULT.train.data, n_per_task=32, n_shots=6, eval_n_per_task=32),
            schedule=ScheduleConfig(max_steps=200, lr=3e-3, min_lr=3e-4, warmup_steps=10),
            eval_every=50,
        ),
    )
)
recipes.register(  # the default recipe's blocks, context and batches at d_model 64, evaluated on 256 prompts per task
    replace(
        _DEFAULT,
        name="shots",
        description="4 blocks, d_model 64, parity-dependent offsets 1/3 mod 8 + Null, 8 shots, 600 steps; "
        ">= 95% held-out ICL at 8 shots, about 75% at 1 shot.",
        pool=_parity_offset_pool,
        model=replace(_DEFAULT.model, d_vocab=11, d_model=64),
        train=replace(
            _DEFAULT.train,
            data=replace(_DEFAULT.train.data, eval_n_per_task=256),
            schedule=ScheduleConfig(max_steps=600, lr=5e-3, min_lr=5e-4, warmup_steps=30),
        ),
    )
)


def _linear_regression_pool() -> RegressionPool:
    return regression_pool(("linear",), d=4, null=False)


_LINEAR = recipes.register(
    Recipe(
        name="linear_regression",
        description="4 blocks, d_model 64, linear regression in d=4, 16 shots, 2000 steps; "
        "query MSE at 10+ shots <= 0.25 x the variance of y.",
        pool=_linear_regression_pool,
        model=ModelConfig(d_vocab=1, n_layers=4, d_model=64, n_heads=4, n_ctx=34, seed=0),
        train=TrainConfig(
            data=DataConfig(n_per_task=64, n_shots=16, eval_n_per_task=256, eval_n_shots=10),
            optim=OptimConfig(weight_decay=0.0, grad_clip=1.0),
            schedule=ScheduleConfig(max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100),
            eval_every=250,
        ),
    )
)


def _linear_variant(name: str, description: str, pool: Callable[[], RegressionPool], n_per_task: int) -> Recipe:
    """The linear recipe's model and schedule on another regression pool, ``n_per_task`` prompts per task a step."""
    data = replace(_LINEAR.train.data, n_per_task=n_per_task)
    return replace(_LINEAR, name=name, description=description, pool=pool, train=replace(_LINEAR.train, data=data))


def _sparse_linear_pool() -> RegressionPool:
    return sparse_linear_pool(d=4, n_bases=2, null=True)


def _shifted_linear_pool() -> RegressionPool:
    return shifted_linear_pool(d=4, n_tasks=3, shift=3.0, null=True)


recipes.register(
    _linear_variant(
        "sparse_linear",
        "4 blocks, d_model 64, sparse linear regression (2 bases in d=4) + Null, 16 shots, 2000 steps; "
        "query MSE at 10+ shots <= 0.25 x the variance of y.",
        _sparse_linear_pool,
        n_per_task=32,
    )
)
recipes.register(
    _linear_variant(
        "shifted_linear",
        "4 blocks, d_model 64, linear regression in d=4 with weights centred on 3 e_t for 3 tasks + Null, "
        "16 shots, 2000 steps; the latent task shifts w itself, so it is decodable from an estimate of w.",
        _shifted_linear_pool,
        n_per_task=24,
    )
)
