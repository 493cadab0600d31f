"""The result of a suite run: named results of several analyses on one model and pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tv_lens.errors import ShapeError, UnknownNameError
from tv_lens.results.base import Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.basedatatypes import BaseTraceType


__all__ = ["SuiteResult"]


@dataclass(frozen=True, eq=False)
class SuiteResult(Result):
    """Results of several analyses, by name (``"decodability"``, ``"geometry"``, ``"performance"`` ...).

    Attributes:
        results: Name → result, in the order the analyses ran.
        n_per_task: Prompts per task of the shared batch.
        n_shots: Shot count of the shared batch: an int, an inclusive ``(min, max)`` tuple, or a list of
            allowed values (``None`` for a batch given by the caller).
        seed: Seed of the shared batch.
        collect_calls: Number of :func:`tv_lens.probes.collect` calls the representation analyses shared
            (one per residual site).
    """

    results: dict[str, Result]
    n_per_task: int | None = None
    n_shots: int | tuple[int, int] | list[int] | None = None
    seed: int = 0
    collect_calls: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [
            name for name, result in self.results.items() if not isinstance(name, str) or not isinstance(result, Result)
        ]
        if bad:
            raise ShapeError(f"SuiteResult.results must map names to Result objects; bad entries: {bad}.")

    def __getitem__(self, name: str) -> Result:
        """The result of the analysis called ``name``."""
        if name not in self.results:
            raise UnknownNameError(
                f"No analysis {name!r} in this suite; it holds {list(self.results)}. Index it by one of those names, "
                "or add the analysis to the Suite and run it again."
            )
        return self.results[name]

    def to_frame(self) -> pd.DataFrame:
        """Every result's tidy table stacked, with an ``analysis`` column first (other columns as each result's)."""
        import pandas as pd

        frames = [result.to_frame().assign(analysis=name) for name, result in self.results.items()]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"analysis": []})
        return frame[["analysis", *[c for c in frame.columns if c != "analysis"]]]

    def traces(self) -> list[BaseTraceType]:
        """Every result's traces, in order (use :meth:`figure` for one panel per analysis)."""
        return [trace for result in self.results.values() for trace in result.traces()]

    def figure(self) -> go.Figure:
        """One panel per analysis, side by side, each with its result's traces."""
        from plotly.subplots import make_subplots

        names = list(self.results)
        figure = make_subplots(rows=1, cols=max(len(names), 1), subplot_titles=names)
        for col, name in enumerate(names, start=1):
            for trace in self.results[name].traces():
                figure.add_trace(trace, row=1, col=col)
        figure.update_layout(title={"text": "tv_lens analysis suite"})
        return figure

    def figure_layout(self) -> dict[str, Any]:
        """Title of the suite figure."""
        return {"title": {"text": "tv_lens analysis suite"}}
