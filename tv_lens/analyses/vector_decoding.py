"""Decode a task vector or function vector with the logit lens: which tokens does it promote?

Each vector ``v`` (``[d_model]``) is read as if it were the final residual stream at one position: the model's
own final norm ``ln_final`` is applied to it alone (a LayerNorm centres ``v`` and divides it by its own root
mean square, then applies the learned weight and bias; an RMSNorm only divides), then the unembedding
(``W_U`` and ``b_U``): ``logits = unembed(ln_final(v))``, exactly TransformerLens's logit lens of a residual
vector. A model without a final norm is unembedded directly. The top ``k`` tokens by logit are kept, with
their strings where the model has a tokenizer. With a tokenizer, only ids it has are ranked: a model whose
``d_vocab`` is padded past its tokenizer (GPT-NeoX and Pythia round it up to a multiple of 128) has unembedding rows
no text maps to, which would otherwise be reported as blank tokens (``""``).

The computation runs the model's ``ln_final`` and ``unembed`` modules with the user's hooks set aside, so a
hook attached to the model does not change what is decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tv_lens.checks import check_tensor_data, is_int
from tv_lens.errors import AnalysisError, ModelNotSupportedError, NonFiniteError, ShapeError
from tv_lens.models.adapter import adapt
from tv_lens.models.exclusive import evaluating, user_hooks_detached
from tv_lens.models.row_logits import unembed_rows
from tv_lens.results.vector_decoding import NamedRows, NamedVectors, VectorDecoding
from tv_lens.tasks.encoding import decode_ids, decoding_tokenizer, has_token_id

__all__ = ["VectorDecoding", "decode_vectors", "logit_lens"]

Vectors = NamedVectors | Tensor | Mapping[str, Tensor]


def logit_lens(model: Any, vectors: Float[Tensor, "n d_model"]) -> tuple[Float[Tensor, "n d_vocab"], str]:
    """``unembed(ln_final(v))`` for each row of ``vectors`` (float64, CPU), and the normalisation applied.

    Raises:
        ShapeError: Rows of another width than ``d_model``.
        ModelNotSupportedError: The model has no ``unembed`` module.
    """
    adapter = adapt(model)
    if not isinstance(vectors, Tensor) or vectors.ndim != 2 or vectors.shape[-1] != adapter.d_model:
        shape = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise ShapeError(f"The logit lens needs vectors [n, d_model={adapter.d_model}], got {shape}.")
    if not callable(getattr(adapter.model, "unembed", None)):
        raise ModelNotSupportedError(
            "The model has no `unembed` module, which the logit lens maps vectors to tokens with; use a "
            "HookedTransformer or TransformerBridge."
        )
    x = vectors.detach().to(adapter.device, adapter.dtype)
    with torch.no_grad(), user_hooks_detached(adapter.model), evaluating(adapter.model):
        logits = unembed_rows(adapter, x, soft_cap=False).to("cpu", torch.float64)
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError("The logit lens gave NaN or infinite logits; check the vectors and the model's weights.")
    return logits, "ln_final" if callable(getattr(adapter.model, "ln_final", None)) else "none"


def decode_vectors(model: Any, vectors: Vectors, k: int = 10, *, tokenizer: Any = None) -> VectorDecoding:
    """Top ``k`` tokens of the logit lens of every vector (see the module docstring for the normalisation).

    Args:
        model: The TransformerLens model whose final norm and unembedding decode the vectors.
        vectors: :class:`~tv_lens.task_vectors.TaskVectors` (every (task, layer) vector, named
            ``"{task} L{layer}"``), a :class:`~tv_lens.results.FunctionVector` (every task, ``"{task} FV"``), one
            tensor ``[d_model]`` or ``[n, d_model]``, or a dict of named ``[d_model]`` tensors.
        k: Tokens kept per vector, by decreasing logit (ties: the lower token id first).
        tokenizer: Decodes the token ids, one at a time, special tokens and spaces kept as they are (default:
            ``model.tokenizer``; none: only ids, every id of ``d_vocab`` ranked). Ids it does not have (padding of
            ``d_vocab`` past its vocabulary) are never ranked.

    Raises:
        AnalysisError: ``k`` outside ``[1, d_vocab]``, or above the ids of ``d_vocab`` the tokenizer has.
        ShapeError: Vectors of another width than the model's ``d_model``, or from a model of other sizes.
        TaskError: A ``tokenizer`` without ``decode`` (e.g. a model's name).
    """
    adapter = adapt(model)
    names, tasks, layers, stacked = _named_rows(model, vectors)
    logits, normalisation = logit_lens(model, stacked)
    n_vocab = int(logits.shape[-1])
    if not is_int(k) or not 1 <= k <= n_vocab:
        raise AnalysisError(f"k must be an int in [1, {n_vocab}] (tokens kept per vector), got {k!r}.")
    order = torch.argsort(logits, dim=-1, descending=True, stable=True)
    tokenizer = decoding_tokenizer(tokenizer, adapter.model)
    tokens = None
    if tokenizer is not None:
        order = _tokenizer_top(order, tokenizer, k)
        # special tokens and spaces kept: "[PAD]", not ""
        tokens = tuple(tuple(decode_ids(tokenizer, [token]) for token in row) for row in order.tolist())
    else:
        order = order[:, :k]
    return VectorDecoding(names, tasks, layers, order, logits.gather(-1, order), tokens, normalisation)


def _tokenizer_top(order: Tensor, tokenizer: Any, k: int) -> Tensor:
    """The first ``k`` ids of each row of ``order`` that ``tokenizer`` has (:func:`has_token_id`)."""
    known: dict[int, bool] = {}
    rows = []
    for row in order.tolist():
        kept = list(islice((token for token in row if _known(known, tokenizer, token)), k))
        if len(kept) < k:
            raise AnalysisError(
                f"k={k} is more tokens than the tokenizer has among the model's d_vocab={len(row)} ids ({len(kept)}; "
                f"the others pad the unembedding past the tokenizer); pass k <= {len(kept)}."
            )
        rows.append(kept)
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), k)


def _known(known: dict[int, bool], tokenizer: Any, token: int) -> bool:
    """Whether ``tokenizer`` has ``token``, asked once per id (``known`` remembers the answers)."""
    if token not in known:
        known[token] = has_token_id(tokenizer, token)
    return known[token]


def _named_rows(model: Any, vectors: Vectors) -> NamedRows:
    """Names, tasks, layers and the stacked rows of ``vectors``; the source model is checked where recorded."""
    named_rows = getattr(vectors, "named_rows", None)
    if callable(named_rows):  # TaskVectors, FunctionVector
        named: NamedRows = named_rows(model)
        return named
    if isinstance(vectors, Mapping):
        if not vectors or not all(isinstance(v, Tensor) and v.ndim == 1 for v in vectors.values()):
            raise ShapeError("A dict of vectors must map names to [d_model] tensors, at least one.")
        for name, vector in vectors.items():
            check_tensor_data(vector, f"Vector {name!r}")
            if not vector.is_floating_point():
                raise ShapeError(f"Vector {name!r} is {vector.dtype}; a dict of vectors must hold float tensors.")
        widths = sorted({int(vector.shape[0]) for vector in vectors.values()})
        if len(widths) > 1:
            raise ShapeError(
                f"A dict of vectors must hold [d_model] tensors of one width, got widths {widths}; pass vectors of "
                "the model's d_model."
            )
        names = tuple(str(name) for name in vectors)
        return (
            names,
            ("",) * len(names),
            (None,) * len(names),
            torch.stack([v.detach().cpu() for v in vectors.values()]),
        )
    if isinstance(vectors, Tensor) and vectors.ndim in (1, 2) and vectors.is_floating_point():
        check_tensor_data(vectors, "vectors")
        rows = vectors[None] if vectors.ndim == 1 else vectors
        names = ("vector",) if vectors.ndim == 1 else tuple(f"vector {i}" for i in range(len(rows)))
        return names, ("",) * len(names), (None,) * len(names), rows
    raise ShapeError(
        "vectors must be TaskVectors, a FunctionVector, a float tensor [d_model] or [n, d_model], or a dict of "
        f"named [d_model] tensors; got {type(vectors).__name__}."
    )
