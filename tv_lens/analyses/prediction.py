"""Does task decodability predict ICL performance? Han et al. §4.2.

Points are (task, shots) pairs over a grid of shot counts (Han et al.: 1, 4 and 10 shots). For each
point, TD is the per-task TD at one layer and the score is the task's accuracy (or another metric) on the
same prompts. An ordinary least-squares line ``score = intercept + slope · TD`` is fitted over the
points; R² says how much of the variation in performance TD explains (Han et al.: R² 0.53–0.84 on
pretrained LLMs). Intervals on slope and intercept are the usual Student-t intervals with ``n - 2``
degrees of freedom (they assume independent, homoscedastic residuals, which (task, shots) points only
approximate: read them as a guide).

Choices exposed as options: the layer (default: the block with the highest TD averaged over the shot grid;
the embedding output only if it is the sole layer, see :func:`tv_lens.results.decodability.best_layer`),
whether the Null task is a point (default: no; its accuracy is chance by construction), the TD method.

>>> import torch
>>> fit = fit_td_accuracy(torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.1, 0.4, 0.8]))
>>> round(fit.slope, 3), round(fit.r2, 3)
(1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.analyses.decodability import TaskDecodability
from tv_lens.analyses.options import N_PER_TASK
from tv_lens.analyses.performance import ScoreFn, _metric, resolve_metric, score_batch
from tv_lens.analyses.prompt_batches import PromptPool, sample_batch
from tv_lens.analyses.representations import integer_ids, named_tasks
from tv_lens.checks import is_int, tensor_of
from tv_lens.errors import AnalysisError, NonFiniteError, ShapeError
from tv_lens.results.decodability import best_layer
from tv_lens.results.prediction import TdAccuracyFit
from tv_lens.results.shared import real_tasks
from tv_lens.stats import group_means
from tv_lens.stats.bootstrap import check_bootstrap
from tv_lens.tasks.pool import check_flag

__all__ = ["TdAccuracy", "TdAccuracyFit", "fit_td_accuracy", "ols"]


def ols(x: Float[Tensor, " n"], y: Float[Tensor, " n"], ci: float = 0.95) -> dict[str, Any]:
    """Least-squares line of ``y`` on ``x``: slope, intercept, R² and Student-t intervals.

    Returns:
        ``{"slope", "intercept", "r2", "slope_ci", "intercept_ci"}``; intervals are NaN for fewer than 3
        points, R² is NaN when ``y`` is constant.
    """
    check_bootstrap(0, ci)
    x, y = _values(x, "x"), _values(y, "y")
    n = len(x)
    if x.shape != (n,) or y.shape != (n,) or n < 2:
        raise ShapeError(f"x and y must be 1-D of one length >= 2, got {tuple(x.shape)} and {tuple(y.shape)}.")
    if not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise NonFiniteError("x and y must be finite; drop NaN points (e.g. tasks without prompts) first.")
    if not bool((x.abs() < _LARGEST).all() and (y.abs() < _LARGEST).all()):
        raise NonFiniteError(
            f"x and y must be below {_LARGEST:.0e} in size, or the sums of squares of the fit overflow; rescale them."
        )
    dx, dy = x - x.mean(), y - y.mean()
    sxx, sst = float(dx @ dx), float(dy @ dy)
    if sxx == 0:
        raise AnalysisError(
            "TD is the same at every point, so no line can be fitted; use a grid of shots or tasks where TD varies."
        )
    slope = float(dx @ dy) / sxx
    intercept = float(y.mean()) - slope * float(x.mean())
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise NonFiniteError(
            f"The fitted line is not finite (slope {slope}): x varies too little for the size of y; rescale them."
        )
    sse = float(((y - intercept - slope * x) ** 2).sum())
    r2 = 1 - sse / sst if sst > 0 else math.nan
    slope_ci = intercept_ci = (math.nan, math.nan)
    if n > 2:
        from scipy.stats import t as student_t

        q = float(student_t.ppf((1 + ci) / 2, n - 2))
        s2 = sse / (n - 2)
        se_slope = math.sqrt(s2 / sxx)
        se_intercept = math.sqrt(s2 * (1 / n + float(x.mean()) ** 2 / sxx))
        slope_ci = (slope - q * se_slope, slope + q * se_slope)
        intercept_ci = (intercept - q * se_intercept, intercept + q * se_intercept)
    return {"slope": slope, "intercept": intercept, "r2": r2, "slope_ci": slope_ci, "intercept_ci": intercept_ci}


def fit_td_accuracy(
    td: Float[Tensor, " point"],
    score: Float[Tensor, " point"],
    *,
    task_ids: Int[Tensor, " point"] | Sequence[int] | None = None,
    shots: Int[Tensor, " point"] | Sequence[int] | None = None,
    task_names: Sequence[str] | None = None,
    ci: float = 0.95,
    metric: str = "accuracy",
    layer: int | None = None,
    site: str = "resid_post",
) -> TdAccuracyFit:
    """OLS of ``score`` on ``td`` over points (plain tensors in, a result out).

    Args:
        td: TD of each point.
        score: Performance of each point.
        task_ids: Task of each point (default: every point its own task).
        shots: Shot count of each point (default 0).
        task_names: Name of every task id.
        ci: Confidence level of the intervals.
        metric: Name of the score.
        layer: Block index TD was read at, for labels.
        site: Residual site TD was read at, for labels.
    """
    td, score = _values(td, "td"), _values(score, "score")
    fit = ols(td, score, ci)
    n = len(td)
    tasks = torch.arange(n) if task_ids is None else integer_ids(task_ids, "task_ids", "the task of each point")
    shot_counts = (
        torch.zeros(n, dtype=torch.long) if shots is None else integer_ids(shots, "shots", "the shots of each point")
    )
    if tasks.shape != (n,) or shot_counts.shape != (n,) or int(tasks.min()) < 0 or int(shot_counts.min()) < 0:
        raise ShapeError(
            f"task_ids and shots need one entry per point ({n}), task ids >= 0 indexing task_names and shots >= 0; "
            f"got shapes {tuple(tasks.shape)} and {tuple(shot_counts.shape)}."
        )
    names = named_tasks(task_names, tasks, "task_ids")
    return TdAccuracyFit(
        td, score, tasks, shot_counts, names, ci_level=ci, metric=metric, layer=layer, site=site, **fit
    )


_LARGEST = 1e100
"""The largest TD or score :func:`ols` fits: squares and sums of squares of larger values overflow float64."""


def _values(values: Any, what: str) -> Float[Tensor, " n"]:
    """``values`` as a float64 CPU tensor (not checked for shape: :func:`ols` does), refusing complex numbers.

    Python sequences go through numpy, so their floats stay float64 (``torch.as_tensor`` would make them float32).
    """
    if isinstance(values, (list, tuple)):
        try:
            values = np.asarray(values)
        except (TypeError, ValueError) as error:
            raise ShapeError(f"{what} must be a 1-D sequence of real numbers, one per point ({error}).") from error
    tensor = tensor_of(values, what, "a 1-D tensor of real numbers, one per point")
    if tensor.is_complex():
        raise ShapeError(f"{what} must be real numbers, got {tensor.dtype}; pass {what}.real if that is meant.")
    return tensor.detach().to("cpu", torch.float64)


@dataclass(frozen=True)
class TdAccuracy:
    """Configuration of the TD → performance analysis.

    Attributes:
        shots: Grid of shot counts (Han et al.: 1, 4, 10).
        layer: Block index to read TD at; ``None``: the block with the highest TD averaged over the grid.
        decodability: TD settings (k, metric, method, site, layers, batch size); its bootstrap is skipped.
        metric: Performance score: ``"auto"`` (accuracy for tokens, MSE for regression), ``"accuracy"``,
            ``"cross_entropy"``, ``"mse"`` or a callable.
        include_null: Whether the Null task is a point.
        ci: Confidence level of the fit's intervals.
    """

    shots: tuple[int, ...] = (1, 4, 10)
    layer: int | None = None
    decodability: TaskDecodability = field(default_factory=lambda: TaskDecodability(n_bootstrap=0))
    metric: str | ScoreFn = "auto"
    include_null: bool = False
    ci: float = 0.95

    def __post_init__(self) -> None:
        if isinstance(self.shots, int) or not isinstance(self.shots, (tuple, list)):
            raise AnalysisError(
                f"shots must be a non-empty tuple of ints >= 0, got {self.shots!r}; for one shot count pass a "
                f"one-element tuple, e.g. shots=({self.shots!r},) (Han et al. use (1, 4, 10))."
            )
        if not self.shots or any(not is_int(s) or s < 0 for s in self.shots):
            raise AnalysisError(
                f"shots must be a non-empty tuple of ints >= 0, got {self.shots!r}; Han et al. use (1, 4, 10)."
            )
        if self.layer is not None and not is_int(self.layer):
            raise AnalysisError(
                f"layer must be a block index (an int, -1 = the embedding output) or None (the block of highest "
                f"TD), got {self.layer!r}."
            )
        if not isinstance(self.decodability, TaskDecodability):
            raise AnalysisError(
                f"decodability must be TaskDecodability settings, got {self.decodability!r:.60}; pass e.g. "
                "TaskDecodability(k=10, n_bootstrap=0)."
            )
        read = self.decodability.layers
        if self.layer is not None and read is not None:
            _column(tuple(read), self.layer)  # a layer the decodability config does not read: before any pass
        if self.metric != "auto":
            _metric(self.metric)
        check_flag(self.include_null, "include_null", "whether the Null task is a point of the fit")
        check_bootstrap(0, self.ci)

    def run(self, model: Any, pool: PromptPool, n_per_task: int = N_PER_TASK, seed: int = 0) -> TdAccuracyFit:
        """Per shot count: sample prompts (seeded), one collect pass for TD, one clean pass for the score; fit."""
        per_task_td, scores, repeated, grid = [], [], [], sorted(set(self.shots))
        config = self.decodability
        layers: tuple[int, ...] = ()
        site, metric = config.site, self.metric
        for s in grid:
            batch = sample_batch(pool, n_per_task, s, seed, model=model)
            decodability = config.run_batch(model, batch, seed=seed)  # one collect pass, every layer
            per_task_td.append(decodability.per_task)  # [layer, task]
            repeated.append(decodability.n_repeated)
            layers = decodability.layers
            metric = resolve_metric(self.metric, batch)
            values = score_batch(model, batch, metric, config.batch_size).double()
            scores.append(group_means(values.cpu(), batch.task_ids.cpu(), len(pool)))
        td = torch.stack(per_task_td)  # [shots, layer, task]
        keep = list(range(len(pool.task_names))) if self.include_null else real_tasks(pool.task_names)
        mean_td = td[:, :, keep].mean(-1)  # [shots, layer], mean of the point tasks' TD
        chosen = best_layer(layers, mean_td.mean(0)) if self.layer is None else self.layer
        column = _column(layers, chosen)
        points_td = td[:, column, keep].flatten()
        points_score = torch.stack(scores)[:, keep].flatten()
        name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")
        fit = fit_td_accuracy(
            points_td,
            points_score,
            task_ids=torch.tensor(keep).repeat(len(grid)),
            shots=torch.tensor(grid).repeat_interleave(len(keep)),
            task_names=pool.task_names,
            ci=self.ci,
            metric=name,
            layer=layers[column],
            site=site,
        )
        counts = None if None in repeated else torch.tensor(repeated)
        return replace(
            fit,
            td_by_layer=mean_td,
            layers=tuple(layers),
            shot_grid=tuple(grid),
            repeated=counts,
            repeats=config.repeats,
        )


def _column(layers: tuple[int, ...], layer: int) -> int:
    if layer not in layers:
        raise AnalysisError(f"layer={layer} was not collected; the decodability config reads layers {layers}.")
    return layers.index(layer)
