"""Synthetic token task families on a small number vocabulary.

Each constructor returns a :class:`~tv_lens.tasks.pool.TaskPool` of confusable rules sharing one input
distribution, plus (by default) the Null task. ``n_values`` is the number of number tokens of the
vocabulary (see :mod:`tv_lens.tasks.vocabulary`); it defaults to the smallest the family needs, and a
larger value lets several families share one vocabulary. A model needs ``pool.vocab_size`` token ids.

- :func:`offset_pool`: ``y = (x + c) mod n_values`` with a latent offset ``c`` (Yang et al.).
- :func:`parity_offset_pool`: ``y = (x + a) mod n_values`` for even ``x``, ``(x + b) mod n_values`` for odd ``x``:
  a demonstration shows one of the two offsets only, so accuracy rises with the number of shots.
- :func:`bitwise_pool`: ``z = op(a, b)`` on two ``n_bits`` numbers, ``op`` in AND, NAND, OR, NOR, XOR,
  XNOR (Han et al.), answered as one token or as ``n_bits`` bit tokens.
- :func:`modular_pool`: ``z = a op b mod p`` for ``op`` in add, sub, mul.
- :func:`permutation_pool`: ``y = perm_t(x)`` for seeded random permutations.

>>> pool = bitwise_pool(ops=("and", "xor"), n_bits=3, answer="bits", null=False)
>>> pool.task_names, pool.vocab_size, pool.n_answer_tokens
(('and', 'xor'), 11, 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import torch
from jaxtyping import Int
from torch import Tensor

from tv_lens.checks import is_int
from tv_lens.errors import TaskError
from tv_lens.tasks.pool import AnswerEncoding, Task, TaskPool, seeded_generator
from tv_lens.tasks.render import PromptFormat
from tv_lens.tasks.vocabulary import Vocabulary

__all__ = [
    "BITWISE_OPS",
    "MODULAR_OPS",
    "bitwise_pool",
    "modular_pool",
    "offset_pool",
    "parity_offset_pool",
    "permutation_pool",
]


def _vocab(needed: int, n_values: int | None, bos: bool, what: str) -> Vocabulary:
    """The family's vocabulary: ``n_values`` number tokens (default ``needed``), checked to suffice."""
    n = needed if n_values is None else n_values
    if n < needed:
        raise TaskError(
            f"Vocabulary too small: {what} needs n_values >= {needed}, got n_values={n}; "
            f"pass n_values={needed} (or more), or leave it None."
        )
    return Vocabulary(n_values=n, bos=bos)


def check_names(requested: Sequence[str] | str, valid: tuple[str, ...], what: str) -> tuple[str, ...]:
    """``requested`` (one name or a sequence of them) as lower-case names among ``valid``, or a :class:`TaskError`.

    Args:
        requested: The names asked for (case-insensitive).
        valid: The names there are.
        what: What they name, for the message (e.g. ``"bitwise op(s)"``).
    """
    names = (requested,) if isinstance(requested, str) else requested
    if not isinstance(names, Iterable) or not all(isinstance(name, str) for name in names):
        raise TaskError(f"The {what} must be names (strings) among {list(valid)}, got {requested!r:.80}.")
    names = tuple(name.lower() for name in names)
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        raise TaskError(f"Unknown {what} {unknown or list(names)}; valid ones are {list(valid)}.")
    if len(set(names)) < len(names):  # "xor" and "XOR": one task twice
        raise TaskError(f"The {what} {list(requested)} name one twice (case-insensitive); give each once.")
    return names


def _check_offsets(offsets: Sequence[int]) -> tuple[int, ...]:
    """``offsets`` as a tuple of distinct ints >= 0.

    A float (``1.5``: its task would truncate ``x + 1.5``) or a bool is refused.
    """
    if isinstance(offsets, (str, bytes)) or not isinstance(offsets, Iterable):
        raise TaskError(f"offsets must be a sequence of ints, got {offsets!r:.60}; e.g. offsets=(1, 3).")
    offsets = tuple(offsets)
    if not all(is_int(c) for c in offsets):
        raise TaskError(f"offsets must be ints, got {offsets}; e.g. offsets=(1, 3).")
    if len(set(offsets)) != len(offsets) or min(offsets, default=0) < 0:
        raise TaskError(f"offsets must be distinct and >= 0, got {offsets}; e.g. offsets=(1, 3).")
    return offsets


# --- offset ----------------------------------------------------------------------------------------------


def _offset(x: Int[Tensor, "n 1"], c: int, n_values: int) -> Int[Tensor, " n"]:
    return (x[:, 0] + c) % n_values


def offset_pool(
    offsets: Sequence[int] = (1, 2, 3, 4),
    n_values: int = 16,
    null: bool = True,
    fmt: PromptFormat = "arrow",
    bos: bool = False,
) -> TaskPool:
    """Offset tasks ``y = (x + c) mod n_values``, one per offset ``c``; x uniform over all values.

    Args:
        offsets: Distinct offsets, each in ``0 .. n_values - 1``.
        n_values: Number tokens (the modulus).
        null: Add the Null task.
        fmt: Prompt format, ``"arrow"`` or ``"marker"``.
        bos: Start every prompt with ``<bos>``.
    """
    offsets = _check_offsets(offsets)
    vocab = _vocab(max((*offsets, 1)) + 1, n_values, bos, f"offset_pool(offsets={offsets})")
    tasks = tuple(Task(f"offset({c})", partial(_offset, c=c, n_values=n_values)) for c in offsets)
    return TaskPool(tasks, vocab, n_inputs=1, input_values=n_values, output_values=n_values, fmt=fmt, null=null)


# --- parity-dependent offset -----------------------------------------------------------------------------


def _parity_offset(x: Int[Tensor, "n 1"], c_even: int, c_odd: int, n_values: int) -> Int[Tensor, " n"]:
    value = x[:, 0]
    return (value + torch.where(value % 2 == 0, c_even, c_odd)) % n_values


def parity_offset_pool(
    offsets: Sequence[int] = (1, 3),
    n_values: int = 8,
    null: bool = True,
    fmt: PromptFormat = "arrow",
    bos: bool = False,
) -> TaskPool:
    """Offsets that depend on the parity of x, one task per ordered pair ``(a, b)`` of ``offsets``.

    Task ``offset(a,b)`` is ``y = (x + a) mod n_values`` for even x and ``y = (x + b) mod n_values`` for odd x
    (``a == b``, a plain offset, included); x is uniform over all values.

    A demonstration shows only the offset of its own parity, so a prompt whose demonstrations all share one parity
    leaves the other offset open: with ``len(offsets) == 2`` even an ideal reader of the prompt is right with
    probability ``1 - 0.5 ** (shots + 1)`` (0.75 at one shot), and accuracy rises with the number of shots.

    Args:
        offsets: Distinct offsets, each in ``0 .. n_values - 1``.
        n_values: Number tokens (the modulus), at least 2 (both parities).
        null: Add the Null task.
        fmt: Prompt format, ``"arrow"`` or ``"marker"``.
        bos: Start every prompt with ``<bos>``.

    >>> pool = parity_offset_pool(offsets=(1, 3), n_values=8)
    >>> pool.task_names, pool.vocab_size
    (('offset(1,1)', 'offset(1,3)', 'offset(3,1)', 'offset(3,3)', 'null'), 11)
    >>> pool.tasks[1](torch.arange(4)[:, None])  # x = 0, 1, 2, 3: +1 on even x, +3 on odd x
    tensor([1, 4, 3, 6])
    """
    offsets = _check_offsets(offsets)
    vocab = _vocab(max((*offsets, 1)) + 1, n_values, bos, f"parity_offset_pool(offsets={offsets})")
    tasks = tuple(
        Task(f"offset({a},{b})", partial(_parity_offset, c_even=a, c_odd=b, n_values=n_values))
        for a in offsets
        for b in offsets
    )
    return TaskPool(tasks, vocab, n_inputs=1, input_values=n_values, output_values=n_values, fmt=fmt, null=null)


# --- bitwise ---------------------------------------------------------------------------------------------


_BITWISE: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], bool]] = {
    "and": (torch.bitwise_and, False),
    "nand": (torch.bitwise_and, True),
    "or": (torch.bitwise_or, False),
    "nor": (torch.bitwise_or, True),
    "xor": (torch.bitwise_xor, False),
    "xnor": (torch.bitwise_xor, True),
}
BITWISE_OPS: tuple[str, ...] = tuple(_BITWISE)
"""Valid op names of :func:`bitwise_pool`."""


def _bitwise(x: Int[Tensor, "n 2"], op: str, n_bits: int) -> Int[Tensor, " n"]:
    base, negate = _BITWISE[op]
    out = base(x[:, 0], x[:, 1])
    return (~out if negate else out) & ((1 << n_bits) - 1)


def bitwise_pool(
    ops: Sequence[str] = ("and", "nand", "or", "nor", "xor", "xnor"),
    n_bits: int = 5,
    answer: AnswerEncoding = "token",
    n_values: int | None = None,
    null: bool = True,
    fmt: PromptFormat = "arrow",
    bos: bool = False,
) -> TaskPool:
    """Bitwise tasks ``z = op(a, b)`` on two ``n_bits`` numbers (two input tokens), as in Han et al.

    Args:
        ops: Op names among ``and, nand, or, nor, xor, xnor`` (case-insensitive).
        n_bits: Bits per number; values are ``0 .. 2**n_bits - 1``.
        answer: ``"token"`` (z as one token) or ``"bits"`` (``n_bits`` tokens ``0``/``1``, MSB first).
        n_values: Number tokens; default and minimum ``2**n_bits``.
        null: Add the Null task.
        fmt: Prompt format, ``"arrow"`` or ``"marker"``.
        bos: Start every prompt with ``<bos>``.
    """
    names = check_names(ops, BITWISE_OPS, "bitwise op(s)")
    if not is_int(n_bits) or not 1 <= n_bits <= 16:
        raise TaskError(f"n_bits must be an int in 1 .. 16, got {n_bits!r}.")
    size = 1 << n_bits
    vocab = _vocab(size, n_values, bos, f"bitwise_pool(n_bits={n_bits})")
    tasks = tuple(Task(op, partial(_bitwise, op=op, n_bits=n_bits)) for op in names)
    return TaskPool(tasks, vocab, n_inputs=2, input_values=size, output_values=size, fmt=fmt, null=null, answer=answer)


# --- modular arithmetic ----------------------------------------------------------------------------------


def _modular(x: Int[Tensor, "n 2"], op: str, p: int) -> Int[Tensor, " n"]:
    a, b = x[:, 0], x[:, 1]
    out = a + b if op == "add" else a - b if op == "sub" else a * b
    return out % p


MODULAR_OPS: tuple[str, ...] = ("add", "sub", "mul")
"""Valid op names of :func:`modular_pool`."""


def modular_pool(
    ops: Sequence[str] = ("add", "sub", "mul"),
    p: int = 7,
    n_values: int | None = None,
    null: bool = True,
    fmt: PromptFormat = "arrow",
    bos: bool = False,
) -> TaskPool:
    """Modular arithmetic ``z = (a op b) mod p`` on two operands ``a, b`` in ``0 .. p - 1``.

    Args:
        ops: Op names among ``add, sub, mul`` (case-insensitive).
        p: Modulus (>= 2).
        n_values: Number tokens; default and minimum ``p``.
        null: Add the Null task.
        fmt: Prompt format, ``"arrow"`` or ``"marker"``.
        bos: Start every prompt with ``<bos>``.
    """
    names = check_names(ops, MODULAR_OPS, "modular op(s)")
    if not is_int(p) or p < 2:
        raise TaskError(f"Modulus p must be an int >= 2, got {p!r}.")
    vocab = _vocab(p, n_values, bos, f"modular_pool(p={p})")
    tasks = tuple(Task(op, partial(_modular, op=op, p=p)) for op in names)
    return TaskPool(tasks, vocab, n_inputs=2, input_values=p, output_values=p, fmt=fmt, null=null)


# --- permutations ----------------------------------------------------------------------------------------


def _permute(x: Int[Tensor, "n 1"], table: Int[Tensor, " n_values"]) -> Int[Tensor, " n"]:
    return table.to(x.device)[x[:, 0]]


def permutation_pool(
    n_tasks: int = 4,
    n_values: int = 16,
    seed: int = 0,
    null: bool = True,
    fmt: PromptFormat = "arrow",
    bos: bool = False,
) -> TaskPool:
    """Fixed-permutation tasks ``y = perm_t(x)``: ``n_tasks`` distinct seeded permutations of the values.

    Args:
        n_tasks: Number of permutations (at most ``n_values!``); tasks are named ``perm(0)``, ``perm(1)`` ...
        n_values: Number tokens; the permutations act on ``0 .. n_values - 1``.
        seed: Seed of the permutations (the same seed gives the same tasks).
        null: Add the Null task.
        fmt: Prompt format, ``"arrow"`` or ``"marker"``.
        bos: Start every prompt with ``<bos>``.
    """
    vocab = _vocab(2, n_values, bos, "permutation_pool")
    if not is_int(n_tasks) or not 1 <= n_tasks <= math.factorial(min(n_values, 20)):
        raise TaskError(f"n_tasks must be an int in 1 .. {n_values}! (distinct permutations), got {n_tasks!r}.")
    gen = seeded_generator(seed)
    tables: list[Tensor] = []
    while len(tables) < n_tasks:
        perm = torch.randperm(n_values, generator=gen)
        if not any(torch.equal(perm, t) for t in tables):
            tables.append(perm)
    tasks = tuple(Task(f"perm({i})", partial(_permute, table=t)) for i, t in enumerate(tables))
    return TaskPool(tasks, vocab, n_inputs=1, input_values=n_values, output_values=n_values, fmt=fmt, null=null)
