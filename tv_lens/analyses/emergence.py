"""Emergence over training: do ICL performance and task decodability jump together?

Han et al. (§3.3, Figs. 2, 9–11) train a small transformer on a mixture of tasks and follow, over training,
the loss per task and the TD of every layer: the loss drops and TD jumps at the same time ("coupled
emergence"). :class:`Emergence` replays that on saved checkpoints: every checkpoint is run on the SAME
prompts (one seed), through any set of analyses (a :class:`~tv_lens.analyses.suite.Suite`, so the
representation analyses share one collect pass per checkpoint), plus one clean pass for the query accuracy
and loss per task. The time series go into an :class:`~tv_lens.results.emergence.EmergenceResult`.

The detector (:func:`detect_jump`) is deliberately simple and documented: a series "jumps" at the first
checkpoint where it has covered half of the way from its first value to its best value, provided that
improvement is at least ``min_rise`` (accuracy and TD: absolute, e.g. 0.2; a loss: a fraction of its
first value). Per task it reports the performance jump (accuracy for token tasks, loss for regression) and
the jump of that task's TD at the best block of the last checkpoint, and calls them coupled when both
exist and lie at most ``tolerance`` steps apart (default: the largest gap between checkpoints, i.e. the
same or adjacent checkpoints). Checkpoints far apart cannot resolve an order; save them densely around
the transition to test the claim.

A pretrained model's own training checkpoints (Pythia's, through ``boot_transformers(name, revision=...)``)
are ``(step, load)`` pairs: each is loaded when its turn comes and released before the next, so one model is
in memory at a time.

>>> detect_jump((0, 100, 200, 300), torch.tensor([0.2, 0.25, 0.9, 0.95]))
200
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from tv_lens.analyses.decodability import TaskDecodability
from tv_lens.analyses.options import N_PER_TASK, PassOptions
from tv_lens.analyses.performance import clean_outputs, score_outputs
from tv_lens.analyses.prompt_batches import PromptPool, sample_batch
from tv_lens.analyses.suite import Suite, analysis_tuple
from tv_lens.checks import is_finite_number, is_int, tensor_of
from tv_lens.errors import AnalysisError
from tv_lens.models.adapter import adapt
from tv_lens.results.decodability import Decodability, best_layer
from tv_lens.results.emergence import EmergenceResult
from tv_lens.results.suite import SuiteResult
from tv_lens.stats import group_means

__all__ = ["Emergence", "EmergenceResult", "detect_coupling", "detect_jump"]

CheckpointLike = str | os.PathLike[str] | Any | tuple[int, Any]
"""A checkpoint file, a loaded ``tv_lens.training.Checkpoint``, a ``(step, model)`` pair, or a ``(step, load)`` pair
whose ``load()`` returns the model (loaded when its turn comes, e.g. a pretrained model's training checkpoint)."""


def detect_jump(
    steps: Sequence[int],
    values: Float[Tensor, " step"],
    min_rise: float = 0.2,
    *,
    higher_is_better: bool = True,
    relative: bool = False,
) -> int | None:
    """The first step at which ``values`` covered half of the way from its first value to its best value.

    Args:
        steps: Step of each value, ascending.
        values: The series (accuracy, TD, or a loss with ``higher_is_better=False``).
        min_rise: Smallest improvement that counts; below it (or with NaN values) there is no jump.
        higher_is_better: Whether the series improves upwards.
        relative: Measure ``min_rise`` as a fraction of ``|first value|`` (for losses).

    Returns:
        The step of the jump, or ``None``.
    """
    _check_min_rise(min_rise, zero=True)
    series = [float(v) for v in tensor_of(values, "values", "one number per step").flatten()]
    if len(series) != len(steps):
        raise AnalysisError(f"detect_jump needs one value per step, got {len(series)} values for {len(steps)} steps.")
    if not series or any(math.isnan(v) for v in series):
        return None
    signed = series if higher_is_better else [-v for v in series]
    rise = max(signed) - signed[0]
    needed = min_rise * abs(series[0]) if relative else min_rise
    if rise <= 0 or rise < needed:
        return None
    halfway = signed[0] + rise / 2
    return int(next(step for step, v in zip(steps, signed, strict=True) if v >= halfway))


def detect_coupling(
    steps: Sequence[int],
    performance: Float[Tensor, "step task"],
    td: Float[Tensor, "step task"],
    min_rise: float = 0.2,
    tolerance: int | None = None,
    *,
    higher_is_better: bool = True,
) -> tuple[tuple[int | None, ...], tuple[int | None, ...], tuple[bool, ...]]:
    """Per task: the step performance jumps, the step TD jumps, and whether the two coincide.

    Args:
        steps: Training step of each row, ascending.
        performance: Accuracy per task (or a loss with ``higher_is_better=False``, whose ``min_rise`` is then
            relative to its first value).
        td: TD per task (at one layer).
        min_rise: Smallest improvement that counts as a jump (see :func:`detect_jump`).
        tolerance: Largest step distance of coupled jumps (``None``: the largest gap between steps).
        higher_is_better: Direction of ``performance``.

    Returns:
        ``(performance_jump, td_jump, coupled)``, one entry per task; a missing jump is ``None`` and never coupled.
    """
    expected = f"a [step={len(steps)}, task] tensor of numbers"
    performance, td = tensor_of(performance, "performance", expected), tensor_of(td, "td", expected)
    if performance.ndim != 2 or td.shape != performance.shape or performance.shape[0] != len(steps):
        raise AnalysisError(
            f"performance and td must both be [step={len(steps)}, task], got {tuple(performance.shape)} and "
            f"{tuple(td.shape)}."
        )
    _check_tolerance(tolerance)
    if tolerance is None:
        tolerance = max(_gaps(steps), default=0)
    performance_jump, td_jump, coupled = [], [], []
    for t in range(performance.shape[1]):
        relative = not higher_is_better
        p = detect_jump(steps, performance[:, t], min_rise, higher_is_better=higher_is_better, relative=relative)
        d = detect_jump(steps, td[:, t], min_rise)
        performance_jump.append(p)
        td_jump.append(d)
        coupled.append(p is not None and d is not None and abs(p - d) <= tolerance)
    return tuple(performance_jump), tuple(td_jump), tuple(coupled)


@dataclass(frozen=True)
class Emergence(PassOptions):
    """Configuration of an emergence analysis over training checkpoints.

    Attributes:
        analyses: Analyses run at every checkpoint (a :class:`TaskDecodability` is added if none is given).
        n_shots: Shots per prompt.
        min_rise: Smallest improvement that counts as a jump (see :func:`detect_jump`).
        tolerance: Largest step distance of coupled jumps (``None``: the largest gap between checkpoints).

    The keyword-only :class:`~tv_lens.analyses.options.PassOptions` (``batch_size``, ``progress`` over
    checkpoints) apply too.
    """

    analyses: tuple[Any, ...] = field(default_factory=lambda: (TaskDecodability(n_bootstrap=0),))
    n_shots: int = 4
    min_rise: float = 0.2
    tolerance: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared options
        analyses = analysis_tuple(self.analyses, "Emergence")
        if not any(isinstance(a, TaskDecodability) for a in analyses):
            analyses = (*analyses, TaskDecodability(n_bootstrap=0))
        object.__setattr__(self, "analyses", analyses)
        _check_min_rise(self.min_rise)
        _check_tolerance(self.tolerance)
        Suite(self.analyses)  # checks the analyses

    def run(
        self, checkpoints: Sequence[CheckpointLike], pool: PromptPool, n_per_task: int = N_PER_TASK, seed: int = 0
    ) -> EmergenceResult:
        """Run every checkpoint on the same ``n_per_task`` prompts per task (seeded) and detect the jumps.

        Raises:
            AnalysisError: Checkpoints without distinct steps, of models of other sizes (``n_layers``,
                ``d_model``, ``n_heads``, ``d_vocab``), or checkpoint files of different training runs (another
                training or model config): the checkpoints of one run are expected. Also ``checkpoints`` that
                are no list (a directory: pass ``list_checkpoints(dir)``), and checkpoint files whose run had no
                model config (their model cannot be rebuilt), before any checkpoint runs.
        """
        loaded = _sorted_checkpoints(checkpoints)
        suite = Suite(self.analyses, batch_size=self.batch_size)
        td_name = next(n for n, a in zip(suite.names or (), suite.analyses, strict=True) if _is_td(a))
        batch = sample_batch(pool, n_per_task, self.n_shots, seed)
        regression = bool(batch.answers.is_floating_point())
        snapshots: list[SuiteResult] = []
        series: dict[str, list[Tensor]] = {"accuracy": [], "loss": [], "td": [], "td_per_task": []}
        first: tuple[int, dict[str, int]] | None = None
        for step, load in tqdm(loaded, desc="checkpoints", disable=not self.progress):
            model = load()
            first = _same_sizes(first, step, model)
            snapshots.append(suite.run(model, pool, n_per_task=n_per_task, n_shots=self.n_shots, seed=seed))
            decodability = snapshots[-1][td_name]
            if not isinstance(decodability, Decodability):
                raise AnalysisError(f"The analysis {td_name!r} did not return a Decodability result.")
            outputs = clean_outputs(model, batch, self.batch_size)
            loss = score_outputs(outputs, batch, "mse" if regression else "cross_entropy")
            accuracy = torch.full_like(loss, math.nan) if regression else score_outputs(outputs, batch, "accuracy")
            series["accuracy"].append(group_means(accuracy.cpu(), batch.task_ids.cpu(), len(pool.task_names)))
            series["loss"].append(group_means(loss.cpu(), batch.task_ids.cpu(), len(pool.task_names)))
            series["td"].append(decodability.td)
            series["td_per_task"].append(decodability.per_task)
            last = decodability
            del model, outputs  # one model in memory: the next checkpoint loads after this one is released
        steps = tuple(step for step, _ in loaded)
        stacked = {name: torch.stack(values) for name, values in series.items()}
        performance = "loss" if regression else "accuracy"
        layers = last.layers
        best = best_layer(layers, stacked["td"][-1])
        tolerance = self.tolerance if self.tolerance is not None else max(_gaps(steps), default=0)
        performance_jump, td_jump, coupled = detect_coupling(
            steps,
            stacked[performance],
            stacked["td_per_task"][:, layers.index(best)],
            self.min_rise,
            tolerance,
            higher_is_better=not regression,
        )
        return EmergenceResult(
            steps=steps,
            accuracy=stacked["accuracy"],
            loss=stacked["loss"],
            td=stacked["td"],
            td_per_task=stacked["td_per_task"],
            layers=layers,
            task_names=tuple(pool.task_names),
            best_layer=best,
            performance=performance,
            performance_jump=performance_jump,
            td_jump=td_jump,
            coupled=coupled,
            min_rise=float(self.min_rise),
            tolerance=int(tolerance),
            site=last.site,
            snapshots=tuple(snapshots),
            n_per_task=n_per_task,
            n_shots=self.n_shots,
            seed=seed,
        )


def _same_sizes(first: tuple[int, dict[str, int]] | None, step: int, model: Any) -> tuple[int, dict[str, int]]:
    """The first checkpoint's step and sizes; raise :class:`AnalysisError` if ``model`` has other sizes."""
    adapter = adapt(model)
    sizes = {name: getattr(adapter, name) for name in ("n_layers", "d_model", "n_heads", "d_vocab")}
    if first is None:
        return step, sizes
    first_step, first_sizes = first
    differ = [
        f"{key} {value} at step {first_step}, {sizes[key]} at step {step}"
        for key, value in first_sizes.items()
        if sizes[key] != value
    ]
    if differ:
        raise AnalysisError(
            f"The checkpoints are not of one model: {'; '.join(differ)}. Emergence follows one model over training; "
            "pass the checkpoints of one run."
        )
    return first


def _check_min_rise(min_rise: Any, *, zero: bool = False) -> None:
    """Refuse a ``min_rise`` that is not a finite number > 0 (``zero``: >= 0, any improvement counting)."""
    if not is_finite_number(min_rise) or not (min_rise >= 0 if zero else min_rise > 0):
        raise AnalysisError(
            f"min_rise must be a finite number {'>=' if zero else '>'} 0, got {min_rise!r}; 0.2 suits accuracy and TD."
        )


def _check_tolerance(tolerance: Any) -> None:
    if tolerance is not None and (not is_int(tolerance) or tolerance < 0):
        raise AnalysisError(
            f"tolerance must be an int >= 0 (training steps between coupled jumps) or None (the largest gap "
            f"between checkpoints), got {tolerance!r}."
        )


def _is_td(analysis: Any) -> bool:
    return isinstance(analysis, TaskDecodability)


def _gaps(steps: Sequence[int]) -> list[int]:
    return [later - earlier for earlier, later in itertools.pairwise(steps)]


def _loader(step: int, held: Any) -> Callable[[], Any]:
    """What loads the model of a ``(step, model)`` or ``(step, load)`` pair."""
    if isinstance(held, nn.Module):
        return lambda: held
    if callable(held):
        return held
    raise AnalysisError(
        f"The checkpoint of step {step} holds a {type(held).__name__}; pair each step with a model or with a "
        "function of no arguments that loads it, e.g. (1000, lambda: load_my_model(1000))."
    )


def _model_of(record: Any) -> Callable[[], Any]:
    """What loads the model of a checkpoint file read before, letting go of the record (its weights) as it does."""
    held = [record]
    return lambda: held.pop().load_model()


def _sorted_checkpoints(checkpoints: Sequence[CheckpointLike]) -> list[tuple[int, Any]]:
    """``(step, load)`` pairs in step order; each file is read once, and each model built when its turn comes."""
    from tv_lens.training import Checkpoint, load_checkpoint

    given: Any = checkpoints  # what callers should pass is annotated; what they did pass is checked
    if isinstance(given, str | bytes | os.PathLike) or not isinstance(given, Iterable):
        got = (
            f"the path {os.fsdecode(given)!r}"
            if isinstance(given, str | bytes | os.PathLike)
            else f"a {type(given).__name__}"
        )
        raise AnalysisError(
            f"checkpoints must be a list of checkpoints, got {got}; pass "
            "the files of a run's directory (list_checkpoints(dir)), a TrainResult's .checkpoints, loaded Checkpoints, "
            "or (step, model) or (step, load) pairs."
        )
    entries: list[tuple[int, Any]] = []
    records: list[Any] = []  # the checkpoint records, to check that they are of one run
    for item in checkpoints:
        if isinstance(item, tuple) and len(item) == 2 and is_int(item[0]):
            entries.append((item[0], _loader(item[0], item[1])))
        elif isinstance(item, Checkpoint):
            entries.append((item.step, item.load_model))
            records.append(item)
        elif isinstance(item, (str, os.PathLike)):
            record = replace(load_checkpoint(Path(item)), optimizer={})  # what rebuilds the model, read once
            entries.append((record.step, _model_of(record)))
            records.append(record)
        else:
            raise AnalysisError(
                f"Unknown checkpoint {type(item).__name__}; pass checkpoint files (list_checkpoints(dir)), "
                "loaded Checkpoints, (step, model) or (step, load) pairs."
            )
    rootless = next((record for record in records if record.model_config is None), None)
    if rootless is not None:  # refused before any checkpoint runs, not when its turn comes
        raise AnalysisError(
            f"{rootless.path} has no model config (its run was started without model_config=), so Emergence cannot "
            "rebuild its model. Pass (step, load) pairs instead, whose load() builds or loads the model, attaches the "
            "run's adapters (attach_lora(model, checkpoint.config.finetune)) and calls checkpoint.load_into(model)."
        )
    steps = [step for step, _ in entries]
    if not entries or len(set(steps)) != len(steps):
        raise AnalysisError(f"Emergence needs checkpoints with distinct steps, got steps {steps}.")
    for record in records[1:]:
        differ = records[0].run_differences(record)
        if differ:
            raise AnalysisError(
                f"The checkpoints of steps {records[0].step} and {record.step} come from different training runs (they "
                "differ in "
                f"{', '.join(differ[:4])}); Emergence follows one run: pass the checkpoints of one directory "
                "(list_checkpoints(dir))."
            )
    return sorted(entries, key=lambda entry: entry[0])
