"""Options several analyses share, declared once: an analysis config inherits the groups it uses.

The shared options are keyword-only, so each analysis's own options keep their positions:
``HeadAblation("mean", rows_per_pass=128)``. Each group checks its values when a config is built, and a pure
function checks that the ``config=`` it is given is its analysis's config (:func:`analysis_config`).

>>> from tv_lens.analyses import TaskVectorPatching
>>> TaskVectorPatching(n_bootstrap=0).rows_per_pass
512
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from tv_lens.errors import ConfigError
from tv_lens.positions import check_batch_size
from tv_lens.stats.bootstrap import check_bootstrap
from tv_lens.tasks.pool import check_flag

__all__ = ["N_PER_TASK", "CausalOptions", "IntervalOptions", "PassOptions", "analysis_config"]

Config = TypeVar("Config")

N_PER_TASK = 100
"""Prompts per task that every analysis's ``run(model, pool, ...)`` samples by default (Han et al.'s 100)."""


def analysis_config(config: Any, kind: type[Config], name: str | None = None) -> Config:
    """The ``config=`` of a pure function: ``config`` itself, or the defaults ``kind()`` for ``None``.

    Args:
        config: What the caller passed.
        kind: The config class (or the option group) the function reads.
        name: The config class the message names, where ``kind`` is one of its option groups.

    Raises:
        ConfigError: ``config`` is not a ``kind`` (e.g. the config of another analysis).
    """
    if config is None:
        return kind()
    if not isinstance(config, kind):
        name = name or kind.__name__
        raise ConfigError(
            f"config must be a {name}, got a {type(config).__name__}; pass config={name}(...) with the options "
            "(or leave it out for the defaults)."
        )
    return config


@dataclass(frozen=True, kw_only=True)
class _Checked:
    """Base of the option groups: each group's ``__post_init__`` checks its values, then calls the next one's."""

    def __post_init__(self) -> None:
        """Nothing left to check (the end of the chain)."""


@dataclass(frozen=True, kw_only=True)
class PassOptions(_Checked):
    """How prompts go through the model.

    Attributes:
        batch_size: Prompts per plain forward pass (one that reads representations, activations or the clean
            outputs; an int >= 1). Intervention sweeps go by ``rows_per_pass``.
        progress: Show progress bars.
    """

    batch_size: int = 64
    progress: bool = False

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size)
        check_flag(self.progress, "progress", "show progress bars")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class IntervalOptions(_Checked):
    """The bootstrap intervals of a result's means.

    Attributes:
        n_bootstrap: Bootstrap resamples (0: no intervals, NaN).
        ci: Confidence level in (0, 1).
    """

    n_bootstrap: int = 1000
    ci: float = 0.95

    def __post_init__(self) -> None:
        check_bootstrap(self.n_bootstrap, self.ci)
        super().__post_init__()

    def interval_settings(self, seed: int) -> dict[str, Any]:
        """The bootstrap fields of a result computed with these options and ``seed``.

        ``ci_level``, ``n_bootstrap`` and ``seed`` (:class:`~tv_lens.results.BootstrapSettings`).
        """
        return {"ci_level": self.ci, "n_bootstrap": self.n_bootstrap, "seed": seed}


@dataclass(frozen=True, kw_only=True)
class CausalOptions(IntervalOptions, PassOptions):
    """The options of an analysis that intervenes on the model: intervals, passes, and the rows of a patched pass.

    Attributes:
        rows_per_pass: Prompt copies per patched forward pass (halved on running out of memory; the result
            records the size that ran).
    """

    rows_per_pass: int = 512
