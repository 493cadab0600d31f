"""Analyses of task representations: each a config dataclass with ``run(model, pool, ...) -> Result``.

Under every config sits a pure function on plain tensors that other tools can call directly:
:func:`task_decodability`, :func:`icl_performance`, :func:`project`, :func:`fit_td_accuracy`,
:func:`detect_jump` / :func:`detect_coupling`.
Results live in :mod:`tv_lens.results` (tables, figures, save / load).
"""

from tv_lens.analyses.decodability import TaskDecodability, task_decodability
from tv_lens.analyses.emergence import Emergence, detect_coupling, detect_jump
from tv_lens.analyses.geometry import Geometry, project
from tv_lens.analyses.performance import ICLPerformance, icl_performance, score_batch
from tv_lens.analyses.prediction import TdAccuracy, fit_td_accuracy, ols
from tv_lens.analyses.suite import Suite

__all__ = [
    "Emergence",
    "Geometry",
    "ICLPerformance",
    "Suite",
    "TaskDecodability",
    "TdAccuracy",
    "detect_coupling",
    "detect_jump",
    "fit_td_accuracy",
    "icl_performance",
    "ols",
    "project",
    "score_batch",
    "task_decodability",
]
