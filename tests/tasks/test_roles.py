"""Prompt roles: the role of every position of token, text and regression prompts, against their known layouts."""

from __future__ import annotations

import pytest
import torch
from test_text import bitwise, text
from text_tokenizers import byte_bpe, qwen_like, sentencepiece_like

from tv_lens.tasks import (
    NULL_TASK,
    PROMPT_ROLES,
    TextPool,
    bitwise_text_tasks,
    demonstration_roles,
    offset_pool,
    position_roles,
    regression_pool,
)

PREFIX, DEMO_INPUT, DEMO_ANSWER, SEPARATOR, QUERY, ANSWER = range(len(PROMPT_ROLES))


@pytest.mark.parametrize("fmt", ["arrow", "marker"])
@pytest.mark.parametrize("bos", [False, True])
def test_token_prompts_repeat_input_input_answer_per_demonstration(fmt: str, bos: bool) -> None:
    """Every pair is ``x → y`` or ``<m> x y``: two input positions (the second right before the answer), one answer,
    no separator."""
    batch = offset_pool(offsets=(1, 2), n_values=8, fmt=fmt, bos=bos).sample(6, n_shots=(0, 3), seed=2)
    roles = position_roles(batch)
    for i in range(len(batch)):
        n_shots = int(batch.n_shots[i])
        expected = [PREFIX] * bos + [DEMO_INPUT, DEMO_INPUT, DEMO_ANSWER] * n_shots + [QUERY, ANSWER]
        assert SEPARATOR not in roles[i].tolist()
        expected += [-1] * (roles.shape[1] - len(expected))
        assert roles[i].tolist() == expected


def test_regression_prompts_have_no_query_before_the_answer_position() -> None:
    """``x_0 y_0 ... x_q y_q``: each x is a demonstration's input and the position its answer is predicted at."""
    batch = regression_pool(("linear", "quadratic"), d=3).sample(4, n_shots=(1, 3), seed=0)
    roles = position_roles(batch)
    for i in range(len(batch)):
        expected = [DEMO_INPUT, DEMO_ANSWER] * int(batch.n_shots[i]) + [ANSWER]
        assert roles[i].tolist() == expected + [-1] * (roles.shape[1] - len(expected))


@pytest.mark.parametrize(
    ("make_tokenizer", "template"),
    [(byte_bpe, "{x}->{y}"), (byte_bpe, "Q: {x}\nA: {y}"), (sentencepiece_like, "{x}->{y}"), (qwen_like, "{x}->{y}")],
)
def test_text_demonstrations_split_into_their_input_their_answer_and_the_newline(make_tokenizer, template) -> None:
    """Read from the roles alone, every demonstration's answer is the task's rule applied to its input, and the
    newline between demonstrations is their separator (GPT-2-, SentencePiece- and Qwen-style tokenizers)."""
    tokenizer = make_tokenizer()
    bos = tokenizer.bos_token is not None
    pool = TextPool(bitwise_text_tasks(n_examples=64), tokenizer, null=True, bos=bos, template=template)
    batch = pool.sample(n_per_task=4, n_shots=(0, 3), seed=1)
    roles = position_roles(batch)
    before, after = ("", " ->") if template == "{x}->{y}" else ("Q: ", " A:")  # around x, whitespace folded
    checked = 0
    for i in range(len(batch)):
        ids, row = batch.inputs[i].tolist(), roles[i].tolist()
        assert (row[0] == PREFIX) == bos and row.count(ANSWER) == 1 and row.index(ANSWER) == int(batch.answer_pos[i])
        assert text(tokenizer, [t for t, r in zip(ids, row, strict=True) if r in (QUERY, ANSWER)]).endswith(after)
        task = batch.task_names[int(batch.task_ids[i])]
        spans: list[list[int]] = []  # runs of demo_input, demo_answer and separator positions, in turn
        for pos, role in enumerate(row):
            if role in (DEMO_INPUT, DEMO_ANSWER, SEPARATOR):
                if not spans or row[pos - 1] != role:
                    spans.append([])
                spans[-1].append(ids[pos])
        assert len(spans) == 3 * int(batch.n_shots[i])
        for x_ids, y_ids, separator in zip(spans[::3], spans[1::3], spans[2::3], strict=True):
            assert tokenizer.decode(separator) == pool.separator
            x, y = text(tokenizer, x_ids).removeprefix(before).removesuffix(after), tokenizer.decode(y_ids).strip()
            if task != NULL_TASK:
                assert y == bitwise(task, x)
                checked += 1
    assert checked > 10


def test_text_demonstrations_apart_are_the_spans_of_the_plain_roles_in_order() -> None:
    """Demonstration j of n, up to the next one (or the query): input, answer, separator, ``[-(n-j)]``."""
    pool = TextPool(bitwise_text_tasks(n_examples=64), byte_bpe(), null=True, bos=True)
    batch = pool.sample(n_per_task=3, n_shots=(0, 3), seed=4)
    roles, names = demonstration_roles(batch)
    plain = position_roles(batch)
    for i in range(len(batch)):
        n_shots, row = int(batch.n_shots[i]), [names[r] if r >= 0 else None for r in roles[i].tolist()]
        starts = [*batch.demo_start[i, :n_shots].tolist(), int(batch.query_start[i])]
        for j in range(n_shots):
            span, back = row[starts[j] : starts[j + 1]], n_shots - j
            counts = [span.count(f"{part}[-{back}]") for part in ("demo_input", "demo_answer", "separator")]
            assert min(counts) > 0 and sum(counts) == len(span)
            assert span == [
                f"{part}[-{back}]"
                for part, n in zip(("demo_input", "demo_answer", "separator"), counts, strict=True)
                for _ in range(n)
            ]
        outside = [*range(starts[0]), *range(starts[-1], len(row))]  # prefix, query, answer position, the rest
        assert [row[p] for p in outside] == [PROMPT_ROLES[r] if r >= 0 else None for r in plain[i, outside].tolist()]


def test_a_zero_shot_twin_keeps_its_prefix_and_query() -> None:
    batch = offset_pool(offsets=(1,), n_values=8, bos=True).sample(3, n_shots=2, seed=0).zero_shot()
    assert position_roles(batch).tolist() == [[PREFIX, QUERY, ANSWER, -1]] * len(batch)
    assert torch.equal(batch.prefix_lengths, torch.ones(len(batch), dtype=torch.long))


@pytest.mark.parametrize("fmt", ["arrow", "marker"])
def test_each_demonstration_is_its_own_role_counted_back_from_the_query(fmt: str) -> None:
    """With 0 to 3 shots: ``x → y`` per demonstration, the last one always ``[-1]``; merged back, the plain roles."""
    batch = offset_pool(offsets=(1, 2), n_values=8, fmt=fmt, bos=True).sample(6, n_shots=(0, 3), seed=2)
    roles, names = demonstration_roles(batch)
    parts = ("demo_input", "demo_answer", "separator")
    assert names == ("prefix", *(f"{part}[-{n}]" for n in (3, 2, 1) for part in parts), "query", "answer_pos")
    assert {int(n) for n in batch.n_shots} == {0, 1, 2, 3}
    for i in range(len(batch)):
        n_shots = int(batch.n_shots[i])
        expected = [names.index("prefix")]
        for back in range(n_shots, 0, -1):
            expected += [names.index(f"demo_input[-{back}]")] * 2 + [names.index(f"demo_answer[-{back}]")]
        expected += [names.index("query"), names.index("answer_pos")]
        assert roles[i].tolist() == expected + [-1] * (roles.shape[1] - len(expected))
    plain = [PROMPT_ROLES.index(name.split("[")[0]) for name in names]
    merged = torch.where(roles >= 0, torch.tensor(plain)[roles.clamp(min=0)], -1)
    assert torch.equal(merged, position_roles(batch))


def test_regression_and_zero_shot_prompts_count_demonstrations_back_too() -> None:
    batch = regression_pool(("linear",), d=2).sample(3, n_shots=2, seed=0)
    roles, names = demonstration_roles(batch)
    for row in roles.tolist():  # x_0 y_0 x_1 y_1 x_q y_q
        assert [names[r] if r >= 0 else None for r in row] == [
            *("demo_input[-2]", "demo_answer[-2]", "demo_input[-1]", "demo_answer[-1]", "answer_pos", None)
        ]
    zero = offset_pool(offsets=(1,), n_values=8).sample(2, n_shots=0, seed=0)
    roles, names = demonstration_roles(zero)
    assert names == ("prefix", "query", "answer_pos")
    for row in roles.tolist():
        assert [names[r] if r >= 0 else None for r in row] == ["query", "answer_pos", None]
