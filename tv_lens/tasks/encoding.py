"""Tokenizing text prompts with a model's tokenizer, keeping the character span of every token.

Text tasks render whole prompts as strings and tokenize them in one go, so a model sees the tokens it
would see in use; the character span of each token then tells where every demonstration, answer and
query starts. :class:`TextEncoder` reads spans from either kind of tokenizer a TransformerLens user has:
a HuggingFace fast tokenizer (``model.tokenizer``, ``PreTrainedTokenizerFast``) or a ``tokenizers.Tokenizer``.
Special tokens are never added by encoding; a BOS token, when asked for, is prepended by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tv_lens.errors import TaskError

__all__ = ["Encoded", "TextEncoder", "decode_ids", "decoding_tokenizer", "has_token_id"]

_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>")


@dataclass(frozen=True, eq=False)
class Encoded:
    """Token ids of one string and the character span ``[starts[t], ends[t])`` of each token."""

    ids: list[int]
    starts: np.ndarray
    ends: np.ndarray

    def token_at(self, char: int) -> int:
        """Index of the first token whose span ends after ``char`` (``len(ids)`` if none does)."""
        return int(np.searchsorted(self.ends, char, side="right"))


def _is_raw(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` is a ``tokenizers.Tokenizer`` (not a HuggingFace ``transformers`` tokenizer)."""
    return hasattr(tokenizer, "encode_batch") and hasattr(tokenizer, "get_vocab_size")


def _is_transformers(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` is a HuggingFace ``transformers`` tokenizer (callable, with ``convert_ids_to_tokens``)."""
    return callable(tokenizer) and hasattr(tokenizer, "convert_ids_to_tokens")


def decode_ids(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of token ids, special tokens and spacing kept as they are.

    A ``tokenizers.Tokenizer`` skips special tokens unless told not to (``[PAD]`` would decode to ``""``), and a
    ``transformers`` tokenizer may clean up the spaces before punctuation (``" ."`` to ``"."``); both are told
    not to. Any other object (a ``tiktoken`` encoding, whose ``decode`` takes no such keywords) is asked for
    ``tokenizer.decode(ids)`` of the ids it has (:func:`has_token_id`): an id past its vocabulary (padding of a
    model's ``d_vocab``) decodes to nothing, as both others decode it, where ``tiktoken`` would raise ``KeyError``.
    """
    if _is_raw(tokenizer):
        return str(tokenizer.decode(list(ids), skip_special_tokens=False))
    if _is_transformers(tokenizer):
        return str(tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return str(tokenizer.decode([token for token in ids if has_token_id(tokenizer, token)]))


def decoding_tokenizer(tokenizer: Any, model: Any) -> Any:
    """``tokenizer``, else ``model.tokenizer``: what decodes token ids to text (``None``: neither decodes).

    Raises:
        TaskError: ``tokenizer`` is given but has no ``decode`` (e.g. a model's name), which would leave the texts
            out without a word.
    """
    if tokenizer is None:
        found = getattr(model, "tokenizer", None)
        return found if callable(getattr(found, "decode", None)) else None
    if not callable(getattr(tokenizer, "decode", None)):
        raise TaskError(
            f"tokenizer must decode token ids (a HuggingFace tokenizer, a tokenizers.Tokenizer or a tiktoken "
            f"encoding: an object with decode(ids)), got {type(tokenizer).__name__} {tokenizer!r:.60}; load the "
            "tokenizer itself (e.g. AutoTokenizer.from_pretrained(name)), or pass None to use model.tokenizer."
        )
    return tokenizer


def has_token_id(tokenizer: Any, token: int) -> bool:
    """Whether ``token`` is an id of ``tokenizer``.

    A model's ``d_vocab`` may be padded past its tokenizer's ids (GPT-NeoX and Pythia round it up to a multiple of
    128): such an id decodes to ``""`` (HuggingFace) or fails (``tiktoken``). A ``tokenizers.Tokenizer`` or a
    ``transformers`` tokenizer is asked for the id's token, an object with ``decode_single_token_bytes`` (a
    ``tiktoken`` encoding, which has gaps between its ids) for its bytes; any other object has every id below its
    ``n_vocab``, or every id when it has none.
    """
    if _is_raw(tokenizer):
        return tokenizer.id_to_token(token) is not None
    single = getattr(tokenizer, "decode_single_token_bytes", None)
    try:
        if _is_transformers(tokenizer):
            return tokenizer.convert_ids_to_tokens(token) is not None
        if callable(single):
            single(token)
            return True
    except (IndexError, KeyError, OverflowError):  # an id past a slow tokenizer's or tiktoken's ids
        return False
    size = getattr(tokenizer, "n_vocab", None)
    return token < size if isinstance(size, int) else True


class TextEncoder:
    """Batch tokenization with character offsets, for HuggingFace fast tokenizers and ``tokenizers.Tokenizer``.

    Attributes:
        tokenizer: The wrapped tokenizer.
        vocab_size: Number of token ids (a model needs ``d_vocab >= vocab_size``).
        unk_id: Id of the unknown token, or ``None`` if the tokenizer has none.
        pad_id: Id used to pad prompts (the tokenizer's pad, else EOS, else 0; always masked out).
        bos_id: Id of the beginning-of-sequence token, or ``None``.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._raw = _is_raw(tokenizer)
        if self._raw:
            model = getattr(tokenizer, "model", None)
            unk = getattr(model, "unk_token", None)
            self.unk_id: int | None = tokenizer.token_to_id(unk) if unk else None
            padding = tokenizer.padding or {}
            pad_ids = [tokenizer.token_to_id(name) for name in _PAD_NAMES]
            self.pad_id = padding.get("pad_id", next((i for i in pad_ids if i is not None), 0))
            self.bos_id: int | None = None
            self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        elif _is_transformers(tokenizer):
            if not getattr(tokenizer, "is_fast", False):
                raise TaskError(
                    f"Text tasks need a fast tokenizer (character offsets); got {type(tokenizer).__name__}. Load "
                    "it with use_fast=True, or wrap a tokenizers.Tokenizer in "
                    "PreTrainedTokenizerFast(tokenizer_object=...)."
                )
            self.unk_id = tokenizer.unk_token_id
            pad = tokenizer.pad_token_id
            self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
            self.bos_id = tokenizer.bos_token_id
            self.vocab_size = len(tokenizer)
        else:
            raise TaskError(
                f"Cannot tokenize with a {type(tokenizer).__name__}: pass a HuggingFace fast tokenizer (e.g. "
                "model.tokenizer) or a tokenizers.Tokenizer."
            )

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids, special tokens and spacing kept as they are (:func:`decode_ids`)."""
        return decode_ids(self.tokenizer, ids)

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Tokenize each string without special tokens."""
        if not texts:
            return []
        if self._raw:
            pieces = [(e.ids, e.offsets) for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]
        else:
            out = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
            pieces = list(zip(out["input_ids"], out["offset_mapping"], strict=True))
        encoded = []
        for ids, offsets in pieces:
            spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
            encoded.append(
                Encoded(list(ids), spans[:, 0], np.maximum.accumulate(spans[:, 1]) if len(spans) else spans[:, 1])
            )
        return encoded
