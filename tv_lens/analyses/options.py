"""Options several analyses share, declared once: an analysis config inherits the groups it uses.

The shared options are keyword-only, so each analysis's own options keep their positions:
``HeadAblation("mean", rows_per_pass=128)``. Each group checks its values when a config is built.

>>> from tv_lens.analyses import TaskVectorPatching
>>> TaskVectorPatching(n_bootstrap=0).rows_per_pass
512
"""

from __future__ import annotations

from dataclasses import dataclass

from tv_lens.stats.bootstrap import check_bootstrap

__all__ = ["N_PER_TASK", "CausalOptions", "IntervalOptions", "PassOptions"]

N_PER_TASK = 100
"""Prompts per task that every analysis's ``run(model, pool, ...)`` samples by default (Han et al.'s 100)."""


@dataclass(frozen=True, kw_only=True)
class PassOptions:
    """How prompts go through the model.

    Attributes:
        batch_size: Prompts per forward pass that reads representations or activations.
        progress: Show progress bars.
    """

    batch_size: int = 64
    progress: bool = False


@dataclass(frozen=True, kw_only=True)
class IntervalOptions:
    """The bootstrap intervals of a result's means.

    Attributes:
        n_bootstrap: Bootstrap resamples (0: no intervals, NaN).
        ci: Confidence level in (0, 1).
    """

    n_bootstrap: int = 1000
    ci: float = 0.95

    def __post_init__(self) -> None:
        check_bootstrap(self.n_bootstrap, self.ci)


@dataclass(frozen=True, kw_only=True)
class CausalOptions(IntervalOptions, PassOptions):
    """The options of an analysis that intervenes on the model: intervals, passes, and the rows of a patched pass.

    Attributes:
        rows_per_pass: Prompt copies per patched forward pass (halved on running out of memory; the result
            records the size that ran).
    """

    rows_per_pass: int = 512
