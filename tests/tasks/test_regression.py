"""Regression tasks: every family's rule on every prompt, layout, seeds, Null, noise, zero-shot twin, errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tv_lens.errors import PositionError, ShapeError, TaskError, TvLensError
from tv_lens.tasks import (
    NULL_TASK,
    REGRESSION_FAMILIES,
    RegressionBatch,
    RegressionPool,
    RegressionTask,
    linear_task,
    regression_pool,
    shifted_linear_pool,
    shifted_linear_task,
    sparse_linear_pool,
    sparse_linear_task,
)

D = 8


def reference(task: str, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Outputs of the named family, written independently of the library (numpy, float64)."""
    z = x @ w
    if task == "linear" or task.startswith("sparse_linear"):
        return z
    if task == "leaky_relu":
        return np.where(z > 0, z, 0.01 * z)
    if task == "quadratic":
        return (x**2) @ w / np.sqrt(3)
    assert task == "sinusoidal"
    return np.sin(z / np.sqrt(x.shape[-1]))


def decode(batch: RegressionBatch, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs x and outputs y of prompt i, read from the vectors only, checking the layout as it goes."""
    length = int(batch.lengths[i])
    rows = batch.inputs[i].double().numpy()
    assert length % 2 == 0 and length == 2 * (int(batch.n_shots[i]) + 1)
    assert not rows[length:].any()  # zero padding
    assert not rows[1:length:2, 1:].any()  # y is written [y, 0, ..., 0]
    return rows[0:length:2], rows[1:length:2, 0]


@pytest.fixture(scope="module")
def mixed() -> RegressionPool:
    return regression_pool(d=D, null=True)


def test_every_family_follows_its_rule_on_every_prompt(mixed: RegressionPool) -> None:
    assert mixed.task_names == (*REGRESSION_FAMILIES, NULL_TASK) and mixed.d_in == D and mixed.d_out == 1
    batch = mixed.sample(n_per_task=30, n_shots=(0, 6), seed=0)
    assert set(batch.n_shots.tolist()) == set(range(7))
    blocks = [set(range(b * 2, b * 2 + 2)) for b in range(4)]
    for i in range(len(batch)):
        task = batch.task_names[int(batch.task_ids[i])]
        x, y = decode(batch, i)
        w = batch.weights[i].double().numpy()
        assert float(batch.answers[i, 0]) == pytest.approx(y[-1])
        if task == NULL_TASK:
            assert np.isnan(w).all()
            continue
        np.testing.assert_allclose(y, reference(task, x, w), rtol=1e-5, atol=1e-5)
        if task == "sparse_linear":  # a random basis per prompt: w lives on exactly one block
            assert set(np.flatnonzero(w)) in blocks


def test_sparse_mixture_bases_are_disjoint_blocks() -> None:
    pool = sparse_linear_pool()  # Han et al.: d = 16, 4 bases of 4 coordinates
    assert pool.task_names == ("sparse_linear(0)", "sparse_linear(1)", "sparse_linear(2)", "sparse_linear(3)", "null")
    batch = pool.sample(n_per_task=20, n_shots=3, seed=1)
    for i in range(len(batch)):
        tid = int(batch.task_ids[i])
        if tid == 4:
            continue
        w = batch.weights[i].numpy()
        assert set(np.flatnonzero(w)) == set(range(4 * tid, 4 * tid + 4))
        x, y = decode(batch, i)
        np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-5)


def test_shifted_tasks_centre_the_weights_on_their_mean() -> None:
    pool = shifted_linear_pool(d=4, n_tasks=3, shift=3.0)
    assert pool.task_names == ("shifted_linear(0)", "shifted_linear(1)", "shifted_linear(2)", "null")
    batch = pool.sample(n_per_task=200, n_shots=6, seed=4)
    fitted = {t: [] for t in range(3)}
    for i in range(len(batch)):
        tid = int(batch.task_ids[i])
        if tid == 3:
            continue
        x, y = decode(batch, i)
        mean = 3.0 * np.eye(4)[tid]
        np.testing.assert_allclose(y, x @ (batch.weights[i].double().numpy() + mean), rtol=1e-5, atol=1e-5)
        fitted[tid].append(np.linalg.lstsq(x[:-1], y[:-1], rcond=None)[0])  # from the demonstrations alone
    for tid, weights in fitted.items():  # w ~ N(mean, I): 200 prompts put the average within 0.3 of the mean
        np.testing.assert_allclose(np.mean(weights, axis=0), 3.0 * np.eye(4)[tid], atol=0.3)
    custom = shifted_linear_task(torch.tensor([1.0, -2.0]), name="custom")
    x, w = torch.randn(3, 5, 2), torch.randn(3, 2)
    torch.testing.assert_close(custom.fn(x, w), torch.einsum("nkd,nd->nk", x, w + torch.tensor([1.0, -2.0])))


def test_demonstrations_determine_the_answer_of_linear_tasks() -> None:
    # Independent of batch.weights: least squares on the demonstrations predicts the query exactly.
    pool = regression_pool(families=("linear",), d=4, null=False)
    batch = pool.sample(n_per_task=50, n_shots=8, seed=2)
    for i in range(len(batch)):
        x, y = decode(batch, i)
        w_hat = np.linalg.lstsq(x[:-1], y[:-1], rcond=None)[0]
        assert x[-1] @ w_hat == pytest.approx(float(batch.answers[i, 0]), abs=1e-4)


def test_positions_and_demo_answers(mixed: RegressionPool) -> None:
    batch = mixed.sample(n_per_task=10, n_shots=(0, 5), seed=3)
    for i in range(len(batch)):
        n, length = int(batch.n_shots[i]), int(batch.lengths[i])
        assert int(batch.answer_pos[i]) == int(batch.query_start[i]) == 2 * n == length - 2  # x_q
        # The answer is the output right after the answer position (teacher forcing).
        assert float(batch.inputs[i, 2 * n + 1, 0]) == float(batch.answers[i, 0])
        assert batch.demo_answer_pos[i, :n].tolist() == list(range(0, 2 * n, 2))
        assert batch.demo_start[i].tolist() == batch.demo_answer_pos[i].tolist()
        assert (batch.demo_answer_pos[i, n:] == -1).all()
        assert torch.equal(batch.demo_answers[i, :n, 0], batch.inputs[i, 1 : 2 * n : 2, 0])
        assert not batch.demo_answers[i, n:].any()
    assert batch.n_answer_tokens == 1 and batch.d_out == 1 and batch.d_in == D


def _same(a: RegressionBatch, b: RegressionBatch) -> bool:
    names = ["inputs", "attention_mask", "answer_pos", "answers", "task_ids", "n_shots", "demo_start"]
    names += ["demo_answer_pos", "demo_noisy", "query_start"]
    same = all(torch.equal(getattr(a, n), getattr(b, n)) for n in names)
    return same and torch.equal(a.weights.nan_to_num(7.0), b.weights.nan_to_num(7.0))


def test_same_seed_same_batch_and_global_rng_untouched(mixed: RegressionPool) -> None:
    state = torch.get_rng_state()
    a = mixed.sample(n_per_task=6, n_shots=(1, 4), seed=5, label_noise=0.3)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same(a, mixed.sample(n_per_task=6, n_shots=(1, 4), seed=5, label_noise=0.3))
    assert not _same(a, mixed.sample(n_per_task=6, n_shots=(1, 4), seed=6, label_noise=0.3))


def test_null_outputs_are_independent_of_the_query() -> None:
    pool = regression_pool(families=("linear",), d=4, null=True)
    batch = pool.sample(n_per_task=2000, n_shots=8, seed=4)  # fixed shots: x at even, y at odd positions
    x = batch.inputs[:, 0::2].double()
    y = batch.inputs[:, 1::2, 0].double()
    w_hat = torch.linalg.lstsq(x[:, :-1], y[:, :-1, None]).solution  # the demonstrations' linear rule
    predicted = (x[:, -1:] @ w_hat).flatten()
    stats = {}
    for tid, name in enumerate(batch.task_names):
        rows = batch.task_ids == tid
        y_q = batch.answers[rows, 0].double()
        stats[name] = (
            np.corrcoef(x[rows, -1].pow(2).sum(1), y_q**2)[0, 1],  # the answer's scale follows the query's norm
            np.corrcoef(predicted[rows], y_q)[0, 1],  # the demonstrations' rule predicts the answer
        )
    assert stats["linear"][0] > 0.2 and stats["linear"][1] > 0.999
    assert abs(stats[NULL_TASK][0]) < 0.1 and abs(stats[NULL_TASK][1]) < 0.1
    # Null outputs follow the pool's output distribution (here: linear outputs at other inputs).
    null_y = batch.answers[batch.task_ids == 1, 0]
    assert 0.8 < float(null_y.var() / batch.answers[batch.task_ids == 0, 0].var()) < 1.25


def test_observation_noise_changes_only_the_outputs() -> None:
    clean = regression_pool(families=("linear",), d=D, null=False).sample(200, 4, seed=0)
    noisy = regression_pool(families=("linear",), d=D, null=False, noise_std=0.5).sample(200, 4, seed=0)
    assert torch.equal(clean.inputs[:, 0::2], noisy.inputs[:, 0::2])  # same x (and w)
    residual = (noisy.inputs[:, 1::2, 0] - clean.inputs[:, 1::2, 0])[clean.attention_mask[:, 1::2].bool()]
    assert float(residual.std()) == pytest.approx(0.5, rel=0.1) and abs(float(residual.mean())) < 0.05


def test_label_noise_replaces_demonstrations_only(mixed: RegressionPool) -> None:
    batch = mixed.sample(n_per_task=60, n_shots=4, seed=8, label_noise=0.3)
    real = batch.task_ids < len(mixed.tasks)
    assert not batch.demo_noisy[~real].any()
    assert abs(float(batch.demo_noisy[real].float().mean()) - 0.3) < 0.05
    for i in real.nonzero().flatten().tolist():
        task = batch.task_names[int(batch.task_ids[i])]
        x, y = decode(batch, i)
        follows = np.isclose(y, reference(task, x, batch.weights[i].double().numpy()), atol=1e-5)
        assert follows[-1]  # the query is never corrupted
        assert not (follows[:-1] & batch.demo_noisy[i].numpy()).any()
        assert follows[:-1][~batch.demo_noisy[i].numpy()].all()


def test_zero_shot_twin_keeps_query_answer_and_weights(mixed: RegressionPool) -> None:
    batch = mixed.sample(n_per_task=5, n_shots=(0, 5), seed=9)
    zs = batch.zero_shot()
    rows = torch.arange(len(batch))
    assert zs.inputs.shape == (len(batch), 2, D) and (zs.lengths == 2).all() and zs.max_shots == 0
    assert torch.equal(zs.inputs[:, 0], batch.inputs[rows, batch.answer_pos])
    assert torch.equal(zs.inputs[:, 1], batch.inputs[rows, batch.answer_pos + 1])
    assert torch.equal(zs.answers, batch.answers) and torch.equal(zs.task_ids, batch.task_ids)
    assert (zs.answer_pos == 0).all() and (zs.n_shots == 0).all()
    assert torch.equal(zs.weights.nan_to_num(), batch.weights.nan_to_num())


def test_select_and_to(mixed: RegressionPool) -> None:
    batch = mixed.sample(n_per_task=4, n_shots=(0, 5), seed=10)
    sub = batch.select(batch.task_ids == 0)
    idx = (batch.task_ids == 0).nonzero().flatten()
    assert len(sub) == 4 and sub.inputs.shape[1] == int(batch.lengths[idx].max())
    assert torch.equal(sub.answers, batch.answers[idx]) and sub.task_names == batch.task_names
    assert len(batch.select(slice(0, 3))) == 3 and len(batch.select([])) == 0
    assert torch.equal(batch.to("cpu").inputs, batch.inputs)
    with pytest.raises(PositionError, match="outside"):
        batch.select([len(batch)])


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda b: {"answers": b.answers + 1}, PositionError, "answers must equal"),
        (lambda b: {"answers": b.answers[:, 0]}, ShapeError, "answers must be|parameter 'answers'"),
        (lambda b: {"inputs": b.inputs.long()}, ShapeError, "float tensor|parameter 'inputs'"),
        (lambda b: {"attention_mask": b.attention_mask.flip(1)}, PositionError, "right-padded"),
        (lambda b: {"answer_pos": b.answer_pos + 1}, PositionError, "answer_pos"),
        (lambda b: {"task_ids": b.task_ids + 10}, TaskError, "task_ids"),
        (lambda b: {"demo_answer_pos": b.demo_answer_pos * 0 + 50}, PositionError, "demo_answer_pos"),
    ],
)
def test_batch_validation(mixed: RegressionPool, change, error, match: str) -> None:
    batch = mixed.sample(n_per_task=3, n_shots=(1, 3), seed=0)
    expected = (error, TypeError) if error is ShapeError else error
    with pytest.raises(expected, match=match):
        replace(batch, **change(batch))


def test_bad_requests_name_the_fix() -> None:
    with pytest.raises(TaskError, match=r"Unknown regression family \['cubic'\].*'linear'"):
        regression_pool(families=("linear", "cubic"))
    with pytest.raises(TaskError, match="Unknown regression family"):
        regression_pool(families=())
    with pytest.raises(TaskError, match="at least one task"):
        RegressionPool(())
    with pytest.raises(TaskError, match=r"too small or uneven.*d=6 must be a multiple of n_bases=4"):
        sparse_linear_pool(d=6, n_bases=4)
    with pytest.raises(TaskError, match=r"coordinates up to 15, outside d=8"):
        RegressionPool((sparse_linear_task(3, n_bases=4, d=16),), d=8)
    with pytest.raises(TaskError, match=r"basis must lie in 0 \.\. 3"):
        sparse_linear_task(4)
    with pytest.raises(TaskError, match="unique"):
        RegressionPool((linear_task(), linear_task()))
    with pytest.raises(TaskError, match=r"n_tasks must be an int in 1 \.\. d, got n_tasks=5, d=4"):
        shifted_linear_pool(d=4, n_tasks=5)
    with pytest.raises(TaskError, match="shift must be a finite number"):
        shifted_linear_pool(shift=float("inf"))
    with pytest.raises(TaskError, match=r"mean has 2 entries but the pool's inputs have d=4"):
        RegressionPool((shifted_linear_task([1.0, 2.0]),), d=4).sample(2, n_shots=1, seed=0)
    for mean in ([], [float("nan")], torch.zeros(2, 2), torch.zeros(2, device="meta"), "1,2"):
        with pytest.raises(TaskError, match="mean must be a non-empty 1-D sequence of finite numbers"):
            shifted_linear_task(mean)
    with pytest.raises(TaskError, match="noise_std"):
        RegressionPool((linear_task(),), noise_std=-1.0)
    pool = RegressionPool((linear_task(),), d=3)
    with pytest.raises(TaskError, match="n_shots must be an int >= 0"):
        pool.sample(2, n_shots=-1, seed=0)
    with pytest.raises(TaskError, match="n_per_task must be an int >= 1"):
        pool.sample(0, n_shots=1, seed=0)
    with pytest.raises(TaskError, match=r"label_noise must lie in \[0, 1\)"):
        pool.sample(2, n_shots=1, seed=0, label_noise=1.0)
    bad_shape = RegressionPool((RegressionTask("shape", lambda x, w: x),), d=3)
    with pytest.raises((TaskError, TypeError), match=r"returned shape|return value"):
        bad_shape.sample(2, n_shots=1, seed=0)
    not_finite = RegressionPool((RegressionTask("inf", lambda x, w: x[..., 0] / 0.0),), d=3)
    with pytest.raises(TaskError, match="NaN or infinite"):
        not_finite.sample(2, n_shots=1, seed=0)
    assert issubclass(TaskError, TvLensError)
