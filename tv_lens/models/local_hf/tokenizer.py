"""The byte-level BPE tokenizer of local models, trained on a built-in English corpus.

Its special tokens ``<|pad|>``, ``<|bos|>`` and ``<|eos|>`` take ids 0, 1 and 2. The corpus holds ICL prompts of
the built-in text tasks, English sentences and binary strings, so that common words are single tokens with and
without their leading space.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["BOS_TOKEN", "EOS_TOKEN", "PAD_TOKEN", "build_tokenizer"]

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"

# The built-in corpus: ICL-style lines of the text tasks (antonyms, capitals, plurals, bitwise strings) and plain
# English sentences, so that common words are single tokens with and without their leading space.
_ANTONYMS = (
    "hot cold", "big small", "up down", "left right", "good bad", "old new", "young old", "fast slow",
    "happy sad", "open closed", "light dark", "high low", "long short", "rich poor", "hard soft", "early late",
    "full empty", "strong weak", "wet dry", "near far", "loud quiet", "first last", "true false", "win lose",
    "buy sell", "push pull", "in out", "on off", "yes no", "day night", "black white", "love hate",
    "thick thin", "clean dirty", "heavy light", "cheap expensive", "safe dangerous", "alive dead",
)  # fmt: skip
_CAPITALS = (
    "France Paris", "Germany Berlin", "Italy Rome", "Spain Madrid", "Japan Tokyo", "China Beijing",
    "Russia Moscow", "Egypt Cairo", "Canada Ottawa", "Brazil Brasilia", "India Delhi", "Kenya Nairobi",
    "Greece Athens", "Norway Oslo", "Sweden Stockholm", "Poland Warsaw", "Peru Lima", "Chile Santiago",
    "Cuba Havana", "Ireland Dublin", "Austria Vienna", "Portugal Lisbon", "Turkey Ankara", "Iran Tehran",
)  # fmt: skip
_PLURALS = ("dog dogs", "cat cats", "box boxes", "child children", "mouse mice", "city cities", "tree trees")
_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "She walked slowly into the dark forest and found an old wooden house near the lake.",
    "They ran across the bridge, and we waited quietly under the big green tree.",
    "The capital of France is Paris; the capital of Japan is Tokyo.",
    "The opposite of hot is cold, and the opposite of big is small.",
    "He said that the answer was yes, but I think it is no.",
    "In the morning the teacher read a story to the children in the garden.",
    "Numbers such as one, two, three, four, five, six, seven, eight, nine and ten are words too.",
)


def _corpus() -> list[str]:
    """Training text of the tokenizer: ICL prompts of the built-in tasks, sentences, bitwise strings."""
    from tv_lens.tasks.lexicon import LEXICON, generate_sentences, sentence_text

    lines = []
    for pairs in (_ANTONYMS, _CAPITALS, _PLURALS):
        examples = [pair.split() for pair in pairs]
        lines += ["\n".join(f"{x}->{y}" for x, y in examples)] * 4
        lines.append("\n".join(f"{x} -> {y}" for x, y in examples))
        lines.append(" ".join(word for pair in examples for word in pair))
    lines += [sentence_text(sentence) for sentence in generate_sentences(200, seed=0)]
    lines += [" ".join(words) for words in LEXICON.values()]
    generator = torch.Generator().manual_seed(0)
    for n_bits in (3, 4, 5, 6, 8):
        a, b, c = torch.randint(0, 1 << n_bits, (3, 40), generator=generator).tolist()
        lines.append(
            "\n".join(f"{x:0{n_bits}b} {y:0{n_bits}b}->{z:0{n_bits}b}" for x, y, z in zip(a, b, c, strict=True))
        )
    return lines + list(_SENTENCES) * 3


def build_tokenizer(vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style) trained on the built-in corpus, as a ``PreTrainedTokenizerFast``.

    Every string is representable (bytes are the base alphabet); ids 0, 1, 2 are ``<|pad|>``, ``<|bos|>`` and
    ``<|eos|>``. The same ``vocab_size`` gives the same tokenizer.

    Args:
        vocab_size: Number of token ids, special tokens and the 256 byte tokens included (> 259).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD_TOKEN, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN
    )
