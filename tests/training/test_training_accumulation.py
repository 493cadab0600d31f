"""A training step split into micro-batches gives the whole batch's gradient; out of memory, a step splits itself."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from causal_helpers import memory_limit
from conftest import BACKENDS
from fuzz_helpers import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from training_helpers import (
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    parameters_of,
    tiny_config,
    tiny_model,
)

from tv_lens.errors import ConfigError
from tv_lens.models import ModelConfig, adapt, build_continuous_model
from tv_lens.tasks import offset_pool, sparse_linear_pool
from tv_lens.training import DataConfig, TrainConfig, TVPConfig, train
from tv_lens.training.accumulation import step_gradients
from tv_lens.training.objectives import TokenObjective

POOL = offset_pool(offsets=(1, 2), n_values=8, null=True)


def shots_range_config(max_steps: int = 3, **data) -> TrainConfig:
    """Steps of 12 prompts with 1 to 4 shots: the prompts of a step carry different numbers of answer tokens."""
    config = tiny_config(max_steps=max_steps)
    return TrainConfig(
        data=DataConfig(n_per_task=4, n_shots=(1, 4), eval_n_per_task=2, eval_batch_size=3, **data),
        optim=config.optim,
        schedule=config.schedule,
        eval_every=max_steps,
    )


def trained(model, pool, config):
    run = train(model, pool, config, progress=False)
    return run.history, parameters_of(run.model)


@pytest.mark.parametrize("backend", BACKENDS)
def test_micro_batches_train_as_the_whole_batch(backend):
    whole = trained(tiny_model(backend, dtype="float64"), POOL, shots_range_config())
    split = trained(tiny_model(backend, dtype="float64"), POOL, shots_range_config(micro_batch=5))
    torch.testing.assert_close(split[0]["loss"].to_numpy(), whole[0]["loss"].to_numpy(), atol=1e-12, rtol=0)
    for name, value in whole[1].items():
        torch.testing.assert_close(split[1][name], value, atol=1e-10, rtol=0)
    fresh = parameters_of(tiny_model(backend, dtype="float64"))
    assert any(not torch.equal(value, fresh[name]) for name, value in whole[1].items())  # the steps trained


def test_micro_batches_of_a_regression_run_train_as_the_whole_batch():
    pool = sparse_linear_pool(d=4, n_bases=2, null=True)
    model_config = ModelConfig(d_vocab=1, n_layers=2, d_model=32, n_heads=4, n_ctx=24, seed=0, dtype="float64")
    config = shots_range_config()
    runs = [
        trained(build_continuous_model(model_config, d_in=pool.d_in, d_out=pool.d_out), pool, c)
        for c in (config, shots_range_config(micro_batch=3))
    ]
    torch.testing.assert_close(runs[1][0]["loss"].to_numpy(), runs[0][0]["loss"].to_numpy(), atol=1e-12, rtol=0)
    for name, value in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][name], value, atol=1e-10, rtol=0)


def test_a_step_out_of_memory_splits_itself_and_trains_the_same(recwarn):
    backend = BACKENDS[-1]
    expected = trained(tiny_model(backend, dtype="float64"), POOL, shots_range_config())
    model = tiny_model(backend, dtype="float64")
    with (
        memory_limit(model, 5) as seen,
        pytest.warns(
            RuntimeWarning,
            match=r"Out of memory with DataConfig.micro_batch=12; retrying with DataConfig.micro_batch=6",
        ),
    ):
        history, parameters = trained(model, POOL, shots_range_config())
    assert seen[:3] == [12, 6, 3] and max(seen[3:]) == 3  # the first step halved twice; the later steps start at 3
    torch.testing.assert_close(history["loss"].to_numpy(), expected[0]["loss"].to_numpy(), atol=1e-12, rtol=0)
    for name, value in expected[1].items():
        torch.testing.assert_close(parameters[name], value, atol=1e-10, rtol=0)


def test_steps_that_cannot_be_split_are_refused_or_run_whole():
    with pytest.raises(ConfigError, match="micro_batch does not apply with TVP-loss"):
        TrainConfig(data=DataConfig(micro_batch=2), tvp=TVPConfig(layer=0))
    with pytest.raises(ConfigError, match=r"DataConfig.micro_batch must be an int >= 1 or None, got 0"):
        DataConfig(micro_batch=0)

    class Uncounted(TokenObjective):  # an objective of one's own, without loss_terms
        loss_terms = None

    model = tiny_model(BACKENDS[-1])
    with memory_limit(model, 5), pytest.raises(torch.OutOfMemoryError):
        train(model, POOL, shots_range_config(), objective=Uncounted(), progress=False)
    with pytest.raises(ConfigError, match=r"this Uncounted has no loss_terms\(batch\) method"):
        train(model, POOL, shots_range_config(micro_batch=4), objective=Uncounted(), progress=False)


@fuzz_settings(25)
@given(
    micro_batch=st.integers(1, 14),
    shots=st.tuples(st.integers(0, 3), st.integers(0, 3)).map(sorted),
    label_noise=st.sampled_from([0.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_any_micro_batch_gives_the_whole_batch_gradient(micro_batch, shots, label_noise, seed):
    """Any split, any mix of shots and of noisy demonstrations left out of the loss: the same gradient."""
    model = accumulation_model()
    adapter = adapt(model)
    batch = POOL.sample(3, tuple(shots), seed=seed, label_noise=label_noise)
    parameters = list(model.parameters())
    objective = TokenObjective()
    whole, _ = step_gradients(adapter, objective, batch, None, None, parameters)
    expected = [p.grad.clone() for p in parameters]
    split, used = step_gradients(adapter, objective, batch, None, micro_batch, parameters)
    assert used == micro_batch
    torch.testing.assert_close(split.total.double(), whole.total.double(), atol=1e-12, rtol=0)
    for parameter, grad in zip(parameters, expected, strict=True):
        torch.testing.assert_close(parameter.grad, grad, atol=1e-12, rtol=0)


@cache
def accumulation_model():
    return tiny_model(BACKENDS[-1], dtype="float64").train()
