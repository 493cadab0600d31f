"""Training settings as small frozen dataclasses, composed into one :class:`TrainConfig`.

Data (which prompts), optimiser (AdamW), schedule (warmup + cosine learning rate), and the two optional
variants of a run: the TVP-loss (:class:`TVPConfig`) and layer-restricted finetuning
(:class:`FinetuneConfig`, optionally with :class:`LoRAConfig`). The model's shape is a
:class:`~tv_lens.models.ModelConfig`. A config round-trips through plain dicts (``to_dict`` /
``from_dict``), which is how checkpoints store it and how a resumed run is checked against it.

>>> config = TrainConfig(schedule=ScheduleConfig(max_steps=200, warmup_steps=20))
>>> TrainConfig.from_dict(config.to_dict()) == config
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal

from tv_lens.checks import is_finite_number, is_int
from tv_lens.errors import ConfigError
from tv_lens.training.config_checks import check, check_shots
from tv_lens.training.finetune_config import FinetuneConfig, LoRAConfig

__all__ = [
    "DataConfig",
    "FinetuneConfig",
    "LoRAConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TVPConfig",
    "TrainConfig",
]

Shots = int | tuple[int, int]


@dataclass(frozen=True)
class DataConfig:
    """Which prompts a run trains and evaluates on.

    Every step samples a fresh batch, ``pool.sample(n_per_task, n_shots, seed=<derived from seed and step>)``;
    the held-out evaluation prompts are sampled once from a seed stream the training batches never use.

    Attributes:
        n_per_task: Training prompts per task per step (the batch holds ``n_per_task * len(pool)``).
        n_shots: Demonstrations per training prompt: an int or an inclusive ``(min, max)``.
        label_noise: Probability that a training demonstration's label is wrong (left out of the loss).
        seed: Seed of the training and held-out prompt streams.
        eval_n_per_task: Held-out prompts per task.
        eval_n_shots: Demonstrations per held-out prompt (``None``: the largest training ``n_shots``).
        eval_batch_size: Prompts per forward pass during evaluation.
        micro_batch: Prompts per forward and backward pass of a training step (``None``: the whole batch at
            once). The step's gradient is accumulated over the micro-batches, each weighted by its share of the
            loss's terms, so it is the whole batch's gradient (up to floating-point summation order; dropout draws
            its masks per pass). A step that runs out of accelerator memory halves it and starts again.
    """

    n_per_task: int = 16
    n_shots: Shots = 8
    label_noise: float = 0.0
    seed: int = 0
    eval_n_per_task: int = 64
    eval_n_shots: Shots | None = None
    eval_batch_size: int = 256
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_per_task", "eval_n_per_task", "eval_batch_size", "micro_batch"):
            value = getattr(self, name)
            check(
                (value is None and name == "micro_batch") or (is_int(value) and value >= 1),
                f"DataConfig.{name} must be an int >= 1{' or None' if name == 'micro_batch' else ''}, got {value!r}.",
            )
        check_shots(self.n_shots, "n_shots")
        if self.eval_n_shots is not None:
            check_shots(self.eval_n_shots, "eval_n_shots")
        check(
            is_finite_number(self.label_noise) and 0.0 <= self.label_noise < 1.0,
            f"label_noise must be a number in [0, 1), got {self.label_noise!r}.",
        )
        check(is_int(self.seed) and self.seed >= 0, f"DataConfig.seed must be an int >= 0, got {self.seed!r}.")

    @property
    def held_out_shots(self) -> Shots:
        """Shots of the held-out prompts (``eval_n_shots``, else the largest training ``n_shots``)."""
        if self.eval_n_shots is not None:
            return self.eval_n_shots
        return self.n_shots if isinstance(self.n_shots, int) else self.n_shots[1]


@dataclass(frozen=True)
class OptimConfig:
    """AdamW settings; weight decay applies to 2-D and larger weights only (not to biases or norms).

    Attributes:
        weight_decay: Decoupled weight decay of the 2-D+ weights.
        betas: Adam's moment decay rates.
        eps: Adam's denominator epsilon.
        grad_clip: Clip the global gradient norm to this value (``None``: no clipping).
    """

    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        check(
            is_finite_number(self.weight_decay) and self.weight_decay >= 0,
            f"weight_decay must be a number >= 0, got {self.weight_decay!r}.",
        )
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        check(
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(is_finite_number(b) and 0.0 <= b < 1.0 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas!r}; e.g. betas=(0.9, 0.95).",
        )
        check(is_finite_number(self.eps) and self.eps > 0, f"eps must be a number > 0, got {self.eps!r}.")
        check(
            self.grad_clip is None or (is_finite_number(self.grad_clip) and self.grad_clip > 0),
            f"grad_clip must be a number > 0 or None (no clipping), got {self.grad_clip!r}.",
        )


@dataclass(frozen=True)
class ScheduleConfig:
    """Length of the run and its learning rate: linear warmup, then cosine decay to ``min_lr``.

    Attributes:
        max_steps: Optimiser steps of the whole run.
        lr: Peak learning rate, reached at the end of warmup.
        min_lr: Learning rate at ``max_steps``.
        warmup_steps: Steps of linear warmup from ``lr / warmup_steps`` to ``lr``.
    """

    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        check(is_int(self.max_steps) and self.max_steps >= 1, f"max_steps must be an int >= 1, got {self.max_steps!r}.")
        check(
            is_int(self.warmup_steps) and 0 <= self.warmup_steps <= self.max_steps,
            f"warmup_steps must be an int in [0, max_steps={self.max_steps}], got {self.warmup_steps!r}.",
        )
        check(
            is_finite_number(self.lr) and is_finite_number(self.min_lr) and 0 <= self.min_lr <= self.lr,
            f"Need numbers 0 <= min_lr <= lr, got min_lr={self.min_lr!r}, lr={self.lr!r}.",
        )


@dataclass(frozen=True)
class TVPConfig:
    """The TVP-loss term ``lam * L_TVP`` (see :mod:`tv_lens.training.tvp_loss`).

    Attributes:
        layer: Block whose output (``resid_post``) is read at the query's pre-answer position of the context
            pass and written at the zero-shot query's pre-answer position (TransformerLens block index).
        lam: The weight λ of the TVP term (>= 0; 0 trains plain ICL but still reports TVP accuracy).
        mode: ``"replace"`` the zero-shot residual with the vector, or ``"add"`` it.
        detach: Stop gradients through the extracted vector (default ``False``: they flow into the
            blocks up to ``layer`` of the context pass).
        source: Whose context pass each zero-shot query gets its vector from: ``"other_prompt"`` (default:
            the next prompt of the same task in the batch whose query differs, so the vector carries the task but
            not the query's own answer) or ``"same_prompt"`` (the prompt's own context pass, which also holds its
            query).
    """

    layer: int
    lam: float = 1.0
    mode: Literal["replace", "add"] = "replace"
    detach: bool = False
    source: Literal["other_prompt", "same_prompt"] = "other_prompt"

    def __post_init__(self) -> None:
        check(
            is_int(self.layer) and self.layer >= 0, f"TVPConfig.layer must be a block index >= 0, got {self.layer!r}."
        )
        check(
            is_finite_number(self.lam) and self.lam >= 0,
            f"TVP-loss weight lam (λ) must be >= 0, got {self.lam!r}; use lam=0 to train without the TVP term.",
        )
        check(
            isinstance(self.detach, bool),
            f"TVPConfig.detach must be True or False (stop gradients through the vector), got {self.detach!r}.",
        )
        check(self.mode in ("replace", "add"), f"TVPConfig.mode must be 'replace' or 'add', got {self.mode!r}.")
        check(
            self.source in ("other_prompt", "same_prompt"),
            f"TVPConfig.source must be 'other_prompt' or 'same_prompt', got {self.source!r}.",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the model's config and the task pool).

    Attributes:
        data: Training and held-out prompts.
        optim: AdamW settings.
        schedule: Number of steps and learning-rate schedule.
        tvp: Add the TVP-loss term (``None``: plain ICL loss).
        finetune: Train only some blocks (``None``: every parameter).
        eval_every: Evaluate on the held-out prompts every this many steps (and after the last step).
        checkpoint_every: Write a checkpoint every this many steps (0: none; needs a checkpoint directory).
    """

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    tvp: TVPConfig | None = None
    finetune: FinetuneConfig | None = None
    eval_every: int = 100
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        for name in ("data", "optim", "schedule", "tvp", "finetune"):
            value, kind = getattr(self, name), _NESTED[name]
            optional = name in ("tvp", "finetune")
            check(
                isinstance(value, kind) or (optional and value is None),
                f"TrainConfig.{name} must be a {kind.__name__}{' or None' if optional else ''}, got "
                f"{type(value).__name__} {value!r:.60}; build it with {kind.__name__}(...) (or use "
                "TrainConfig.from_dict for nested dicts).",
            )
        check(
            is_int(self.eval_every) and self.eval_every >= 1,
            f"eval_every must be an int >= 1, got {self.eval_every!r}.",
        )
        check(
            self.tvp is None or self.data.micro_batch is None,
            "DataConfig.micro_batch does not apply with TVP-loss: each zero-shot query takes the vector of another "
            "prompt of the batch, so the batch cannot be split; set micro_batch=None (or lower n_per_task).",
        )
        fewest = min(self.data.n_per_task, self.data.eval_n_per_task)
        check(
            self.tvp is None or self.tvp.source != "other_prompt" or fewest >= 2,
            "TVP-loss with source='other_prompt' gives each zero-shot query the vector of another prompt of its task, "
            f"so every task needs 2 prompts or more; got n_per_task={self.data.n_per_task} and eval_n_per_task="
            f"{self.data.eval_n_per_task}. Raise them to 2 or more, or use TVPConfig(source='same_prompt').",
        )
        check(
            is_int(self.checkpoint_every) and self.checkpoint_every >= 0,
            f"checkpoint_every must be an int >= 0 (0 = no checkpoints), got {self.checkpoint_every!r}.",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples kept), the form checkpoints store."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (lists are read back as tuples).

        Raises:
            ConfigError: ``data`` or a nested section is not a dict, has an unknown or missing field, or holds
                a value its config refuses.
        """
        return _build(cls, data, "TrainConfig")


_NESTED: dict[str, type] = {
    "data": DataConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "tvp": TVPConfig,
    "finetune": FinetuneConfig,
    "lora": LoRAConfig,
}


def _build(kind: type, data: Any, where: str) -> Any:
    """Rebuild a config dataclass from its dict: lists become tuples, nested dicts become their configs."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where} must be a dict of {kind.__name__} fields, got {type(data).__name__} {data!r:.60}; pass a "
            "dict of its fields, as TrainConfig.to_dict() writes it."
        )
    known = {f.name: f for f in fields(kind)}
    unknown = [name for name in data if name not in known]
    check(not unknown, f"Unknown {where} field(s) {sorted(unknown, key=repr)}; known: {sorted(known)}.")
    missing = [
        name for name, f in known.items() if f.default is MISSING and f.default_factory is MISSING and name not in data
    ]
    check(not missing, f"{where} lacks the required field(s) {missing}; add them (see {kind.__name__}).")
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in _NESTED and name in known and value is not None:
            values[name] = _build(_NESTED[name], value, f"{where}.{name}")
        else:
            values[name] = tuple(value) if isinstance(value, list) else value
    return kind(**values)
