"""Layer finetuning: does training the first blocks improve task encoding (and ICL) more than the last?

Han et al. (2025, §4.4, Table 1) finetune Llama-3.1-8B with LoRA (rank 16, alpha 16, dropout 0.1) on
either its first 10 or its last 10 of 32 layers, on tasks where the base model is weak, with the loss on
answer tokens only. Finetuning the first layers raised task decodability (TD) and accuracy much more
than finetuning the last ones. :class:`LayerFinetuning` runs that experiment on any TransformerLens
model, on token or text tasks (a pretrained model with a :class:`~tv_lens.tasks.TextPool` trains on the
loss of the query's answer tokens, :class:`~tv_lens.training.TextObjective`): two variants are finetuned
(first ``k`` blocks, last ``k`` blocks) through :func:`tv_lens.training.finetune` with the same data and
settings, and the base model and both variants are scored on the same held-out prompts: TD at every
layer (:mod:`tv_lens.analyses.decodability`) and ICL accuracy per task
(:func:`tv_lens.analyses.performance.score_batch`).

Read TD at every layer, not only at its peak: TD read upstream of the finetuned blocks cannot change by
construction (for the last ``k`` blocks, every layer below them keeps the base model's TD exactly).

Choices, with defaults after the paper: LoRA rank 16, alpha 16, dropout 0.1 (``lora=None`` finetunes
every weight of the chosen blocks); ``k`` = a third of the blocks (H: 10 of 32). The model passed in comes
back as it was: LoRA variants train adapters on it that are removed after scoring (one copy of the model in
memory), full finetuning trains deep copies.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from tv_lens.analyses.decodability import TaskDecodability
from tv_lens.analyses.options import IntervalOptions, analysis_config
from tv_lens.analyses.performance import score_batch
from tv_lens.analyses.prompt_batches import check_batch, check_pool
from tv_lens.checks import is_int, is_number
from tv_lens.errors import AnalysisError, LayerOutOfRangeError
from tv_lens.models.adapter import adapt
from tv_lens.results.finetuning import FinetuningComparison
from tv_lens.results.shared import real_prompts
from tv_lens.stats.bootstrap import stratified_bootstrap_ci
from tv_lens.tasks import NULL_TASK, ICLBatch, ShotSpec, TaskPool, TextPool
from tv_lens.tasks.pool import check_flag
from tv_lens.tasks.sampling import _shot_choices, check_sample_arguments
from tv_lens.training import (
    DataConfig,
    LoRAConfig,
    ScheduleConfig,
    TrainConfig,
    TrainResult,
    finetune,
    select_blocks,
)
from tv_lens.training.finetune import adapters_removed_after

__all__ = ["FinetuningComparison", "LayerFinetuning", "compare_models"]

PAPER_LORA = LoRAConfig(rank=16, alpha=16.0, dropout=0.1)


def compare_models(
    models: dict[str, Any],
    batch: ICLBatch,
    *,
    blocks: dict[str, tuple[int, ...]] | None = None,
    final_loss: dict[str, float] | None = None,
    settings: dict[str, Any] | None = None,
    null_task: str = NULL_TASK,
    config: LayerFinetuning | None = None,
    seed: int = 0,
) -> FinetuningComparison:
    """TD per layer and ICL accuracy of several models on the same prompts, side by side.

    The options are the attributes of :class:`LayerFinetuning` read here: ``decodability`` (the TD settings),
    ``n_bootstrap`` and ``ci`` (the accuracy interval).

    Args:
        models: Name → model, the base model first (TD changes are reported against it).
        batch: Held-out prompts every model is scored on.
        blocks: Blocks each model had trained (default: none).
        final_loss: Last training loss of each model (default: NaN).
        settings: Recorded on the result.
        null_task: Name of the Null task (left out of the overall accuracy).
        config: The options (``None``: ``LayerFinetuning()``).
        seed: Seed of the bootstraps.

    Raises:
        AnalysisError: Models of other numbers of blocks with every layer read (``decodability.layers=None``).
    """
    config = analysis_config(config, LayerFinetuning)
    if not isinstance(models, dict) or not models:
        got = "an empty dict" if isinstance(models, dict) else f"a {type(models).__name__}"
        raise AnalysisError(
            f"models must be a non-empty dict of name -> model, got {got}; pass e.g. "
            "{'base': model, 'finetuned': other} (the base model first)."
        )
    check_batch(batch)
    _check_records(models, blocks, final_loss, settings)
    _check_depths(models, config.decodability)
    scores = {name: _scores(model, batch, null_task, config, seed) for name, model in models.items()}
    return _comparison(scores, batch, blocks or {}, final_loss or {}, settings or {}, config)


class _Scores(NamedTuple):
    """One model's numbers on the comparison prompts."""

    layers: tuple[int, ...]
    td: Tensor
    td_ci: Tensor
    accuracy: Tensor
    overall: Tensor
    overall_ci: Tensor


def _scores(model: Any, batch: ICLBatch, null_task: str, config: LayerFinetuning, seed: int) -> _Scores:
    """TD per layer, accuracy per task and overall (with its interval) of ``model`` on ``batch``."""
    prompts: Any = batch  # an ICLBatch is a PromptBatch (the protocol's attributes are read here only)
    ids = batch.task_ids.cpu()
    n_tasks = len(batch.task_names)
    real = real_prompts(ids, batch.task_names, null_task)
    one_hot = torch.nn.functional.one_hot(ids, n_tasks).double()
    decodability = config.decodability.run_batch(model, prompts, seed=seed)
    correct = score_batch(model, prompts, "accuracy").double()
    interval = stratified_bootstrap_ci(correct[real], ids[real], n_tasks, config.n_bootstrap, config.ci, seed)
    return _Scores(
        decodability.layers,
        decodability.td,
        decodability.td_ci,
        (correct @ one_hot) / one_hot.sum(0),
        correct[real].mean(),
        interval[1],
    )


def _comparison(
    scores: dict[str, _Scores],
    batch: ICLBatch,
    blocks: dict[str, tuple[int, ...]],
    final_loss: dict[str, float],
    settings: dict[str, Any],
    config: LayerFinetuning,
) -> FinetuningComparison:
    """The comparison of the models ``scores`` holds, in its order (the base model first)."""
    names = tuple(scores)
    return FinetuningComparison(
        variants=names,
        blocks=tuple(tuple(blocks.get(name, ())) for name in names),
        layers=next(iter(scores.values())).layers,
        task_names=tuple(batch.task_names),
        td=torch.stack([scores[name].td for name in names]),
        td_ci=torch.stack([scores[name].td_ci for name in names]),
        accuracy=torch.stack([scores[name].accuracy for name in names]),
        overall=torch.stack([scores[name].overall for name in names]),
        overall_ci=torch.stack([scores[name].overall_ci for name in names]),
        final_loss=torch.tensor([float(final_loss.get(name, float("nan"))) for name in names], dtype=torch.float64),
        settings=settings,
        site=config.decodability.site,
    )


def _check_records(models: dict[str, Any], blocks: Any, final_loss: Any, settings: Any) -> None:
    """Model names are strings; ``blocks`` and ``final_loss`` map some of them to block tuples and numbers."""
    wrong = [name for name in models if not isinstance(name, str)]
    if wrong:
        raise AnalysisError(f"models must be keyed by name (a string), got {wrong[0]!r}; e.g. {{'base': model}}.")
    for what, records, fits, meaning in (
        ("blocks", blocks, _is_blocks, "a tuple of block indices, e.g. {'late': (2, 3)}"),
        ("final_loss", final_loss, is_number, "a number, e.g. {'late': 0.41}"),
    ):
        if records is None:
            continue
        if not isinstance(records, dict):
            raise AnalysisError(f"{what} must be a dict of model name -> {meaning}, got a {type(records).__name__}.")
        for name, value in records.items():
            if name not in models or not fits(value):
                problem = "names no model" if name not in models else f"holds {value!r:.40}"
                raise AnalysisError(
                    f"{what}[{name!r}] {problem}: {what} maps names of models {list(models)} to {meaning}."
                )
    if settings is not None and not isinstance(settings, dict):
        raise AnalysisError(f"settings must be a dict (recorded on the result), got a {type(settings).__name__}.")


def _check_depths(models: dict[str, Any], decodability: TaskDecodability) -> None:
    """Models of other numbers of blocks have no common layer axis, unless the TD layers are chosen (and shared)."""
    if decodability.layers is not None:  # collect refuses a layer a model lacks
        return
    depths = {name: adapt(model).n_layers for name, model in models.items()}
    if len(set(depths.values())) > 1:
        raise AnalysisError(
            f"The models have different numbers of blocks ({depths}), so their TD curves share no layer axis; compare "
            "models of one architecture, or read TD at blocks every model has: "
            "decodability=TaskDecodability(layers=(...))."
        )


def _is_blocks(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(is_int(b) for b in value)


def _default_train() -> TrainConfig:
    return TrainConfig(
        data=DataConfig(n_per_task=16, n_shots=8, eval_n_per_task=16),
        schedule=ScheduleConfig(max_steps=200, lr=1e-3, min_lr=1e-4, warmup_steps=20),
        eval_every=200,
    )


@dataclass(frozen=True)
class LayerFinetuning(IntervalOptions):
    """Configuration of the early- vs late-block finetuning experiment.

    Attributes:
        k: Blocks finetuned in each variant (``None``: a third of the model's blocks, at least one).
        lora: LoRA settings (default: Han et al.'s rank 16, alpha 16, dropout 0.1); ``None``: full finetuning
            of the chosen blocks.
        train: Finetuning data, optimiser and schedule (the same for both variants).
        decodability: TD settings for the comparison.
        n_per_task: Held-out prompts per task the models are compared on.
        n_shots: Demonstrations per held-out prompt.
        progress: Show training progress bars.

    The keyword-only :class:`~tv_lens.analyses.options.IntervalOptions` (``n_bootstrap``, ``ci``) apply too.
    """

    k: int | None = None
    lora: LoRAConfig | None = PAPER_LORA
    train: TrainConfig = field(default_factory=_default_train)
    decodability: TaskDecodability = field(default_factory=TaskDecodability)
    n_per_task: int = 50
    n_shots: ShotSpec = 8
    progress: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k is not None and (not is_int(self.k) or self.k < 1):
            raise LayerOutOfRangeError(f"k must be a positive number of blocks, got {self.k!r}.")
        if not isinstance(self.decodability, TaskDecodability):
            raise AnalysisError(
                f"decodability must be TaskDecodability settings, got {self.decodability!r:.60}; pass e.g. "
                "TaskDecodability(k=10)."
            )
        check_sample_arguments(self.n_per_task, 0.0)  # the comparison prompts, sampled after the training
        _shot_choices(self.n_shots)
        check_flag(self.progress, "progress", "show training progress bars")

    def blocks(self, n_layers: int) -> dict[str, tuple[int, ...]]:
        """The blocks each variant trains on a model of ``n_layers`` blocks."""
        k = max(1, n_layers // 3) if self.k is None else self.k
        if k > n_layers:
            raise LayerOutOfRangeError(
                f"k={k} blocks to finetune, but the model has only {n_layers} blocks; use k in 1 .. {n_layers}."
            )
        return {f"first:{k}": select_blocks(f"first:{k}", n_layers), f"last:{k}": select_blocks(f"last:{k}", n_layers)}

    def finetune_variants(self, model: Any, pool: TaskPool | TextPool) -> tuple[dict[str, Any], dict[str, float]]:
        """Deep copies of ``model`` finetuned on ``pool``: ``{"base": model, "first:k": ..., "last:k": ...}``.

        Returns:
            The models, and each variant's training loss at its last step.
        """
        variants = self.blocks(adapt(model).n_layers)
        models: dict[str, Any] = {"base": model}
        losses: dict[str, float] = {}
        for name, blocks in variants.items():
            copied = copy.deepcopy(model)
            run = finetune(copied, pool, self.train, blocks, self.lora, progress=self.progress)
            models[name] = run.model
            losses[name] = _final_loss(run)
        return models, losses

    def run(self, model: Any, pool: TaskPool | TextPool, seed: int = 0) -> FinetuningComparison:
        """Finetune both variants and compare them with the base model on prompts sampled with ``seed``.

        Training batches come from a hashed 64-bit seed stream (:mod:`tv_lens.training.data`), so the
        comparison prompts are not training prompts. With LoRA, each variant trains adapters on ``model``
        itself, is scored, and its adapters are removed: one copy of the model in memory, and the same numbers
        as :meth:`finetune_variants` then :meth:`compare` (which keep every variant as a deep copy).
        """
        check_pool(pool, model)
        if self.lora is None:
            models, losses = self.finetune_variants(model, pool)
            return self.compare(models, losses, pool, seed)
        return self._run_in_place(model, pool, seed)

    def _run_in_place(self, model: Any, pool: TaskPool | TextPool, seed: int) -> FinetuningComparison:
        """:meth:`run` with LoRA: each variant's adapters train on ``model``, are scored there, then removed."""
        variants = self.blocks(adapt(model).n_layers)
        batch = pool.sample(self.n_per_task, self.n_shots, seed)
        check_batch(batch)
        scores = {"base": _scores(model, batch, NULL_TASK, self, seed)}
        losses: dict[str, float] = {}
        for name, blocks in variants.items():
            with adapters_removed_after(model):
                trained = finetune(model, pool, self.train, blocks, self.lora, progress=self.progress)
                losses[name] = _final_loss(trained)
                scores[name] = _scores(model, batch, NULL_TASK, self, seed)
        return _comparison(scores, batch, variants, losses, self._settings(variants), self)

    def compare(
        self, models: dict[str, Any], losses: dict[str, float], pool: TaskPool | TextPool, seed: int = 0
    ) -> FinetuningComparison:
        """Score the output of :meth:`finetune_variants` on ``n_per_task`` prompts per task sampled with ``seed``."""
        variants = self.blocks(adapt(models["base"]).n_layers)
        batch = pool.sample(self.n_per_task, self.n_shots, seed)
        return compare_models(
            models,
            batch,
            blocks=variants,
            final_loss=losses,
            settings=self._settings(variants),
            config=self,
            seed=seed,
        )

    def _settings(self, variants: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        lora = None if self.lora is None else {**asdict(self.lora), "targets": list(self.lora.targets)}
        return {
            "k": len(next(iter(variants.values()))),
            "steps": self.train.schedule.max_steps,
            "lr": self.train.schedule.lr,
            "lora": lora,
        }


def _final_loss(run: TrainResult) -> float:
    """The training loss at a run's last step (NaN for a run of no steps)."""
    return float(run.history["loss"].iloc[-1]) if len(run.history) else float("nan")
