"""The result of head attention: how much of each head's attention at the answer position goes to each prompt role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jaxtyping import Bool, Float, Int
from torch import Tensor

from tv_lens.errors import TaskError
from tv_lens.results.axes import head_axes, head_heatmap, head_label
from tv_lens.results.base import Result
from tv_lens.results.decodability import ALL_TASKS
from tv_lens.results.shared import BootstrapSettings, ranked_task, task_index
from tv_lens.stats.selection import ranked_heads
from tv_lens.tasks.pool import NULL_TASK

if TYPE_CHECKING:
    import pandas as pd
    from plotly.basedatatypes import BaseTraceType

__all__ = ["RoleAttention"]


@dataclass(frozen=True, eq=False)
class RoleAttention(BootstrapSettings, Result):
    """Each head's attention from the answer position, summed over the positions of each prompt role.

    A head's attention weights at the answer position sum to one over the positions up to it; ``attention`` splits
    that one by role (``"demo_answer"``: the demonstrations' answer tokens, and so on; see
    :func:`~tv_lens.tasks.position_roles`). Heads that carry the task to the answer position (function-vector heads)
    are expected to look at the demonstrations' answers. On a model with attention sinks (GPT-OSS) part of the
    attention goes to the sink, on no position: :attr:`unattended`. Overall numbers average over the prompts of every
    task but Null. A prompt without a position of a role (a far demonstration in a prompt with fewer shots, the
    prefix of prompts that have none) has a share of zero on it; the means on that role leave such prompts out
    (:attr:`present`). The bootstrap settings are those of :class:`~tv_lens.results.BootstrapSettings`.

    Attributes:
        layers: Block index of each entry of the layer axis.
        role_names: Name of every role id.
        task_names: Name of every task entry.
        task_ids: Task entry of each prompt ``[prompt]``.
        attention: Share of each head's attention on each role, per prompt ``[layer, head, role, prompt]``.
        per_task: Its mean per task over the prompts that have the role ``[layer, head, role, task]`` (NaN where none
            has).
        per_task_ci: Its bootstrap interval ``[layer, head, role, task, 2]``.
        overall: Its mean over the prompts of every task but Null that have the role ``[layer, head, role]``.
        overall_ci: Its interval ``[layer, head, role, 2]``.
        null_task: Name of the Null task.
        present: Whether each prompt has a position of each role ``[role, prompt]`` (``None`` in files saved before
            this field existed, whose means count every prompt).
    """

    layers: tuple[int, ...]
    role_names: tuple[str, ...]
    task_names: tuple[str, ...]
    task_ids: Int[Tensor, " prompt"]
    attention: Float[Tensor, "layer head role prompt"]
    per_task: Float[Tensor, "layer head role task"]
    per_task_ci: Float[Tensor, "layer head role task 2"]
    overall: Float[Tensor, "layer head role"]
    overall_ci: Float[Tensor, "layer head role 2"]
    null_task: str = NULL_TASK
    present: Bool[Tensor, "role prompt"] | None = None

    def _axes(self) -> dict[str, int]:
        return {"layer": len(self.layers), "role": len(self.role_names), "task": len(self.task_names)}

    @property
    def n_heads(self) -> int:
        """Heads per block."""
        return int(self.attention.shape[1])

    @property
    def unattended(self) -> Float[Tensor, "layer head prompt"]:
        """The attention on no role: one minus the sum over roles (what an attention sink takes; else ~0)."""
        return 1.0 - self.attention.sum(2)

    def role_index(self, role: str) -> int:
        """Index of ``role`` on the role axis.

        Raises:
            TaskError: ``role`` is not one of :attr:`role_names`.
        """
        if role not in self.role_names:
            raise TaskError(f"No role {role!r} in this result; its roles are {list(self.role_names)}.")
        return self.role_names.index(role)

    def share(self, role: str, task: str | None = None) -> Float[Tensor, "layer head"]:
        """Each head's mean attention share on ``role``, over every task but Null or for ``task``."""
        r = self.role_index(role)
        if task is None:
            return self.overall[:, :, r]
        return self.per_task[:, :, r, task_index(self.task_names, task, "attention share")]

    def top_heads(self, role: str | None = None, k: int = 5, task: str | None = None) -> list[tuple[int, int]]:
        """The ``k`` heads that attend most to ``role`` (ties: block, then head), overall or for ``task``.

        ``role=None`` is the lead role of :meth:`headline`: the demonstrations' answers.

        Raises:
            AnalysisError: ``k`` is not an int in ``[1, heads]``.
            TaskError: An unknown role or task, or a task no prompt is of.
        """
        chosen = self.role_names[self._lead_role()] if role is None else role
        if task is not None:
            ranked_task(self.task_names, self.task_ids, task, "attention share")
        return list(ranked_heads(self.share(chosen, task), self.layers, k))

    def headline(self) -> dict[str, Any]:
        """The mean share of every role over all heads, and the three heads that attend most to the lead role.

        Keys: ``mean_share`` (role name to its mean share over heads; NaN for a role no prompt has), ``role`` (the lead
        role: ``"demo_answer"`` where the roles have it, else ``"demo_answer[-1]"``, else the first), ``top_heads``
        (``"L{layer}H{head}"``) and ``top_shares`` (their shares).
        """
        role = self.role_names[self._lead_role()]
        heads = self.top_heads(role, min(3, len(self.layers) * self.n_heads))
        share = self.share(role)
        rows = {layer: i for i, layer in enumerate(self.layers)}
        return {
            "mean_share": {name: float(self.overall[:, :, r].mean()) for r, name in enumerate(self.role_names)},
            "role": role,
            "top_heads": [head_label(layer, head) for layer, head in heads],
            "top_shares": [float(share[rows[layer], head]) for layer, head in heads],
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head, role, task), plus task ``"all"`` (every task but Null).

        Columns: ``layer``, ``head``, ``role``, ``task``, ``share``, ``ci_low``, ``ci_high``.
        """
        import pandas as pd

        rows = []
        for i, layer in enumerate(self.layers):
            for head in range(self.n_heads):
                for r, role in enumerate(self.role_names):
                    overall, per_task = self.overall_ci[i, head, r].tolist(), self.per_task_ci[i, head, r].tolist()
                    rows.append((layer, head, role, ALL_TASKS, float(self.overall[i, head, r]), *overall))
                    rows.extend(
                        (layer, head, role, name, float(self.per_task[i, head, r, t]), *per_task[t])
                        for t, name in enumerate(self.task_names)
                    )
        return pd.DataFrame(rows, columns=["layer", "head", "role", "task", "share", "ci_low", "ci_high"])

    def traces(self) -> list[BaseTraceType]:
        """A (layer x head) heatmap of the mean share per role, one per role (the lead role shown; the menu picks)."""
        traces = [
            head_heatmap(self.overall[:, :, r], self.layers, f"share on {role}", colorscale="Viridis", zmid=None)
            for r, role in enumerate(self.role_names)
        ]
        shown = self._lead_role()
        for r, trace in enumerate(traces):
            trace.update(visible=r == shown, name=self.role_names[r], zmin=0.0, zmax=1.0)
        return traces

    def figure_layout(self) -> dict[str, Any]:
        """Heads on x, blocks on y, and a menu that shows one role's heatmap at a time."""
        shown = self._lead_role()
        buttons = [
            {
                "label": role,
                "method": "update",
                "args": [
                    {"visible": [r == chosen for r in range(len(self.role_names))]},
                    {"title": {"text": self._title(role)}},
                ],
            }
            for chosen, role in enumerate(self.role_names)
        ]
        menu = {"buttons": buttons, "active": shown, "x": 1.0, "xanchor": "right", "y": 1.15, "yanchor": "top"}
        return {**head_axes(self._title(self.role_names[shown])), "updatemenus": [menu]}

    def _lead_role(self) -> int:
        """The role a report leads with and the figure shows first: the demonstrations' answers, else the first."""
        for role in ("demo_answer", "demo_answer[-1]"):
            if role in self.role_names:
                return self.role_names.index(role)
        return 0

    @staticmethod
    def _title(role: str) -> str:
        return f"Share of each head's attention from the answer position on {role} (mean over prompts)"
