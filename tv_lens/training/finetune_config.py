"""Settings of layer-restricted finetuning, a part of :class:`~tv_lens.training.TrainConfig`.

Which blocks train (:class:`FinetuneConfig`), in full or through low-rank adapters (:class:`LoRAConfig`).

>>> FinetuneConfig(blocks="first:2", lora=LoRAConfig(rank=4, targets=("W_Q", "W_V"))).lora.alpha
8.0
"""

from __future__ import annotations

from dataclasses import dataclass

from tv_lens.checks import is_finite_number, is_int, is_seed
from tv_lens.training.config_checks import check

__all__ = ["LORA_TARGETS", "LORA_WEIGHTS", "FinetuneConfig", "LoRAConfig"]

#: Weight matrices LoRA can adapt; ``W_gate`` exists in gated MLPs only (Llama, Qwen, Gemma).
LORA_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out")
#: The default targets: the matrices every block has (add ``"W_gate"`` to adapt a gated MLP's gate too).
LORA_TARGETS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters ``W + (alpha / rank) · A B`` on the chosen blocks' weight matrices.

    Attributes:
        rank: Rank of each update.
        alpha: Scale numerator (the update is multiplied by ``alpha / rank``).
        dropout: Probability of dropping an input feature of the update (see :mod:`tv_lens.training.lora`).
        targets: Weight matrices to adapt, among ``W_Q, W_K, W_V, W_O, W_in, W_out`` and, in a gated MLP,
            ``W_gate`` (default: all but ``W_gate``).
        seed: Seed of the ``A`` initialisation and of the dropout masks.
    """

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS
    seed: int = 0

    def __post_init__(self) -> None:
        check(is_int(self.rank) and self.rank >= 1, f"LoRA rank must be an int >= 1, got {self.rank!r}.")
        check(is_finite_number(self.alpha) and self.alpha > 0, f"LoRA alpha must be a number > 0, got {self.alpha!r}.")
        check(
            is_finite_number(self.dropout) and 0.0 <= self.dropout < 1.0,
            f"LoRA dropout must be a number in [0, 1), got {self.dropout!r}.",
        )
        check(is_seed(self.seed), f"LoRA seed must be an int in [0, 2**64), got {self.seed!r}; e.g. seed=0.")
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        check(
            isinstance(self.targets, tuple),
            f"LoRA targets must be a tuple of weight names such as ('W_Q', 'W_V'), got {self.targets!r}; "
            "wrap a single one: ('W_Q',).",
        )
        unknown = [t for t in self.targets if not isinstance(t, str) or t not in LORA_WEIGHTS]
        check(
            bool(self.targets) and not unknown,
            f"Unknown LoRA target(s) {unknown or list(self.targets)}; choose among {list(LORA_WEIGHTS)}.",
        )
        check(
            len(set(self.targets)) == len(self.targets),
            f"LoRA targets must be distinct (one adapter per weight), got {list(self.targets)}; name each weight once.",
        )


@dataclass(frozen=True)
class FinetuneConfig:
    """Train only some blocks, fully or through LoRA adapters; everything else stays frozen.

    Attributes:
        blocks: Block indices, or ``"first:k"`` / ``"last:k"`` / ``"all"``.
        lora: LoRA settings; ``None`` trains every parameter of the chosen blocks.
    """

    blocks: tuple[int, ...] | str
    lora: LoRAConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        if isinstance(self.blocks, str):
            head, _, count = self.blocks.partition(":")
            valid = self.blocks == "all" or (head in ("first", "last") and count.isdigit() and int(count) >= 1)
        else:
            valid = isinstance(self.blocks, tuple) and bool(self.blocks) and all(is_int(b) for b in self.blocks)
        check(
            valid,
            f"FinetuneConfig.blocks must be block indices such as (0, 1), or 'first:k', 'last:k' or 'all'; "
            f"got {self.blocks!r}.",
        )
        check(
            self.lora is None or isinstance(self.lora, LoRAConfig),
            f"FinetuneConfig.lora must be a LoRAConfig or None (train the blocks' weights), got {self.lora!r:.80}.",
        )
