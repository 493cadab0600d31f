"""Residual-stream representations at each prompt's answer position, for many layers in one pass.

Task decodability, task vectors and geometry all read the residual stream at the token right before the
answer. :func:`collect` does that for every requested layer in ONE forward pass: a hook per layer keeps
only the answer-position row of each prompt (so memory grows with prompts × layers × d_model, not with
sequence length), the pass stops after the last block needed, prompts are batched by length (padding
columns past a batch's last answer position are never computed) and left- or right-padded batches give the
same rows. Identical prompts are run once and share their row, and the batches run do not depend on the
order of the prompts, so reordering them reorders the rows bit for bit.

>>> from tv_lens.models import ModelConfig, build_model
>>> model = build_model(ModelConfig(d_vocab=16, n_layers=2, d_model=32, n_heads=4, n_ctx=32))
>>> reps = collect(model, torch.randint(0, 16, (6, 10)), answer_pos=[9, 9, 8, 7, 9, 5], progress=False)
>>> reps.activations.shape, reps.layers
(torch.Size([3, 6, 32]), (-1, 0, 1))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import ActivationCache

from tv_lens.errors import HookNotFoundError, NonFiniteError, ShapeError
from tv_lens.models.adapter import EMBED_LAYER, RESIDUAL_SITES, ModelAdapter, adapt
from tv_lens.models.running import HookFn, read_batches
from tv_lens.positions import Inputs, PreparedPrompts, as_positions, check_batch_size, prepare_prompts
from tv_lens.results.axes import layer_label

__all__ = ["Representations", "check_finite_rows", "check_residual_site", "collect", "prompt_ids"]


@dataclass(frozen=True)
class Representations:
    """Residual-stream rows at answer positions.

    Attributes:
        activations: ``[layer, prompt, d_model]``.
        layers: TransformerLens block index of each entry; ``-1`` is the embedding output
            (``blocks.0.hook_resid_pre``).
        site: Which residual site was read (``"resid_post"``, ``"resid_pre"``, ...).
        task_ids: Latent task of each prompt ``[prompt]``, when known.
        prompt_ids: An id per prompt, shared by exactly the identical prompts (:func:`prompt_ids`), when known
            (:func:`collect` sets it; rows read from a cache do not have it).
    """

    activations: Float[Tensor, "layer prompt d_model"]
    layers: tuple[int, ...]
    site: str = "resid_post"
    task_ids: Int[Tensor, " prompt"] | None = None
    prompt_ids: Int[Tensor, " prompt"] | None = None

    def __post_init__(self) -> None:
        if self.activations.ndim != 3 or self.activations.shape[0] != len(self.layers):
            raise ShapeError(
                f"activations must be [layer={len(self.layers)}, prompt, d_model], got {tuple(self.activations.shape)}."
            )
        for name in ("task_ids", "prompt_ids"):
            ids = getattr(self, name)
            if ids is not None and ids.shape != (self.n_prompts,):
                raise ShapeError(f"{name} must be [prompt={self.n_prompts}], got {tuple(ids.shape)}.")

    @property
    def n_prompts(self) -> int:
        """Number of prompts."""
        return int(self.activations.shape[1])

    @property
    def layer_labels(self) -> tuple[str, ...]:
        """Axis labels: ``"embed"`` for the embedding output, else ``"L{block} {site}"``."""
        return tuple(layer_label(layer, self.site) for layer in self.layers)

    def at(self, layer: int) -> Float[Tensor, "prompt d_model"]:
        """Rows of one layer (a TransformerLens block index, or -1 for the embedding output)."""
        if layer not in self.layers:
            raise HookNotFoundError(f"Layer {layer} was not collected; collected layers are {self.layers}.")
        return self.activations[self.layers.index(layer)]

    @classmethod
    def from_cache(
        cls,
        cache: ActivationCache | Mapping[str, Tensor],
        answer_pos: int | Sequence[int] | Tensor,
        layers: Sequence[int] | None = None,
        site: str = "resid_post",
        task_ids: Int[Tensor, " prompt"] | None = None,
    ) -> Representations:
        """Rows at ``answer_pos`` from a TransformerLens ``ActivationCache`` (or any name → tensor map).

        ``layers=None`` takes every block the cache holds for ``site`` (and the embedding output for
        ``resid_post`` when ``blocks.0.hook_resid_pre`` is cached). Positions index the cached tensors as
        they are (left padding included).
        """
        check_residual_site(site)
        template = RESIDUAL_SITES[site]
        embed_name = RESIDUAL_SITES["resid_pre"].format(layer=0)
        if layers is None:
            blocks: list[int] = []
            while template.format(layer=len(blocks)) in cache:
                blocks.append(len(blocks))
            has_embed = site == "resid_post" and embed_name in cache
            layers = ([EMBED_LAYER] if has_embed else []) + blocks
        names = [embed_name if layer == EMBED_LAYER else template.format(layer=layer) for layer in layers]
        missing = [name for name in names if name not in cache]
        if missing or not names:
            raise HookNotFoundError(
                f"The cache lacks {missing or 'every ' + site + ' hook'}; run the model with "
                f"`run_with_cache(tokens, names_filter=lambda name: name.endswith('{site}'))` or pass the "
                "layers it holds."
            )
        first = cache[names[0]]
        positions = as_positions(answer_pos, int(first.shape[0]), "answer_pos")
        if int(positions.min()) < 0 or int(positions.max()) >= first.shape[1]:
            raise ShapeError(f"answer_pos must lie in [0, {first.shape[1]}), the cached sequence length.")
        rows = torch.arange(len(positions))
        stacked = torch.stack([cache[name][rows, positions.to(first.device)] for name in names])
        return cls(stacked, tuple(layers), site, task_ids)


def collect(
    model: Any,
    inputs: Inputs,
    answer_pos: int | Sequence[int] | Tensor,
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    task_ids: Int[Tensor, " batch"] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> Representations:
    """Residual stream at each prompt's answer position, for many layers, in one forward pass per batch.

    Args:
        model: A TransformerLens model (HookedTransformer or TransformerBridge).
        inputs: Tokens ``[batch, pos]`` or the residual stream entering block 0 ``[batch, pos, d_model]``.
        answer_pos: Index of the token right before each prompt's answer ``[batch]`` (or one int).
        layers: Block indices to read; ``-1`` is the embedding output. ``None``: every block, plus the
            embedding output when ``site="resid_post"``.
        site: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        attention_mask: ``[batch, pos]``, 1 on real tokens; needed for left-padded prompts.
        task_ids: Latent task per prompt, stored on the result.
        batch_size: Prompts per forward pass.
        progress: Show a tqdm bar over batches.

    Returns:
        :class:`Representations` with ``activations[i, p]`` the row of prompt ``p`` at ``layers[i]``.
    """
    adapter = adapt(model)
    check_residual_site(site)
    if layers is None:
        layers = ([EMBED_LAYER] if site == "resid_post" else []) + list(range(adapter.n_layers))
    layers = adapter.check_layers(layers, allow_embed=True)
    names = [adapter.hook_name(site, layer) for layer in layers]
    for name in names:
        adapter.hook_point(name)
    check_batch_size(batch_size)
    prompts, copies = _distinct(prepare_prompts(adapter, inputs, answer_pos, attention_mask))
    rows = _rows_at_answer(adapter, prompts, sorted(set(names)), batch_size, progress)
    activations = torch.stack([rows[name] for name in names])[:, copies]
    check_finite_rows(
        activations,
        layers,
        "activations",
        "The model's weights or inputs are not finite (a diverged checkpoint?); check them with torch.isfinite.",
    )
    if task_ids is not None:
        task_ids = as_positions(task_ids, len(copies), "task_ids")
    return Representations(activations, layers, site, task_ids, prompt_ids=copies)


def check_residual_site(site: Any) -> None:
    """Refuse a ``site`` that is not one of the residual-stream sites read per prompt (``[d_model]`` rows)."""
    if not isinstance(site, str) or site not in RESIDUAL_SITES:
        per_head = isinstance(site, str) and site.removeprefix("blocks.").split(".", 1)[-1] in ("attn.hook_z", "z")
        note = (
            " It names the per-head attention output ([n_heads, d_head] per position), which is ablated with "
            "ablate_head, not read as a residual row."
            if per_head or site in ("attn.hook_z", "z")
            else ""
        )
        raise HookNotFoundError(
            f"Unknown site {site!r} for reading residual-stream rows.{note} Use one of {list(RESIDUAL_SITES)} "
            "(each is read at d_model width, at every block given by layers=)."
        )


def prompt_ids(
    model: Any,
    inputs: Inputs,
    answer_pos: int | Sequence[int] | Tensor,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Int[Tensor, " batch"]:
    """An id per prompt, the same for exactly the prompts whose inputs up to their answer positions are the same.

    Padding is left aside (a left-padded prompt has the id of the same prompt right-padded); the ids are those
    :func:`collect` runs each prompt under, numbered in a canonical order of the distinct prompts.
    """
    return _distinct(prepare_prompts(adapt(model), inputs, answer_pos, attention_mask))[1]


def _distinct(prompts: PreparedPrompts) -> tuple[PreparedPrompts, Int[Tensor, " batch"]]:
    """The distinct prompts (up to their answer positions) in a canonical order, and each prompt's index among them.

    Identical prompts then share one row (bit for bit), and the rows do not depend on the order of the prompts:
    the batches run are the same whatever order or padding the caller used.
    """
    width = int(prompts.answer_pos.max()) + 1
    inputs = prompts.inputs[:, :width]
    answer_pos = prompts.answer_pos.to(inputs.device)
    after_answer = torch.arange(width, device=inputs.device)[None, :] > answer_pos[:, None]
    masked = inputs.masked_fill(after_answer if inputs.ndim == 2 else after_answer[..., None], 0)  # never read
    # compare float inputs by their bits: positions must not be cast to a (half-precision) input dtype
    values = masked if not masked.is_floating_point() else masked.contiguous().view(_BITS[masked.element_size()])
    keys = torch.cat([answer_pos[:, None], values.flatten(1).long()], dim=1)
    _, copies = torch.unique(keys, dim=0, return_inverse=True)
    n = int(copies.max()) + 1
    first = torch.full((n,), len(keys), dtype=torch.long, device=keys.device)
    first = first.scatter_reduce(0, copies, torch.arange(len(keys), device=keys.device), "amin")
    unique_prompts = PreparedPrompts(
        inputs[first], answer_pos[first].cpu(), torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    )
    return unique_prompts, copies.cpu()


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _rows_at_answer(
    adapter: ModelAdapter,
    prompts: PreparedPrompts,
    names: list[str],
    batch_size: int,
    progress: bool,
) -> dict[str, Tensor]:
    """Run batches of similar-length prompts; keep each hook's answer-position rows, in prompt order."""
    dtype = torch.promote_types(adapter.dtype, torch.float32)  # half-precision models' rows come back as float32
    out = {name: torch.empty(len(prompts), adapter.d_model, dtype=dtype) for name in names}

    def hooks_for(index: Tensor) -> list[tuple[str, HookFn]]:
        rows = (torch.arange(len(index), device=adapter.device), prompts.answer_pos[index].to(adapter.device))
        return [(name, partial(_keep_rows, store=out[name], index=index, rows=rows)) for name in names]

    read_batches(adapter, prompts.inputs, prompts.ends, batch_size, hooks_for, desc="collect", progress=progress)
    return out


def _keep_rows(activation: Tensor, hook: Any, *, store: Tensor, index: Tensor, rows: tuple[Tensor, Tensor]) -> None:
    """Hook body: copy the answer-position rows of this batch into ``store[index]``."""
    device = activation.device  # blocks of a model spread over devices (device_map) live on several
    store[index] = activation[rows[0].to(device), rows[1].to(device)].detach().to("cpu", store.dtype)


def check_finite_rows(activations: Float[Tensor, "layer prompt d"], layers: Sequence[int], what: str, fix: str) -> None:
    """Raise a :class:`NonFiniteError` naming the layers and the number of prompts whose rows are not finite.

    Args:
        activations: Rows per layer and prompt.
        layers: The layer of each entry.
        what: What holds the rows, for the message (``"activations"``, ``"reps"`` ...).
        fix: The sentence that tells the user what to do.
    """
    finite = torch.isfinite(activations).all(dim=-1)
    if not bool(finite.all()):
        bad_layers = [layers[i] for i in range(len(layers)) if not bool(finite[i].all())]
        n_bad = int((~finite).any(dim=0).sum())
        raise NonFiniteError(f"NaN or infinite {what} at layers {bad_layers} for {n_bad} prompt(s). {fix}")
