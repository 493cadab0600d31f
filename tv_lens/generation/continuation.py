"""Continue prompts token by token with interventions written into them: :func:`generate`, :class:`Generation`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tv_lens.errors import InterventionNotAppliedError, ShapeError
from tv_lens.generation.kv_cache import cache_kind
from tv_lens.generation.prompts import (
    StopTokens,
    check_context,
    check_count,
    check_sampling,
    prompt_inputs,
    stop_token_ids,
)
from tv_lens.generation.steps import PassState, Sampling, cached_batch, recomputed_batch, write_hook
from tv_lens.interventions import Intervention, resolve
from tv_lens.interventions.specs import intervention_list
from tv_lens.models.adapter import adapt
from tv_lens.models.exclusive import evaluating, hooks_attached
from tv_lens.models.memory import fitting
from tv_lens.models.running import attached_hooks
from tv_lens.positions import length_sorted_batches, prepare_prompts
from tv_lens.tasks.batch import ICLBatch
from tv_lens.tasks.encoding import decode_ids, decoding_tokenizer
from tv_lens.tasks.pool import seeded_generator

__all__ = ["Generation", "generate"]


@dataclass(frozen=True)
class Generation:
    """Output of :func:`generate`.

    Attributes:
        tokens: Generated token ids ``[batch, new]``; row ``i`` holds ``lengths[i]`` tokens (a stop token
            included), then ``-1``. ``new`` is the longest row's length.
        lengths: Number of tokens generated for each prompt.
        stopped: Whether each prompt's generation ended on a stop token (its last token).
        texts: Each prompt's generated text without its stop token, decoded with the tokenizer, special tokens and
            spacing kept as they are (:func:`~tv_lens.tasks.encoding.decode_ids`; ``None`` when there is none).
        prompt_lengths: Tokens of each prompt (``answer_pos + 1``, padding excluded).
        writes: Number of prompts each intervention wrote to, in the order given.
        used_cache: Whether the steps ran on the model's KV cache (else the prefix was recomputed each step).
    """

    tokens: Int[Tensor, "batch new"]
    lengths: Int[Tensor, " batch"]
    stopped: Bool[Tensor, " batch"]
    texts: tuple[str, ...] | None
    prompt_lengths: Int[Tensor, " batch"]
    writes: tuple[int, ...]
    used_cache: bool

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def generate(
    model: Any,
    prompts: Int[Tensor, "batch pos"] | ICLBatch,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 16,
    *,
    answer_pos: int | Sequence[int] | Tensor | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    every_new_token: bool = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_tokens: StopTokens = "eos",
    tokenizer: Any = None,
    batch_size: int | None = None,
    use_cache: bool | Literal["auto"] = "auto",
) -> Generation:
    """Continue each prompt for up to ``max_new_tokens`` tokens with ``interventions`` written into it.

    Args:
        model: A TransformerLens model (token inputs).
        prompts: Tokens ``[batch, pos]``, or an :class:`~tv_lens.tasks.ICLBatch` (its ``answer_pos`` and
            ``attention_mask`` are used; the answer tokens after ``answer_pos`` are not part of the prompt).
        interventions: What to write where (:func:`~tv_lens.interventions.replace`, ``add``, ``ablate_head``);
            positions are in the caller's layout, at or before each prompt's ``answer_pos``.
        max_new_tokens: Most tokens generated per prompt (>= 1).
        answer_pos: Last token of each prompt (one int, or one per prompt); default: each prompt's last real
            token (by ``attention_mask``, else the last column).
        attention_mask: ``[batch, pos]``, 1 on real tokens; needed for left-padded prompts.
        every_new_token: Also write each intervention at every generated position (not only in the prompt).
        do_sample: Sample from the model's distribution instead of taking the most likely token.
        temperature: Divides the logits before sampling (> 0).
        top_k: Sample among the ``top_k`` most likely tokens only (``None``: all).
        seed: Seed of the sampling draws (see the module docstring).
        stop_tokens: Token ids that end a prompt's generation (kept as its last token): ``"eos"`` (default)
            for the tokenizer's EOS token when there is one (a ``tiktoken`` encoding's ``eot_token``), an id, a list
            of ids, or ``None`` to always generate ``max_new_tokens`` tokens.
        tokenizer: Tokenizer used for ``"eos"`` and to decode ``texts`` (default: ``model.tokenizer``): a
            HuggingFace tokenizer, a ``tokenizers.Tokenizer``, or any object with ``decode(ids)``, such as a
            ``tiktoken`` encoding.
        batch_size: Prompts per batch of generation (``None``: all at once; halved after running out of memory,
            see :func:`~tv_lens.models.memory.fitting`); prompts of similar length are batched together. Results do
            not depend on it.
        use_cache: ``"auto"`` uses the model's KV cache where it is verified to work (:func:`kv_cache_support`)
            and no hooks of the caller's are attached to the model (those then see whole sequences, as in a plain
            forward pass on each prompt alone: passes of prompts of one length, unpadded); ``True`` requires the
            cache, ``False`` recomputes the prefix at every step.

    Returns:
        The generated tokens, their lengths and text, and how many prompts each intervention wrote to.

    Raises:
        ShapeError: Float inputs, a bad option (``max_new_tokens < 1``, ``temperature <= 0`` ...), or
            ``answer_pos`` / ``attention_mask`` given next to an ``ICLBatch``.
        PositionError: ``answer_pos`` outside a prompt, an intervention position after it, or a prompt that
            with ``max_new_tokens`` does not fit the model's context ``n_ctx``.
        ModelNotSupportedError: ``use_cache=True`` on a model whose KV cache is unavailable or unverified.
        TaskError: A ``tokenizer`` without ``decode`` (e.g. a model's name).
        InterventionNotAppliedError: An intervention wrote to no prompt.
    """
    adapter = adapt(model)
    interventions = intervention_list(interventions)
    check_count(max_new_tokens, "max_new_tokens", "tokens generated per prompt")
    if batch_size is not None:
        check_count(batch_size, "batch_size", "prompts per batch, or None for all at once")
    check_sampling(do_sample, temperature, top_k, seed, adapter)
    if not isinstance(every_new_token, bool):
        raise ShapeError(f"every_new_token must be True or False, got {every_new_token!r}.")
    tokens, answer_pos, attention_mask = prompt_inputs(prompts, answer_pos, attention_mask)
    prepared = prepare_prompts(adapter, tokens, answer_pos, attention_mask)
    n_prompts = len(prepared)
    lengths = prepared.answer_pos + 1
    check_context(adapter, lengths, max_new_tokens)
    knockouts = [str(i) for i in interventions if isinstance(i, Intervention) and i.kind == "knockout"]
    if knockouts:
        raise ShapeError(
            f"generate() writes residual and head interventions, not attention knockouts ({knockouts[0]}); run a "
            "knockout on the prompts with run_with_interventions."
        )
    plans = [resolve(adapter, prepared, intervention) for intervention in interventions]
    tokenizer = decoding_tokenizer(tokenizer, model)
    stops = stop_token_ids(stop_tokens, tokenizer, adapter)
    kind = cache_kind(adapter, use_cache)
    # Recomputing with hooks of the caller's attached: those see each prompt's own sequence, never padding.
    unpadded = kind is None and hooks_attached(adapter.model)
    uniforms = None
    if do_sample:
        generator = seeded_generator(seed)
        uniforms = torch.rand(n_prompts, max_new_tokens, generator=generator, dtype=torch.float64)
    sampling = Sampling(float(temperature), top_k, uniforms)
    written = torch.zeros(len(plans), n_prompts, dtype=torch.bool)
    state = PassState(unpadded)
    hooks = [
        (
            plan.hook_name,
            partial(
                write_hook, plan=plan, state=state, written=written[i], last=prepared.answer_pos, every=every_new_token
            ),
        )
        for i, plan in enumerate(plans)
    ]
    new = torch.full((n_prompts, max_new_tokens), -1, dtype=torch.long)
    counts = torch.zeros(n_prompts, dtype=torch.long)
    stopped = torch.zeros(n_prompts, dtype=torch.bool)
    step = cached_batch if kind is not None else recomputed_batch

    def every_batch(size: int) -> None:  # a retry after running out of memory redoes every prompt
        for index in length_sorted_batches(lengths, size):
            out, count, stop = step(adapter, kind, prepared, lengths, index, max_new_tokens, sampling, stops, state)
            new[index], counts[index], stopped[index] = out, count, stop

    with torch.no_grad(), evaluating(adapter.model), attached_hooks(adapter, hooks):
        fitting(every_batch, batch_size or n_prompts, "batch_size")
    for plan, row_writes in zip(plans, written, strict=True):
        if not bool(row_writes.any()):
            raise InterventionNotAppliedError(
                f"{plan.intervention} wrote to no prompt: hook {plan.hook_name!r} never ran on a selected prompt "
                "position. Check its rows= selection and that the model calls this hook point in its forward pass."
            )
    width = int(counts.max())
    texts = _decode(tokenizer, new, counts - stopped.long())
    return Generation(
        tokens=new[:, :width],
        lengths=counts,
        stopped=stopped,
        texts=texts,
        prompt_lengths=lengths,
        writes=tuple(int(w.sum()) for w in written),
        used_cache=kind is not None,
    )


def _decode(tokenizer: Any, tokens: Tensor, lengths: Tensor) -> tuple[str, ...] | None:
    """Each row's first ``lengths`` tokens as text (:func:`~tv_lens.tasks.encoding.decode_ids`); ``None``: no decode."""
    if tokenizer is None:
        return None
    return tuple(decode_ids(tokenizer, row[:n].tolist()) for row, n in zip(tokens, lengths.tolist(), strict=True))
