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


class TiktokenLike:
    """A stand-in for a ``tiktoken.Encoding`` (tiktoken is no dependency): its methods' signatures, a tiny vocabulary.

    ``encode(text, *, allowed_special=..., disallowed_special=...)`` returns ids (longest match first; the special
    tokens only where allowed); ``decode(tokens, errors="replace")`` takes no ``skip_special_tokens`` and, like
    ``decode_single_token_bytes``, raises ``KeyError`` on an id the encoding does not have; ``n_vocab`` counts the
    ids; ``eot_token`` is ``<|endoftext|>``'s id and raises ``KeyError`` when there is none. Ids: the printable ASCII
    characters and newline, then ``words``, then the special tokens.
    """

    def __init__(self, words: tuple[str, ...] = ("->", "hot", "cold"), special: tuple[str, ...] = ("<|endoftext|>",)):
        pieces = [chr(c) for c in range(32, 127)] + ["\n", *words]
        self._ranks = {piece.encode(): i for i, piece in enumerate(pieces)}
        self._special_tokens = {name: len(pieces) + i for i, name in enumerate(special)}
        self._bytes = {i: piece for piece, i in self._ranks.items()}
        self._bytes.update({i: name.encode() for name, i in self._special_tokens.items()})
        self.name = "tiny"

    @property
    def n_vocab(self) -> int:
        return max(self._bytes) + 1

    @property
    def eot_token(self) -> int:
        return self._special_tokens["<|endoftext|>"]

    def encode(self, text: str, *, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        allowed = set(self._special_tokens) if allowed_special == "all" else set(allowed_special)
        data, ids = text.encode(), []
        while data:
            special = next((name for name in allowed if data.startswith(name.encode())), None)
            if special is not None:
                ids.append(self._special_tokens[special])
                data = data[len(special.encode()) :]
                continue
            piece = max((p for p in self._ranks if data.startswith(p)), key=len)
            ids.append(self._ranks[piece])
            data = data[len(piece) :]
        return ids

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self._bytes[token]

    def decode(self, tokens: list[int], errors: str = "replace") -> str:
        return b"".join(self.decode_single_token_bytes(token) for token in tokens).decode("utf-8", errors=errors)
