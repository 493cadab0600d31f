"""The shot counts TD→accuracy and patching run at: where the trained model's ICL accuracy is below its ceiling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tv_lens.analyses import ICLPerformance
from tv_lens.app.demo.config import DemoConfig
from tv_lens.app.demo.training import TrainedModel
from tv_lens.errors import ConfigError
from tv_lens.results import Performance
from tv_lens.results.shared import real_tasks

__all__ = ["AnalysisShots", "analysis_shots", "choose_analysis_shots", "shots_below_ceiling"]


@dataclass(frozen=True)
class AnalysisShots:
    """The shot counts TD→accuracy and patching run at, chosen from the ICL accuracy curve.

    Attributes:
        td_accuracy: Shot counts of the TD→accuracy fit, increasing.
        patching: Shot count of the patched prompts (and of the prompts their task vectors are read from).
        accuracy: Mean ICL accuracy over the non-Null tasks at each candidate shot count.
        ceiling: Accuracy from which a shot count is at ceiling.
    """

    td_accuracy: tuple[int, ...]
    patching: int
    accuracy: dict[int, float]
    ceiling: float

    @property
    def below_ceiling(self) -> tuple[int, ...]:
        """The candidate shot counts whose accuracy is below the ceiling (empty: the model is at ceiling)."""
        return tuple(s for s, value in sorted(self.accuracy.items()) if value < self.ceiling)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (stored in ``run.json`` as ``analysis_shots``)."""
        return {
            "td_accuracy": list(self.td_accuracy),
            "patching": self.patching,
            "accuracy": {str(s): value for s, value in sorted(self.accuracy.items())},
            "ceiling": self.ceiling,
        }


def shots_below_ceiling(
    performance: Performance, candidates: Sequence[int], ceiling: float = 0.95, minimum: int = 2
) -> tuple[int, ...]:
    """The ``candidates`` whose ICL accuracy is below ``ceiling``, topped up to ``minimum`` with the smallest others.

    Accuracy is the mean over the non-Null tasks of ``performance.values`` at that shot count (the Null task's
    answers are random: it is never at ceiling). A fit over shot counts needs at least two of them, so when fewer
    than ``minimum`` are below the ceiling the smallest remaining candidates are added (a model at its ceiling
    everywhere gets the smallest ``minimum``).

    >>> import torch
    >>> curve = Performance(
    ...     values=torch.tensor([[0.7, 0.9, 0.97, 1.0], [0.8, 0.85, 0.99, 1.0]]), ci=torch.zeros(2, 4, 2),
    ...     overall=torch.zeros(4), overall_ci=torch.zeros(4, 2), n_prompts=torch.ones(2, 4, dtype=torch.long),
    ...     shots=(1, 2, 4, 8), task_names=("a", "b"))
    >>> shots_below_ceiling(curve, (1, 2, 4, 8)), shots_below_ceiling(curve, (1, 2, 4, 8), ceiling=0.5)
    ((1, 2), (1, 2))
    >>> shots_below_ceiling(curve, (2, 4, 8), ceiling=0.9), shots_below_ceiling(curve, (1, 2, 4, 8), ceiling=1.0)
    ((2, 4), (1, 2, 4))

    Raises:
        ConfigError: A candidate is not a shot count of ``performance``, or it has no task but Null.
    """
    accuracy = _real_accuracy(performance, candidates)
    below = [s for s in sorted(accuracy) if accuracy[s] < ceiling]
    others = [s for s in sorted(accuracy) if s not in below]
    return tuple(sorted(below + others[: max(0, minimum - len(below))]))


def _real_accuracy(performance: Performance, candidates: Sequence[int]) -> dict[int, float]:
    """Mean accuracy over the non-Null tasks of ``performance`` at each of the ``candidates`` shot counts."""
    missing = sorted(set(candidates) - set(performance.shots))
    real = real_tasks(performance.task_names)
    if missing or not real or not performance.higher_is_better:
        raise ConfigError(
            f"Choosing shot counts needs an accuracy curve of the candidates {sorted(set(candidates))} on tasks other "
            f"than Null; got a {performance.metric} curve at shots {list(performance.shots)} of tasks "
            f"{list(performance.task_names)}. Run ICLPerformance (metric 'accuracy') at every candidate shot count."
        )
    return {s: float(performance.values[real, performance.shots.index(s)].nanmean()) for s in sorted(set(candidates))}


def choose_analysis_shots(performance: Performance, config: DemoConfig) -> AnalysisShots:
    """Where TD→accuracy and patching run: shot counts of ``config.td_accuracy_shots`` below ``config.ceiling``.

    TD→accuracy uses :func:`shots_below_ceiling` (at least two shot counts); patching uses the largest shot count
    below the ceiling (the prompts carry the most evidence of their task while a correct vector can still help),
    or, when every candidate is at ceiling, the smallest candidate.
    """
    candidates = config.td_accuracy_shots
    td = shots_below_ceiling(performance, candidates, config.ceiling)
    accuracy = _real_accuracy(performance, candidates)
    below = [s for s in sorted(accuracy) if accuracy[s] < config.ceiling]
    patching = below[-1] if below else min(candidates)
    return AnalysisShots(td, patching, accuracy, float(config.ceiling))


def analysis_shots(trained: TrainedModel, config: DemoConfig) -> AnalysisShots:
    """:func:`choose_analysis_shots` on the trained model's ICL accuracy at ``config.td_accuracy_shots``.

    The curve is measured on the prompts the ICL-performance analysis scores (``config.n_per_task`` per task,
    ``config.seed``; the prompts of a shot count depend only on the seed and the count), so its numbers are that
    analysis's numbers at the same shot counts.
    """
    analysis = ICLPerformance(shots=config.td_accuracy_shots, n_bootstrap=0)
    curve = analysis.run(trained.model, trained.pool, config.n_per_task, config.seed)
    return choose_analysis_shots(curve, config)
