"""The small token vocabulary of the synthetic token tasks.

Token ids ``0 .. n_values - 1`` are the numbers themselves (token ``k`` means the value ``k``; bit
answers use the tokens ``0`` and ``1``). The special tokens follow, always in the same order, so that
both prompt formats (and every task family built on the same ``n_values``) share one id layout and one
model can be trained on all of them::

    0 .. n_values-1   numbers
    n_values          "→"    separator between x and y      (format "arrow")
    n_values + 1      "<m>"  marker before each pair         (format "marker")
    n_values + 2      "<pad>" right padding (attention_mask 0)
    n_values + 3      "<bos>" only when ``bos=True``

A model needs ``size`` embedding rows (``d_vocab >= size``).

>>> vocab = Vocabulary(n_values=8)
>>> vocab.size, vocab.sep, vocab.marker, vocab.pad
(11, 8, 9, 10)
>>> vocab.decode([3, 8, 4])
'3 → 4'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tv_lens.checks import is_int
from tv_lens.errors import TaskError

__all__ = ["Vocabulary"]


@dataclass(frozen=True)
class Vocabulary:
    """Number tokens ``0 .. n_values - 1`` followed by the special tokens.

    Attributes:
        n_values: How many number tokens the vocabulary has.
        bos: Whether a beginning-of-sequence token exists (and prompts start with it).
    """

    n_values: int
    bos: bool = False

    def __post_init__(self) -> None:
        if not is_int(self.n_values) or self.n_values < 2:
            raise TaskError(
                f"Vocabulary needs at least 2 number tokens, got n_values={self.n_values!r}; "
                "pass an int >= 2, e.g. Vocabulary(n_values=16)."
            )

    @property
    def sep(self) -> int:
        """Id of the separator ``→`` between a pair's x and y (format ``"arrow"``)."""
        return self.n_values

    @property
    def marker(self) -> int:
        """Id of the pair marker ``<m>`` written before every pair (format ``"marker"``)."""
        return self.n_values + 1

    @property
    def pad(self) -> int:
        """Id of the padding token (right padding; ``attention_mask`` is 0 there)."""
        return self.n_values + 2

    @property
    def bos_token(self) -> int | None:
        """Id of the beginning-of-sequence token, or ``None`` when ``bos=False``."""
        return self.n_values + 3 if self.bos else None

    @property
    def size(self) -> int:
        """Number of token ids; a model needs ``d_vocab >= size``."""
        return self.n_values + 3 + int(self.bos)

    def token_str(self, token: int) -> str:
        """Readable form of one token id (``"7"``, ``"→"``, ``"<m>"``, ``"<pad>"``, ``"<bos>"``).

        Raises:
            TaskError: If ``token`` is outside ``0 .. size - 1``.
        """
        if 0 <= token < self.n_values:
            return str(token)
        specials = {self.sep: "→", self.marker: "<m>", self.pad: "<pad>"}
        if self.bos_token is not None:
            specials[self.bos_token] = "<bos>"
        if token not in specials:
            raise TaskError(f"Token id {token} is outside this vocabulary (ids 0 .. {self.size - 1}).")
        return specials[token]

    def decode(self, tokens: Iterable[int]) -> str:
        """Readable, space-separated form of a token sequence (padding included, if given)."""
        return " ".join(self.token_str(int(t)) for t in tokens)
