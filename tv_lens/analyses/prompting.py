"""Task-vector prompting (TVP): can a vector read from an ICL prompt make a query-only prompt do the task?

Hendel et al. (2023) and Yang et al. (2025) read the residual stream at the last token of an in-context
prompt (the token right before the answer) at layer ``l``, and write it at the same position and layer of
the *zero-shot* prompt (the query alone, ``batch.zero_shot()``); the rest of the pass then runs on the
query. If the model compressed the task into that vector, the zero-shot prompt is answered as if the
demonstrations were there. Sweeping ``l`` gives TVP accuracy per layer, reported next to the ICL accuracy
(the ceiling) and the plain zero-shot accuracy (the floor); the best layer is where the vector works best.

Options, with defaults after the papers:

- ``source="other_prompt"`` (Hendel; default): each zero-shot prompt gets the vector of *another* ICL prompt
  of its task (the next one of that task in the batch, cyclically, whose query differs from this prompt's, as
  Hendel et al.'s "dummy" query excludes the test input), so the vector carries the task but not this query's
  answer. ``source="same_prompt"``: the vector
  of its own ICL prompt; that prompt's query is the zero-shot query, so from some layer on the vector
  already holds the answer (at the last block, replacing gives the ICL output exactly): an upper bound,
  not a test of task vectors. ``source="task_mean"``: its task's mean vector
  (:class:`~tv_lens.task_vectors.TaskVectors`; in :meth:`TaskVectorPrompting.run` built from a separate
  sample, seed + 1, unless given). The result records which ICL prompt each vector came from.
- ``mode="replace"`` (default) overwrites the zero-shot residual; ``"add"`` adds the vector to it.
- ``scoring="teacher_forced"`` (default): a prompt is correct when the argmax of every answer token is right
  (the answer tokens are in the prompt). ``"exact_match"`` / ``"first_word"``: the model generates greedily
  from the query (:func:`tv_lens.generation.generate`, the vector written once at the query's last token) and
  its text, cut at the first newline, is compared with the answer's text (whole, or its first word), as
  Hendel et al. and Todd et al. evaluate. Losses stay teacher-forced.
- Continuous answers (regression prompts, ``RegressionBatch``; Yang et al.'s linear regression): a prompt is
  "correct" when the squared error of its prediction is at most ``tolerance``, and its "loss" is that squared
  error (:func:`tv_lens.metrics.answer_scores`, the scorer training uses too); the generation scorings need text.
- Overall accuracies leave out the Null task's prompts (their answers are random); per-task ones keep them.
- Intervals: stratified bootstrap over prompts, by task.

Cost: one pass of the ICL prompts reads every layer's vectors (:func:`tv_lens.probes.collect`), one clean
pass scores them, and the zero-shot prompts run once clean and once per layer, several layers stacked per
forward pass (:mod:`tv_lens.interventions.sweep`). The choice of source, the write and the zero-shot passes
are the prompting core that the TVP-loss of training uses too (:mod:`tv_lens.interventions.prompting`); every
injection goes through :func:`tv_lens.interventions.run_with_interventions`, and the result records how many
prompts each wrote to. The vector each source gives is read in :mod:`tv_lens.analyses.prompting_vectors`, the
generation scorings are :mod:`tv_lens.analyses.generated_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from tv_lens.analyses.answers import answer_scores, prompt_count, prompt_task_ids, real_task_prompts
from tv_lens.analyses.generated_scores import GeneratedScores, scoring_tokenizer
from tv_lens.analyses.options import N_PER_TASK, CausalOptions, analysis_config
from tv_lens.analyses.patching import patch_site
from tv_lens.analyses.performance import clean_outputs
from tv_lens.analyses.prompt_batches import LabelledPrompts, align_answers, check_pool, check_prompts
from tv_lens.analyses.prompting_vectors import prompting_vectors
from tv_lens.checks import tensor_of
from tv_lens.errors import AnalysisError, ShapeError
from tv_lens.interventions import Cell, run_sweep
from tv_lens.interventions.prompting import PROMPT_SOURCES, check_inject_mode, injection, other_prompts
from tv_lens.metrics import TOLERANCE, checked_answers, continuous_answers, tolerance_problem
from tv_lens.models.adapter import adapt
from tv_lens.probes import check_residual_site, prompt_ids
from tv_lens.results.prompting import PromptingAccuracy
from tv_lens.stats.bootstrap import stratified_bootstrap_ci
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import NULL_TASK, ICLBatch, RegressionBatch, RegressionPool, ShotSpec, TaskPool, TextPool

__all__ = [
    "PromptingAccuracy",
    "TaskVectorPrompting",
    "held_out_vectors",
    "other_prompts",
    "task_vector_prompting",
]

Source = Literal["other_prompt", "same_prompt", "task_mean"]
SOURCES: tuple[str, ...] = (*PROMPT_SOURCES, "task_mean")
Scoring = Literal["teacher_forced", "exact_match", "first_word"]
SCORINGS: tuple[str, ...] = get_args(Scoring)


def task_vector_prompting(
    model: Any,
    prompts: LabelledPrompts,
    zero_shot: LabelledPrompts,
    *,
    vectors: TaskVectors | None = None,
    tokenizer: Any = None,
    null_task: str = NULL_TASK,
    config: TaskVectorPrompting | None = None,
    seed: int = 0,
) -> PromptingAccuracy:
    """TVP accuracy of every layer, with ICL and zero-shot baselines, from paired ICL / query-only prompts.

    The options are the attributes of :class:`TaskVectorPrompting`. Token answers are scored by exact match and
    cross-entropy, continuous answers (regression) by squared error: "correct" when at most ``tolerance``.

    Args:
        model: A TransformerLens model (or a continuous-input one for regression prompts).
        prompts: The in-context prompts (an ``ICLBatch`` or ``RegressionBatch``, or
            :class:`~tv_lens.analyses.Prompts`): tokens or input vectors ``[batch, pos, d_in]``, answer positions
            (where vectors are read), answer tokens ``[batch, n_answer]`` (``-1`` padded) or continuous answers
            ``[batch, d_out]`` (floats), task ids and names, and the attention mask (left padding). Their answers,
            task ids and names serve both prompts of a pair.
        zero_shot: The same queries without demonstrations (``batch.zero_shot()``; row ``i`` pairs with row ``i``
            of ``prompts``): their tokens or input vectors, answer positions (where vectors are written) and mask.
        vectors: Task vectors for ``source="task_mean"`` (default: the means over these ICL prompts).
        tokenizer: Decodes generated tokens for the generation scorings (default: ``model.tokenizer``).
        null_task: Name of the Null task (left out of the overall accuracies).
        config: The options (``None``: ``TaskVectorPrompting()``).
        seed: Seed of the bootstrap.

    Raises:
        AnalysisError: A generation scoring without a tokenizer, or with continuous answers (both refused before
            the first pass).
        TaskError: A ``tokenizer`` without ``decode``; ``source="task_mean"`` vectors without a prompt's task;
            ``"other_prompt"`` with a task of a single prompt, or whose prompts all share one query; ``prompts`` or
            ``zero_shot`` without a field of :class:`~tv_lens.analyses.LabelledPrompts`.
        ShapeError: Mismatched prompt counts, or vectors of another d_model.
        LayerOutOfRangeError: A layer outside the model (or the given vectors).
    """
    config = analysis_config(config, TaskVectorPrompting)
    site, source, mode, scoring = config.site, config.source, config.mode, config.scoring
    adapter = adapt(model)
    every = tuple(range(adapter.n_layers))
    layers = every if config.layers is None else adapter.check_layers(config.layers, allow_embed=True)
    check_prompts(prompts)
    check_prompts(zero_shot, "zero_shot")
    task_names = prompts.task_names
    n, n_zero = prompt_count(prompts.inputs, "prompts.inputs"), prompt_count(zero_shot.inputs, "zero_shot.inputs")
    answers, ids = _pairs(prompts.answers, prompts.task_ids, task_names, n, n_zero)
    real = real_task_prompts(ids, task_names, null_task, "task-vector prompting")
    if scoring != "teacher_forced" and continuous_answers(answers):
        raise AnalysisError(
            f"scoring={scoring!r} compares generated text with the answers, and continuous (regression) answers "
            "are vectors, not text; use scoring='teacher_forced' (correct: squared error <= tolerance)."
        )
    if scoring != "teacher_forced":
        tokenizer = scoring_tokenizer(model, scoring, tokenizer)  # refused before the first pass
    icl_correct, icl_loss = _score(clean_outputs(model, prompts, config.batch_size, answers), answers, config.tolerance)
    queries = prompt_ids(model, zero_shot.inputs, zero_shot.answer_pos, zero_shot.attention_mask)
    injected, vector_source = prompting_vectors(
        model,
        prompts.inputs,
        prompts.answer_pos,
        prompts.attention_mask,
        ids,
        task_names,
        layers,
        site,
        source,
        vectors,
        config.batch_size,
        queries,
    )
    aligned = align_answers(model, zero_shot.inputs, zero_shot.answer_pos, zero_shot.attention_mask, answers)
    writes = []
    for i, layer in enumerate(layers):
        at_site, at_layer = patch_site(adapter, site, layer)
        writes.append(injection(at_layer, injected[i], mode, at_site))

    def score(logits: Tensor, index: Tensor) -> Tensor:
        return torch.stack(_score(logits, answers[index], config.tolerance), dim=1)

    cells = [Cell((write,)) for write in writes]
    sweep = run_sweep(
        model, aligned, cells, score, rows_per_pass=config.rows_per_pass, progress=config.progress, desc="TVP"
    )
    boot: dict[str, Any] = {"n_bootstrap": config.n_bootstrap, "ci": config.ci, "seed": seed}
    tvp_correct, tvp_loss = sweep.cells[..., 0], sweep.cells[..., 1]
    zero_correct = sweep.clean[:, 0]
    if scoring != "teacher_forced":
        generated = GeneratedScores(model, answers, scoring, tokenizer, config.batch_size)
        icl_correct = generated.score(prompts.inputs, prompts.answer_pos, prompts.attention_mask, [])
        zero_correct = generated.score(zero_shot.inputs, zero_shot.answer_pos, zero_shot.attention_mask, [])
        tvp_correct = torch.stack(
            [
                generated.score(zero_shot.inputs, zero_shot.answer_pos, zero_shot.attention_mask, [write])
                for write in writes
            ]
        )
    n_tasks = len(task_names)
    per_task_ci, _ = stratified_bootstrap_ci(tvp_correct, ids, n_tasks, **boot)
    _, accuracy_ci = stratified_bootstrap_ci(tvp_correct[:, real], ids[real], n_tasks, **boot)
    _, icl_ci = stratified_bootstrap_ci(icl_correct[real], ids[real], n_tasks, **boot)
    _, zero_ci = stratified_bootstrap_ci(zero_correct[real], ids[real], n_tasks, **boot)
    one_hot = torch.nn.functional.one_hot(ids, n_tasks).double()
    return PromptingAccuracy(
        layers=layers,
        task_names=tuple(task_names),
        task_ids=ids,
        tvp_correct=tvp_correct,
        tvp_loss=tvp_loss,
        icl_correct=icl_correct,
        icl_loss=icl_loss,
        zero_shot_correct=zero_correct,
        zero_shot_loss=sweep.clean[:, 1],
        accuracy=tvp_correct[:, real].mean(-1),
        accuracy_ci=accuracy_ci,
        per_task=(tvp_correct @ one_hot) / one_hot.sum(0),
        per_task_ci=per_task_ci,
        icl_accuracy=float(icl_correct[real].mean()),
        icl_ci=icl_ci,
        zero_shot_accuracy=float(zero_correct[real].mean()),
        zero_shot_ci=zero_ci,
        writes=torch.tensor([w[0] for w in sweep.writes], dtype=torch.long),
        vector_source=vector_source,
        source=source,
        mode=mode,
        site=site,
        null_task=null_task,
        **config.interval_settings(seed),
        scoring=scoring,
        tolerance=config.tolerance if continuous_answers(answers) else None,
        rows_per_pass=sweep.rows_per_pass,
    )


@dataclass(frozen=True)
class TaskVectorPrompting(CausalOptions):
    """Configuration of a TVP sweep; :meth:`run` samples ICL prompts and their zero-shot twins.

    Attributes:
        layers: Blocks to inject at (``None``: every block).
        source: ``"other_prompt"`` (default), ``"same_prompt"`` or ``"task_mean"``.
        mode: ``"replace"`` (default) or ``"add"``.
        site: Residual site read and written.
        scoring: ``"teacher_forced"`` (default), or by greedy generation ``"exact_match"`` / ``"first_word"``
            (token answers only).
        tolerance: For continuous answers (a ``RegressionPool`` / ``RegressionBatch``): a prompt counts as correct
            when its squared error (mean over output coordinates) is at most this; the result's ``*_loss`` are then
            squared errors and its accuracies the fraction correct. Token answers ignore it.

    The keyword-only :class:`~tv_lens.analyses.options.CausalOptions` (``n_bootstrap``, ``ci``, ``rows_per_pass``,
    ``batch_size``, ``progress``) apply too.
    """

    layers: tuple[int, ...] | None = None
    source: Source = "other_prompt"
    mode: Literal["replace", "add"] = "replace"
    site: str = "resid_post"
    scoring: Scoring = "teacher_forced"
    tolerance: float = TOLERANCE

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_options(self.source, self.mode, self.scoring)  # the bootstrap options: CausalOptions
        check_residual_site(self.site)
        problem = tolerance_problem(self.tolerance)
        if problem:
            raise AnalysisError(problem)

    def run(
        self,
        model: Any,
        pool: TaskPool | TextPool | RegressionPool,
        n_per_task: int = N_PER_TASK,
        n_shots: ShotSpec = 4,
        seed: int = 0,
    ) -> PromptingAccuracy:
        """Sample ``n_per_task`` ICL prompts per task (``seed``); task-mean vectors come from ``seed + 1``."""
        check_pool(pool, model)
        vectors = held_out_vectors(model, pool, self, n_per_task, n_shots, seed)
        return self.run_batch(model, pool.sample(n_per_task, n_shots, seed), vectors=vectors, seed=seed)

    def run_batch(
        self, model: Any, batch: ICLBatch | RegressionBatch, vectors: TaskVectors | None = None, seed: int = 0
    ) -> PromptingAccuracy:
        """TVP on a given batch and its ``batch.zero_shot()`` twin (token or regression prompts)."""
        return task_vector_prompting(model, batch, batch.zero_shot(), vectors=vectors, config=self, seed=seed)


def held_out_vectors(
    model: Any,
    pool: TaskPool | TextPool | RegressionPool,
    config: TaskVectorPrompting,
    n_per_task: int,
    n_shots: ShotSpec,
    seed: int,
) -> TaskVectors | None:
    """``source="task_mean"``'s task vectors, from a sample of ``pool`` separate from the prompts (``seed + 1``).

    ``None`` for the other sources, which read the prompts' own vectors.
    """
    if config.source != "task_mean":
        return None
    sample = pool.sample(n_per_task, n_shots, seed + 1)
    return TaskVectors.from_model(model, sample, config.layers, site=config.site, batch_size=config.batch_size)


def _check_options(source: str, mode: str, scoring: str) -> None:
    if scoring not in SCORINGS:
        raise AnalysisError(f"Unknown TVP scoring {scoring!r}; use one of {list(SCORINGS)}.")
    if source not in SOURCES:
        raise AnalysisError(f"Unknown TVP source {source!r}; use one of {list(SOURCES)}.")
    check_inject_mode(mode)


def _pairs(
    answers: Tensor | None, task_ids: Tensor, task_names: Sequence[str], n: int, n_zero: int
) -> tuple[Tensor, Tensor]:
    answers = checked_answers(answers, n, continuous=True).cpu()
    id_shape = tuple(tensor_of(task_ids, "task_ids", f"one integer task id per prompt ({n},) (batch.task_ids)").shape)
    if n_zero != n or id_shape != (n,):
        raise ShapeError(
            f"ICL prompts ({n}), zero-shot prompts ({n_zero}) and task_ids ({id_shape}) must pair up one to one; "
            "build the zero-shot prompts with batch.zero_shot()."
        )
    return answers, prompt_task_ids(task_ids, task_names, n)


def _score(logits: Tensor, answers: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    correct, loss = answer_scores(logits, answers, tolerance)
    return correct.cpu(), loss.cpu()
