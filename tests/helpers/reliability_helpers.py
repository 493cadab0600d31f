"""Shared pieces of the reliability tests (errors, determinism, hook hygiene, saved data, invariance).

Not a conftest.py: tests/conftest.py already owns the module name ``conftest`` that test files import.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tv_lens.models import ModelConfig, build_model
from tv_lens.tasks import offset_pool
from tv_lens.training import DataConfig, ScheduleConfig, TrainConfig

POOL = offset_pool(offsets=(1, 2), n_values=8)  # 2 offsets + Null: 11 tokens, fits every tiny model here

TINY_TRAINING = TrainConfig(
    data=DataConfig(n_per_task=3, n_shots=(1, 3), eval_n_per_task=3),
    schedule=ScheduleConfig(max_steps=3, lr=3e-3, min_lr=3e-4, warmup_steps=1),
    eval_every=3,
)
"""Three optimiser steps of a few prompts: enough to move every weight, a fraction of a second."""


def tiny_model_config(backend: str = "auto", **overrides: Any) -> ModelConfig:
    """Two blocks of width 16, two heads: the smallest model that has every hook point tv_lens uses."""
    sizes = dict(d_vocab=POOL.vocab_size, n_layers=2, d_model=16, n_heads=2, n_ctx=32, seed=0, backend=backend)
    return ModelConfig(**{**sizes, **overrides})


def tiny_model(backend: str = "auto", **overrides: Any) -> Any:
    return build_model(tiny_model_config(backend, **overrides))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run on one thread: tiny models gain nothing from more, and on a busy machine several threads per
    process waiting on each other slow them down many times over (results are per thread count anyway)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def left_pad(
    inputs: torch.Tensor, attention_mask: torch.Tensor, answer_pos: torch.Tensor, pad_token: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompts moved to the right edge: (tokens, attention_mask, answer_pos) of the left-padded batch."""
    lengths = attention_mask.sum(-1)
    width = inputs.shape[1]
    left = torch.full_like(inputs, pad_token)
    left_mask = torch.zeros_like(attention_mask)
    for row, length in enumerate(lengths.tolist()):
        left[row, width - length :] = inputs[row, :length]
        left_mask[row, width - length :] = 1
    return left, left_mask, answer_pos + width - lengths
