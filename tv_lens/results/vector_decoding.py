"""The logit lens of task vectors and function vectors: the tokens each vector promotes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.errors import ShapeError, UnknownNameError
from tv_lens.results.base import Result

if TYPE_CHECKING:
    import pandas as pd
    from plotly.basedatatypes import BaseTraceType

__all__ = ["NORMALISATIONS", "NamedRows", "NamedVectors", "VectorDecoding"]

NamedRows = tuple[tuple[str, ...], tuple[str, ...], tuple["int | None", ...], Float[Tensor, "n d_model"]]
"""Names, tasks and layers (``None``: no layer) of vectors, and the vectors stacked as rows."""


@runtime_checkable
class NamedVectors(Protocol):
    """Vectors that name themselves for decoding (:class:`~tv_lens.task_vectors.TaskVectors`, a function vector)."""

    def named_rows(self, model: Any) -> NamedRows:
        """Every vector as a named row, after checking that ``model`` is one the vectors fit."""
        ...


#: How a vector is normalised before the unembedding: the model's final norm, or none (a model without one).
NORMALISATIONS = ("ln_final", "none")


@dataclass(frozen=True, eq=False)
class VectorDecoding(Result):
    """Top tokens of the unembedding of each vector (``W_U`` applied after the model's final norm).

    Attributes:
        names: Name of each vector (``"offset(1) L2"``: a task vector; ``"offset(1) FV"``: a function vector).
        task_names: The task of each vector (``""`` for a plain tensor).
        layers: The block each task vector was read at (``None``: a function vector or a plain tensor).
        token_ids: Top ``k`` token ids per vector, by decreasing logit ``[vector, k]``.
        logits: Their logits ``[vector, k]``.
        tokens: Their strings, decoded one token at a time by the model's tokenizer (``None``: no tokenizer).
        normalisation: ``"ln_final"`` (the vector passed through the model's final norm alone, as the last
            residual would be) or ``"none"`` (a model without a final norm).
    """

    names: tuple[str, ...]
    task_names: tuple[str, ...]
    layers: tuple[int | None, ...]
    token_ids: Int[Tensor, "vector k"]
    logits: Float[Tensor, "vector k"]
    tokens: tuple[tuple[str, ...], ...] | None
    normalisation: str = "ln_final"

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.names)
        if len(self.task_names) != n or len(self.layers) != n or len(set(self.names)) != n:
            raise ShapeError(f"VectorDecoding needs one distinct name, task and layer per vector, got {self.names}.")
        if self.tokens is not None and [len(row) for row in self.tokens] != [self.k] * n:
            raise ShapeError(f"VectorDecoding.tokens must hold {self.k} strings per vector.")
        if self.normalisation not in NORMALISATIONS:
            raise ShapeError(f"Unknown normalisation {self.normalisation!r}; one of {list(NORMALISATIONS)}.")

    def _axes(self) -> dict[str, int]:
        return {"vector": len(self.names)}

    @property
    def k(self) -> int:
        """Tokens kept per vector."""
        return int(self.token_ids.shape[1])

    def top(self, name: str) -> list[str] | list[int]:
        """The top tokens of vector ``name``: strings where a tokenizer decoded them, else ids.

        Raises:
            UnknownNameError: No vector of that name.
        """
        if name not in self.names:
            raise UnknownNameError(f"No decoded vector {name!r}; the decoding holds {list(self.names)}.")
        i = self.names.index(name)
        return list(self.tokens[i]) if self.tokens is not None else self.token_ids[i].tolist()

    def to_frame(self) -> pd.DataFrame:
        """One row per (vector, rank).

        Columns: ``vector``, ``task``, ``layer``, ``rank`` (0 = top), ``token_id``, ``token`` (``None`` without a
        tokenizer), ``logit``.
        """
        import pandas as pd

        rows = [
            (
                name,
                self.task_names[i],
                self.layers[i],
                rank,
                int(self.token_ids[i, rank]),
                None if self.tokens is None else self.tokens[i][rank],
                float(self.logits[i, rank]),
            )
            for i, name in enumerate(self.names)
            for rank in range(self.k)
        ]
        return pd.DataFrame(rows, columns=["vector", "task", "layer", "rank", "token_id", "token", "logit"])

    def traces(self) -> list[BaseTraceType]:
        """A (vector x rank) table coloured by logit, each cell showing its token."""
        import plotly.graph_objects as go

        labels = self.tokens if self.tokens is not None else [[f"#{t}" for t in row] for row in self.token_ids.tolist()]
        return [
            go.Heatmap(
                z=self.logits.tolist(),
                x=[f"{rank + 1}" for rank in range(self.k)],
                y=list(self.names),
                text=[[repr(token) for token in row] for row in labels],
                texttemplate="%{text}",
                colorscale="Blues",
                colorbar={"title": {"text": "logit"}},
                hovertemplate="%{y}, rank %{x}: %{text}<br>logit %{z:.3f}<extra></extra>",
            )
        ]

    def figure_layout(self) -> dict[str, Any]:
        """Rank on x, vectors top to bottom."""
        norm = "the final norm, then W_U" if self.normalisation == "ln_final" else "W_U (no final norm)"
        return {
            "title": {"text": f"Logit lens of each vector: its top-{self.k} tokens through {norm}"},
            "xaxis": {"title": {"text": "rank"}},
            "yaxis": {"title": {"text": "vector"}, "autorange": "reversed"},
            "height": max(300, 40 * len(self.names) + 150),
        }
