"""The result of attention knockout: what the answer loses when its position may not attend to a prompt role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.errors import TaskError
from tv_lens.results.axes import error_bars
from tv_lens.results.base import Result
from tv_lens.results.decodability import ALL_TASKS
from tv_lens.results.shared import SweepSettings, task_index
from tv_lens.tasks.pool import NULL_TASK

if TYPE_CHECKING:
    import pandas as pd
    from plotly.basedatatypes import BaseTraceType

__all__ = ["KnockoutEffects"]

_QUERIES = {"answer": "the answer position", "demo_answer": "the demonstrations' answers"}


@dataclass(frozen=True, eq=False)
class KnockoutEffects(SweepSettings, Result):
    """The harm of blocking the answer position's attention to each prompt role, in each window of blocks.

    A window's knockout keeps the answer position (or, with ``query="demo_answer"``, every demonstration's answer
    tokens) from every position of one role in every head of its blocks; the rest of the prompt runs as usual. The
    harm is the loss increase (``metric="cross_entropy"``) or the accuracy drop (``"accuracy"``), positive where the
    answer needs what flows from that role in that window. Overall numbers average over the prompts of every task but
    Null. A prompt with nothing of a role to knock out (a far demonstration in a prompt with fewer shots; with
    ``query="demo_answer"``, a role after its last demonstration's answer) has a harm of zero there; the means on
    that role leave such prompts out (:attr:`present`). The bootstrap settings and ``rows_per_pass`` are those of
    :class:`~tv_lens.results.SweepSettings`.

    Attributes:
        windows: The blocks of every window (consecutive blocks, one window per first block).
        role_names: The roles knocked out (:data:`~tv_lens.tasks.PROMPT_ROLES`).
        task_names: Name of every task entry.
        task_ids: Task entry of each prompt ``[prompt]``.
        clean_correct: Whether each prompt's answer is right without a knockout ``[prompt]``.
        clean_loss: Its answer loss ``[prompt]``.
        knocked_correct: The same under each knockout ``[window, role, prompt]``.
        knocked_loss: The loss under each knockout ``[window, role, prompt]``.
        per_task: Mean harm per task over the prompts that have the role ``[window, role, task]`` (NaN where none
            has).
        per_task_ci: Its bootstrap interval ``[window, role, task, 2]``.
        overall: Mean harm over the prompts of every task but Null that have the role ``[window, role]``.
        overall_ci: Its interval ``[window, role, 2]``.
        writes: Prompts each knockout reached ``[window, role]``.
        metric: ``"cross_entropy"`` or ``"accuracy"``.
        query: Whose attention was blocked: ``"answer"`` (the answer position) or ``"demo_answer"`` (every
            demonstration's answer tokens).
        null_task: Name of the Null task.
        present: Whether each prompt has a position of each role that a blocked query reads ``[role, prompt]``
            (``None`` in files saved before this field existed, whose means count every prompt).
    """

    windows: tuple[tuple[int, ...], ...]
    role_names: tuple[str, ...]
    task_names: tuple[str, ...]
    task_ids: Int[Tensor, " prompt"]
    clean_correct: Float[Tensor, " prompt"]
    clean_loss: Float[Tensor, " prompt"]
    knocked_correct: Float[Tensor, "window role prompt"]
    knocked_loss: Float[Tensor, "window role prompt"]
    per_task: Float[Tensor, "window role task"]
    per_task_ci: Float[Tensor, "window role task 2"]
    overall: Float[Tensor, "window role"]
    overall_ci: Float[Tensor, "window role 2"]
    writes: Int[Tensor, "window role"]
    metric: str = "cross_entropy"
    query: str = "answer"
    null_task: str = NULL_TASK
    present: Bool[Tensor, "role prompt"] | None = None

    def _axes(self) -> dict[str, int]:
        return {"window": len(self.windows), "role": len(self.role_names), "task": len(self.task_names)}

    @property
    def starts(self) -> tuple[int, ...]:
        """The first block of every window."""
        return tuple(window[0] for window in self.windows)

    def harm(self, role: str, task: str | None = None) -> Float[Tensor, " window"]:
        """The mean harm of knocking out ``role`` in each window, over every task but Null or for ``task``.

        Raises:
            TaskError: An unknown role or task.
        """
        if role not in self.role_names:
            raise TaskError(f"No role {role!r} in this result; its roles are {list(self.role_names)}.")
        r = self.role_names.index(role)
        if task is None:
            return self.overall[:, r]
        return self.per_task[:, r, task_index(self.task_names, task, "knockout harm")]

    def headline(self) -> dict[str, Any]:
        """The knockout that harms most: its role, window and harm with its interval, and the harm of every role.

        Keys: ``role``, ``blocks`` (the window's blocks), ``harm``, ``harm_ci``, ``metric``, ``query`` (whose attention
        was blocked) and ``max_harm`` (role name to its largest harm over the windows; NaN for a role no prompt has).
        """
        flat = int(self.overall.nan_to_num(nan=-torch.inf).flatten().argmax())  # a role no prompt has: NaN
        w, r = divmod(flat, len(self.role_names))
        return {
            "role": self.role_names[r],
            "blocks": list(self.windows[w]),
            "harm": float(self.overall[w, r]),
            "harm_ci": self.overall_ci[w, r].tolist(),
            "metric": self.metric,
            "query": _QUERIES[self.query],
            "max_harm": {name: float(self.overall[:, i].max()) for i, name in enumerate(self.role_names)},
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per (window, role, task), plus task ``"all"`` (every task but Null).

        Columns: ``start`` (the window's first block), ``blocks``, ``role``, ``task``, ``harm``, ``ci_low``,
        ``ci_high``.
        """
        import pandas as pd

        rows = []
        for w, window in enumerate(self.windows):
            blocks = ",".join(str(block) for block in window)
            for r, role in enumerate(self.role_names):
                overall, per_task = self.overall_ci[w, r].tolist(), self.per_task_ci[w, r].tolist()
                rows.append((window[0], blocks, role, ALL_TASKS, float(self.overall[w, r]), *overall))
                rows.extend(
                    (window[0], blocks, role, name, float(self.per_task[w, r, t]), *per_task[t])
                    for t, name in enumerate(self.task_names)
                )
        return pd.DataFrame(rows, columns=["start", "blocks", "role", "task", "harm", "ci_low", "ci_high"])

    def traces(self) -> list[BaseTraceType]:
        """The harm of each role's knockout against the window's first block (CI error bars), a line per role."""
        import plotly.graph_objects as go

        return [
            go.Scatter(
                x=list(self.starts),
                y=self.overall[:, r].tolist(),
                mode="lines+markers",
                name=role,
                error_y=error_bars(self.overall[:, r], self.overall_ci[:, r]),
            )
            for r, role in enumerate(self.role_names)
        ]

    def figure_layout(self) -> dict[str, Any]:
        """Harm against the first block of the window."""
        size = len(self.windows[0]) if self.windows else 1
        harm = "loss increase" if self.metric == "cross_entropy" else "accuracy drop"
        return {
            "title": {"text": f"Attention knockout from {_QUERIES[self.query]} ({size} block(s) per window)"},
            "xaxis": {
                "title": {"text": "first block of the window"},
                "tickmode": "array",
                "tickvals": list(self.starts),
            },
            "yaxis": {"title": {"text": harm}},
        }
