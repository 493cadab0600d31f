"""Tokenizers trained locally (``tokenizers`` package) on text our tasks generate: no downloads.

Not a conftest.py: tests/conftest.py already owns the module name ``conftest`` that test files import.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tv_lens.tasks import bitwise_text_tasks, pos_tasks
from tv_lens.tasks.lexicon import LEXICON


def corpus(extra: tuple[str, ...] = ()) -> list[str]:
    """Lines in the tasks' own format (POS sentences, binary strings) and every lexicon word, plus ``extra``."""
    lines = [f"{x}->{y}" for task in pos_tasks(n_sentences=300, seed=11) for x, y in task.examples[:60]]
    lines += [f"{x}->{y}" for task in bitwise_text_tasks(n_examples=200, seed=11) for x, y in task.examples]
    lines += [" ".join(words) for words in LEXICON.values()]
    return lines + list(extra)


@lru_cache(maxsize=4)
def word_level(extra: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> Tokenizer:
    """Whole words and punctuation runs; words in ``drop`` (and any word not in the corpus) are [UNK]."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    lines = [" ".join(w for w in line.replace("->", " -> ").split() if w not in drop) for line in corpus(extra)]
    tokenizer.train_from_iterator(lines, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    return tokenizer


@lru_cache(maxsize=2)
def byte_bpe(extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A small byte-level BPE (GPT-2 style): rare words and binary strings split into several tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus(extra), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>")


@lru_cache(maxsize=1)
def sentencepiece_like() -> PreTrainedTokenizerFast:
    """A BPE with SentencePiece's ``▁`` for spaces and single digits (as Llama-2's and Mistral's tokenizers).

    Before a number, the space is a token of its own: ``" 10011"`` is ``▁``, ``1``, ``0``, ``0``, ``1``, ``1``.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="first"), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="first")
    alphabet = [chr(c) for c in range(32, 127)] + ["\n"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "<pad>"], initial_alphabet=alphabet)
    tokenizer.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", pad_token="<pad>")


@lru_cache(maxsize=1)
def qwen_like() -> PreTrainedTokenizerFast:
    """A byte-level BPE that splits single digits off the space before them (as Qwen's and Llama-3's tokenizers)."""
    split = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>")
