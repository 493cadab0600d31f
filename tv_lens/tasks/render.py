"""Rendering (x, y) token pairs into prompts, in the two formats Yang et al. compare.

``"arrow"``:  ``x → y x → y ... x_q → y_q``  (separator between x and y; ``answer_pos`` = the query's ``→``)

``"marker"``: ``<m> x y <m> x y ... <m> x_q y_q``  (marker before each pair; ``answer_pos`` = the query's
last x token)

``x`` and ``y`` may be several tokens each (two operands, per-bit answers). Every pair, the query
included, then has the same length ``n_in + 1 + n_out`` and its pre-answer token at offset ``n_in``,
which keeps rendering a handful of tensor operations whatever the number of shots of each prompt.
With ``bos=True`` in the vocabulary every prompt starts with ``<bos>``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tv_lens.errors import TaskError
from tv_lens.tasks.batch import ICLBatch
from tv_lens.tasks.vocabulary import Vocabulary

__all__ = ["PROMPT_FORMATS", "PromptFormat", "render_prompts"]

PromptFormat = Literal["arrow", "marker"]
PROMPT_FORMATS: tuple[str, ...] = get_args(PromptFormat)


def check_format(fmt: str) -> PromptFormat:
    """Return ``fmt`` if it is a known prompt format, else raise a :class:`TaskError` listing them."""
    if fmt not in PROMPT_FORMATS:
        raise TaskError(f"Unknown prompt format {fmt!r}; choose one of {PROMPT_FORMATS}.")
    return fmt  # type: ignore[return-value]


def render_prompts(
    x: Int[Tensor, "batch slot n_in"],
    y: Int[Tensor, "batch slot n_out"],
    n_shots: Int[Tensor, " batch"],
    vocab: Vocabulary,
    fmt: PromptFormat,
    task_ids: Int[Tensor, " batch"],
    task_names: tuple[str, ...],
    demo_noisy: Bool[Tensor, "batch max_shots"],
) -> ICLBatch:
    """Render demonstrations and queries into a right-padded :class:`ICLBatch`.

    Args:
        x: Input tokens of every pair slot; slot ``j < n_shots[i]`` is a demonstration, slot
            ``n_shots[i]`` the query, later slots are ignored. ``slot = max_shots + 1``.
        y: Output (answer) tokens of every slot, aligned with ``x``.
        n_shots: Demonstrations per prompt.
        vocab: Vocabulary giving the special tokens.
        fmt: ``"arrow"`` or ``"marker"``.
        task_ids: Latent task of each prompt.
        task_names: Name of each task id.
        demo_noisy: Which demonstrations carry a corrupted label.

    Returns:
        The batch; its sequence length is that of the longest prompt.
    """
    fmt = check_format(fmt)
    b, n_slot, n_in = x.shape
    n_out = y.shape[-1]
    special = torch.full((b, n_slot, 1), vocab.sep if fmt == "arrow" else vocab.marker, dtype=torch.long)
    parts = [x, special, y] if fmt == "arrow" else [special, x, y]
    pairs = torch.cat(parts, dim=-1).flatten(1)  # [batch, slot * pair_len]
    if vocab.bos_token is not None:
        pairs = torch.cat([torch.full((b, 1), vocab.bos_token, dtype=torch.long), pairs], dim=1)
    prefix, pair_len = int(vocab.bos), n_in + 1 + n_out

    lengths = prefix + (n_shots + 1) * pair_len
    n_pos = int(lengths.max())
    mask = torch.arange(n_pos)[None, :] < lengths[:, None]
    inputs = torch.where(mask, pairs[:, :n_pos], torch.full_like(pairs[:, :n_pos], vocab.pad))

    max_shots = n_slot - 1
    slot = torch.arange(max_shots)[None, :]
    is_demo = slot < n_shots[:, None]
    demo_start = torch.where(is_demo, prefix + slot * pair_len, -1)
    query_start = prefix + n_shots * pair_len
    return ICLBatch(
        inputs=inputs,
        attention_mask=mask.long(),
        answer_pos=query_start + n_in,
        answers=y[torch.arange(b), n_shots],
        task_ids=task_ids,
        task_names=task_names,
        n_shots=n_shots,
        demo_start=demo_start,
        demo_answer_pos=torch.where(is_demo, demo_start + n_in, -1),
        demo_answer_end=torch.where(is_demo, demo_start + pair_len, -1),
        demo_noisy=demo_noisy & is_demo,
        query_start=query_start,
        pad_token=vocab.pad,
    )
