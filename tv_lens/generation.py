"""Free-running generation with task vectors (or any intervention) written into the prompt.

:func:`generate` continues each prompt greedily or by sampling, with every intervention made by
:func:`~tv_lens.interventions.replace`, :func:`~tv_lens.interventions.add` or
:func:`~tv_lens.interventions.ablate_head` written at its position in the prompt (``pos="answer"``: the
prompt's last token, where a task vector is read and injected). A write lands on the prompt once and not on the
generated tokens; ``every_new_token=True`` also writes it at every generated position. The prompt of row ``i``
is its tokens up to and including ``answer_pos[i]``; anything after it (e.g. the answer tokens of an
:class:`~tv_lens.tasks.ICLBatch`) is ignored.

Guarantees:

- Left-padded, right-padded and unpadded prompts give the same continuations (prompts are aligned to start at
  column 0 first, so no model ever sees a pad token before a real one).
- Sampling is reproducible per prompt: the ``k``-th token of prompt ``i`` uses the uniform draw ``u[i, k]`` of
  ``torch.rand(n_prompts, max_new_tokens, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)``
  (inverse-CDF sampling of the tempered, top-k filtered distribution), so the result does not depend on batch
  size, padding or the KV-cache path.
- Every intervention counts the prompts it wrote to; one that wrote to none raises
  :class:`~tv_lens.errors.InterventionNotAppliedError`.
- The hooks are attached for the call only and removed also when an error is raised; hooks the user attached
  are left alone.

**KV cache.** Where the model's own cache is verified to reproduce its full forward pass (checked once per model
on a short random prompt: :func:`kv_cache_support`), each step runs only the new token: a ``HookedTransformer``
(``past_kv_cache``) and a ``TransformerBridge`` whose HuggingFace cache works through the bridge
(``past_key_values``; with ``transformers`` 5 this holds for some architectures only). Otherwise every step
recomputes the whole prefix, and a position-specific write simply happens again at the same prompt position,
which equals writing it once with a cache. With the cache, all prompts of a batch advance one position per
step from the shortest prompt's end (a longer prompt's next token is its own), so no padding is ever needed.
While hooks of the caller's are attached to the model, ``use_cache="auto"`` recomputes, so that those hooks see
whole sequences as in a plain forward pass.

>>> import torch
>>> from tv_lens.interventions import add
>>> from tv_lens.models import ModelConfig, build_model
>>> model = build_model(ModelConfig(d_vocab=16, n_layers=2, d_model=32, n_heads=4, n_ctx=32))
>>> prompts = torch.randint(0, 16, (3, 8))
>>> out = generate(model, prompts, [add(1, torch.ones(32))], max_new_tokens=4)
>>> out.tokens.shape, out.lengths.tolist(), out.writes
(torch.Size([3, 4]), [4, 4, 4], (3,))
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.errors import InterventionNotAppliedError, ModelNotSupportedError, PositionError, ShapeError, TvLensError
from tv_lens.interventions import Intervention, WritePlan, resolve
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.exclusive import evaluating
from tv_lens.models.running import attached_hooks, forward
from tv_lens.positions import PreparedPrompts, length_sorted_batches, prepare_prompts
from tv_lens.tasks.batch import ICLBatch
from tv_lens.tasks.pool import seeded_generator

__all__ = [
    "Generation",
    "answer_texts",
    "exact_match",
    "first_word_match",
    "generate",
    "kv_cache_support",
    "token_match",
]

CacheKind = Literal["hooked", "hf"]
StopTokens = Literal["eos"] | int | Sequence[int] | None


@dataclass(frozen=True)
class Generation:
    """Output of :func:`generate`.

    Attributes:
        tokens: Generated token ids ``[batch, new]``; row ``i`` holds ``lengths[i]`` tokens (a stop token
            included), then ``-1``. ``new`` is the longest row's length.
        lengths: Number of tokens generated for each prompt.
        stopped: Whether each prompt's generation ended on a stop token (its last token).
        texts: Each prompt's generated text without its stop token, decoded with the tokenizer (``None`` when
            there is none).
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


@dataclass(frozen=True)
class _Sampling:
    """How the next token is chosen: greedy, or sampled with the uniform draws ``[n_prompts, max_new_tokens]``."""

    temperature: float
    top_k: int | None
    uniforms: Tensor | None


class _Pass:
    """What the forward pass under way holds: the prompts of its rows and the position of its column 0."""

    def __init__(self) -> None:
        self.rows = torch.zeros(0, dtype=torch.long)
        self.start = 0


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
            for the tokenizer's EOS token when there is one, an id, a list of ids, or ``None`` to always generate
            ``max_new_tokens`` tokens.
        tokenizer: Tokenizer used for ``"eos"`` and to decode ``texts`` (default: ``model.tokenizer``).
        batch_size: Prompts per batch of generation (``None``: all at once); prompts of similar length are
            batched together. Results do not depend on it.
        use_cache: ``"auto"`` uses the model's KV cache where it is verified to work (:func:`kv_cache_support`)
            and no hooks of the caller's are attached to the model (those then see whole sequences, as in a plain
            forward pass); ``True`` requires the cache, ``False`` recomputes the prefix at every step.

    Returns:
        The generated tokens, their lengths and text, and how many prompts each intervention wrote to.

    Raises:
        ShapeError: Float inputs, a bad option (``max_new_tokens < 1``, ``temperature <= 0`` ...), or
            ``answer_pos`` / ``attention_mask`` given next to an ``ICLBatch``.
        PositionError: ``answer_pos`` outside a prompt, an intervention position after it, or a prompt that
            with ``max_new_tokens`` does not fit the model's context ``n_ctx``.
        ModelNotSupportedError: ``use_cache=True`` on a model whose KV cache is unavailable or unverified.
        InterventionNotAppliedError: An intervention wrote to no prompt.
    """
    adapter = adapt(model)
    if isinstance(interventions, Intervention):
        raise ShapeError("interventions must be a list of interventions; wrap a single one: [intervention].")
    _check_int(max_new_tokens, "max_new_tokens", "tokens generated per prompt")
    if batch_size is not None:
        _check_int(batch_size, "batch_size", "prompts per batch, or None for all at once")
    _check_sampling(do_sample, temperature, top_k, seed, adapter)
    if not isinstance(every_new_token, bool):
        raise ShapeError(f"every_new_token must be True or False, got {every_new_token!r}.")
    tokens, answer_pos, attention_mask = _inputs(prompts, answer_pos, attention_mask)
    prepared = prepare_prompts(adapter, tokens, answer_pos, attention_mask)
    n_prompts = len(prepared)
    lengths = prepared.answer_pos + 1
    _check_context(adapter, lengths, max_new_tokens)
    plans = [resolve(adapter, prepared, intervention) for intervention in interventions]
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    stops = _stop_tokens(stop_tokens, tokenizer, adapter)
    kind = _cache_kind(adapter, use_cache)
    uniforms = None
    if do_sample:
        generator = seeded_generator(seed)
        uniforms = torch.rand(n_prompts, max_new_tokens, generator=generator, dtype=torch.float64)
    sampling = _Sampling(float(temperature), top_k, uniforms)
    written = torch.zeros(len(plans), n_prompts, dtype=torch.bool)
    state = _Pass()
    hooks = [
        (
            plan.hook_name,
            partial(
                _write, plan=plan, state=state, written=written[i], last=prepared.answer_pos, every=every_new_token
            ),
        )
        for i, plan in enumerate(plans)
    ]
    new = torch.full((n_prompts, max_new_tokens), -1, dtype=torch.long)
    counts = torch.zeros(n_prompts, dtype=torch.long)
    stopped = torch.zeros(n_prompts, dtype=torch.bool)
    step = _cached_batch if kind is not None else _recomputed_batch
    with torch.no_grad(), evaluating(adapter.model), attached_hooks(adapter, hooks):
        for index in length_sorted_batches(lengths, batch_size or n_prompts):
            out, count, stop = step(adapter, kind, prepared, lengths, index, max_new_tokens, sampling, stops, state)
            new[index], counts[index], stopped[index] = out, count, stop
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


def _check_int(value: Any, name: str, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShapeError(f"{name} must be an int >= 1 ({meaning}), got {value!r}.")


def _check_sampling(do_sample: bool, temperature: float, top_k: int | None, seed: int, adapter: ModelAdapter) -> None:
    if not isinstance(do_sample, bool):
        raise ShapeError(f"do_sample must be True or False, got {do_sample!r}.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ShapeError(
            f"temperature must be a number > 0 (1.0 samples the model's distribution), got {temperature!r}."
        )
    if top_k is not None:
        _check_int(top_k, "top_k", f"tokens sampled among, at most d_vocab={adapter.d_vocab}; None for all")
    seeded_generator(seed)


def _inputs(
    prompts: Tensor | ICLBatch, answer_pos: Any, attention_mask: Tensor | None
) -> tuple[Tensor, Any, Tensor | None]:
    """Tokens, answer positions and mask of ``prompts`` (an ``ICLBatch`` brings its own)."""
    if isinstance(prompts, ICLBatch):
        if answer_pos is not None or attention_mask is not None:
            raise ShapeError(
                "An ICLBatch brings its own answer_pos and attention_mask; pass the batch alone, or pass its "
                "tokens (batch.inputs) with the positions you want."
            )
        return prompts.inputs, prompts.answer_pos, prompts.attention_mask
    if not isinstance(prompts, Tensor) or prompts.is_floating_point() or prompts.ndim != 2:
        shape = tuple(prompts.shape) if isinstance(prompts, Tensor) else type(prompts).__name__
        raise ShapeError(
            f"generate needs integer tokens Int[batch, pos] or an ICLBatch, got {shape}"
            f"{' (float)' if isinstance(prompts, Tensor) and prompts.is_floating_point() else ''}."
        )
    if answer_pos is None:
        if attention_mask is None:
            answer_pos = prompts.shape[1] - 1
        else:
            mask = torch.as_tensor(attention_mask).cpu().long()
            if mask.shape != prompts.shape:
                raise ShapeError(
                    f"attention_mask must have the shape of the prompts {tuple(prompts.shape)}, got "
                    f"{tuple(mask.shape)}."
                )
            columns = torch.arange(mask.shape[1])
            answer_pos = torch.where(mask.bool(), columns, -1).max(dim=1).values
    return prompts, answer_pos, attention_mask


def _check_context(adapter: ModelAdapter, lengths: Tensor, max_new_tokens: int) -> None:
    """Each prompt and all but its last generated token must fit the model's context."""
    needed = lengths + max_new_tokens - 1
    if int(needed.max()) > adapter.n_ctx:
        row = int(needed.argmax())
        raise PositionError(
            f"Prompt {row} has {int(lengths[row])} tokens, so generating {max_new_tokens} more needs "
            f"{int(needed[row])} positions but the model's context is n_ctx={adapter.n_ctx}. Lower max_new_tokens "
            f"to at most {adapter.n_ctx - int(lengths.max()) + 1} or use shorter prompts."
        )


def _stop_tokens(stop_tokens: StopTokens, tokenizer: Any, adapter: ModelAdapter) -> Tensor:
    if stop_tokens is None:
        return torch.zeros(0, dtype=torch.long)
    if isinstance(stop_tokens, str):
        if stop_tokens != "eos":
            raise ShapeError(f"stop_tokens must be 'eos', a token id, a list of ids or None, got {stop_tokens!r}.")
        eos = getattr(tokenizer, "eos_token_id", None)
        return torch.tensor([eos] if isinstance(eos, int) else [], dtype=torch.long)
    ids = torch.as_tensor(stop_tokens).reshape(-1)
    if (
        ids.is_floating_point()
        or ids.dtype == torch.bool
        or (ids.numel() and (ids.min() < 0 or ids.max() >= adapter.d_vocab))
    ):
        raise ShapeError(
            f"stop_tokens must be token ids in [0, {adapter.d_vocab}) (an int or a list), got {stop_tokens!r}."
        )
    return ids.long()


def _cache_kind(adapter: ModelAdapter, use_cache: bool | str) -> CacheKind | None:
    if use_cache not in (True, False, "auto"):
        raise ShapeError(f"use_cache must be 'auto', True or False, got {use_cache!r}.")
    if use_cache is False or (use_cache == "auto" and _user_hooks(adapter)):
        return None
    kind = kv_cache_support(adapter.model)
    if kind is None and use_cache is True:
        raise ModelNotSupportedError(
            "use_cache=True, but this model has no KV cache that reproduces its full forward pass (a native "
            "TransformerBridge has none; a bridge over HuggingFace may ignore the cache). Use use_cache='auto' "
            "or False to recompute the prefix at every step."
        )
    return kind


def kv_cache_support(model: Any) -> CacheKind | None:
    """The KV cache :func:`generate` can use on ``model``: ``"hooked"``, ``"hf"`` or ``None`` (detected once).

    ``"hooked"``: TransformerLens's own cache (``model(tokens, past_kv_cache=...)``, ``HookedTransformer``).
    ``"hf"``: the HuggingFace cache through a ``TransformerBridge``
    (``model(tokens, return_type="logits_and_cache", past_key_values=...)``). A cache counts only if, on a short
    random prompt, a prefix pass and two one-token steps give the logits of one full pass; some bridges accept
    the cache but never fill it (the attention wrappers of several architectures read a keyword that
    ``transformers`` 5 no longer passes), which this check catches.
    """
    return adapt(model).capability("kv_cache", _detect_cache)


def _user_hooks(adapter: ModelAdapter) -> bool:
    """Whether forward hooks are attached to any of the model's hook points."""
    return any(getattr(point, "fwd_hooks", None) for point in adapter.model.hook_dict.values())


def _detect_cache(adapter: ModelAdapter) -> CacheKind | None:
    if adapter.d_in is not None or adapter.n_ctx < 3:
        return None
    try:
        parameters = inspect.signature(adapter.model.forward).parameters
    except (TypeError, ValueError):
        return None
    arguments: dict[CacheKind, str] = {"hooked": "past_kv_cache", "hf": "past_key_values"}
    kinds = [kind for kind, name in arguments.items() if name in parameters]
    width = min(6, adapter.n_ctx)
    tokens = torch.randint(0, adapter.d_vocab, (2, width), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(adapter.device)
    with torch.no_grad():
        full = forward(adapter, tokens)
        for kind in kinds:
            try:
                runner = _CacheRunner(adapter, kind, 2)
                cached = torch.cat(
                    [runner(tokens[:, : width - 2]), runner(tokens[:, -2:-1]), runner(tokens[:, -1:])], 1
                )
            except (
                ImportError,
                TypeError,
                ValueError,
                RuntimeError,
                AttributeError,
                NotImplementedError,
                _NoCacheError,
            ):
                continue
            eps = torch.finfo(full.dtype).eps if full.is_floating_point() else 0.0
            tolerance = max(1e-4, 16 * eps) * (1 + float(full.abs().max()))
            if cached.shape == full.shape and torch.allclose(cached, full, rtol=1e-3, atol=tolerance):
                return kind
    return None


class _NoCacheError(TvLensError):
    """The model returned no KV cache (caught while detecting whether its cache works)."""


class _CacheRunner:
    """Runs successive chunks of a batch of rows through the model, each step extending its KV cache."""

    def __init__(self, adapter: ModelAdapter, kind: CacheKind, n_rows: int) -> None:
        self.adapter, self.kind, self.n_rows, self.seen = adapter, kind, n_rows, 0
        self.cache: Any = None
        if kind == "hooked":
            self.cache = _tl_cache_class().init_cache(adapter.model.cfg, adapter.device, n_rows)

    def __call__(self, tokens: Tensor) -> Tensor:
        """Logits ``[rows, new, d_vocab]`` of ``tokens`` ``[rows, new]`` following every token run before."""
        model, width = self.adapter.model, tokens.shape[1]
        self.seen += width
        if self.kind == "hooked":
            mask = torch.ones(tokens.shape, dtype=torch.long, device=tokens.device)
            return model(tokens, past_kv_cache=self.cache, attention_mask=mask)
        mask = torch.ones(self.n_rows, self.seen, dtype=torch.long, device=tokens.device)
        extra = {} if self.cache is None else {"past_key_values": self.cache}
        output = model(tokens, return_type="logits_and_cache", attention_mask=mask, **extra)
        if not isinstance(output, tuple) or output[1] is None:
            raise _NoCacheError("the model returned no KV cache")
        logits, self.cache = output
        return logits


def _tl_cache_class() -> Any:
    """TransformerLens's KV-cache class (its module moved between versions)."""
    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache
    except ImportError:
        from transformer_lens.past_key_value_caching import (  # type: ignore[import-not-found,no-redef]
            HookedTransformerKeyValueCache,
        )

        return HookedTransformerKeyValueCache


def _recomputed_batch(
    adapter: ModelAdapter,
    kind: CacheKind | None,
    prepared: PreparedPrompts,
    lengths: Tensor,
    index: Tensor,
    max_new_tokens: int,
    sampling: _Sampling,
    stops: Tensor,
    state: _Pass,
) -> tuple[Tensor, Tensor, Tensor]:
    """Generate for prompts ``index``, running every unfinished prompt's whole sequence at each step."""
    n = len(index)
    own = lengths[index]
    sequences = _sequences(prepared, index, own, max_new_tokens)
    new = torch.full((n, max_new_tokens), -1, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    stopped = torch.zeros(n, dtype=torch.bool)
    for k in range(max_new_tokens):
        active = (~done).nonzero()[:, 0]
        ends = own[active] + k
        state.rows, state.start = index[active], 0
        logits = forward(adapter, sequences[active, : int(ends.max())].to(adapter.device))
        last = logits[torch.arange(len(active), device=logits.device), (ends - 1).to(logits.device)]
        chosen = _choose(last, index[active], torch.full_like(active, k), sampling)
        sequences[active, ends] = chosen
        new[active, k] = chosen
        hit = torch.isin(chosen, stops)
        stopped[active[hit]] = True
        done[active[hit]] = True
        if bool(done.all()):
            break
    counts = (new >= 0).sum(1)
    return new, counts, stopped


def _cached_batch(
    adapter: ModelAdapter,
    kind: CacheKind | None,
    prepared: PreparedPrompts,
    lengths: Tensor,
    index: Tensor,
    max_new_tokens: int,
    sampling: _Sampling,
    stops: Tensor,
    state: _Pass,
) -> tuple[Tensor, Tensor, Tensor]:
    """Generate for prompts ``index`` on the KV cache, all rows advancing one position per step."""
    if kind is None:
        raise ModelNotSupportedError("Generating on a KV cache needs a model whose cache works; use use_cache=False.")
    n = len(index)
    own = lengths[index]
    sequences = _sequences(prepared, index, own, max_new_tokens)
    new = torch.full((n, max_new_tokens), -1, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    stopped = torch.zeros(n, dtype=torch.bool)
    runner = _CacheRunner(adapter, kind, n)
    position = int(own.min()) - 1  # the last position run so far; its logits predict position + 1
    state.rows, state.start = index, 0
    logits = runner(sequences[:, : position + 1].to(adapter.device))[:, -1]
    while True:
        k = position + 1 - own  # index of the token each row predicts now (negative: still in its prompt)
        rows = ((k >= 0) & ~done).nonzero()[:, 0]
        if len(rows):
            chosen = _choose(logits[rows.to(logits.device)], index[rows], k[rows], sampling)
            sequences[rows, position + 1] = chosen
            new[rows, k[rows]] = chosen
            hit = torch.isin(chosen, stops)
            stopped[rows[hit]] = True
            done[rows[hit | (k[rows] == max_new_tokens - 1)]] = True
        if bool(done.all()):
            break
        position += 1
        state.start = position
        logits = runner(sequences[:, position : position + 1].to(adapter.device))[:, -1]
    counts = (new >= 0).sum(1)
    return new, counts, stopped


def _sequences(prepared: PreparedPrompts, index: Tensor, own: Tensor, max_new_tokens: int) -> Tensor:
    """Prompt tokens of rows ``index`` (aligned, cut after each prompt) with room for the new tokens; 0 elsewhere."""
    width = int(own.max()) + max_new_tokens
    sequences = torch.zeros(len(index), width, dtype=torch.long)
    tokens = prepared.inputs[index.to(prepared.inputs.device)].cpu()
    columns = torch.arange(tokens.shape[1])
    kept = torch.where(columns[None, :] < own[:, None], tokens, 0)
    sequences[:, : min(width, tokens.shape[1])] = kept[:, :width]
    return sequences


def _choose(logits: Float[Tensor, "rows d_vocab"], rows: Tensor, k: Tensor, sampling: _Sampling) -> Tensor:
    """Next token of each row: the argmax, or an inverse-CDF sample with the row's uniform draw ``u[row, k]``."""
    if sampling.uniforms is None:
        return logits.argmax(dim=-1).cpu()
    scores = logits.double().cpu() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scores.shape[-1]:
        kept = scores.topk(sampling.top_k, dim=-1).indices
        scores = torch.full_like(scores, float("-inf")).scatter(-1, kept, scores.gather(-1, kept))
    cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)
    threshold = sampling.uniforms[rows, k][:, None] * cdf[:, -1:]
    return (cdf <= threshold).sum(dim=-1).clamp(max=scores.shape[-1] - 1)


def _write(
    activation: Tensor, hook: Any, *, plan: WritePlan, state: _Pass, written: Tensor, last: Tensor, every: bool
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


def _decode(tokenizer: Any, tokens: Tensor, lengths: Tensor) -> tuple[str, ...] | None:
    decode = getattr(tokenizer, "decode", None)
    if decode is None:
        return None
    return tuple(
        str(decode(row[:n].tolist(), skip_special_tokens=False))
        for row, n in zip(tokens, lengths.tolist(), strict=True)
    )


def answer_texts(batch: ICLBatch, tokenizer: Any) -> list[str]:
    """Each prompt's answer as text: its answer tokens (``-1`` padding dropped) decoded with ``tokenizer``.

    For a text pool's batch this is the query's output (with the whitespace the template puts before it).
    """
    if not isinstance(batch, ICLBatch):
        raise ShapeError(f"answer_texts needs an ICLBatch, got {type(batch).__name__}.")
    if getattr(tokenizer, "decode", None) is None:
        raise ShapeError(
            f"answer_texts needs a tokenizer with decode() (e.g. model.tokenizer), got {type(tokenizer).__name__}."
        )
    return [str(tokenizer.decode(row[row >= 0].tolist(), skip_special_tokens=False)) for row in batch.answers.cpu()]


def token_match(generation: Generation, answers: Int[Tensor, "batch n_answer"]) -> Float[Tensor, " batch"]:
    """1.0 where the first generated tokens equal every answer token (``-1`` pads shorter answers), else 0.0.

    Tokens generated after the answer are ignored, so a model that goes on with the next demonstration still
    counts as correct.
    """
    answers = torch.as_tensor(answers).cpu()
    answers = answers[:, None] if answers.ndim == 1 else answers
    if answers.ndim != 2 or answers.shape[0] != len(generation) or answers.is_floating_point():
        raise ShapeError(
            f"answers must be integer token ids [batch={len(generation)}, n_answer] (-1 pads shorter answers), "
            f"got {tuple(answers.shape)}."
        )
    width = answers.shape[1]
    generated = torch.full((len(generation), width), -1, dtype=torch.long)
    n = min(width, generation.tokens.shape[1])
    generated[:, :n] = generation.tokens[:, :n]
    real = answers >= 0
    return ((generated == answers) | ~real).all(dim=1).float()


def exact_match(
    generated: Generation | Sequence[str], answers: Sequence[str | Sequence[str]], *, until: str | None = "\n"
) -> Float[Tensor, " batch"]:
    """1.0 where the generated text, cut at ``until`` and stripped of whitespace, equals a stripped answer.

    Args:
        generated: A :class:`Generation` with texts, or one string per prompt.
        answers: One answer string per prompt, or a list of accepted strings per prompt.
        until: Cut the generated text at its first occurrence (the prompt's separator, after which the model
            goes on with a new demonstration); ``None`` keeps all of it.
    """
    texts, options = _texts_and_answers(generated, answers, until)
    return torch.tensor(
        [float(text.strip() in {a.strip() for a in opts}) for text, opts in zip(texts, options, strict=True)]
    )


def first_word_match(
    generated: Generation | Sequence[str], answers: Sequence[str | Sequence[str]], *, until: str | None = "\n"
) -> Float[Tensor, " batch"]:
    """1.0 where the first word of the generated text (cut at ``until``) equals an answer's first word.

    Words are split on whitespace; an empty generation matches nothing. Arguments as for :func:`exact_match`.
    """
    texts, options = _texts_and_answers(generated, answers, until)
    scores = []
    for text, opts in zip(texts, options, strict=True):
        words = text.split()
        firsts = {a.split()[0] for a in opts if a.split()}
        scores.append(float(bool(words) and words[0] in firsts))
    return torch.tensor(scores)


def _texts_and_answers(
    generated: Generation | Sequence[str], answers: Sequence[str | Sequence[str]], until: str | None
) -> tuple[list[str], list[list[str]]]:
    if isinstance(generated, Generation):
        if generated.texts is None:
            raise ShapeError(
                "This generation has no texts (no tokenizer): pass tokenizer= to generate(), or score tokens with "
                "token_match()."
            )
        texts = list(generated.texts)
    elif isinstance(generated, str) or not all(isinstance(t, str) for t in generated):
        raise ShapeError("generated must be a Generation or a list of strings, one per prompt.")
    else:
        texts = list(generated)
    if isinstance(answers, str) or len(answers) != len(texts):
        raise ShapeError(
            f"answers must hold one answer (a string or a list of accepted strings) per prompt: {len(texts)} "
            f"prompts, got {1 if isinstance(answers, str) else len(answers)} answers."
        )
    options = [[a] if isinstance(a, str) else list(a) for a in answers]
    if not all(isinstance(a, str) for opts in options for a in opts):
        raise ShapeError("answers must be strings (or lists of strings); decode token answers with answer_texts().")
    if until:
        texts = [text.split(until, 1)[0] for text in texts]
    return texts, options
