"""Helpers for the task tests: an independent decoder of rendered prompts and reference rules.

Not a conftest.py: tests/conftest.py already owns the module name ``conftest`` that test files import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from tv_lens.tasks import (
    ICLBatch,
    TaskPool,
    bitwise_pool,
    modular_pool,
    offset_pool,
    parity_offset_pool,
    permutation_pool,
)

FAMILIES = {
    "offset": lambda fmt, bos: offset_pool(offsets=(1, 2, 5), n_values=8, fmt=fmt, bos=bos),
    "parity_offset": lambda fmt, bos: parity_offset_pool(offsets=(0, 2, 5), n_values=9, fmt=fmt, bos=bos),
    "bitwise_token": lambda fmt, bos: bitwise_pool(n_bits=3, fmt=fmt, bos=bos),
    "bitwise_bits": lambda fmt, bos: bitwise_pool(n_bits=3, answer="bits", fmt=fmt, bos=bos),
    "modular": lambda fmt, bos: modular_pool(p=5, fmt=fmt, bos=bos),
    "permutation": lambda fmt, bos: permutation_pool(n_tasks=3, n_values=6, fmt=fmt, bos=bos),
}


@dataclass
class Pair:
    x: list[int]
    y: list[int]
    noisy: bool


@dataclass
class Prompt:
    task: str
    demos: list[Pair]
    query_x: list[int]
    answer: list[int]


def decode(batch: ICLBatch, pool: TaskPool, i: int) -> Prompt:
    """Read prompt i back from tokens and boundary fields only, checking the layout as it goes."""
    v, n_ans = pool.vocab, batch.n_answer_tokens
    toks = batch.inputs[i].tolist()
    length = int(batch.attention_mask[i].sum())
    assert all(t != v.pad for t in toks[:length]) and all(t == v.pad for t in toks[length:])
    special = v.sep if pool.fmt == "arrow" else v.marker

    def read(start: int, pre: int) -> tuple[list[int], list[int]]:
        if pool.fmt == "arrow":
            assert toks[pre] == v.sep
            x = toks[start:pre]
        else:
            assert toks[start] == v.marker
            x = toks[start + 1 : pre + 1]
        assert len(x) == pool.n_inputs and all(0 <= t < v.n_values for t in x)
        y = toks[pre + 1 : pre + 1 + n_ans]
        assert special not in y
        return x, y

    pos = 1 if v.bos else 0
    if v.bos:
        assert toks[0] == v.bos_token
    demos = []
    n = int(batch.n_shots[i])
    for j in range(batch.max_shots):
        if j >= n:
            assert int(batch.demo_start[i, j]) == -1 and int(batch.demo_answer_pos[i, j]) == -1
            continue
        start, pre = int(batch.demo_start[i, j]), int(batch.demo_answer_pos[i, j])
        assert start == pos  # demonstrations tile the prompt
        x, y = read(start, pre)
        demos.append(Pair(x, y, bool(batch.demo_noisy[i, j])))
        pos = pre + 1 + n_ans
    assert int(batch.query_start[i]) == pos
    ap = int(batch.answer_pos[i])
    qx, answer = read(pos, ap)
    assert answer == batch.answers[i].tolist()
    assert ap + 1 + n_ans == length  # the answer ends the prompt
    return Prompt(batch.task_names[int(batch.task_ids[i])], demos, qx, answer)


def bits_to_int(bits: list[int]) -> int:
    return int("".join(map(str, bits)), 2)


def reference(pool: TaskPool, task: str, x: list[int]) -> list[int]:
    """Expected answer tokens of x under the named task, written independently of the library."""
    n = pool.vocab.n_values
    if m := re.fullmatch(r"offset\((\d+)\)", task):
        return [(x[0] + int(m[1])) % n]
    if m := re.fullmatch(r"offset\((\d+),(\d+)\)", task):
        return [(x[0] + int(m[1] if x[0] % 2 == 0 else m[2])) % n]
    if m := re.fullmatch(r"perm\((\d+)\)", task):
        return [int(pool.tasks[int(m[1])](torch.tensor([x]))[0])]
    a, b = x
    if task in ("add", "sub", "mul"):
        p = pool.output_values
        return [{"add": a + b, "sub": a - b, "mul": a * b}[task] % p]
    n_bits = pool.output_values.bit_length() - 1
    full = (1 << n_bits) - 1
    base = {"and": a & b, "or": a | b, "xor": a ^ b}[task.removeprefix("n") if task != "xnor" else "xor"]
    z = (full ^ base) if task in ("nand", "nor", "xnor") else base
    if pool.answer == "bits":
        return [int(c) for c in format(z, f"0{n_bits}b")]
    return [z]
