"""Task decodability (TD): can the latent task be read off a layer's representation of the pre-answer token?

Han et al. (2025, §4 and App. B) sample N prompts of every task of a pool of *confusable* tasks (shared
input distribution; optionally a Null task with random outputs), read the residual stream at the token
right before the answer, and score each layer by leave-one-out k-NN: every point's k = 10 nearest other
points vote for a task, and TD is the fraction of points whose vote is their own task. TD near 1 means
the layer separates the tasks; near chance (1 / number of tasks) means it does not. The TD curve over all
layers, its peak, per-task TD and a task × task confusion are reported; with a pool whose tasks differ in
their inputs, TD is trivially high (Han et al.'s caveat), so use pools of one input distribution.

Choices the paper leaves open are options here, with documented defaults:

- ``metric``: the distance (paper silent; default Euclidean).
- ``method="probe"``: a cross-validated logistic-regression probe instead of k-NN (a common alternative).
- Vote ties go to the lowest task id, as in scikit-learn's ``KNeighborsClassifier``
  (see :mod:`tv_lens.stats.classifiers`).
- Equidistant neighbours (identical representations) are taken in a canonical order of the points, so
  results do not depend on prompt order (see :mod:`tv_lens.stats.classifiers`).
- Confidence intervals: stratified percentile bootstrap over prompts of the per-prompt correctness, the
  predictions held fixed (see :mod:`tv_lens.stats.bootstrap`); the paper reports none.
- The best layer passes over the embedding output, which at the pre-answer token sees one token and its
  position only (see :func:`tv_lens.results.decodability.best_layer`).
- ``repeats``: what a prompt's identical copies in the sample do. A pool with few distinct prompts (one or two
  shots over a few inputs) samples some prompts more than once, and a copy sits at distance 0 with its
  prompt's task. ``"keep"`` (default, the paper's estimator) lets copies vote: TD is then the k-NN accuracy on
  a fresh prompt of the same distribution, which can coincide with a sampled one. ``"leave_out"`` keeps every
  copy of a prompt out of its vote (and, for the probe, in its fold): the accuracy on a prompt the classifier
  has not seen, which a lookup of identical prompts cannot raise. The result counts the prompts that repeat
  one of their task (:attr:`~tv_lens.results.decodability.Decodability.n_repeated`).

Reading TD: leave-one-out k-NN can fall *below* chance when the points cluster by something other than
the task (e.g. the query value): removing a point from its cluster removes one vote for its own task.
Below-chance TD therefore means "organised, but not by task", not "worse than guessing".

Every layer (the embedding output included, block index -1) comes from ONE forward pass per batch of
prompts (:func:`tv_lens.probes.collect`); the k-NN then runs on the cached rows.

>>> import torch
>>> labels = torch.arange(3).repeat_interleave(12)
>>> far = torch.nn.functional.one_hot(labels).double() * 100 + torch.randn(36, 3, dtype=torch.float64)
>>> task_decodability(far, labels, config=TaskDecodability(k=5)).td
tensor([1.], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from tv_lens.analyses.options import IntervalOptions, PassOptions, analysis_config
from tv_lens.analyses.representations import LabelsInput, RepresentationAnalysis, RepsInput, labelled_stack
from tv_lens.errors import AnalysisError
from tv_lens.results.decodability import Decodability
from tv_lens.stats.bootstrap import stratified_bootstrap_ci
from tv_lens.stats.classifiers import check_knn, knn_loo_predictions, linear_probe, probe_cv_predictions

__all__ = ["Decodability", "TaskDecodability", "task_decodability"]

Method = Literal["knn", "probe"]
Repeats = Literal["keep", "leave_out"]


def task_decodability(
    reps: RepsInput,
    labels: LabelsInput | None = None,
    *,
    task_names: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    site: str | None = None,
    config: TaskDecodability | None = None,
    seed: int = 0,
    prompt_ids: LabelsInput | None = None,
) -> Decodability:
    """TD of every layer of ``reps``, per task, with confusion counts and bootstrap intervals.

    The options are the attributes of :class:`TaskDecodability` (``layers``, ``site`` and ``batch_size``, which
    read representations from a model, are not read: the representations are given).

    Args:
        reps: ``[layer, prompt, d]`` or ``[prompt, d]`` tensor, or ``Representations`` (labels default to
            its ``task_ids``; a TransformerLens cache goes through ``Representations.from_cache``).
        labels: Task id of each prompt.
        task_names: Name of every task id (default from ``Representations`` callers, else ``"task i"``).
        layers: Layers to use of ``Representations``, or the block index of each entry of a tensor.
        site: Site label for a plain tensor.
        config: The options (``None``: ``TaskDecodability()``, Han et al.'s k = 10). Every task needs at least
            ``k + 1`` prompts for k-NN, ``n_folds`` for the probe.
        seed: Seed of the bootstrap and of the probe's folds.
        prompt_ids: An id per prompt, shared by exactly the identical prompts (default: those of
            ``Representations`` from :func:`~tv_lens.probes.collect`); needed for ``repeats="leave_out"``.

    Returns:
        A :class:`~tv_lens.results.decodability.Decodability` with a layer axis (of length 1 for ``[prompt, d]``).

    Raises:
        AnalysisError: Fewer than two tasks, a task with too few prompts, or ``repeats="leave_out"`` without
            prompt ids.
        ShapeError: Labels and reps of different lengths, or malformed inputs.
        NonFiniteError: NaN or infinite representations.
    """
    config = analysis_config(config, TaskDecodability)
    stack = labelled_stack(reps, labels, layers=layers, site=site, task_names=task_names, prompt_ids=prompt_ids)
    n_tasks = len(stack.task_names)
    counts = torch.bincount(stack.labels, minlength=n_tasks)
    _check_counts(counts, stack.task_names, config)
    labels_np = stack.labels.numpy()
    groups = _copy_groups(stack, config.repeats)
    predictions = torch.empty(stack.activations.shape[:2], dtype=torch.long)
    for i in tqdm(range(len(stack.layers)), desc="decodability", disable=not config.progress, leave=False):
        points = stack.activations[i].numpy()
        if config.method == "knn":
            predicted = knn_loo_predictions(points, labels_np, config.k, config.metric, groups)
        else:
            predicted = probe_cv_predictions(points, labels_np, config.n_folds, config.probe_c, seed, groups)
        predictions[i] = torch.from_numpy(np.asarray(predicted, dtype=np.int64))
    return _result(stack, predictions, config, seed)


@dataclass(frozen=True)
class TaskDecodability(RepresentationAnalysis[Decodability], IntervalOptions, PassOptions):
    """Configuration of a TD analysis; :meth:`run` samples prompts, collects all layers in one pass, scores them.

    Attributes:
        k: Neighbours per vote (Han et al.: 10).
        metric: k-NN distance (default Euclidean; the paper does not say).
        method: ``"knn"`` or ``"probe"``.
        n_folds: Folds of the probe.
        probe_c: Inverse L2 strength of the probe.
        layers: Block indices to read (``None``: every block, and the embedding output for ``site="resid_post"``).
        site: Residual site to read.
        repeats: ``"keep"`` (a prompt's identical copies vote, the paper's estimator) or ``"leave_out"`` (they do
            not; see the module docstring).

    The keyword-only :class:`~tv_lens.analyses.options.IntervalOptions` (``n_bootstrap``, ``ci``) and
    :class:`~tv_lens.analyses.options.PassOptions` (``batch_size``, ``progress``) apply too.
    """

    k: int = 10
    metric: str = "euclidean"
    method: Method = "knn"
    n_folds: int = 5
    probe_c: float = 1.0
    layers: tuple[int, ...] | None = None
    site: str = "resid_post"
    repeats: Repeats = "keep"
    _function = staticmethod(task_decodability)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.repeats not in ("keep", "leave_out"):
            raise AnalysisError(
                f"Unknown repeats={self.repeats!r}; use 'keep' (identical prompts vote for each other, Han et al.'s "
                "estimator) or 'leave_out' (a prompt's copies are left out of its vote)."
            )
        if self.method == "knn":
            check_knn(self.k, self.metric)
        elif self.method == "probe":
            linear_probe(self.n_folds, self.probe_c)
        else:
            raise AnalysisError(
                f"Unknown TD method {self.method!r}; use 'knn' (Han et al.) or 'probe' (logistic regression)."
            )


def _check_counts(counts: Tensor, task_names: tuple[str, ...], config: TaskDecodability) -> None:
    present = (counts > 0).nonzero().flatten().tolist()
    if len(present) < 2:
        raise AnalysisError(
            f"TD needs prompts of at least two tasks, got prompts of {len(present)} "
            f"({[task_names[t] for t in present]}); sample a pool with several tasks."
        )
    method, k, n_folds = config.method, config.k, config.n_folds
    need = k + 1 if method == "knn" else n_folds
    short = {task_names[t]: int(counts[t]) for t in present if counts[t] < need}
    if short:
        why = (
            f"leave-one-out k-NN with k={k} needs at least k+1={need} prompts per task (so that a point's k "
            "nearest other points can all share its task)"
            if method == "knn"
            else f"a {n_folds}-fold probe needs at least {n_folds} prompts per task"
        )
        raise AnalysisError(f"Too few prompts: {why}, but got {short}. Sample more prompts per task or lower k.")


def _copy_groups(stack: Any, repeats: Repeats) -> np.ndarray | None:
    """The prompt ids to leave out together (``repeats="leave_out"``), else ``None``."""
    if repeats == "keep":
        return None
    if stack.prompt_ids is None:
        raise AnalysisError(
            "repeats='leave_out' needs to know which prompts are identical, but the representations came without "
            "prompt ids; pass Representations from tv_lens.probes.collect, or prompt_ids= "
            "(tv_lens.probes.prompt_ids(model, inputs, answer_pos))."
        )
    return stack.prompt_ids.numpy()


def _result(stack: Any, predictions: Tensor, config: TaskDecodability, seed: int) -> Decodability:
    n_tasks = len(stack.task_names)
    labels = stack.labels
    correct = (predictions == labels).double()  # [layer, prompt]
    counts = torch.bincount(labels, minlength=n_tasks).double()
    one_hot = torch.nn.functional.one_hot(labels, n_tasks).double()  # [prompt, task]
    per_task = (correct @ one_hot) / counts  # NaN for absent tasks
    pair = labels * n_tasks + predictions  # [layer, prompt]
    confusion = torch.stack([torch.bincount(row, minlength=n_tasks * n_tasks) for row in pair])
    per_task_ci, td_ci = stratified_bootstrap_ci(correct, labels, n_tasks, config.n_bootstrap, config.ci, seed)
    if config.method == "knn":
        settings: dict[str, Any] = {"k": config.k, "metric": config.metric}
    else:
        settings = {"n_folds": config.n_folds, "C": float(config.probe_c)}
    settings["repeats"] = config.repeats
    return Decodability(
        td=correct.mean(-1),
        td_ci=td_ci,
        per_task=per_task,
        per_task_ci=per_task_ci,
        confusion=confusion.view(-1, n_tasks, n_tasks),
        predictions=predictions,
        labels=labels,
        layers=stack.layers,
        task_names=stack.task_names,
        site=stack.site,
        method=config.method,
        settings=settings,
        prompt_ids=stack.prompt_ids,
        **config.interval_settings(seed),
    )
