"""The token-by-token loops of generation (recomputing the prefix, or on the KV cache) and the write hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tv_lens.errors import ModelNotSupportedError
from tv_lens.generation.kv_cache import CacheKind, CacheRunner
from tv_lens.interventions import WritePlan
from tv_lens.models.adapter import ModelAdapter
from tv_lens.models.running import forward
from tv_lens.positions import PreparedPrompts

__all__ = ["BatchStep", "PassState", "Sampling", "cached_batch", "recomputed_batch", "write_hook"]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy, or sampled with the uniform draws ``[n_prompts, max_new_tokens]``."""

    temperature: float
    top_k: int | None
    uniforms: Tensor | None


class PassState:
    """What the forward pass under way holds: the prompts of its rows and the position of its column 0.

    ``unpadded``: recompute each step in passes of prompts of one length, so that no row of a pass is padded (hooks
    of the caller's on the model, which may index positions, then see each prompt's own sequence).
    """

    def __init__(self, unpadded: bool = False) -> None:
        self.rows = torch.zeros(0, dtype=torch.long)
        self.start = 0
        self.unpadded = unpadded


BatchStep = Callable[
    [ModelAdapter, "CacheKind | None", PreparedPrompts, Tensor, Tensor, int, Sampling, Tensor, PassState],
    tuple[Tensor, Tensor, Tensor],
]
"""``step(adapter, kind, prepared, lengths, index, max_new_tokens, sampling, stops, state)``: generate for the
prompts ``index``; returns their new tokens ``[n, max_new_tokens]`` (-1 after the last), counts and stop flags."""


class _Batch:
    """The prompts ``index`` under generation: their tokens with room for the new ones, and what each produced."""

    def __init__(self, prepared: PreparedPrompts, lengths: Tensor, index: Tensor, max_new_tokens: int) -> None:
        n = len(index)
        self.index = index
        self.own = lengths[index]
        self.max_new_tokens = max_new_tokens
        self.sequences = _sequences(prepared, index, self.own, max_new_tokens)
        self.new = torch.full((n, max_new_tokens), -1, dtype=torch.long)
        self.done = torch.zeros(n, dtype=torch.bool)
        self.stopped = torch.zeros(n, dtype=torch.bool)

    def record(self, rows: Tensor, columns: Tensor | int, k: Tensor, chosen: Tensor, stops: Tensor) -> None:
        """Write ``chosen`` (new token ``k`` of ``rows``) at ``columns``; a row ends at a stop or its last new token."""
        self.sequences[rows, columns] = chosen
        self.new[rows, k] = chosen
        hit = torch.isin(chosen, stops)
        self.stopped[rows[hit]] = True
        self.done[rows[hit | (k == self.max_new_tokens - 1)]] = True

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        """The new tokens (-1 after each row's last), how many each row has, and which rows stopped."""
        return self.new, (self.new >= 0).sum(1), self.stopped


def _batch_step(
    loop: Callable[[_Batch, ModelAdapter, CacheKind | None, Sampling, Tensor, PassState], None],
) -> BatchStep:
    """The :data:`BatchStep` that runs ``loop`` on a fresh :class:`_Batch` of the prompts ``index``."""

    def step(
        adapter: ModelAdapter,
        kind: CacheKind | None,
        prepared: PreparedPrompts,
        lengths: Tensor,
        index: Tensor,
        max_new_tokens: int,
        sampling: Sampling,
        stops: Tensor,
        state: PassState,
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch = _Batch(prepared, lengths, index, max_new_tokens)
        loop(batch, adapter, kind, sampling, stops, state)
        return batch.result()

    step.__name__, step.__doc__ = loop.__name__, loop.__doc__
    return step


@_batch_step
def recomputed_batch(
    batch: _Batch, adapter: ModelAdapter, kind: CacheKind | None, sampling: Sampling, stops: Tensor, state: PassState
) -> None:
    """Generate for prompts ``index``, running every unfinished prompt's whole sequence at each step."""
    index, own = batch.index, batch.own
    for k in range(batch.max_new_tokens):
        active = (~batch.done).nonzero()[:, 0]
        lengths = own[active]
        passes = [active[lengths == n] for n in lengths.unique()] if state.unpadded else [active]
        for rows in passes:
            ends = own[rows] + k
            state.rows, state.start = index[rows], 0
            logits = forward(adapter, batch.sequences[rows, : int(ends.max())].to(adapter.device))
            last = logits[torch.arange(len(rows), device=logits.device), (ends - 1).to(logits.device)]
            steps = torch.full_like(rows, k)
            batch.record(rows, ends, steps, _choose(last, index[rows], steps, sampling), stops)
        if bool(batch.done.all()):
            break


@_batch_step
def cached_batch(
    batch: _Batch, adapter: ModelAdapter, kind: CacheKind | None, sampling: Sampling, stops: Tensor, state: PassState
) -> None:
    """Generate for prompts ``index`` on the KV cache, all rows advancing one position per step."""
    if kind is None:
        raise ModelNotSupportedError("Generating on a KV cache needs a model whose cache works; use use_cache=False.")
    index, own = batch.index, batch.own
    runner = CacheRunner(adapter, kind, len(index))
    position = int(own.min()) - 1  # the last position run so far; its logits predict position + 1
    state.rows, state.start = index, 0
    logits = runner(batch.sequences[:, : position + 1].to(adapter.device))[:, -1]
    while True:
        k = position + 1 - own  # index of the token each row predicts now (negative: still in its prompt)
        rows = ((k >= 0) & ~batch.done).nonzero()[:, 0]
        if len(rows):
            chosen = _choose(logits[rows.to(logits.device)], index[rows], k[rows], sampling)
            batch.record(rows, position + 1, k[rows], chosen, stops)
        if bool(batch.done.all()):
            break
        position += 1
        state.start = position
        logits = runner(batch.sequences[:, position : position + 1].to(adapter.device))[:, -1]


def _sequences(prepared: PreparedPrompts, index: Tensor, own: Tensor, max_new_tokens: int) -> Tensor:
    """Prompt tokens of rows ``index`` (aligned, cut after each prompt) with room for the new tokens; 0 elsewhere."""
    width = int(own.max()) + max_new_tokens
    sequences = torch.zeros(len(index), width, dtype=torch.long)
    tokens = prepared.inputs[index.to(prepared.inputs.device)].cpu()
    columns = torch.arange(tokens.shape[1])
    kept = torch.where(columns[None, :] < own[:, None], tokens, 0)
    sequences[:, : min(width, tokens.shape[1])] = kept[:, :width]
    return sequences


def _choose(logits: Float[Tensor, "rows d_vocab"], rows: Tensor, k: Tensor, sampling: Sampling) -> Tensor:
    """Next token of each row: the argmax, or an inverse-CDF sample with the row's uniform draw ``u[row, k]``."""
    if sampling.uniforms is None:
        return logits.argmax(dim=-1).cpu()
    scores = logits.double().cpu()
    # Shifted to a maximum of 0 before dividing: a tiny temperature then sends the others to -inf (the greedy token),
    # where dividing first overflows every score to inf and the softmax to NaN.
    scores = (scores - scores.max(dim=-1, keepdim=True).values) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scores.shape[-1]:
        kept = scores.topk(sampling.top_k, dim=-1).indices
        scores = torch.full_like(scores, float("-inf")).scatter(-1, kept, scores.gather(-1, kept))
    cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)
    threshold = sampling.uniforms[rows, k][:, None] * cdf[:, -1:]
    return (cdf <= threshold).sum(dim=-1).clamp(max=scores.shape[-1] - 1)


def write_hook(
    activation: Tensor, hook: Any, *, plan: WritePlan, state: PassState, written: Tensor, last: Tensor, every: bool
) -> Tensor:
    """Hook body: apply ``plan`` at the prompt positions (and generated ones, if ``every``) this pass holds."""
    rows = state.rows
    columns = state.start + torch.arange(activation.shape[1])
    ends = last[rows][:, None]
    selected = plan.rows[rows][:, None]
    if plan.positions is None:  # every prompt position
        prompt = (columns[None, :] <= ends) & selected
    else:
        prompt = (columns[None, :] == plan.positions[rows][:, None]) & selected
    written[rows] |= prompt.any(dim=1)
    mask = prompt | ((columns[None, :] > ends) & selected) if every else prompt
    if not bool(mask.any()):
        return activation
    device = activation.device
    values = plan.values.to(device, activation.dtype)
    values = values if values.ndim == 1 else values[rows.to(device)][:, None]
    where = mask.to(device)[..., None]
    if plan.intervention.kind == "ablate_head":
        head = int(plan.intervention.head)  # type: ignore[arg-type]
        ablated = activation.clone()
        ablated[:, :, head] = torch.where(where, values, activation[:, :, head])
        return ablated
    if plan.intervention.kind == "add":
        return torch.where(where, activation + values, activation)
    return torch.where(where, values, activation)
