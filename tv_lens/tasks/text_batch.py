"""Tokenized text prompts into an :class:`~tv_lens.tasks.batch.ICLBatch`: where each answer starts, and padding."""

from __future__ import annotations

import torch

from tv_lens.errors import TaskError
from tv_lens.tasks.batch import ICLBatch
from tv_lens.tasks.encoding import Encoded

__all__ = ["answer_start", "first_answer_token", "to_batch"]


def first_answer_token(enc: Encoded, boundary: int, text: str) -> int:
    """Index of the first token holding a character of the answer ``text[boundary:]``, past its leading whitespace.

    A token of that whitespace alone (SentencePiece's ``▁`` and Llama-3's or Qwen's ``" "`` before digits) stays with
    the prompt: the prompt's last token is then the one whose prediction is the answer's first character. A token
    that holds the whitespace and the answer's first characters (GPT-2's ``" dog"``) is the answer's first token.
    ``len(enc.ids)`` where no token holds the answer.
    """
    return enc.token_at(len(text) - len(text[boundary:].lstrip()))


def answer_start(enc: Encoded, boundary: int, text: str) -> int:
    """:func:`first_answer_token` of the query's answer; raises if a token spans the query/answer boundary."""
    first = first_answer_token(enc, boundary, text)
    if first >= len(enc.ids) or enc.starts[first] < boundary or first == 0:
        raise TaskError(
            f"The tokenizer merges the end of the query prompt with its answer in {text[-80:]!r}; this input and "
            "output cannot be told apart. Change the template (e.g. '{x} -> {y}') or the separator."
        )
    return first


def to_batch(
    rows: list[list[int]],
    answers: list[list[int]],
    answer_pos: list[int],
    query_start: list[int],
    demos: list[list[tuple[int, int, int]]],
    demo_noisy: list[list[bool]],
    task_ids: torch.Tensor,
    shots: torch.Tensor,
    task_names: tuple[str, ...],
    pad: int,
) -> ICLBatch:
    """Pad token rows, answers (with -1) and demonstration spans into an :class:`ICLBatch`.

    ``demos[i]`` holds prompt ``i``'s demonstrations as (first token, token before the answer, one past the answer).
    """
    b, max_shots = len(rows), int(shots.max())
    n_answer = max(len(a) for a in answers)
    width = max(max(len(r) for r in rows), max(p + n_answer for p in answer_pos))
    inputs = torch.full((b, width), pad, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    answer = torch.full((b, n_answer), -1, dtype=torch.long)
    demo_start = torch.full((b, max_shots), -1, dtype=torch.long)
    demo_answer = torch.full((b, max_shots), -1, dtype=torch.long)
    demo_end = torch.full((b, max_shots), -1, dtype=torch.long)
    noisy = torch.zeros((b, max_shots), dtype=torch.bool)
    for i, row in enumerate(rows):
        inputs[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        answer[i, : len(answers[i])] = torch.tensor(answers[i])
        for j, (start, before_answer, answer_end) in enumerate(demos[i]):
            demo_start[i, j], demo_answer[i, j], demo_end[i, j] = start, before_answer, answer_end
            noisy[i, j] = demo_noisy[i][j]
    return ICLBatch(
        inputs=inputs,
        attention_mask=mask,
        answer_pos=torch.tensor(answer_pos),
        answers=answer,
        task_ids=task_ids,
        task_names=task_names,
        n_shots=shots,
        demo_start=demo_start,
        demo_answer_pos=demo_answer,
        demo_answer_end=demo_end,
        demo_noisy=noisy,
        query_start=torch.tensor(query_start),
        pad_token=pad,
    )
