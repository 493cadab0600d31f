"""Regression ICL tasks (Garg et al.): prompts of interleaved input and output vectors.

A prompt is ``x_1, y_1, ..., x_n, y_n, x_q, y_q``, one vector per position (see
:mod:`tv_lens.tasks.regression_batch`): inputs ``x ~ N(0, I_d)`` and outputs ``y = f_w(x) + noise``, written
``[y, 0, ..., 0]``. A model trained on such prompts predicts every ``y_j`` at ``x_j``'s position.

**What is latent.** Every prompt draws its own weight vector ``w ~ N(0, I_d)``, as in Garg et al. and in Han
et al.'s sparse mixture (a new ``w`` per sequence, masked to the sequence's basis), so the demonstrations must
reveal ``w``. The latent *task* the pool labels (what task decodability decodes, what a task vector averages
over) is the function family or the sparse basis, never ``w``. ``RegressionBatch.weights`` keeps each ``w``.

Families (``d`` = input width):

- ``linear``: ``y = w·x``.
- ``sparse_linear(b)``: ``w`` zero outside block ``b`` of ``n_bases`` disjoint blocks of ``d / n_bases``
  coordinates (Han et al.: d = 16, 4 blocks of 4); ``sparse_linear`` without a basis picks one per prompt.
- ``leaky_relu``: ``y = LeakyReLU(w·x)``; the slope is not stated by Han et al. (default 0.01, PyTorch's).
- ``quadratic``: ``y = (x ⊙ x)·w / √3``, scaled to the variance of ``linear`` as in Garg et al.'s code.
- ``sinusoidal``: ``y = sin(w·x / √d)``, an argument of about unit variance (Yang et al.'s exact
  parametrisation is not verified; documented assumption).
- ``shifted_linear(t)``: ``y = (w + μ_t)·x``, tasks that differ in the mean of their weights (``μ_t = shift · e_t``
  in :func:`shifted_linear_pool`): a mixture whose latent task moves ``w`` itself, where the sparse mixture only
  masks it.

**Null task.** Its outputs are draws of a random real task of the pool (fresh ``w``) at fresh inputs ``x'``
independent of the prompt's: they follow the pool's output distribution but say nothing about their ``x``, nor
about the query. Label noise replaces a demonstration's ``y`` by such a draw. Observation noise
(``noise_std``) is added to every output, demonstrations and query alike (Garg et al.'s noisy regression).

>>> pool = sparse_linear_pool(d=8, n_bases=2)
>>> batch = pool.sample(n_per_task=4, n_shots=(2, 5), seed=0)
>>> batch.task_names, batch.inputs.shape[-1], batch.answers.shape
(('sparse_linear(0)', 'sparse_linear(1)', 'null'), 8, torch.Size([12, 1]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from tv_lens.checks import is_finite_number, is_int
from tv_lens.errors import TaskError
from tv_lens.tasks.pool import ShotSpec, _shot_choices, check_batch_fits, check_sample_arguments, seeded_generator
from tv_lens.tasks.pool_checks import PoolTasks
from tv_lens.tasks.regression_batch import RegressionBatch

__all__ = [
    "REGRESSION_FAMILIES",
    "RegressionPool",
    "RegressionTask",
    "leaky_relu_task",
    "linear_task",
    "quadratic_task",
    "regression_pool",
    "shifted_linear_pool",
    "shifted_linear_task",
    "sinusoidal_task",
    "sparse_linear_pool",
    "sparse_linear_task",
]

RegressionFn = Callable[[Float[Tensor, "n k d"], Float[Tensor, "n d"]], Float[Tensor, "n k"]]


@dataclass(frozen=True)
class RegressionTask:
    """A family of functions ``f_w``: the rule ``fn(x, w)`` and where ``w`` may be non-zero.

    Attributes:
        name: Task name, unique within a pool.
        fn: Maps inputs ``[n, k, d]`` and one weight vector per prompt ``[n, d]`` to outputs ``[n, k]``.
        supports: Coordinate sets ``w`` may live on; each prompt masks ``w ~ N(0, I)`` to one of them,
            uniformly. ``None``: every coordinate.
    """

    name: str
    fn: RegressionFn
    supports: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TaskError(f"RegressionTask name must be a non-empty string, got {self.name!r}.")
        if not callable(self.fn):
            raise TaskError(f"RegressionTask {self.name!r}: fn must be callable (x [n, k, d], w [n, d]) -> [n, k].")
        if self.supports is not None:
            object.__setattr__(self, "supports", _supports(self.name, self.supports))


def _supports(name: str, supports: object) -> tuple[tuple[int, ...], ...]:
    """``supports`` as a tuple of non-empty tuples of coordinate indices, or a :class:`TaskError`."""
    message = (
        f"RegressionTask {name!r}: supports must be non-empty sets of coordinate indices such as ((0, 1), (2, 3)), "
        f"or None for every coordinate; got {supports!r:.80}."
    )
    if isinstance(supports, (str, bytes)) or not isinstance(supports, Sequence) or not supports:
        raise TaskError(message)
    sets = []
    for support in supports:
        if isinstance(support, (str, bytes)) or not isinstance(support, Sequence) or not support:
            raise TaskError(message)
        if not all(is_int(c) for c in support):
            raise TaskError(message)
        sets.append(tuple(support))
    return tuple(sets)


def _linear(x: Tensor, w: Tensor) -> Tensor:
    return torch.einsum("nkd,nd->nk", x, w)


def _leaky_relu(x: Tensor, w: Tensor, negative_slope: float) -> Tensor:
    return F.leaky_relu(_linear(x, w), negative_slope)


def _quadratic(x: Tensor, w: Tensor) -> Tensor:
    return _linear(x * x, w) / math.sqrt(3.0)


def _sinusoidal(x: Tensor, w: Tensor) -> Tensor:
    return torch.sin(_linear(x, w) / math.sqrt(x.shape[-1]))


def linear_task() -> RegressionTask:
    """``y = w·x``."""
    return RegressionTask("linear", _linear)


def sparse_linear_task(basis: int | None, n_bases: int = 4, d: int = 16) -> RegressionTask:
    """``y = w·x`` with ``w`` on block ``basis`` of ``n_bases`` disjoint coordinate blocks (``None``: any block).

    Raises:
        TaskError: ``d`` is not a multiple of ``n_bases`` (too small for the blocks), or ``basis`` is out of range.
    """
    if not all(is_int(v) for v in (n_bases, d)):
        raise TaskError(f"n_bases and d must be ints, got n_bases={n_bases!r}, d={d!r}; e.g. n_bases=4, d=16.")
    if n_bases < 1 or d < n_bases or d % n_bases:
        raise TaskError(
            f"Input width too small or uneven for the bases: d={d} must be a multiple of n_bases={n_bases} "
            f"(e.g. d={max(n_bases, 1) * 4} for blocks of 4)."
        )
    size = d // n_bases
    blocks = tuple(tuple(range(b * size, (b + 1) * size)) for b in range(n_bases))
    if basis is None:
        return RegressionTask("sparse_linear", _linear, blocks)
    if not is_int(basis) or not 0 <= basis < n_bases:
        raise TaskError(f"basis must lie in 0 .. {n_bases - 1} (or None for a random one), got {basis}.")
    return RegressionTask(f"sparse_linear({basis})", _linear, (blocks[basis],))


def _shifted_linear(x: Tensor, w: Tensor, mean: Tensor) -> Tensor:
    if len(mean) != w.shape[-1]:
        raise TaskError(
            f"A shifted_linear task's mean has {len(mean)} entries but the pool's inputs have d={w.shape[-1]}; "
            "give one entry per input coordinate (or build the pool with that d)."
        )
    return _linear(x, w + mean.to(w))


def shifted_linear_task(mean: Sequence[float] | Tensor, name: str = "shifted_linear") -> RegressionTask:
    """``y = (w + mean)·x``: linear regression whose weights ``w ~ N(0, I)`` are centred on ``mean`` ``[d]``.

    Raises:
        TaskError: ``mean`` is not a non-empty 1-D sequence of finite numbers.
    """
    if isinstance(mean, Tensor):
        readable = mean.ndim == 1 and not mean.is_meta and not mean.is_complex()
        values = mean.detach().to("cpu", torch.float64).tolist() if readable else None
    elif isinstance(mean, Sequence) and not isinstance(mean, (str, bytes)):
        values = list(mean)
    else:
        values = None
    if not values or not all(is_finite_number(v) for v in values):
        raise TaskError(f"mean must be a non-empty 1-D sequence of finite numbers (one per input), got {mean!r:.80}.")
    return RegressionTask(name, partial(_shifted_linear, mean=torch.tensor(values, dtype=torch.float32)))


def leaky_relu_task(negative_slope: float = 0.01) -> RegressionTask:
    """``y = LeakyReLU(w·x)`` with the given negative slope."""
    return RegressionTask("leaky_relu", partial(_leaky_relu, negative_slope=negative_slope))


def quadratic_task() -> RegressionTask:
    """``y = (x ⊙ x)·w / √3``."""
    return RegressionTask("quadratic", _quadratic)


def sinusoidal_task() -> RegressionTask:
    """``y = sin(w·x / √d)``."""
    return RegressionTask("sinusoidal", _sinusoidal)


@dataclass(frozen=True)
class RegressionPool(PoolTasks):
    """Regression tasks sharing one input distribution ``x ~ N(0, I_d)``, plus optionally the Null task.

    Attributes:
        tasks: The families (at least one; names unique, ``"null"`` reserved).
        d: Input width (``d_in`` of a model; outputs are written in the same width).
        null: Whether to add the Null task.
        noise_std: Standard deviation of the Gaussian noise added to every output.
    """

    tasks: tuple[RegressionTask, ...]
    d: int = 16
    null: bool = False
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        self._check_tasks(RegressionTask, "linear_task()")
        if not is_int(self.d) or self.d < 1:
            raise TaskError(f"d (the input width) must be a positive int, got {self.d!r}.")
        for task in self.tasks:
            coords = [c for support in task.supports or () for c in support]
            if coords and (min(coords) < 0 or max(coords) >= self.d):
                raise TaskError(
                    f"Task {task.name!r} puts weights on coordinates up to {max(coords)}, outside d={self.d}; "
                    f"build it for d={self.d} or use a pool with d > {max(coords)}."
                )
        noise = self.noise_std
        if not is_finite_number(noise) or noise < 0:
            raise TaskError(f"noise_std must be a finite number >= 0, got {self.noise_std!r}.")

    @property
    def d_in(self) -> int:
        """Width of the prompt vectors (a model's ``d_in``)."""
        return self.d

    @property
    def d_out(self) -> int:
        """Width of the outputs (a model's ``d_out``): 1."""
        return 1

    def sample(self, n_per_task: int, n_shots: ShotSpec, seed: int, label_noise: float = 0.0) -> RegressionBatch:
        """Sample ``n_per_task`` prompts of every task (Null included), ordered by task id.

        Args:
            n_per_task: Prompts per task (>= 1).
            n_shots: Demonstrations per prompt: an int, an inclusive ``(min, max)`` tuple or a ``range``.
            seed: Seed of the local generator; the same seed gives an identical batch.
            label_noise: Probability in ``[0, 1)`` that a demonstration's output of a real task is replaced by
                a Null-style random output; queries are never corrupted.
        """
        check_sample_arguments(n_per_task, label_noise)
        choices = _shot_choices(n_shots)
        gen = seeded_generator(seed)
        n_real, b = len(self.tasks), len(self) * n_per_task
        check_batch_fits(n_per_task, b, choices.max, 4 * 2 * self.d)  # x and x_alt, float32, at the least
        task_ids = torch.arange(len(self)).repeat_interleave(n_per_task)
        shots = choices.draw(b, gen)
        n_slot = int(shots.max()) + 1
        # Every draw happens whatever the options, so options change only what they are about.
        x, w = self._draw(b, n_slot, gen)
        x_alt, w_alt = self._draw(b, n_slot, gen)
        alt_task = torch.randint(n_real, (b,), generator=gen)
        noise = torch.randn((b, n_slot), generator=gen) * self.noise_std
        is_real = task_ids < n_real
        is_demo = torch.arange(n_slot)[None, :] < shots[:, None]
        noisy = (torch.rand((b, n_slot), generator=gen) < label_noise) & is_demo & is_real[:, None]

        w_task = torch.zeros_like(w)
        y = torch.zeros(b, n_slot)
        y_alt = torch.zeros(b, n_slot)
        for tid, task in enumerate(self.tasks):
            rows = task_ids == tid
            w_task[rows] = self._mask(task, w[rows], gen)
            y[rows] = self._apply(task, x[rows], w_task[rows])
            alt = alt_task == tid
            y_alt[alt] = self._apply(task, x_alt[alt], self._mask(task, w_alt[alt], gen))
        y = torch.where(is_real[:, None] & ~noisy, y, y_alt) + noise
        weights = torch.where(is_real[:, None], w_task, torch.nan)
        return RegressionBatch.from_pairs(x, y, shots, task_ids, self.task_names, noisy[:, :-1], weights)

    def _draw(self, b: int, n_slot: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return torch.randn((b, n_slot, self.d), generator=gen), torch.randn((b, self.d), generator=gen)

    def _mask(self, task: RegressionTask, w: Float[Tensor, "n d"], gen: torch.Generator) -> Float[Tensor, "n d"]:
        """``w`` restricted to one of the task's supports per row (drawn uniformly)."""
        if task.supports is None:
            return w
        masks = torch.zeros(len(task.supports), self.d)
        for i, support in enumerate(task.supports):
            masks[i, list(support)] = 1.0
        return w * masks[torch.randint(len(task.supports), (len(w),), generator=gen)]

    def _apply(self, task: RegressionTask, x: Float[Tensor, "n k d"], w: Float[Tensor, "n d"]) -> Tensor:
        out = torch.as_tensor(task.fn(x, w), dtype=torch.float32)
        if out.shape != x.shape[:2]:
            raise TaskError(f"Task {task.name!r} returned shape {tuple(out.shape)}; expected {tuple(x.shape[:2])}.")
        if not torch.isfinite(out).all():
            raise TaskError(f"Task {task.name!r} returned NaN or infinite outputs; its fn must be finite.")
        return out


_FAMILIES: dict[str, Callable[[int], RegressionTask]] = {
    "linear": lambda d: linear_task(),
    "sparse_linear": lambda d: sparse_linear_task(None, n_bases=4, d=d),
    "leaky_relu": lambda d: leaky_relu_task(),
    "quadratic": lambda d: quadratic_task(),
    "sinusoidal": lambda d: sinusoidal_task(),
}
REGRESSION_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
"""Valid family names of :func:`regression_pool`."""


def regression_pool(
    families: Sequence[str] = REGRESSION_FAMILIES,
    d: int = 16,
    null: bool = True,
    noise_std: float = 0.0,
) -> RegressionPool:
    """One task per function family (``sparse_linear``: 4 bases, a random one per prompt).

    Args:
        families: Names among ``linear, sparse_linear, leaky_relu, quadratic, sinusoidal``.
        d: Input width.
        null: Add the Null task.
        noise_std: Output noise standard deviation.
    """
    if not isinstance(families, (str, Sequence)):
        raise TaskError(f"families must be family names such as ('linear', 'quadratic'), got {families!r:.80}.")
    names = (families,) if isinstance(families, str) else tuple(families)
    unknown = [name for name in names if not isinstance(name, str) or name not in _FAMILIES]
    if unknown or not names:
        raise TaskError(f"Unknown regression family {unknown or list(names)}; valid families are {list(_FAMILIES)}.")
    return RegressionPool(tuple(_FAMILIES[name](d) for name in names), d=d, null=null, noise_std=noise_std)


def sparse_linear_pool(d: int = 16, n_bases: int = 4, null: bool = True, noise_std: float = 0.0) -> RegressionPool:
    """Han et al.'s mixture of sparse linear regressions: one task per basis (disjoint coordinate block).

    Args:
        d: Input width (a multiple of ``n_bases``).
        n_bases: Number of disjoint blocks, one latent task each.
        null: Add the Null task.
        noise_std: Output noise standard deviation (Han et al.: 0.1 or variance 0.01, unstated which).
    """
    tasks = tuple(sparse_linear_task(b, n_bases, d) for b in range(n_bases))
    return RegressionPool(tasks, d=d, null=null, noise_std=noise_std)


def shifted_linear_pool(
    d: int = 4, n_tasks: int = 3, shift: float = 3.0, null: bool = True, noise_std: float = 0.0
) -> RegressionPool:
    """Linear regressions whose weights differ in their mean: task ``t`` draws ``w ~ N(shift · e_t, I)``.

    Args:
        d: Input width (at least ``n_tasks``).
        n_tasks: Number of tasks, one per coordinate direction ``e_t``; named ``shifted_linear(t)``.
        shift: Distance of each task's mean weights from the origin.
        null: Add the Null task.
        noise_std: Output noise standard deviation.

    Raises:
        TaskError: ``d`` or ``n_tasks`` is not an int, ``n_tasks`` is not in ``1 .. d``, or ``shift`` is not a
            finite number.
    """
    if not all(is_int(v) for v in (d, n_tasks)) or not 1 <= n_tasks <= d:
        raise TaskError(f"n_tasks must be an int in 1 .. d, got n_tasks={n_tasks!r}, d={d!r}; e.g. d=4, n_tasks=3.")
    if not is_finite_number(shift):
        raise TaskError(f"shift must be a finite number, got {shift!r}.")
    tasks = tuple(
        shifted_linear_task([float(shift) * (i == t) for i in range(d)], f"shifted_linear({t})") for t in range(n_tasks)
    )
    return RegressionPool(tasks, d=d, null=null, noise_std=noise_std)
