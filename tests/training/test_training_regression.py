"""Training on regression pools: MSE at every answer position, through the continuous-input wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import BACKENDS
from training_helpers import (
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    parameters_of,
    tiny_config,
)

from tv_lens.errors import ConfigError, TaskError
from tv_lens.models import ContinuousModel, ModelConfig, adapt, build_continuous_model, build_model
from tv_lens.tasks import regression_pool, sparse_linear_pool
from tv_lens.training import (
    DataConfig,
    LoRAConfig,
    RegressionObjective,
    TVPConfig,
    finetune,
    load_checkpoint,
    lora_parameters,
    objective_for,
    train,
    tvp_accuracy,
    tvp_losses,
)
from tv_lens.training.lora import has_lora


def tiny_regression_pool():
    """Two sparse-linear bases of 2 coordinates in d = 4, plus Null."""
    return sparse_linear_pool(d=4, n_bases=2, null=True)


def tiny_regression_model_config(backend: str) -> ModelConfig:
    return ModelConfig(d_vocab=1, n_layers=2, d_model=32, n_heads=4, n_ctx=24, seed=0, backend=backend)


def tiny_regression_model(backend: str, d_in: int = 4):
    return build_continuous_model(tiny_regression_model_config(backend), d_in=d_in, d_out=1)


def regression_config(max_steps: int, **overrides):
    return tiny_config(max_steps, data=DataConfig(n_per_task=8, n_shots=(3, 6), eval_n_per_task=8), **overrides)


def test_context_loss_is_the_mse_at_every_clean_answer_position():
    pool = tiny_regression_pool()
    model = tiny_regression_model(BACKENDS[0])
    batch = pool.sample(3, (2, 5), seed=1, label_noise=0.3)
    assert bool(batch.demo_noisy.any())  # the noisy demonstrations must be left out
    with torch.no_grad():
        loss = RegressionObjective().context_loss(adapt(model), batch)
        outputs = model(batch.inputs)[..., 0]  # [batch, pos]
    errors = []
    for i in range(len(batch)):
        for j in range(int(batch.n_shots[i])):
            if not batch.demo_noisy[i, j]:
                x = int(batch.demo_start[i, j])  # the demonstration's x; its y is the next vector
                errors.append((outputs[i, x] - batch.inputs[i, x + 1, 0]) ** 2)
        errors.append((outputs[i, int(batch.answer_pos[i])] - batch.answers[i, 0]) ** 2)
    torch.testing.assert_close(loss, torch.stack(errors).mean(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mse_falls_on_a_tiny_regression_pool(backend: str):
    # leaky-ReLU outputs have a positive mean, which even a few steps learn (a zero-mean task's first gain is ICL)
    pool, model = regression_pool(("leaky_relu",), d=4, null=False), tiny_regression_model(backend)
    held_out = pool.sample(64, 6, seed=123)
    objective = RegressionObjective()

    def held_out_mse() -> float:
        with torch.no_grad():
            return float(objective.answer_loss(objective.query_outputs(adapt(model), held_out), held_out).mean())

    before = held_out_mse()
    result = train(model, pool, regression_config(40, eval_every=20), progress=False)
    assert held_out_mse() < 0.9 * before
    assert set(result.evals["task"]) == set(pool.task_names)
    assert result.evals["loss"].notna().all()
    assert ((result.evals["accuracy"] >= 0) & (result.evals["accuracy"] <= 1)).all()


def test_resume_equals_uninterrupted_regression_training(tmp_path: Path):
    pool, config = tiny_regression_pool(), regression_config(6, checkpoint_every=3)
    full = train(tiny_regression_model(BACKENDS[0]), pool, config, checkpoint_dir=tmp_path / "full", progress=False)
    train(
        tiny_regression_model(BACKENDS[0]), pool, config, checkpoint_dir=tmp_path / "cut", stop_after=3, progress=False
    )
    resumed = train(tiny_regression_model(BACKENDS[0]), pool, config, resume_from=tmp_path / "cut", progress=False)
    expected = parameters_of(full.model)
    for name, value in parameters_of(resumed.model).items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("backend", [BACKENDS[0], "auto"])
def test_a_regression_checkpoint_rebuilds_the_wrapped_model(tmp_path: Path, backend: str):
    pool, model_config = tiny_regression_pool(), tiny_regression_model_config(backend)
    model = build_continuous_model(model_config, d_in=4, d_out=1)
    config = regression_config(2, checkpoint_every=2)
    result = train(model, pool, config, model_config=model_config, checkpoint_dir=tmp_path, progress=False)
    loaded = load_checkpoint(result.checkpoints[-1]).load_model()
    assert isinstance(loaded, ContinuousModel) and (loaded.d_in, loaded.d_out) == (4, 1)
    batch = pool.sample(2, 4, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch.inputs), result.model.eval()(batch.inputs), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lora", [None, LoRAConfig(rank=2, alpha=2.0)], ids=["full", "lora"])
def test_finetuning_a_block_of_a_regression_model(tmp_path: Path, backend: str, lora):
    """The wrapper's blocks are its TransformerLens model's: only the chosen block moves (or its adapters, which the
    checkpoint puts back on the rebuilt model). Before, finetune() failed with the wrapper's AttributeError."""
    pool, model_config = tiny_regression_pool(), tiny_regression_model_config(backend)
    model = build_continuous_model(model_config, d_in=4, d_out=1)
    before = parameters_of(model)
    config = regression_config(2, checkpoint_every=2)
    run = finetune(model, pool, config, "last:1", lora, model_config=model_config, checkpoint_dir=tmp_path)
    moved = {name for name, p in model.named_parameters() if name in before and not torch.equal(p, before[name])}
    in_last = {name for name in before if name.startswith("model.blocks.1.")}
    assert moved <= in_last and (moved if lora is None else lora_parameters(model))
    assert has_lora(model) == (lora is not None)
    assert all(torch.count_nonzero(p) for p in lora_parameters(model)[1::2])  # the B matrices trained
    batch = pool.sample(2, 4, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(
            load_checkpoint(run.checkpoints[-1]).load_model()(batch.inputs), model.eval()(batch.inputs), rtol=0, atol=0
        )


def test_tvp_loss_trains_a_regression_model():
    result = train(
        tiny_regression_model(BACKENDS[0]),
        tiny_regression_pool(),
        regression_config(4, tvp=TVPConfig(layer=0, lam=0.5)),
        progress=False,
    )
    assert result.history["loss_tvp"].notna().all()
    assert {"tvp_accuracy", "zero_shot_accuracy"} <= set(result.evals.columns)
    # called directly on a regression batch, the TVP functions score it by squared error
    batch = tiny_regression_pool().sample(4, 4, seed=2)
    losses = tvp_losses(result.model, batch, TVPConfig(layer=1))
    assert losses.tvp is not None and float(losses.tvp.detach()) >= 0
    scores = tvp_accuracy(result.model, batch, layer=1)
    assert scores.shape == (len(batch),) and bool(((scores == 0) | (scores == 1)).all())


def test_regression_pools_get_the_mse_objective_and_bad_widths_are_clear_errors():
    pool = tiny_regression_pool()
    assert isinstance(objective_for(pool), RegressionObjective)
    assert isinstance(objective_for(regression_pool(("linear",), d=4)), RegressionObjective)
    with pytest.raises(TaskError, match=r"d_in=4, d_out=1, the model d_in=5.*build_continuous_model"):
        train(tiny_regression_model(BACKENDS[0], d_in=5), pool, regression_config(2), progress=False)
    token_model = build_model(ModelConfig(d_vocab=8, n_layers=1, d_model=16, n_heads=2, n_ctx=24))
    with pytest.raises(TaskError, match=r"this model reads tokens\. Wrap it: build_continuous_model"):
        train(token_model, pool, regression_config(2), progress=False)
    with pytest.raises(ConfigError, match="tolerance must be a finite number > 0"):
        RegressionObjective(tolerance=0)
