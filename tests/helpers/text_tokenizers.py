"""Tokenizers trained locally (``tokenizers`` package) on text our tasks generate: no downloads.

Not a conftest.py: tests/conftest.py already owns the module name ``conftest`` that test files import.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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
