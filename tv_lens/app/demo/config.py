"""The settings of a demo run: :class:`DemoConfig`, with the quick and full presets of the command line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, get_args

from tv_lens.analyses.patching import MODES as PATCHING_MODES
from tv_lens.app.run_files import check_settings
from tv_lens.checks import is_int, is_number
from tv_lens.errors import ConfigError
from tv_lens.models import ModelConfig
from tv_lens.models.builders import Backend
from tv_lens.training import Recipe, TrainConfig, recipes

__all__ = ["DemoConfig"]

# DemoConfig fields that decide the trained weights: a directory trained with other values cannot be reused.
TRAINING_FIELDS = ("recipe", "backend", "seed", "checkpoint_every")


@dataclass(frozen=True)
class DemoConfig:
    """Every setting of a demo run: which model is trained, and how many prompts each analysis uses.

    Attributes:
        recipe: Name of the training recipe (:data:`tv_lens.training.recipes`).
        backend: ``"auto"``, ``"hooked"`` (HookedTransformer) or ``"bridge"`` (TransformerBridge).
        seed: Seed of the model's initialisation, of the training prompts and of every analysis's prompts.
        checkpoint_every: Training steps between checkpoints (must divide the recipe's steps).
        n_per_task: Prompts per task for task decodability, geometry, TD→accuracy and ICL performance.
        causal_n_per_task: Prompts per task for patching, task-vector prompting and head ablation.
        emergence_n_per_task: Prompts per task scored at every checkpoint.
        performance_shots: Shot counts of the ICL-performance curve.
        td_accuracy_shots: Candidate shot counts of TD→accuracy and patching: those below ``ceiling`` are used
            (:func:`choose_analysis_shots`).
        ceiling: ICL accuracy (mean over the non-Null tasks) from which a shot count is at ceiling.
        n_bootstrap: Bootstrap resamples of every confidence interval.
        patching_mode: How task vectors are patched: ``"replace"``, ``"add"`` or ``"add_difference"``.
        finetune_k: Blocks trained in each variant of the finetuning experiment (first k vs last k).
        finetune_steps: Finetuning steps of each variant.
        finetune_n_per_task: Held-out prompts per task the finetuned variants are compared on.
    """

    recipe: str = "shots"
    backend: str = "auto"
    seed: int = 0
    checkpoint_every: int = 25
    n_per_task: int = 100
    causal_n_per_task: int = 50
    emergence_n_per_task: int = 50
    performance_shots: tuple[int, ...] = (0, 1, 2, 4, 8)
    td_accuracy_shots: tuple[int, ...] = (1, 2, 4, 8)
    ceiling: float = 0.95
    n_bootstrap: int = 1000
    patching_mode: str = "add"
    finetune_k: int = 1
    finetune_steps: int = 200
    finetune_n_per_task: int = 50

    def __post_init__(self) -> None:
        counts = ("n_per_task", "causal_n_per_task", "emergence_n_per_task", "finetune_n_per_task", "finetune_k")
        for name in (*counts, "checkpoint_every", "finetune_steps"):
            value = getattr(self, name)
            if not _is_count(value, 1):
                raise ConfigError(f"DemoConfig.{name} must be an int >= 1, got {value!r}.")
        for name in ("performance_shots", "td_accuracy_shots"):
            value = getattr(self, name)
            if not isinstance(value, list | tuple) or not value or not all(_is_count(s, 0) for s in value):
                raise ConfigError(
                    f"DemoConfig.{name} must be a non-empty list of ints >= 0, got {value!r}; e.g. [1, 2, 4]."
                )
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.recipe, str):
            raise ConfigError(f"DemoConfig.recipe must be a recipe name (a string), got {self.recipe!r}; e.g. 'quick'.")
        if not _is_count(self.seed, 0):
            raise ConfigError(f"DemoConfig.seed must be an int >= 0, got {self.seed!r}; e.g. seed=0.")
        if not _is_count(self.n_bootstrap, 0):
            raise ConfigError(
                f"DemoConfig.n_bootstrap must be an int >= 0 (0: no intervals), got {self.n_bootstrap!r}."
            )
        if not is_number(self.ceiling) or not 0 < self.ceiling <= 1:
            raise ConfigError(
                f"DemoConfig.ceiling is an accuracy in (0, 1], got {self.ceiling!r}; e.g. ceiling=0.95 (1: every "
                "shot count below perfect accuracy counts as below the ceiling)."
            )
        if self.patching_mode not in PATCHING_MODES:
            raise ConfigError(f"patching_mode must be one of {list(PATCHING_MODES)}, got {self.patching_mode!r}.")
        if self.backend not in get_args(Backend):
            raise ConfigError(f"backend must be one of {list(get_args(Backend))}, got {self.backend!r}.")

    @classmethod
    def full(cls, **overrides: Any) -> DemoConfig:
        """The full demo: ``recipes["shots"]`` (4 blocks, accuracy rising with shots), 100 prompts per task."""
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A minute-scale demo: ``recipes["quick"]`` (2 blocks, 6 shots, at ceiling from one shot), fewer prompts."""
        settings: dict[str, Any] = {
            "recipe": "quick",
            "checkpoint_every": 20,
            "n_per_task": 40,
            "causal_n_per_task": 24,
            "emergence_n_per_task": 24,
            "performance_shots": (0, 1, 2, 4, 6),
            "td_accuracy_shots": (1, 2, 4, 6),
            "n_bootstrap": 200,
            "finetune_steps": 100,
            "finetune_n_per_task": 30,
        }
        return cls(**{**settings, **overrides})

    def get_recipe(self) -> Recipe:
        """The training recipe (raises a ``TvLensError`` naming the available ones if it is unknown)."""
        return recipes[self.recipe]

    def model_config(self) -> ModelConfig:
        """The recipe's model, with this config's seed and backend."""
        return replace(self.get_recipe().model, seed=self.seed, backend=self.backend)  # type: ignore[arg-type]

    def train_config(self) -> TrainConfig:
        """The recipe's training settings, with this config's seed and checkpoint interval."""
        base = self.get_recipe().train
        steps = base.schedule.max_steps
        if steps % self.checkpoint_every:
            raise ConfigError(
                f"checkpoint_every={self.checkpoint_every} does not divide the recipe's {steps} steps, so the "
                f"trained model would have no checkpoint; pick a divisor of {steps}."
            )
        return replace(base, data=replace(base.data, seed=self.seed), checkpoint_every=self.checkpoint_every)

    @property
    def n_shots(self) -> int:
        """Shots of the analyses' prompts: the largest the recipe trains on."""
        shots = self.get_recipe().train.data.n_shots
        return shots if isinstance(shots, int) else shots[1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (stored in ``run.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        check_settings(cls, data)
        return cls(**data)

    def training_settings(self) -> dict[str, Any]:
        """The settings that decide the trained weights."""
        return {name: getattr(self, name) for name in TRAINING_FIELDS}


def _is_count(value: Any, low: int) -> bool:
    return is_int(value) and value >= low
