"""Small pools, models and configs shared by the training tests (fast: a few steps of tiny models)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tv_lens.models import ModelConfig, build_model
from tv_lens.tasks import offset_pool
from tv_lens.training import DataConfig, ScheduleConfig, TrainConfig


def tiny_pool():
    """Offsets 1 and 2 mod 8 plus Null: vocabulary of 11 tokens, 3 tokens per pair."""
    return offset_pool(offsets=(1, 2), n_values=8, null=True)


def tiny_model_config(backend: str, **overrides) -> ModelConfig:
    base = dict(d_vocab=11, n_layers=2, d_model=32, n_heads=4, n_ctx=24, seed=0, backend=backend)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_model(backend: str, **overrides):
    return build_model(tiny_model_config(backend, **overrides))


def tiny_config(max_steps: int = 6, **overrides) -> TrainConfig:
    config = TrainConfig(
        data=DataConfig(n_per_task=4, n_shots=(2, 4), eval_n_per_task=8),
        schedule=ScheduleConfig(max_steps=max_steps, lr=3e-3, min_lr=3e-4, warmup_steps=2),
        eval_every=max_steps,
    )
    return replace(config, **overrides)


def parameters_of(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run the training tests on one thread: tiny models gain nothing from more, and on a busy machine
    several threads per process waiting on each other slow them down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
