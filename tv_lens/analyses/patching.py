"""Task-vector patching: does writing task t's vector into a prompt of task s make the model do t?

Han et al. (2025, §3.3, §4.1, App. C) test whether the task vector is *causal*: at a layer, patch the
residual stream at a prompt's answer position with the mean vector of a task (:class:`~tv_lens.task_vectors.
TaskVectors`) and measure the accuracy / loss change against the unpatched run. A *correct* vector (the
prompt's own task) should help or keep performance; an *incorrect* one (another task, or the Null task of
random outputs) should hurt it. Hendel et al. (2023) also count how often the output *follows* the injected
task ("overriding").

Choices, exposed as options with documented defaults:

- ``mode``: ``"replace"`` overwrites the residual with ``v_t`` (Hendel; default); ``"add"`` adds
  ``scale * v_t``; ``"add_difference"`` adds ``scale * (v_t - v_s)``, moving the prompt from its own task's
  mean to the target's (so the correct patch is exactly a no-op). Han et al. mention replace and add.
  On small models replacing can erase the query itself, so compare modes before concluding.
- Task vectors come from a separate sample of prompts (seed + 1) in :meth:`TaskVectorPatching.run`, so
  no prompt is patched with a mean it contributed to; any :class:`TaskVectors` can be passed instead.
- Correct vs incorrect (per layer): per prompt, the change under its own task's vector, and the mean
  change over every other target (Null included); then the mean over prompts, with a stratified bootstrap
  over prompts (by task). Prompts of the Null task are left out of these summaries as sources (their
  answers are random: no vector can help them) but appear in the full (source x target) tables.
- Overriding: the patched prediction equals the target task's rule applied to the prompt's query (every
  answer token, teacher-forced). Undefined (NaN) for targets without a rule (Null) and for prompts where
  that rule gives the prompt's own answer; the unpatched rate of the same comparison is reported as the
  chance baseline. The rule outputs need the pool (its tasks are callable rules).

Speed: a sweep is (layers x targets) cells over the same prompts. Cells are stacked on the batch dimension
(several per forward pass, each writing only to its own copy of the prompts, see
:mod:`tv_lens.interventions.sweep`), and a resid_post patch at block ``l`` is written at the identical
resid_pre of block ``l + 1``, so the pass can start there from the clean residual. Every patch goes
through :func:`tv_lens.interventions.run_with_interventions`; the result records how many prompts each
(layer, target) intervention wrote to.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from jaxtyping import Int
from torch import Tensor

from tv_lens.analyses.answers import answer_scores, prompt_task_ids
from tv_lens.analyses.options import N_PER_TASK, CausalOptions, analysis_config
from tv_lens.analyses.patching_summary import summarize_patching
from tv_lens.analyses.prompt_batches import LabelledPrompts, aligned_with_answers, check_pool
from tv_lens.checks import is_number
from tv_lens.errors import AnalysisError, ShapeError, TaskError
from tv_lens.interventions import Intervention, add, replace
from tv_lens.interventions.sweep import Cell, run_sweep
from tv_lens.models.adapter import ModelAdapter
from tv_lens.results.patching import PatchingEffects
from tv_lens.task_vectors import Reduce, TaskVectors
from tv_lens.tasks import NULL_TASK, ICLBatch, ShotSpec, TaskPool, TextPool

__all__ = [
    "MODES",
    "Mode",
    "PatchingEffects",
    "TaskVectorPatching",
    "check_vectors",
    "patch_site",
    "patch_task_vectors",
    "rule_answers",
]

Mode = Literal["replace", "add", "add_difference"]
MODES: tuple[str, ...] = get_args(Mode)


def patch_task_vectors(
    model: Any,
    prompts: LabelledPrompts,
    vectors: TaskVectors,
    *,
    targets: Sequence[str] | None = None,
    target_answers: Int[Tensor, "target batch n_target_answer"] | None = None,
    null_task: str = NULL_TASK,
    config: TaskVectorPatching | None = None,
    seed: int = 0,
) -> PatchingEffects:
    """Patch every target task's vector into every prompt at every layer; summarise the effects.

    The options are the attributes of :class:`TaskVectorPatching` (``reduce``, ``site`` and ``batch_size``, which
    build task vectors, are not read: the vectors are given, and their site is the patched one).

    Args:
        model: A TransformerLens model.
        prompts: The prompts (an ``ICLBatch``, or :class:`~tv_lens.analyses.Prompts`): tokens (right- or
            left-padded, with the attention mask), answer positions, answer tokens ``[batch, n_answer]``
            (teacher-forced after the answer position), task ids and names.
        vectors: Task vectors; their site is the patched site.
        targets: Tasks whose vectors are injected (default: every task of ``vectors``).
        target_answers: Answer tokens each target task's rule gives for each prompt's query, ``-1`` where a
            target has no rule (e.g. Null); ``None``: overriding is not measured (NaN).
        null_task: Name of the Null task (left out of the summaries as a source).
        config: The options (``None``: ``TaskVectorPatching()``).
        seed: Seed of the bootstrap.

    Raises:
        TaskError: A target (or, for ``add_difference``, a prompt's own task) without a vector; ``prompts`` without
            a field of :class:`~tv_lens.analyses.LabelledPrompts`.
        ShapeError: Vectors of another d_model, or inputs of mismatched lengths.
        LayerOutOfRangeError: A layer the vectors do not cover.
    """
    config = analysis_config(config, TaskVectorPatching)
    adapter = check_vectors(vectors, model)
    layers = tuple(vectors.layers) if config.layers is None else adapter.check_layers(config.layers, allow_embed=True)
    layer_index = [vectors.layer_index(layer) for layer in layers]
    if targets is not None and (isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence)):
        raise TaskError(
            f"targets must be a sequence of task names, got {targets!r}; for one task pass a one-element tuple, "
            f"e.g. targets=({targets!r},)."
        )
    target_names = tuple(vectors.task_names) if targets is None else tuple(targets)
    target_index = [vectors.task_index(name) for name in target_names]
    aligned, answers = aligned_with_answers(model, prompts)
    source_names, sources = _sources(prompts.task_ids, prompts.task_names, len(aligned))
    own_vectors = None
    if config.mode == "add_difference":
        missing = [name for name in source_names if name not in vectors.task_names]
        if missing:
            raise TaskError(
                f"mode='add_difference' subtracts each prompt's own task vector, but tasks {missing} have none; "
                f"build the vectors from prompts of every task (vectors cover {list(vectors.task_names)})."
            )
        own_vectors = torch.tensor([vectors.task_index(name) for name in source_names])[sources]
    cells = [
        Cell((_patch(adapter, vectors, li, ti, own_vectors, config.mode, float(config.scale)),))
        for li in layer_index
        for ti in target_index
    ]
    sweep = run_sweep(
        model, aligned, cells, _scorer(answers), rows_per_pass=config.rows_per_pass, progress=config.progress
    )
    n_l, n_t, n = len(layers), len(target_names), len(aligned)
    scores = sweep.cells.view(n_l, n_t, n, -1)
    return summarize_patching(
        scores[..., 0],
        scores[..., 1],
        scores[..., 2:].long(),
        sweep.clean[:, 0],
        sweep.clean[:, 1],
        sweep.clean[:, 2:].long(),
        answers,
        sources,
        source_names,
        target_names,
        layers,
        torch.tensor([w[0] for w in sweep.writes], dtype=torch.long).view(n_l, n_t),
        target_answers,
        mode=config.mode,
        site=vectors.site,
        scale=float(config.scale),
        null_task=null_task,
        n_bootstrap=config.n_bootstrap,
        ci=config.ci,
        seed=seed,
        rows_per_pass=sweep.rows_per_pass,
    )


def rule_answers(pool: Any, batch: ICLBatch, task_names: Sequence[str]) -> Int[Tensor, "task batch n_answer"]:
    """Answer tokens each named task gives for every prompt's query (``-1`` where it gives none, e.g. Null).

    A :class:`~tv_lens.tasks.TaskPool` applies each task's rule to the query's input values (every answer
    token); a :class:`~tv_lens.tasks.TextPool` looks the query's input up among each task's examples (the first
    answer token: later ones are teacher-forced on the prompt's own answer, so they cannot follow another task).
    """
    target_answers = getattr(pool, "target_answers", None)
    if not callable(target_answers):
        raise TaskError(
            f"Overriding needs the answers each task gives to a query, which a {type(pool).__name__} cannot "
            "tell; pass a TaskPool or TextPool (or pool=None to skip overriding)."
        )
    answers: Tensor = target_answers(batch, task_names)
    return answers


@dataclass(frozen=True)
class TaskVectorPatching(CausalOptions):
    """Configuration of a task-vector patching sweep; :meth:`run` samples prompts, builds vectors, patches.

    Attributes:
        mode: ``"replace"`` (default), ``"add"`` or ``"add_difference"``.
        layers: Blocks to patch (``None``: every block the task vectors cover).
        reduce: How task vectors are averaged (see :mod:`tv_lens.task_vectors`).
        site: Residual site read and patched.
        scale: Factor on the added vector in the ``add`` modes.

    The keyword-only :class:`~tv_lens.analyses.options.CausalOptions` (``n_bootstrap``, ``ci``, ``rows_per_pass``,
    ``batch_size`` for building task vectors, ``progress``) apply too.
    """

    mode: Mode = "replace"
    layers: tuple[int, ...] | None = None
    reduce: Reduce = "mean_over_prompts"
    site: str = "resid_post"
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise AnalysisError(f"Unknown patching mode {self.mode!r}; use one of {list(MODES)}.")
        scale = self.scale
        if not is_number(scale) or not abs(scale) <= sys.float_info.max:
            raise AnalysisError(f"scale must be a finite number, got {scale!r}.")

    def run(
        self,
        model: Any,
        pool: TaskPool | TextPool,
        n_per_task: int = N_PER_TASK,
        n_shots: ShotSpec = 4,
        seed: int = 0,
        vectors: TaskVectors | None = None,
    ) -> PatchingEffects:
        """Sample prompts (``seed``) and, unless given, task vectors from a separate sample (``seed + 1``)."""
        check_pool(pool, model)
        batch = pool.sample(n_per_task, n_shots, seed)
        if vectors is None:
            vectors = TaskVectors.from_model(
                model,
                pool.sample(n_per_task, n_shots, seed + 1),
                self.layers,
                self.reduce,
                site=self.site,
                batch_size=self.batch_size,
                progress=self.progress,
            )
        return self.run_batch(model, batch, vectors, pool=pool, seed=seed)

    def run_batch(
        self, model: Any, batch: ICLBatch, vectors: TaskVectors, pool: TaskPool | TextPool | None = None, seed: int = 0
    ) -> PatchingEffects:
        """Patch ``vectors`` into a given batch; with ``pool`` (its rules), overriding is measured too."""
        targets = tuple(vectors.task_names)
        return patch_task_vectors(
            model,
            batch,
            vectors,
            targets=targets,
            target_answers=None if pool is None else rule_answers(pool, batch, targets),
            config=self,
            seed=seed,
        )


def check_vectors(vectors: Any, model: Any) -> ModelAdapter:
    """The adapter of ``model`` after checking that ``vectors`` are :class:`TaskVectors` that fit it."""
    if not isinstance(vectors, TaskVectors):
        raise ShapeError(
            f"vectors must be TaskVectors, got a {type(vectors).__name__}; build them with "
            "TaskVectors.from_model(model, pool_or_batch) (a bare tensor has no task names or layers)."
        )
    return vectors.check_model(model)


def patch_site(adapter: ModelAdapter, site: str, layer: int) -> tuple[str, int]:
    """Where to write a patch of ``site`` at block ``layer``.

    A resid_post patch below the last block is written at the identical resid_pre of the next block, so a
    pass can start there from the clean residual.
    """
    if site == "resid_post" and 0 <= layer < adapter.n_layers - 1:
        return "resid_pre", layer + 1
    return site, layer


def _patch(
    adapter: ModelAdapter,
    vectors: TaskVectors,
    layer_i: int,
    target_i: int,
    own: Tensor | None,
    mode: str,
    scale: float,
) -> Intervention:
    site, layer = patch_site(adapter, vectors.site, vectors.layers[layer_i])
    vector = vectors.vectors[target_i, layer_i]
    if mode == "replace":
        return replace(layer, vector, pos="answer", site=site)
    if mode == "add":
        return add(layer, scale * vector, pos="answer", site=site)
    own_rows = vectors.vectors[own, layer_i] if own is not None else vector[None, :]
    return add(layer, scale * (vector[None, :] - own_rows), pos="answer", site=site)


def _sources(task_ids: Tensor, task_names: Sequence[str], n: int) -> tuple[tuple[str, ...], Tensor]:
    """Source axis (tasks with prompts, in id order) and each prompt's index on it."""
    ids = prompt_task_ids(task_ids, task_names, n)
    present = ids.unique().tolist()
    remap = torch.full((len(task_names),), -1, dtype=torch.long)
    remap[torch.tensor(present)] = torch.arange(len(present))
    return tuple(task_names[t] for t in present), remap[ids]


def _scorer(answers: Tensor) -> Any:
    """Per row: correctness, cross-entropy, and the argmax tokens (as float64)."""

    def score(logits: Tensor, index: Tensor) -> Tensor:
        correct, loss = answer_scores(logits, answers[index])
        return torch.cat([correct[:, None], loss[:, None], logits.argmax(-1).double()], dim=1).cpu()

    return score
