"""Han et al.'s natural-language task families, as :class:`~tv_lens.tasks.text.TextTask` lists.

Each function returns confusable tasks over one shared set of inputs; put them in a
:class:`~tv_lens.tasks.text.TextPool` with the model's tokenizer (and ``null=True`` for the Null task).

- :func:`pos_tasks`: given a sentence, output its first word with tag z, z in noun, adjective, verb,
  adverb, preposition, pronoun (sentences from :mod:`tv_lens.tasks.lexicon`).
- :func:`bitwise_text_tasks`: given two ``n_bits``-digit binary numbers ``"a b"``, output ``op(a, b)`` as
  ``n_bits`` binary digits, op in AND, NAND, OR, NOR, XOR, XNOR.

>>> tasks = bitwise_text_tasks(ops=("and", "xor"), n_bits=3, n_examples=4)
>>> tasks[1].name, tasks[1].examples[0]
('xor', ('101 100', '001'))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tv_lens.checks import is_int
from tv_lens.errors import TaskError
from tv_lens.tasks.lexicon import POS_TAGS, first_word_with_tag, generate_sentences, sentence_text
from tv_lens.tasks.pool import seeded_generator
from tv_lens.tasks.text import TextTask
from tv_lens.tasks.tokens import BITWISE_OPS, _bitwise, check_names

__all__ = ["bitwise_text_tasks", "pos_tasks"]


def pos_tasks(tags: Sequence[str] = POS_TAGS, n_sentences: int = 256, seed: int = 0) -> tuple[TextTask, ...]:
    """One task per tag: sentence → its first word with that tag, over ``n_sentences`` shared sentences.

    Args:
        tags: Tags among ``noun, adjective, verb, adverb, preposition, pronoun``.
        n_sentences: Distinct generated sentences (every task's inputs).
        seed: Seed of the sentence generator.
    """
    names = check_names(tags, POS_TAGS, "POS tag(s)")
    sentences = generate_sentences(n_sentences, seed)
    return tuple(
        TextTask(tag, tuple((sentence_text(s), first_word_with_tag(s, tag)) for s in sentences)) for tag in names
    )


def bitwise_text_tasks(
    ops: Sequence[str] = BITWISE_OPS, n_bits: int = 5, n_examples: int = 256, seed: int = 0
) -> tuple[TextTask, ...]:
    """One task per op: ``"a b"`` → ``op(a, b)``, all as ``n_bits``-digit binary strings.

    Args:
        ops: Op names among ``and, nand, or, nor, xor, xnor`` (case-insensitive).
        n_bits: Digits per number (1 .. 16).
        n_examples: Distinct ``(a, b)`` pairs shared by every task (at most ``4**n_bits``).
        seed: Seed of the pairs.
    """
    names = check_names(ops, BITWISE_OPS, "bitwise op(s)")
    if not is_int(n_bits) or not 1 <= n_bits <= 16:
        raise TaskError(f"n_bits must be an int in 1 .. 16, got {n_bits!r}.")
    n_pairs = 1 << (2 * n_bits)
    if not is_int(n_examples) or not 1 <= n_examples <= n_pairs:
        raise TaskError(
            f"n_examples must be an int in 1 .. {n_pairs} (the distinct pairs of {n_bits}-bit numbers), got "
            f"{n_examples!r}; pass n_examples={min(n_pairs, 256)} or fewer, or more bits (n_examples=256, the "
            "default, needs n_bits >= 4)."
        )
    gen = seeded_generator(seed)
    codes = torch.randperm(n_pairs, generator=gen)[:n_examples]
    pairs = torch.stack([codes >> n_bits, codes & ((1 << n_bits) - 1)], dim=1)
    inputs = [f"{a:0{n_bits}b} {b:0{n_bits}b}" for a, b in pairs.tolist()]
    tasks = []
    for op in names:
        outputs = _bitwise(pairs, op, n_bits).tolist()
        tasks.append(TextTask(op, tuple((x, f"{z:0{n_bits}b}") for x, z in zip(inputs, outputs, strict=True))))
    return tuple(tasks)
