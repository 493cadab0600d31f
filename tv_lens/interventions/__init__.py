"""Interventions: write to hook points per prompt, verified, one pass or a sweep of many.

- :mod:`~tv_lens.interventions.specs`: what an intervention is (:func:`replace`, :func:`add`, :func:`ablate_head`,
  :func:`knockout`).
- :mod:`~tv_lens.interventions.plans`: an intervention resolved against a batch (:func:`resolve`) and the hook
  that writes it.
- :mod:`~tv_lens.interventions.engine`: :func:`run_with_interventions` runs a batch under a list of them and
  checks that each one wrote.
- :mod:`~tv_lens.interventions.masking`: attention masking through hook points (``blocked_keys``), so that
  several continuations of one prefix share a row, and the check of how a model's attention is knocked out;
  :mod:`~tv_lens.interventions.knockouts` resolves and applies a :func:`knockout`.
- :mod:`~tv_lens.interventions.sweep`: :func:`run_sweep` runs many interventions (cells) over the same prompts,
  stacked on the batch dimension, the analyses' causal engine; :mod:`~tv_lens.interventions.cells` holds what a
  sweep runs (aligned prompts, cells) and returns, :mod:`~tv_lens.interventions.sweep_passes` its passes.
"""

from tv_lens.interventions.engine import InterventionRun, run_with_interventions
from tv_lens.interventions.knockouts import HiddenKeysError
from tv_lens.interventions.masking import (
    BlockedKeysPrecisionError,
    WindowedRowError,
    knockout_strategy,
    mask_hooks,
    masking_strategy,
    supports_blocked_keys,
)
from tv_lens.interventions.plans import WritePlan, resolve
from tv_lens.interventions.specs import Intervention, Positions, Rows, ablate_head, add, knockout, replace
from tv_lens.interventions.sweep import AlignedPrompts, Cell, Score, Sweep, align, run_sweep, start_skips_blocks

__all__ = [
    "AlignedPrompts",
    "BlockedKeysPrecisionError",
    "Cell",
    "HiddenKeysError",
    "Intervention",
    "InterventionRun",
    "Positions",
    "Rows",
    "Score",
    "Sweep",
    "WindowedRowError",
    "WritePlan",
    "ablate_head",
    "add",
    "align",
    "knockout",
    "knockout_strategy",
    "mask_hooks",
    "masking_strategy",
    "replace",
    "resolve",
    "run_sweep",
    "run_with_interventions",
    "start_skips_blocks",
    "supports_blocked_keys",
]
