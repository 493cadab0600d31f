"""Probe + task-decodability smoke test: a token pool on a TransformerLens model and a regression pool
through the continuous-input wrapper, on every available backend.

TD here is leave-one-out k-NN accuracy (Han et al.) written with scikit-learn in the test. The models are
random, so the checks are ones a random model must pass: a zero-shot prompt's representation depends on
its query alone, so its TD is at chance; few-shot bitwise prompts carry their task in the demonstrations'
answer bits (AND answers are mostly 0s, OR answers mostly 1s), so TD rises above chance; and a label read
off the query input is decodable, which fails if rows and prompts are misaligned.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BACKENDS, tiny_config
from sklearn.neighbors import KNeighborsClassifier

from tv_lens.models import build_continuous_model
from tv_lens.probes import Representations, collect
from tv_lens.tasks import bitwise_pool, sparse_linear_pool


def task_decodability(points: torch.Tensor, labels: torch.Tensor, k: int = 10) -> float:
    """Leave-one-out k-NN accuracy: each point's k nearest other points vote for its label."""
    x, y = points.double().numpy(), labels.numpy()
    knn = KNeighborsClassifier(n_neighbors=k).fit(x, y)
    neighbours = knn.kneighbors(x, n_neighbors=k + 1, return_distance=False)
    votes = []
    for i, row in enumerate(neighbours):
        others = [j for j in row if j != i][:k]
        votes.append(np.bincount(y[others], minlength=int(y.max()) + 1).argmax())
    return float(np.mean(np.array(votes) == y))


def td_curve(reps: Representations, labels: torch.Tensor) -> list[float]:
    return [task_decodability(reps.at(layer), labels) for layer in reps.layers]


def test_token_pool_td(model) -> None:
    pool = bitwise_pool(ops=("and", "or", "xor"), n_bits=3, answer="bits")  # + Null: chance is 1/4
    batch = pool.sample(n_per_task=40, n_shots=4, seed=1)
    reps = collect(model, batch.inputs, batch.answer_pos, task_ids=batch.task_ids, progress=False, batch_size=160)
    zero = batch.zero_shot()
    zero_reps = collect(model, zero.inputs, zero.answer_pos, task_ids=zero.task_ids, progress=False, batch_size=160)
    few_td, zero_td = td_curve(reps, reps.task_ids), td_curve(zero_reps, zero_reps.task_ids)
    assert reps.layers == (-1, 0, 1, 2) and reps.activations.shape == (4, 160, 32)
    assert all(0.0 <= v <= 1.0 for v in few_td + zero_td)
    assert max(zero_td) < 0.38  # chance: the query alone says nothing about the task
    assert max(few_td[1:]) > 0.4  # the demonstrations do


@pytest.mark.parametrize("backend", BACKENDS)
def test_regression_pool_td_through_the_wrapper(backend: str) -> None:
    cm = build_continuous_model(tiny_config(backend, dtype="float64"), d_in=4)
    pool = sparse_linear_pool(d=4, n_bases=2)  # + Null: chance is 1/3
    batch = pool.sample(n_per_task=50, n_shots=(4, 12), seed=0)
    reps = collect(cm, batch.inputs, batch.answer_pos, task_ids=batch.task_ids, progress=False, batch_size=75)
    zero = batch.zero_shot()
    zero_reps = collect(cm, zero.inputs, zero.answer_pos, task_ids=zero.task_ids, progress=False, batch_size=150)
    assert reps.layers == (-1, 0, 1, 2) and reps.activations.shape == (4, 150, 32)
    assert all(0.0 <= v <= 1.0 for v in td_curve(reps, reps.task_ids))
    assert max(td_curve(zero_reps, zero_reps.task_ids)) < 0.5
    # Rows belong to their prompts (collect sorts prompts by length): the query's sign is decodable.
    query_sign = (batch.inputs[torch.arange(len(batch)), batch.answer_pos, 0] > 0).long()
    assert task_decodability(reps.at(-1), query_sign) > 0.75
