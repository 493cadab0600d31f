"""Bad requests raise TaskError with a message that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch
from text_tokenizers import word_level

from tv_lens.errors import TaskError
from tv_lens.tasks import (
    RegressionPool,
    Task,
    TaskPool,
    TextPool,
    TextTask,
    Vocabulary,
    bitwise_pool,
    bitwise_text_tasks,
    linear_task,
    modular_pool,
    offset_pool,
    permutation_pool,
    pos_tasks,
)

POOLS = {  # each pool's class, one of its tasks and the rest of its arguments
    "TaskPool": (
        TaskPool,
        Task("id", lambda x: x[:, 0]),
        {"vocab": Vocabulary(4), "n_inputs": 1, "input_values": 4, "output_values": 4},
    ),
    "RegressionPool": (RegressionPool, linear_task(), {"d": 3}),
    "TextPool": (TextPool, TextTask("swap", (("dog", "cat"), ("cat", "dog"))), {"tokenizer": word_level()}),
}


@pytest.fixture(scope="module")
def pool() -> TaskPool:
    return offset_pool(offsets=(1, 2), n_values=8)


def test_unknown_ops_list_the_valid_ones() -> None:
    with pytest.raises(TaskError, match=r"Unknown bitwise op.*'nope'.*'and', 'nand', 'or'"):
        bitwise_pool(ops=("and", "nope"))
    with pytest.raises(TaskError, match=r"Unknown modular op.*'div'.*'add', 'sub', 'mul'"):
        modular_pool(ops=("div",))
    assert bitwise_pool(ops=("XOR",)).task_names == ("xor", "null")  # case-insensitive


# Values of the right type but out of range: always our TaskError.
@pytest.mark.parametrize("bad", [-1, (2, 1), (-1, 3), range(0), range(-2, 1)])
def test_bad_shot_counts(pool: TaskPool, bad) -> None:
    with pytest.raises(TaskError, match="n_shots must be an int >= 0"):
        pool.sample(n_per_task=2, n_shots=bad, seed=0)


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_n_per_task(pool: TaskPool, bad: int) -> None:
    with pytest.raises(TaskError, match="n_per_task must be an int >= 1"):
        pool.sample(n_per_task=bad, n_shots=1, seed=0)


# Values of the wrong type: our TaskError, or a TypeError naming the parameter when the tests run under
# jaxtyping's runtime type checker (--jaxtyping-packages=tv_lens,beartype.beartype).
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_shots": [1, 2]}, r"n_shots must be an int >= 0|parameter 'n_shots'"),
        ({"n_shots": 1.5}, r"n_shots must be an int >= 0|parameter 'n_shots'"),
        ({"n_shots": True}, r"n_shots must be an int >= 0|parameter 'n_shots'"),
        ({"n_per_task": 2.0}, r"n_per_task must be an int >= 1|parameter 'n_per_task'"),
    ],
)
def test_mistyped_sample_arguments(pool: TaskPool, kwargs: dict, match: str) -> None:
    with pytest.raises((TaskError, TypeError), match=match):
        pool.sample(**{"n_per_task": 2, "n_shots": 1, "seed": 0, **kwargs})


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_bad_label_noise(pool: TaskPool, bad: float) -> None:
    with pytest.raises(TaskError, match=r"label_noise must lie in \[0, 1\)"):
        pool.sample(n_per_task=2, n_shots=1, seed=0, label_noise=bad)


def test_vocabulary_too_small() -> None:
    with pytest.raises(TaskError, match=r"Vocabulary too small.*needs n_values >= 21, got n_values=16"):
        offset_pool(offsets=(1, 20), n_values=16)
    with pytest.raises(TaskError, match=r"Vocabulary too small.*n_values >= 16, got n_values=8"):
        bitwise_pool(n_bits=4, n_values=8)
    with pytest.raises(TaskError, match=r"Vocabulary too small.*n_values >= 7"):
        modular_pool(p=7, n_values=5)
    with pytest.raises(TaskError, match=r"Vocabulary too small.*Vocabulary\(n_values=8\)"):
        TaskPool((Task("id", lambda x: x[:, 0]),), Vocabulary(4), n_inputs=1, input_values=8, output_values=8)
    assert bitwise_pool(n_bits=2, n_values=10).vocab_size == 13  # a larger shared vocabulary is fine


def test_empty_pool() -> None:
    with pytest.raises(TaskError, match="at least one task"):
        offset_pool(offsets=())
    with pytest.raises(TaskError, match="at least one task"):
        TaskPool((), Vocabulary(4), n_inputs=1, input_values=4, output_values=4, null=True)
    with pytest.raises(TaskError, match=r"Unknown bitwise op\(s\) \[\]; valid ones are \[.and."):
        bitwise_pool(ops=())


@pytest.mark.parametrize("name", list(POOLS))
def test_every_pool_checks_its_tasks_and_names_them_alike(name: str) -> None:
    kind, task, others = POOLS[name]
    pool = kind((task,), **others, null=True)
    assert pool.task_names == (task.name, "null") and len(pool) == 2
    assert kind([task], **others).task_names == (task.name,) and len(kind([task], **others)) == 1
    with pytest.raises(TaskError, match=rf"{name} needs at least one task, got none; pass e\.g\. tasks=\("):
        kind((), **others)
    with pytest.raises(TaskError, match=rf"{name} takes a sequence of tasks, got one {type(task).__name__}"):
        kind(task, **others)
    with pytest.raises(TaskError, match=rf"unique, got \['{task.name}'\] more than once"):
        kind((task, task), **others)
    with pytest.raises(TaskError, match=r"null must be True or False \(add the Null task\), got 'no'"):
        kind((task,), **others, null="no")


def test_bad_pool_definitions() -> None:
    rule = Task("id", lambda x: x[:, 0])
    with pytest.raises(TaskError, match="unique"):
        TaskPool((rule, rule), Vocabulary(4), n_inputs=1, input_values=4, output_values=4)
    with pytest.raises(TaskError, match=r"unique.*null"):
        TaskPool((Task("null", rule.fn),), Vocabulary(4), n_inputs=1, input_values=4, output_values=4, null=True)
    with pytest.raises((TaskError, TypeError), match=r"Unknown prompt format 'newline'|parameter 'fmt'"):
        offset_pool(fmt="newline")  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="power of two"):
        TaskPool((rule,), Vocabulary(6), n_inputs=1, input_values=6, output_values=6, answer="bits")
    with pytest.raises(TaskError, match="distinct"):
        offset_pool(offsets=(1, 1))
    with pytest.raises(TaskError, match=r"n_tasks must be an int in 1 \.\. 3!"):
        permutation_pool(n_tasks=7, n_values=3)
    with pytest.raises(TaskError, match="non-empty string"):
        Task("", rule.fn)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: offset_pool(offsets=(1.5, 2), n_values=5), r"offsets must be ints, got \(1\.5, 2\)"),
        (lambda: offset_pool(offsets=(True, 2), n_values=5), r"offsets must be ints, got \(True, 2\)"),
        (lambda: offset_pool(offsets="12"), r"offsets must be a sequence of ints, got '12'; e\.g\. offsets=\(1, 3\)"),
        (lambda: offset_pool(offsets=3), r"offsets must be a sequence of ints, got 3"),
        (lambda: bitwise_pool(ops=("and",), n_bits=2.5), r"n_bits must be an int in 1 \.\. 16, got 2\.5"),
        (lambda: bitwise_pool(ops=("and",), n_bits=True), r"n_bits must be an int in 1 \.\. 16, got True"),
        (lambda: bitwise_pool(ops=(1,)), r"The bitwise op\(s\) must be names \(strings\) among \['and'"),
        (lambda: bitwise_pool(ops=("xor", "XOR")), r"The bitwise op\(s\) \['xor', 'XOR'\] name one twice"),
        (lambda: modular_pool(ops=None), r"The modular op\(s\) must be names \(strings\) among \['add'"),
        (lambda: pos_tasks(tags=(1,)), r"The POS tag\(s\) must be names \(strings\) among \['noun'"),
        (lambda: pos_tasks(tags=("noun", "Noun")), r"The POS tag\(s\) \['noun', 'Noun'\] name one twice"),
        (lambda: bitwise_text_tasks(ops=None), r"The bitwise op\(s\) must be names \(strings\).*got None"),
        (lambda: modular_pool(p=3.5), r"Modulus p must be an int >= 2, got 3\.5"),
        (lambda: modular_pool(p="7"), r"Modulus p must be an int >= 2, got '7'"),
        (lambda: permutation_pool(n_tasks=2.5, n_values=4), r"n_tasks must be an int in 1 \.\. 4!.*got 2\.5"),
        (lambda: permutation_pool(n_tasks=True, n_values=4), r"n_tasks must be an int in 1 \.\. 4!.*got True"),
    ],
)
def test_family_arguments_of_the_wrong_type(build, match: str) -> None:
    """A float offset (whose rule would truncate x + 1.5), a bool count, a string: TaskError, never another number."""
    with pytest.raises(TaskError, match=match):
        build()


@pytest.mark.parametrize(
    ("rule", "dtype"), [(lambda x: x[:, 0] / 2, "torch.float32"), (lambda x: x[:, 0] % 2 == 0, "torch.bool")]
)
def test_task_returning_values_that_are_not_integers(rule, dtype: str) -> None:
    """x / 2 would be truncated to x // 2 and a bool read as 0 / 1: refused, in sampling and in target answers."""
    pool = TaskPool((Task("rule", rule), Task("copy", lambda x: x[:, 0])), Vocabulary(8), 1, 8, 8)
    match = rf"Task 'rule' returned {dtype} values; a rule must return integer outputs .*x // 2"
    with pytest.raises(TaskError, match=match):
        pool.sample(n_per_task=2, n_shots=1, seed=0)
    batch = TaskPool((pool.tasks[1],), Vocabulary(8), 1, 8, 8).sample(n_per_task=2, n_shots=1, seed=0)
    with pytest.raises(TaskError, match=match):
        pool.target_answers(batch, ["rule"])


def test_task_returning_out_of_range_values() -> None:
    pool = TaskPool((Task("big", lambda x: x[:, 0] + 100),), Vocabulary(4), 1, 4, 4)
    with pytest.raises(TaskError, match=r"'big' returned values outside 0 .. 3"):
        pool.sample(n_per_task=2, n_shots=1, seed=0)
    pool = TaskPool((Task("shape", lambda x: x),), Vocabulary(4), 1, 4, 4)
    with pytest.raises((TaskError, TypeError), match=r"returned shape|return value"):
        pool.sample(n_per_task=2, n_shots=1, seed=0)
    assert torch.equal(
        TaskPool((Task("ok", lambda x: x[:, 0]),), Vocabulary(4), 1, 4, 4).tasks[0](torch.ones(2, 1, dtype=torch.long)),
        torch.ones(2, dtype=torch.long),
    )
