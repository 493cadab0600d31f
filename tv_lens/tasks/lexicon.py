"""A small tagged lexicon and sentence generator for Han et al.'s part-of-speech task.

The task "output the first word with tag z" needs sentences whose words have known tags. We generate them
from a handful of grammatical patterns filled with words from a lexicon where every word has exactly one
tag, so the answer is unambiguous. Every pattern contains all six tags of Han et al. (noun, adjective, verb,
adverb, preposition, pronoun), so every task is defined on every sentence, and the patterns order the tags
differently, so the answer's position varies with the sentence and is not a fixed offset.

>>> sentence = generate_sentences(1, seed=0)[0]
>>> len(sentence) >= 7, {tag for _, tag in sentence} >= set(POS_TAGS)
(True, True)
"""

from __future__ import annotations

import torch

from tv_lens.checks import is_int
from tv_lens.errors import TaskError
from tv_lens.tasks.pool import seeded_generator

__all__ = ["LEXICON", "POS_TAGS", "TaggedSentence", "first_word_with_tag", "generate_sentences", "sentence_text"]

TaggedSentence = tuple[tuple[str, str], ...]
"""A sentence as ``(word, tag)`` pairs."""

POS_TAGS: tuple[str, ...] = ("noun", "adjective", "verb", "adverb", "preposition", "pronoun")
"""Han et al.'s six tags (task names of :func:`tv_lens.tasks.text_families.pos_tasks`)."""

_SUBJECT = ("he", "she", "they", "we", "I")
_OBJECT = ("him", "her", "them", "us", "me")
LEXICON: dict[str, tuple[str, ...]] = {
    "noun": (
        "dog", "cat", "bird", "horse", "teacher", "doctor", "farmer", "child", "river", "garden",
        "forest", "house", "table", "window", "bridge", "market", "village", "mountain", "lake", "road",
    ),
    "adjective": (
        "big", "small", "old", "young", "red", "green", "dark", "bright", "tall", "tiny",
        "huge", "cold", "warm", "quiet", "busy", "strange", "ancient", "wooden", "gentle", "empty",
    ),
    "verb": (
        "walked", "ran", "jumped", "sang", "waited", "slept", "danced", "smiled", "laughed", "rested",
        "worked", "played", "swam", "climbed", "sat", "stood", "talked", "cried", "hid", "stayed",
    ),
    "adverb": (
        "quickly", "slowly", "quietly", "loudly", "happily", "sadly", "carefully", "gently", "suddenly", "calmly",
        "often", "rarely", "eagerly", "softly", "boldly", "proudly", "silently", "briskly", "nervously", "patiently",
    ),
    "preposition": (
        "in", "on", "under", "near", "behind", "beside", "into", "through", "across", "toward",
        "with", "without", "above", "below", "around", "along", "against", "over", "upon", "within",
    ),
    "pronoun": _SUBJECT + _OBJECT,
    "determiner": ("the",),
}  # fmt: skip
"""Words of each tag; no word has two tags. ``determiner`` words fill patterns but are no task's answer."""

# Patterns: S/O = subject/object pronoun, D = determiner, N/A/V/R/P = noun/adjective/verb/adverb/preposition.
_PATTERNS = (
    "S V R P D A N",  # she walked slowly into the dark forest
    "D A N V R P O",  # the old dog waited quietly with them
    "R S V P D A N",  # suddenly they ran across the old bridge
    "P D A N S V R",  # under the old bridge she waited quietly
    "D A N V P O R",  # the tall teacher smiled with them calmly
    "S R V P D A N P D N",  # they quietly sat beside the red house near the lake
    "D N P D A N V R P O",  # the dog near the old house slept softly beside them
    "R D A N V P O",  # often the young farmer worked with us
)
_SLOTS = {
    "S": (_SUBJECT, "pronoun"),
    "O": (_OBJECT, "pronoun"),
    "D": (LEXICON["determiner"], "determiner"),
    "N": (LEXICON["noun"], "noun"),
    "A": (LEXICON["adjective"], "adjective"),
    "V": (LEXICON["verb"], "verb"),
    "R": (LEXICON["adverb"], "adverb"),
    "P": (LEXICON["preposition"], "preposition"),
}


def generate_sentences(n: int, seed: int = 0) -> tuple[TaggedSentence, ...]:
    """``n`` distinct tagged sentences: a uniformly random pattern, each slot a uniformly random word.

    Raises:
        TaskError: ``n < 1``.
    """
    if not is_int(n) or n < 1:
        raise TaskError(f"n (number of sentences) must be an int >= 1, got {n!r}.")
    gen = seeded_generator(seed)
    sentences: dict[TaggedSentence, None] = {}
    while len(sentences) < n:
        pattern = _PATTERNS[int(torch.randint(len(_PATTERNS), (1,), generator=gen))].split()
        picks = torch.randint(1 << 30, (len(pattern),), generator=gen).tolist()
        sentence = tuple(
            (_SLOTS[slot][0][pick % len(_SLOTS[slot][0])], _SLOTS[slot][1])
            for slot, pick in zip(pattern, picks, strict=True)
        )
        sentences.setdefault(sentence)
    return tuple(sentences)


def sentence_text(sentence: TaggedSentence) -> str:
    """The sentence's words joined by spaces."""
    return " ".join(word for word, _ in sentence)


def first_word_with_tag(sentence: TaggedSentence, tag: str) -> str:
    """The first word of ``sentence`` tagged ``tag``.

    Raises:
        TaskError: No word of the sentence has that tag.
    """
    for word, word_tag in sentence:
        if word_tag == tag:
            return word
    raise TaskError(f"The sentence {sentence_text(sentence)!r} has no word tagged {tag!r}.")
