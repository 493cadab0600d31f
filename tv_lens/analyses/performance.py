"""ICL performance: how well the model answers each task's query as a function of the number of shots.

For every shot count in a grid, ``n_per_task`` prompts of every task are sampled and run once, with no
intervention, through the intervention engine (:func:`tv_lens.interventions.run_with_interventions`, the
same code path as every patched run, so clean and patched numbers are comparable). Each prompt gets a
score at its answer position(s) — exact-match accuracy of the argmax answer tokens, answer-token
cross-entropy, or MSE for regression outputs — and the analysis reports the mean per (task, shots) with
stratified bootstrap intervals. Accuracy rising with shots is the behavioural signature of ICL; Han et
al. (§4.2) relate it to task decodability (:mod:`tv_lens.analyses.prediction`).

>>> import torch
>>> scores = torch.tensor([1.0, 0.0, 1.0, 1.0])
>>> icl_performance(scores, [0, 0, 1, 1], [2, 2, 2, 2], config=ICLPerformance(n_bootstrap=0)).values
tensor([[0.5000],
        [1.0000]], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.analyses.answers import answer_counts
from tv_lens.analyses.options import N_PER_TASK, IntervalOptions, analysis_config
from tv_lens.analyses.prompt_batches import LabelledPrompts, PromptBatch, PromptPool, align_answers, sample_batch
from tv_lens.analyses.representations import integer_ids, named_tasks
from tv_lens.checks import is_int, is_number, tensor_of
from tv_lens.errors import AnalysisError, NonFiniteError, ShapeError
from tv_lens.interventions import run_with_interventions
from tv_lens.metrics import answer_correct, continuous_answers, squared_error, token_cross_entropy
from tv_lens.models.exclusive import evaluating
from tv_lens.results.performance import Performance
from tv_lens.stats import group_means
from tv_lens.stats.bootstrap import stratified_bootstrap_ci
from tv_lens.tasks.pool import SEED_RANGE, check_flag, seeded_generator

__all__ = [
    "METRICS",
    "ICLPerformance",
    "Performance",
    "clean_outputs",
    "icl_performance",
    "resolve_metric",
    "score_batch",
    "score_outputs",
]

ScoreFn = Callable[[Tensor, PromptBatch], Tensor]
"""``fn(outputs [batch, n_answer, d_out], batch) -> scores [batch]``: a custom per-prompt metric."""


def _accuracy(outputs: Tensor, batch: PromptBatch) -> Tensor:
    return answer_correct(outputs, batch.answers)


def _cross_entropy(outputs: Tensor, batch: PromptBatch) -> Tensor:
    return token_cross_entropy(outputs, batch.answers)


def _mse(outputs: Tensor, batch: PromptBatch) -> Tensor:
    return squared_error(outputs, batch.answers)


METRICS: dict[str, tuple[ScoreFn, bool]] = {
    "accuracy": (_accuracy, True),
    "cross_entropy": (_cross_entropy, False),
    "mse": (_mse, False),
}
"""Built-in scores: name → (function, higher is better), through the one scorer of answers
(:mod:`tv_lens.metrics`). ``"accuracy"``: exact match of token answers, or for float answers a squared error of
at most :data:`~tv_lens.metrics.TOLERANCE`; ``"cross_entropy"``: token answers; ``"mse"``: float answers
``[batch, d_out]`` against the first ``d_out`` outputs at the answer position (or outputs of their shape)."""


def resolve_metric(metric: str | ScoreFn, batch: PromptBatch) -> str | ScoreFn:
    """``"auto"`` becomes ``"mse"`` for float answers (regression) and ``"accuracy"`` for tokens."""
    if metric == "auto":
        return "mse" if continuous_answers(batch.answers) else "accuracy"
    return metric


def icl_performance(
    scores: Float[Tensor, " prompt"],
    task_ids: Int[Tensor, " prompt"] | Sequence[int],
    n_shots: Int[Tensor, " prompt"] | Sequence[int],
    task_names: Sequence[str] | None = None,
    *,
    config: ICLPerformance | None = None,
    seed: int = 0,
) -> Performance:
    """Mean score per (task, shots) with stratified bootstrap intervals, from per-prompt scores.

    The options are the attributes of :class:`ICLPerformance` read here: ``metric`` names the scores (``"auto"``:
    ``"accuracy"``; a built-in one knows whether higher is better, a callable one reads ``higher_is_better``),
    ``n_bootstrap`` and ``ci``.

    Args:
        scores: One score per prompt (e.g. 1.0 / 0.0 accuracy).
        task_ids: Task id of each prompt.
        n_shots: Number of demonstrations of each prompt; the shots axis is its sorted distinct values.
        task_names: Name of every task id (default ``"task i"``).
        config: The options (``None``: ``ICLPerformance()``).
        seed: Seed of the bootstrap.
    """
    config = analysis_config(config, ICLPerformance)
    seeded_generator(seed)  # checks the seed; shot count j draws with seed + j, wrapped into the seed range
    metric, higher = _metric_name(config.metric, config.higher_is_better)
    scores = tensor_of(scores, "scores", "one float score per prompt")
    if scores.is_complex():
        raise ShapeError(f"scores must be real numbers (one score per prompt), got {scores.dtype}; pass scores.real.")
    scores = scores.detach().cpu().double()
    tasks = integer_ids(task_ids, "task_ids", "the task id of each prompt")
    shots = integer_ids(n_shots, "n_shots", "the demonstrations of each prompt")
    if scores.ndim != 1 or not (len(scores) == len(tasks) == len(shots)) or len(scores) == 0:
        raise ShapeError(
            f"scores, task_ids and n_shots need one entry per prompt; got shapes {tuple(scores.shape)}, "
            f"{tuple(tasks.shape)}, {tuple(shots.shape)}."
        )
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteError("scores hold NaN or infinite values; check the model's outputs (torch.isfinite).")
    if int(tasks.min()) < 0 or int(shots.min()) < 0:
        raise ShapeError("task_ids must be task ids >= 0 (one per task name) and n_shots be >= 0.")
    names = named_tasks(task_names, tasks, "task_ids")
    grid = tuple(sorted(set(shots.tolist())))
    n_task = len(names)
    values = torch.full((n_task, len(grid)), float("nan"), dtype=torch.float64)
    cell_ci = torch.full((n_task, len(grid), 2), float("nan"), dtype=torch.float64)
    overall = torch.empty(len(grid), dtype=torch.float64)
    overall_ci = torch.empty(len(grid), 2, dtype=torch.float64)
    n_prompts = torch.zeros((n_task, len(grid)), dtype=torch.long)
    for j, s in enumerate(grid):
        here = shots == s
        cell_scores, cell_tasks = scores[here], tasks[here]
        n_prompts[:, j] = torch.bincount(cell_tasks, minlength=n_task)
        values[:, j] = group_means(cell_scores, cell_tasks, n_task)
        overall[j] = cell_scores.mean()
        cell_ci[:, j], overall_ci[j] = stratified_bootstrap_ci(
            cell_scores, cell_tasks, n_task, config.n_bootstrap, config.ci, (seed + j) % SEED_RANGE
        )
    return Performance(
        values,
        cell_ci,
        overall,
        overall_ci,
        n_prompts,
        grid,
        names,
        metric,
        higher,
        config.ci,
        config.n_bootstrap,
        seed,
    )


def clean_outputs(
    model: Any, prompts: LabelledPrompts, batch_size: int | None = 64, answers: Tensor | None = None
) -> Float[Tensor, "batch n_answer d_out"]:
    """The model's outputs at the answer positions of a clean run (no interventions), without gradients.

    One output row per answer token of ``answers`` (default ``prompts.answers``: a batch's, ``-1`` padded tokens or
    continuous values); ``batch_size`` prompts per pass (``None``: all at once).
    """
    answers = prompts.answers if answers is None else answers
    if answers is None:
        raise ShapeError("clean_outputs reads one output per answer token: give prompts with answers, or answers=.")
    align_answers(model, prompts.inputs, prompts.answer_pos, prompts.attention_mask, answers)  # the prompts hold them
    with torch.no_grad(), evaluating(model):
        run = run_with_interventions(
            model,
            prompts.inputs,
            prompts.answer_pos,
            [],
            attention_mask=prompts.attention_mask,
            n_answer_tokens=answer_counts(answers),
            batch_size=batch_size,
        )
    return run.logits  # the engine refuses NaN or infinite outputs


def score_outputs(outputs: Tensor, batch: PromptBatch, metric: str | ScoreFn = "auto") -> Float[Tensor, " batch"]:
    """Per-prompt score of given answer-position outputs (``metric="auto"``: accuracy or MSE)."""
    fn, _ = _metric(resolve_metric(metric, batch))
    with torch.no_grad():
        return fn(outputs, batch).detach().cpu()


def score_batch(
    model: Any,
    batch: PromptBatch,
    metric: str | ScoreFn = "auto",
    batch_size: int | None = 64,
) -> Float[Tensor, " batch"]:
    """Per-prompt score of a clean run (no interventions) of ``batch`` through the intervention engine.

    ``metric="auto"``: accuracy for token answers, MSE for float answers.
    """
    return score_outputs(clean_outputs(model, batch, batch_size), batch, metric)


@dataclass(frozen=True)
class ICLPerformance(IntervalOptions):
    """Configuration of an ICL-performance analysis over a grid of shot counts.

    Attributes:
        shots: Shot counts to evaluate (0 = query only).
        metric: ``"auto"`` (accuracy for token answers, MSE for float answers), ``"accuracy"``,
            ``"cross_entropy"``, ``"mse"`` or a callable ``fn(outputs, batch) -> [batch]``.
        higher_is_better: For a callable metric, whether larger is better (built-ins know).
        batch_size: Prompts per forward pass (``None``: all at once).
        label_noise: Probability that a demonstration's label is replaced by a wrong one (queries are never
            corrupted): Yang et al.'s robustness test. 0 (default): clean prompts.

    The keyword-only :class:`~tv_lens.analyses.options.IntervalOptions` (``n_bootstrap``, ``ci``) apply too.
    """

    shots: tuple[int, ...] = (0, 1, 2, 4, 8)
    metric: str | ScoreFn = "auto"
    higher_is_better: bool = True
    batch_size: int | None = 64
    label_noise: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_number(self.label_noise):
            raise AnalysisError(f"label_noise must be a probability in [0, 1), got {self.label_noise!r}.")
        if not 0 <= self.label_noise < 1:
            raise AnalysisError(f"label_noise must be a probability in [0, 1), got {self.label_noise!r}.")
        if self.metric != "auto":
            _metric(self.metric)
        check_flag(self.higher_is_better, "higher_is_better", "whether a larger score is better")
        if isinstance(self.shots, int) or not isinstance(self.shots, (tuple, list)):
            raise AnalysisError(
                f"shots must be a non-empty tuple of ints >= 0, got {self.shots!r}; for one shot count pass a "
                f"one-element tuple, e.g. shots=({self.shots!r},)."
            )
        if not self.shots or any(not is_int(s) or s < 0 for s in self.shots):
            raise AnalysisError(f"shots must be a non-empty tuple of ints >= 0, got {self.shots!r}.")

    def run(self, model: Any, pool: PromptPool, n_per_task: int = N_PER_TASK, seed: int = 0) -> Performance:
        """Sample ``n_per_task`` prompts per task for each shot count (seeded) and score a clean run of each."""
        scores, tasks, shots = [], [], []
        metric = self.metric
        for s in sorted(set(self.shots)):
            batch = sample_batch(pool, n_per_task, s, seed, self.label_noise, model=model)
            metric = resolve_metric(self.metric, batch)
            scores.append(score_batch(model, batch, metric, self.batch_size))
            tasks.append(batch.task_ids.cpu())
            shots.append(batch.n_shots.cpu())
        return self._summarise(metric, torch.cat(scores), torch.cat(tasks), torch.cat(shots), pool.task_names, seed)

    def run_batch(self, model: Any, batch: PromptBatch, seed: int = 0) -> Performance:
        """Score a given batch (its prompts' own shot counts form the shots axis)."""
        metric = resolve_metric(self.metric, batch)
        scores = score_batch(model, batch, metric, self.batch_size)
        return self._summarise(metric, scores, batch.task_ids.cpu(), batch.n_shots.cpu(), batch.task_names, seed)

    def _summarise(
        self, metric: str | ScoreFn, scores: Tensor, tasks: Tensor, shots: Tensor, names: Sequence[str], seed: int
    ) -> Performance:
        return icl_performance(scores, tasks, shots, names, config=replace(self, metric=metric), seed=seed)


def _metric(metric: str | ScoreFn) -> tuple[ScoreFn, bool]:
    if callable(metric):
        return metric, True
    if metric not in METRICS:
        raise AnalysisError(
            f"Unknown metric {metric!r}; use 'auto', one of {list(METRICS)} or a callable fn(outputs, batch)."
        )
    return METRICS[metric]


def _metric_name(metric: str | ScoreFn, higher_is_better: bool) -> tuple[str, bool]:
    if callable(metric):
        return getattr(metric, "__name__", "custom"), higher_is_better
    name = "accuracy" if metric == "auto" else metric
    return name, METRICS[name][1]
