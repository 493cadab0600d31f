"""Function vectors (Todd et al. 2024): a few attention heads carry the task; the sum of their outputs is a vector.

Todd et al. find the heads that *transport* an in-context task to the answer position, then sum their average
outputs into a "function vector" (FV) which, added to the residual stream of a prompt without demonstrations,
makes the model do the task.

1. **Mean head activations** (:func:`mean_head_activations`): per task, each head's ``attn.hook_z`` at the
   answer position (the last token before the answer), averaged over clean ICL prompts of that task. On
   grouped-query-attention models (Llama, Qwen2) ``hook_z`` has one entry per *query* head, so each query head
   has its own mean.
2. **Causal indirect effect** (:func:`causal_indirect_effects`): on prompts of task ``t`` whose demonstrations
   carry wrong labels, write task ``t``'s mean into one head at the answer position, and measure the gain in
   probability of the right first answer token: ``CIE = P_patched(answer) - P_corrupted(answer)``. Heads whose
   mean restores the answer carry the task. By default each demonstration gets a random *wrong* label with
   probability ``label_noise`` (0.99), so the demonstrations show no mapping either way; Todd et al. instead
   shuffle each prompt's labels among its demonstrations (``FunctionVectors(label_noise=0, shuffle_labels=True)``),
   which leaves a label in place by chance (one in ``n_shots`` on average) and so keeps part of the mapping.
   Multi-token answers (text pools) use the first token for the probability; the teacher-forced loss over every
   answer token is reported too.
3. **Function vector** (:func:`function_vector`): per task, ``sum over the top-k heads of mean_z[layer, head] @
   W_O[layer, head]``, a ``d_model`` vector. Heads rank by the mean over tasks of each task's mean CIE
   (:attr:`IndirectEffects.mean_over_tasks`), as Todd et al. average it: a task with more corrupted prompts does
   not weigh more.
4. **Zero-shot layer sweep** (:func:`function_vector_prompting`): add the task's FV to ``resid_post`` of a layer at
   the answer position of its query-only prompts (no demonstrations) and score the answer, per layer, next to the
   plain zero-shot accuracy (the floor) and the ICL accuracy (the ceiling); the best layer is reported. This is
   task-vector prompting (:func:`~tv_lens.analyses.task_vector_prompting`, ``source="task_mean"``,
   ``mode="add"``) with the FV as every layer's vector, so generation-based scoring comes with it.

The Null task (random answers) has no function to find: :class:`FunctionVectors` leaves its prompts out.

Speed: the mean activations cost one forward pass per batch of clean prompts, stopped after the last block. The
CIE of every head is a cell of one stacked sweep (:mod:`tv_lens.interventions.sweep`): the patch writes at the
answer position only, so prompts share their prefix across heads where the model's attention allows, and
passes start at the patched block from the clean residual. Every patch and injection goes through
:func:`tv_lens.interventions.run_with_interventions` (a head's ``hook_z`` set to a value is
:func:`~tv_lens.interventions.ablate_head` with ``mode="mean"``); results record how many prompts each wrote to.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tv_lens.analyses.answers import prompt_count, prompt_task_ids
from tv_lens.analyses.generated_scores import scoring_tokenizer
from tv_lens.analyses.indirect_effects import causal_indirect_effects, check_means, mean_head_activations
from tv_lens.analyses.options import N_PER_TASK, CausalOptions, analysis_config
from tv_lens.analyses.prompt_batches import LabelledPrompts, check_pool, check_prompts
from tv_lens.analyses.prompting import SCORINGS, Scoring, TaskVectorPrompting, task_vector_prompting
from tv_lens.analyses.pruning import check_count
from tv_lens.checks import is_index, is_int, is_number
from tv_lens.errors import AnalysisError, LayerOutOfRangeError, ModelNotSupportedError, ShapeError, TaskError
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.results.function_vector_prompting import FunctionVectorPrompting, FunctionVectorResult
from tv_lens.results.function_vectors import FunctionVector, IndirectEffects, MeanHeadActivations
from tv_lens.results.provenance import ModelSignature, VectorProvenance, describe_tasks
from tv_lens.results.shared import real_prompts
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import NULL_TASK, ICLBatch, RegressionPool, ShotSpec, TaskPool, TextPool

__all__ = [
    "FunctionVector",
    "FunctionVectorPrompting",
    "FunctionVectorResult",
    "FunctionVectors",
    "IndirectEffects",
    "MeanHeadActivations",
    "causal_indirect_effects",
    "function_vector",
    "function_vector_prompting",
    "mean_head_activations",
]


def function_vector(
    model: Any,
    means: MeanHeadActivations,
    heads: IndirectEffects | Sequence[tuple[int, int]],
    *,
    model_name: str | None = None,
    pool: str | None = None,
    config: FunctionVectors | None = None,
) -> FunctionVector:
    """Per task, the sum of ``means[task, layer, head] @ W_O[layer, head]`` over the chosen heads.

    The vector records its provenance: ``model``'s signature, ``"add"`` at ``resid_post`` (no layer chosen yet:
    :class:`FunctionVectors` records the best layer of its sweep). The one option read here is
    :class:`FunctionVectors`'s ``k``.

    Args:
        model: The TransformerLens model ``means`` were read from (its ``blocks[l].attn.W_O``).
        means: Mean head activations.
        heads: :class:`IndirectEffects` (its top ``config.k`` heads by the mean over tasks of each task's mean CIE,
            :attr:`IndirectEffects.mean_over_tasks`) or ``(layer, head)`` pairs.
        model_name: A name for the model, recorded in the provenance next to its weight fingerprint.
        pool: The task pool the means came from, in words (default: their task names).
        config: The options (``None``: ``FunctionVectors()``).

    Raises:
        AnalysisError: ``config.k`` above the heads of the indirect effects; no heads, a head twice, or heads that
            are not ``(layer, head)`` pairs of ints.
        LayerOutOfRangeError: A head outside ``means``.
        NonFiniteError: ``means`` hold NaN or infinite values.
    """
    config = analysis_config(config, FunctionVectors)
    adapter = adapt(model)
    check_means(adapter, means)
    for name, value in (("model_name", model_name), ("pool", pool)):
        if value is not None and not isinstance(value, str):
            raise AnalysisError(
                f"{name} is recorded in the vector's provenance as text: pass a string or None, got {value!r}."
            )
    if isinstance(heads, IndirectEffects):
        check_count(config.k, "k", 1, len(heads.layers) * heads.n_heads)
        chosen = heads.top_heads(config.k)
    else:
        chosen = _head_pairs(heads)
    outputs = []
    for layer, head in chosen:
        if not 0 <= head < means.n_heads:
            raise LayerOutOfRangeError(
                f"Head {head} is out of range: blocks have {means.n_heads} heads, so use a head in "
                f"[0, {means.n_heads - 1}]."
            )
        z = means.activations[:, means.layer_index(layer), head]
        outputs.append(z.double() @ _output_weights(adapter, layer)[head])
    head_outputs = torch.stack(outputs, dim=1)  # [task, k, d_model]
    provenance = VectorProvenance(
        ModelSignature.of(model, model_name), "resid_post", (), "add", 1.0, pool or f"tasks={list(means.task_names)}"
    )
    return FunctionVector(head_outputs.sum(1), means.task_names, chosen, head_outputs, provenance)


def _head_pairs(heads: Any) -> tuple[tuple[int, int], ...]:
    """``heads`` as distinct ``(layer, head)`` pairs of ints, at least one (a float or bool index is refused)."""
    usage = "heads must be IndirectEffects or (layer, head) pairs of int indices, e.g. [(0, 1), (2, 3)]"
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
        raise AnalysisError(f"{usage}; got {heads!r}.")
    chosen = []
    for pair in heads:
        entries = tuple(pair) if isinstance(pair, Iterable) and not isinstance(pair, (str, bytes)) else ()
        if len(entries) != 2 or not all(is_index(entry) for entry in entries):
            raise AnalysisError(f"{usage}; got {pair!r} among them.")
        chosen.append((operator.index(entries[0]), operator.index(entries[1])))
    if not chosen or len(set(chosen)) != len(chosen):
        raise AnalysisError(f"heads must be distinct (layer, head) pairs, at least one; got {tuple(chosen)}.")
    return tuple(chosen)


def _output_weights(adapter: ModelAdapter, layer: int) -> Float[Tensor, "head d_head d_model"]:
    """``W_O`` of block ``layer`` as ``[n_heads, d_head, d_model]`` float64 on the CPU."""
    try:
        weights = adapter.model.blocks[layer].attn.W_O
    except (AttributeError, IndexError, TypeError) as error:
        raise ModelNotSupportedError(
            f"The model has no blocks[{layer}].attn.W_O (per-head output weights), which a function vector sums "
            "head outputs through; use a HookedTransformer or TransformerBridge."
        ) from error
    expected = (adapter.n_heads, adapter.d_head, adapter.d_model)
    if tuple(weights.shape) != expected:
        raise ModelNotSupportedError(f"blocks[{layer}].attn.W_O has shape {tuple(weights.shape)}, expected {expected}.")
    return weights.detach().to("cpu", torch.float64)


def function_vector_prompting(
    model: Any,
    prompts: LabelledPrompts,
    zero_shot: LabelledPrompts,
    vector: FunctionVector,
    *,
    tokenizer: Any = None,
    config: FunctionVectors | None = None,
    seed: int = 0,
) -> FunctionVectorPrompting:
    """Zero-shot accuracy with each prompt's task FV added to ``resid_post`` of every layer at the answer position.

    The options are the attributes of :class:`FunctionVectors` (``layers``, ``scoring`` and the
    :class:`~tv_lens.analyses.options.CausalOptions`); ``k`` and the label corruption are not read.

    Args:
        model: A TransformerLens model.
        prompts: ICL prompts (an ``ICLBatch``, or :class:`~tv_lens.analyses.Prompts`), the ICL baseline; their
            answers, task ids and names serve ``zero_shot`` too.
        zero_shot: The same queries without demonstrations (``batch.zero_shot()``), which get the vector.
        vector: The function vector of every task of ``prompts``.
        tokenizer: Decodes generations for the generation scorings (default: ``model.tokenizer``).
        config: The options (``None``: ``FunctionVectors()``).
        seed: Seed of the bootstrap.

    Raises:
        TaskError: A prompt's task has no function vector; ``prompts`` or ``zero_shot`` without a field of
            :class:`~tv_lens.analyses.LabelledPrompts`.
        ShapeError: A vector of another ``d_model``, or prompts and zero-shot prompts that do not pair up.
        LayerOutOfRangeError: A layer outside the model.
    """
    config = analysis_config(config, FunctionVectors)
    adapter = adapt(model)
    layers = _sweep_layers(adapter, config)
    if not isinstance(vector, FunctionVector):
        raise ShapeError(f"vector must be a FunctionVector (from function_vector), got {type(vector).__name__}.")
    vector.check_model(model)
    check_prompts(prompts)
    task_names = prompts.task_names
    ids = prompt_task_ids(prompts.task_ids, task_names, prompt_count(prompts.inputs, "prompts.inputs"))
    missing = sorted({task_names[t] for t in ids.unique().tolist()} - set(vector.task_names))
    if missing:
        raise TaskError(
            f"No function vector for tasks {missing} of these prompts (it covers {list(vector.task_names)}); build it "
            "from prompts of every task, or leave those prompts out."
        )
    n_tasks = len(vector.task_names)
    ones = torch.ones(n_tasks, dtype=torch.long)
    every_layer = vector.vectors[:, None].expand(-1, len(layers), -1).contiguous()
    vectors = TaskVectors(every_layer, layers, vector.task_names, ones, ones.clone())
    options = {field.name: getattr(config, field.name) for field in fields(CausalOptions)}
    sweep = TaskVectorPrompting(layers=layers, source="task_mean", mode="add", scoring=config.scoring, **options)
    prompting = task_vector_prompting(
        model, prompts, zero_shot, vectors=vectors, tokenizer=tokenizer, config=sweep, seed=seed
    )
    return FunctionVectorPrompting(prompting, vector.heads)


@dataclass(frozen=True)
class FunctionVectors(CausalOptions):
    """Configuration of the function-vector analysis; :meth:`run` samples clean, corrupted and evaluation prompts.

    Attributes:
        k: Heads summed into the function vector (top by the mean over tasks of each task's mean CIE).
        label_noise: Probability that a demonstration of a corrupted prompt gets a wrong label.
        shuffle_labels: Also permute each corrupted prompt's demonstration labels (Todd et al.'s corruption;
            applied before the label noise).
        layers: Blocks the vector is added at in the zero-shot sweep (``None``: every block).
        scoring: ``"teacher_forced"`` (default), or by greedy generation ``"exact_match"`` / ``"first_word"``.

    The keyword-only :class:`~tv_lens.analyses.options.CausalOptions` (``n_bootstrap``, ``ci``, ``rows_per_pass``,
    ``batch_size`` for reading activations and generating, ``progress``) apply too.
    """

    k: int = 10
    label_noise: float = 0.99
    shuffle_labels: bool = False
    layers: tuple[int, ...] | None = None
    scoring: Scoring = "teacher_forced"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_int(self.k) or self.k < 1:
            raise AnalysisError(f"k (heads summed into the function vector) must be an int >= 1, got {self.k!r}.")
        noise = self.label_noise
        if not is_number(noise) or not 0 <= noise < 1:
            raise AnalysisError(
                f"label_noise must lie in [0, 1) (the share of wrong demonstration labels), got {noise!r}; e.g. 0.99."
            )
        if not isinstance(self.shuffle_labels, bool):
            raise AnalysisError(f"shuffle_labels must be True or False, got {self.shuffle_labels!r}.")
        if noise == 0 and not self.shuffle_labels:
            raise AnalysisError(
                "label_noise=0 without shuffle_labels leaves the CIE prompts uncorrupted, so no head can restore "
                "anything; use label_noise=0.99 (the default) or shuffle_labels=True."
            )
        if self.scoring not in SCORINGS:
            raise AnalysisError(f"Unknown scoring {self.scoring!r}; use one of {list(SCORINGS)}.")

    def run(
        self, model: Any, pool: TaskPool | TextPool, n_per_task: int = N_PER_TASK, n_shots: ShotSpec = 4, seed: int = 0
    ) -> FunctionVectorResult:
        """Sample clean (``seed``), corrupted (``seed + 1``) and evaluation (``seed + 2``) prompts; run all steps.

        The Null task's prompts are left out. ``n_shots`` must give the corrupted prompts demonstrations to corrupt
        (at least two each for ``shuffle_labels`` alone); see :meth:`run_batch`.
        """
        check_pool(pool, model)
        clean = pool.sample(n_per_task, n_shots, seed)
        corrupted = self.sample_corrupted(pool, n_per_task, n_shots, seed + 1)
        evaluation = pool.sample(n_per_task, n_shots, seed + 2)
        return self.run_batch(model, clean, corrupted, evaluation, seed=seed)

    def sample_corrupted(self, pool: TaskPool | TextPool, n_per_task: int, n_shots: ShotSpec, seed: int) -> ICLBatch:
        """The CIE's corrupted prompts: ``pool.sample`` with this configuration's label corruption.

        Raises:
            TaskError: A regression pool (the CIE is the probability of an answer token).
        """
        if isinstance(pool, RegressionPool):
            raise TaskError(
                "Function vectors measure each head by the probability of the answer's token, and a RegressionPool's "
                "answers are vectors; use a TaskPool or a TextPool (the representation analyses, ICL performance and "
                "task-vector prompting take regression pools)."
            )
        return pool.sample(n_per_task, n_shots, seed, self.label_noise, shuffle_labels=self.shuffle_labels)

    def run_batch(
        self,
        model: Any,
        clean: ICLBatch,
        corrupted: ICLBatch,
        evaluation: ICLBatch,
        seed: int = 0,
        *,
        model_name: str | None = None,
    ) -> FunctionVectorResult:
        """Means from ``clean``, CIE on ``corrupted``, the zero-shot sweep on ``evaluation`` (Null prompts left out).

        The vector's provenance records the model (named ``model_name`` if given), the clean prompts and the best
        layer of the sweep.

        Every option is checked before the first pass, ``layers`` and ``scoring`` of the last step too.

        Raises:
            AnalysisError: A batch without prompts of a task other than Null; ``k`` above the model's heads;
                corrupted prompts none of whose demonstrations has a wrong label (no demonstrations, or labels
                shuffled among a single one), which leave no mapping for a head to restore; a generation scoring
                for a model without a tokenizer.
            LayerOutOfRangeError: ``layers`` outside the model, or a block twice.
            TaskError: Corrupted or evaluation prompts of a task that no clean prompt has.
        """
        clean = _without_null(clean, "clean")
        corrupted = _without_null(corrupted, "corrupted")
        evaluation = _without_null(evaluation, "evaluation")
        for batch, name in ((corrupted, "corrupted"), (evaluation, "evaluation")):
            _check_covered(clean, batch, name)
        adapter = adapt(model)
        check_count(self.k, "k", 1, adapter.n_layers * adapter.n_heads)
        _sweep_layers(adapter, self)
        if self.scoring != "teacher_forced":
            scoring_tokenizer(model, self.scoring)
        noise = self._noise(corrupted)
        if noise == 0:
            raise AnalysisError(
                "None of the corrupted prompts' demonstrations has a wrong label (they have no demonstrations, or "
                "their labels were shuffled among a single one), so they are not corrupted and no head can restore "
                "anything; sample them with demonstrations (n_shots >= 1 with label_noise, n_shots >= 2 with "
                "shuffle_labels), or call causal_indirect_effects on prompts you corrupted yourself."
            )
        means = mean_head_activations(model, clean, config=self)
        effects = causal_indirect_effects(model, corrupted, means, label_noise=noise, config=self, seed=seed)
        described = describe_tasks(clean, clean.task_names)
        vector = function_vector(model, means, effects, model_name=model_name, pool=described, config=self)
        prompting = function_vector_prompting(model, evaluation, evaluation.zero_shot(), vector, config=self, seed=seed)
        return FunctionVectorResult(means, effects, vector.applied_as(layers=(prompting.best_layer,)), prompting)

    def _noise(self, corrupted: ICLBatch) -> float:
        """The share of the corrupted batch's demonstrations whose label is wrong."""
        shots = corrupted.demo_answer_pos >= 0
        return float(corrupted.demo_noisy[shots].double().mean()) if bool(shots.any()) else 0.0


def _check_covered(clean: ICLBatch, batch: ICLBatch, name: str) -> None:
    """Raise unless every task with prompts in ``batch`` has clean prompts (its means and vector come from them)."""
    covered = _tasks_present(clean)
    missing = sorted(_tasks_present(batch) - covered)
    if missing:
        raise TaskError(
            f"The {name} prompts have tasks {missing} that no clean prompt has (the clean prompts cover "
            f"{sorted(covered)}), so they would get no mean head activations or function vector; sample the three "
            "batches from one pool, or leave those prompts out."
        )


def _tasks_present(batch: ICLBatch) -> set[str]:
    """Names of the tasks with prompts in ``batch``."""
    return {batch.task_names[t] for t in batch.task_ids.unique().tolist()}


def _sweep_layers(adapter: ModelAdapter, config: FunctionVectors) -> tuple[int, ...]:
    """The blocks of the zero-shot sweep: ``config.layers``, checked, each once (``None``: every block)."""
    if config.layers is None:
        return tuple(range(adapter.n_layers))
    layers = adapter.check_layers(config.layers, allow_embed=True)
    if len(set(layers)) != len(layers):
        raise LayerOutOfRangeError(f"layers names a block twice, {layers}; pass each block once.")
    return layers


def _without_null(batch: ICLBatch, name: str) -> ICLBatch:
    """``batch`` without its Null task's prompts."""
    if not isinstance(batch, ICLBatch):
        raise TaskError(f"The {name} prompts must be an ICLBatch (pool.sample(...)), got {type(batch).__name__}.")
    real = real_prompts(batch.task_ids, batch.task_names)
    if not bool(real.any()):
        raise AnalysisError(
            f"The {name} prompts hold no task but Null (random answers), which has no function to find; sample "
            "from a pool with at least one real task."
        )
    kept = batch if bool(real.all()) else batch.select(real)
    if batch.task_names[-1] == NULL_TASK:  # the Null task is a pool's last: drop its name too
        kept = replace(kept, task_names=batch.task_names[:-1])
    return kept
