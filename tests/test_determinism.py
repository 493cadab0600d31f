"""Determinism: the same seed gives bit-identical results, for every analysis and for training on CPU.

Each test builds the model afresh from its config for every run (so building is part of what must repeat),
runs twice with one seed and compares the results exactly (``Result ==`` compares every tensor bit for bit,
NaN equal to NaN), then once with another seed, which must give a different result: the seed is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
from conftest import BACKENDS
from reliability_helpers import (
    POOL,
    TINY_TRAINING,
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    tiny_model,
)

from tv_lens.analyses import (
    Emergence,
    Geometry,
    HeadAblation,
    HeadAttention,
    ICLPerformance,
    LayerFinetuning,
    Suite,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TdAccuracy,
)
from tv_lens.task_vectors import TaskVectors
from tv_lens.training import LoRAConfig, TrainConfig, TVPConfig, finetune, train

TD = TaskDecodability(k=3, n_bootstrap=20)


ANALYSES: dict[str, Callable[[Callable[[], Any], int], Any]] = {
    "decodability": lambda build, seed: TD.run(build(), POOL, n_per_task=5, n_shots=(1, 3), seed=seed),
    "performance": lambda build, seed: ICLPerformance(shots=(0, 2), n_bootstrap=20).run(build(), POOL, 4, seed),
    "geometry": lambda build, seed: Geometry().run(build(), POOL, n_per_task=4, seed=seed),
    "td_accuracy": lambda build, seed: TdAccuracy(shots=(0, 3), decodability=TD).run(build(), POOL, 5, seed),
    "suite": lambda build, seed: Suite((TD, Geometry(), ICLPerformance(shots=(1,), n_bootstrap=20))).run(
        build(), POOL, n_per_task=4, n_shots=(1, 3), seed=seed
    ),
    "emergence": lambda build, seed: Emergence(analyses=(TD,), n_shots=2).run(
        [(0, build()), (5, build(1))], POOL, n_per_task=4, seed=seed
    ),
    "task_vectors": lambda build, seed: TaskVectors.from_model(
        build(), POOL, reduce="mean_over_demo_positions", n_per_task=4, n_shots=(1, 3), seed=seed
    ),
    "patching": lambda build, seed: TaskVectorPatching(mode="add_difference", n_bootstrap=20).run(
        build(), POOL, n_per_task=3, seed=seed
    ),
    "prompting": lambda build, seed: TaskVectorPrompting(n_bootstrap=20).run(build(), POOL, n_per_task=3, seed=seed),
    "heads": lambda build, seed: HeadAblation(mode="mean", prune_steps=3, n_bootstrap=20).run(
        build(), POOL, n_per_task=3, seed=seed
    ),
    "attention": lambda build, seed: HeadAttention(n_bootstrap=20).run(build(), POOL, n_per_task=3, seed=seed),
    "finetuning": lambda build, seed: LayerFinetuning(
        k=1, lora=LoRAConfig(rank=2, dropout=0.1), train=TINY_TRAINING, decodability=TD, n_per_task=4, n_bootstrap=20
    ).run(build(), POOL, seed=seed),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_same_seed_gives_a_bit_identical_result(analysis: str, backend: str):
    def build(seed: int = 0) -> Any:
        return tiny_model(backend, seed=seed)

    run = ANALYSES[analysis]
    first = run(build, 3)
    assert first == run(build, 3)
    assert first != run(build, 4)


TRAININGS: dict[str, TrainConfig] = {
    "plain": TINY_TRAINING,
    "tvp_loss": replace(TINY_TRAINING, tvp=TVPConfig(layer=0, lam=0.5)),
    "label_noise": replace(TINY_TRAINING, data=replace(TINY_TRAINING.data, label_noise=0.3)),
}


def trained(backend: str, config: TrainConfig, lora: bool = False) -> tuple[dict[str, torch.Tensor], Any]:
    model = tiny_model(backend)
    if lora:
        result = finetune(model, POOL, config, "last:1", LoRAConfig(rank=2, dropout=0.2), progress=False)
    else:
        result = train(model, POOL, config, progress=False)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    return weights, result


@pytest.mark.parametrize("variant", [*TRAININGS, "lora_with_dropout"])
def test_two_training_runs_give_identical_weights(variant: str):
    backend = BACKENDS[0]
    lora = variant == "lora_with_dropout"
    config = TRAININGS.get(variant, TINY_TRAINING)
    (weights, result), (again, result_again) = trained(backend, config, lora), trained(backend, config, lora)
    assert weights.keys() == again.keys()
    assert all(torch.equal(weights[name], again[name]) for name in weights)
    columns = [c for c in result.history.columns if c != "elapsed_s"]
    assert result.history[columns].equals(result_again.history[columns])
    assert result.evals.equals(result_again.evals)
    other_seed = replace(config, data=replace(config.data, seed=config.data.seed + 1))
    moved, _ = trained(backend, other_seed, lora)
    assert any(not torch.equal(weights[name], moved[name]) for name in weights)
