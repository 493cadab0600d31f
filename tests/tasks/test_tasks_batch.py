"""ICLBatch: validation, select, to, zero_shot edge cases, vocabulary layout."""

from __future__ import annotations

import pickle
from dataclasses import fields, replace

import pytest
import torch

from tv_lens.errors import PositionError, ShapeError, TaskError, TvLensError
from tv_lens.tasks import ICLBatch, RegressionBatch, Vocabulary, modular_pool, offset_pool, regression_pool


@pytest.fixture
def batch() -> ICLBatch:
    return offset_pool(offsets=(1, 2), n_values=8, bos=True).sample(n_per_task=4, n_shots=(0, 3), seed=0)


def test_vocabulary_layout() -> None:
    v = Vocabulary(n_values=10, bos=True)
    assert (v.sep, v.marker, v.pad, v.bos_token, v.size) == (10, 11, 12, 13, 14)
    assert Vocabulary(10).bos_token is None and Vocabulary(10).size == 13
    assert v.decode([13, 4, 10, 5, 12]) == "<bos> 4 → 5 <pad>"
    with pytest.raises(TaskError, match="outside this vocabulary"):
        v.token_str(14)
    with pytest.raises(TaskError, match="at least 2 number tokens"):
        Vocabulary(n_values=1)


def test_select_subsets_and_trims(batch: ICLBatch) -> None:
    idx = (batch.n_shots == 0).nonzero().flatten()
    sub = batch.select(batch.n_shots == 0)
    assert len(sub) == len(idx) > 0 and sub.max_shots == 0
    assert sub.inputs.shape[1] == int(batch.lengths[idx].max())
    assert torch.equal(sub.answers, batch.answers[idx]) and sub.task_names == batch.task_names
    assert torch.equal(batch.select([2, 0]).task_ids, batch.task_ids[[2, 0]])
    assert len(batch.select(slice(1, 4))) == 3
    with pytest.raises(PositionError, match="outside"):
        batch.select([len(batch)])
    assert len(batch.select([])) == 0


@pytest.mark.parametrize(
    ("indices", "problem"),
    [
        ([0.7, 1.2], r"got torch.float32 of shape \(2,\)"),  # was truncated to prompts 0 and 1
        ([True, False], r"bool mask of shape \(2,\); it needs one entry per prompt"),  # was prompt 0 of a short mask
        (3, r"one prompt: \[i\]\), got torch.int64 of shape \(\)"),  # was a TypeError
        ([[0, 1]], r"got torch.int64 of shape \(1, 2\)"),
        ("01", r"got '01'"),
    ],
    ids=["floats", "a-short-mask", "an-int", "2-d", "text"],
)
def test_select_refuses_what_is_not_prompt_indices(batch: ICLBatch, indices, problem) -> None:
    with pytest.raises((PositionError, ShapeError), match=r"ICLBatch.select indices .*" + problem):
        batch.select(indices)


def test_to_moves_every_tensor(batch: ICLBatch) -> None:
    moved = batch.to("cpu")
    assert moved.inputs.device.type == "cpu" and torch.equal(moved.demo_noisy, batch.demo_noisy)
    with pytest.raises(ShapeError, match="several devices"):
        replace(batch, answers=batch.answers.to("meta"))


SHARED = ("attention_mask", "answer_pos", "task_ids", "task_names", "n_shots", "demo_start", "demo_answer_pos")
KEYWORD = "demo_answer_end"  # keyword-only: positional construction keeps its order


def test_both_batch_classes_keep_their_field_order_and_pickle(batch: ICLBatch) -> None:
    regression = regression_pool(("linear",), d=3, null=True).sample(n_per_task=2, n_shots=(0, 2), seed=0)
    for original, own in ((batch, "pad_token"), (regression, "weights")):
        names = [f.name for f in fields(original)]
        assert names == ["inputs", *SHARED[:2], "answers", *SHARED[2:], "demo_noisy", "query_start", KEYWORD, own]
        values = [getattr(original, name) for name in names]
        positional = [value for name, value in zip(names, values, strict=True) if name != KEYWORD]
        built = type(original)(*positional, demo_answer_end=original.demo_answer_end)  # positional order unchanged
        for copy in (pickle.loads(pickle.dumps(original)), built):
            assert type(copy) is type(original)
            for name, value in zip(names, values, strict=True):  # weights hold NaN for Null prompts
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(getattr(copy, name), value, rtol=0, atol=0, equal_nan=True)
                else:
                    assert getattr(copy, name) == value, name
    assert isinstance(regression, RegressionBatch) and len(regression.select([0, 3]).weights) == 2


def test_answer_ends_default_to_the_next_demonstration_also_for_a_batch_pickled_without_them(batch: ICLBatch) -> None:
    assert batch.n_shots.max() > 1 and torch.equal(batch.demo_answer_end, batch.demonstration_ends)
    given = {f.name: getattr(batch, f.name) for f in fields(batch) if f.name != KEYWORD}
    assert torch.equal(ICLBatch(**given).demo_answer_end, batch.demonstration_ends)
    older = pickle.loads(pickle.dumps(batch))
    del older.__dict__[KEYWORD]  # as a batch pickled before the field existed
    restored = pickle.loads(pickle.dumps(older))
    assert torch.equal(restored.demo_answer_end, batch.demonstration_ends)


def test_batch_is_frozen(batch: ICLBatch) -> None:
    with pytest.raises(AttributeError):
        batch.inputs = batch.inputs  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda b: {"answers": b.answers + 1}, PositionError, "answers must equal"),
        (lambda b: {"answers": b.answers[:, 0]}, ShapeError, "answers must have shape|parameter 'answers'"),
        (lambda b: {"answer_pos": b.answer_pos + 5}, PositionError, "answer_pos"),
        (lambda b: {"answer_pos": b.query_start - 1}, PositionError, "answer_pos"),
        (lambda b: {"attention_mask": b.attention_mask[:, :-1]}, ShapeError, "attention_mask"),
        (lambda b: {"attention_mask": b.attention_mask.flip(1)}, PositionError, "right-padded"),
        (lambda b: {"task_ids": b.task_ids + 10}, TaskError, "task_ids"),
        (lambda b: {"n_shots": b.n_shots + 5}, TaskError, "n_shots"),
        (lambda b: {"demo_start": b.demo_start * 0 + 1}, PositionError, "demo_start"),
        (lambda b: {"demo_answer_end": b.demo_answer_pos}, PositionError, "demo_answer_end must lie after"),
        (
            lambda b: {"demo_answer_end": torch.where(b.demo_answer_end >= 0, b.demo_answer_end + 1, -1)},
            PositionError,
            "at most at the next demonstration",
        ),
        (lambda b: {"demo_answer_end": b.demo_answer_end[:, :-1]}, ShapeError, "demo_answer_end"),
        (lambda b: {"inputs": b.inputs.float()}, ShapeError, "integer|parameter 'inputs'"),
    ],
)
def test_validation_rejects_inconsistent_batches(batch: ICLBatch, change, error, match: str) -> None:
    # Shape mismatches may instead be caught by jaxtyping (a TypeError) when its runtime checker is on.
    expected = (error, TypeError) if error is ShapeError else error
    with pytest.raises(expected, match=match):
        replace(batch, **change(batch))
    assert issubclass(error, TvLensError)


def test_zero_shot_of_a_batch_without_prefix() -> None:
    pool = modular_pool(ops=("add",), p=3, fmt="marker", null=False)
    zs = pool.sample(n_per_task=3, n_shots=2, seed=0).zero_shot()
    assert zs.inputs[:, 0].eq(pool.vocab.marker).all() and zs.answer_pos.tolist() == [2, 2, 2]
    assert len(zs.select([])) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_and_back(batch: ICLBatch) -> None:
    gpu = batch.to("cuda")
    assert all(t.is_cuda for t in (gpu.inputs, gpu.answers, gpu.demo_noisy, gpu.query_start))
    zs, sub = gpu.zero_shot(), gpu.select(gpu.task_ids == 0)
    assert zs.inputs.is_cuda and sub.inputs.is_cuda
    assert torch.equal(zs.to("cpu").inputs, batch.zero_shot().inputs)
    assert torch.equal(sub.to("cpu").answers, batch.select(batch.task_ids == 0).answers)
