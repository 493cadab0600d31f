"""Attention knockout: what the answer loses when a position may not attend to a prompt role in some blocks.

Head attention (:mod:`tv_lens.analyses.attention`) says where the heads at the answer position look; a knockout
says whether the answer needs it. Geva et al. (2023) block the attention of the last position to chosen positions in
a window of blocks and slide the window over the model. Wang et al. (2023, "Label words are anchors") use such
knockouts on in-context prompts: kept from the text before them in the first blocks, the demonstrations' label words
cannot gather the demonstrations' information and the predictions change much; in the last blocks, little. The
answer position then reads the labels in the deep blocks. :func:`attention_knockout` slides a window of ``window``
consecutive blocks over the model and, for each role of the prompt (:func:`~tv_lens.tasks.position_roles`), blocks
the attention of the query (the answer position, or with ``query="demo_answer"`` every demonstration's answer
tokens) to every position of that role in every head of the window's blocks (:func:`~tv_lens.interventions.knockout`);
the harm is the answer's loss increase or accuracy drop, per prompt, with means per task and over every task but Null
and their bootstrap intervals.

Speed: every (window, role) is a cell of a stacked sweep (:mod:`tv_lens.interventions.sweep`): several cells per
forward pass, each starting at its window's first block from the clean residual where the model allows.

>>> from tv_lens import ModelConfig, build_model, offset_pool
>>> pool = offset_pool(offsets=(1, 2), n_values=8)
>>> model = build_model(ModelConfig(d_vocab=pool.vocab_size, n_layers=2, d_model=32, n_heads=4, n_ctx=64))
>>> result = AttentionKnockout(n_bootstrap=0).run(model, pool, n_per_task=4, n_shots=3)
>>> result.windows, result.role_names
(((0,), (1,)), ('demo_input', 'demo_answer', 'separator', 'query'))
>>> result.knocked_loss.shape  # [window, role, prompt]
torch.Size([2, 4, 12])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from tv_lens.analyses.answers import answer_scores, prompt_task_ids, real_task_prompts
from tv_lens.analyses.options import N_PER_TASK, CausalOptions, analysis_config
from tv_lens.analyses.prompt_batches import LabelledPrompts, PromptBatch, PromptPool, aligned_with_answers, check_pool
from tv_lens.checks import is_int
from tv_lens.errors import AnalysisError, TaskError
from tv_lens.interventions import knockout
from tv_lens.interventions.sweep import Cell, run_sweep
from tv_lens.models.adapter import adapt
from tv_lens.positions import prepare_prompts
from tv_lens.results.knockout import KnockoutEffects
from tv_lens.stats.bootstrap import task_means
from tv_lens.tasks import NULL_TASK, ShotSpec
from tv_lens.tasks.prompt_rows import PromptRows
from tv_lens.tasks.roles import PROMPT_ROLES, demonstration_roles, position_roles

__all__ = ["AttentionKnockout", "KnockoutEffects", "attention_knockout"]

KNOCKOUT_METRICS: tuple[str, ...] = ("cross_entropy", "accuracy")

DEFAULT_ROLES: dict[str, tuple[str, ...]] = {
    "answer": ("demo_input", "demo_answer", "separator", "query"),
    "demo_answer": ("prefix", "demo_input", "demo_answer", "separator"),
}
"""The roles knocked out by default, for each query: what the query may attend to (what comes before it)."""


def attention_knockout(
    model: Any,
    prompts: LabelledPrompts,
    *,
    null_task: str = NULL_TASK,
    config: AttentionKnockout | None = None,
    seed: int = 0,
) -> KnockoutEffects:
    """Block the answer position's (or the labels') attention to each role in each window of blocks; the answer's harm.

    The options are the attributes of :class:`AttentionKnockout`.

    Args:
        model: A TransformerLens model.
        prompts: A batch of a task pool (an ``ICLBatch`` or ``RegressionBatch``): its demonstration spans give the
            roles.
        null_task: Name of the Null task (left out of the overall numbers).
        config: The options (``None``: ``AttentionKnockout()``).
        seed: Seed of the bootstrap.

    Raises:
        TaskError: ``prompts`` that are not a batch of a task pool (no demonstration spans).
        AnalysisError: A window longer than the model.
        ModelNotSupportedError: A model whose attention cannot be knocked out through its hook points
            (:func:`~tv_lens.interventions.knockout_strategy`).
    """
    config = analysis_config(config, AttentionKnockout)
    adapter = adapt(model)
    if config.window > adapter.n_layers:
        raise AnalysisError(
            f"window must be at most the model's {adapter.n_layers} blocks, got {config.window}; knock out a shorter "
            "window."
        )
    if not isinstance(prompts, PromptRows):
        raise TaskError(
            f"{type(prompts).__name__} prompts carry no demonstration spans to read roles from; pass a batch of a "
            "task pool (pool.sample(...)), or knock out positions of your own with tv_lens.interventions.knockout."
        )
    aligned, answers = aligned_with_answers(model, prompts, continuous=True)
    task_names = tuple(prompts.task_names)
    ids = prompt_task_ids(prompts.task_ids, task_names, len(aligned))
    real = real_task_prompts(ids, task_names, null_task, "attention knockout")
    width = aligned.inputs.shape[1]
    roles = config.roles if config.roles is not None else DEFAULT_ROLES[config.query]
    role_names, keys, labels = _role_keys(adapter, prompts, width, roles, config.by_demonstration)
    queries: Any = "answer" if config.query == "answer" else labels
    windows = tuple(tuple(range(start, start + config.window)) for start in range(adapter.n_layers - config.window + 1))
    cells = [
        Cell(tuple(knockout(layer, role_keys, pos=queries) for layer in window))
        for window in windows
        for role_keys in keys
    ]

    def score(logits: Tensor, index: Tensor) -> Tensor:
        return torch.stack(answer_scores(logits, answers[index]), dim=1).cpu()

    sweep = run_sweep(
        model, aligned, cells, score, rows_per_pass=config.rows_per_pass, progress=config.progress, desc="knockout"
    )
    shape = (len(windows), len(role_names), len(aligned))
    knocked_correct, knocked_loss = sweep.cells[..., 0].view(shape), sweep.cells[..., 1].view(shape)
    clean_correct, clean_loss = sweep.clean[:, 0], sweep.clean[:, 1]
    harm = clean_correct - knocked_correct if config.metric == "accuracy" else knocked_loss - clean_loss
    present = _knocked_somewhere(keys, labels, config.query)
    means = task_means(harm, ids, len(task_names), real, config.n_bootstrap, config.ci, seed, present)
    return KnockoutEffects(
        windows=windows,
        role_names=role_names,
        task_names=task_names,
        task_ids=ids,
        clean_correct=clean_correct,
        clean_loss=clean_loss,
        knocked_correct=knocked_correct,
        knocked_loss=knocked_loss,
        **means._asdict(),
        writes=torch.tensor([counts[0] for counts in sweep.writes], dtype=torch.long).view(shape[:2]),
        metric=config.metric,
        query=config.query,
        present=present,
        null_task=null_task,
        **config.interval_settings(seed),
        rows_per_pass=sweep.rows_per_pass,
    )


@dataclass(frozen=True)
class AttentionKnockout(CausalOptions):
    """Configuration of an attention-knockout analysis; :meth:`run` samples prompts and knocks out every role.

    Attributes:
        window: Consecutive blocks knocked out together; the window slides one block at a time.
        roles: The prompt roles knocked out, each in a cell of its own (names of
            :data:`~tv_lens.tasks.PROMPT_ROLES`; ``"answer_pos"`` blocks the answer position from itself). ``None``:
            what the query may attend to (:data:`DEFAULT_ROLES`).
        metric: The harm: ``"cross_entropy"`` (default; the answer loss increase) or ``"accuracy"`` (its drop).
        by_demonstration: Knock out every demonstration's input, answer or separator apart, counted back from the
            query (``"demo_answer[-1]"``: the last demonstration's answer; :func:`~tv_lens.tasks.demonstration_roles`),
            instead of the role in all demonstrations at once.
        query: Whose attention is blocked: ``"answer"`` (default; the answer position, where the answer is read) or
            ``"demo_answer"`` (every demonstration's answer tokens, Wang et al.'s label words, each kept from the
            role's positions at or before it: whether the labels must gather what precedes them).

    The keyword-only :class:`~tv_lens.analyses.options.CausalOptions` (``n_bootstrap``, ``ci``, ``rows_per_pass``,
    ``progress``) apply too.
    """

    window: int = 1
    roles: tuple[str, ...] | None = None
    metric: str = "cross_entropy"
    by_demonstration: bool = False
    query: str = "answer"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_int(self.window) or self.window < 1:
            raise AnalysisError(
                f"window must be an int >= 1 (consecutive blocks knocked out together), got {self.window!r}."
            )
        if self.query not in DEFAULT_ROLES:
            raise AnalysisError(
                f"Unknown knockout query {self.query!r}; use 'answer' (the answer position) or 'demo_answer' (the "
                "demonstrations' answer tokens)."
            )
        if self.roles is not None:
            _check_roles(self.roles)
        if not isinstance(self.by_demonstration, bool):
            raise AnalysisError(
                f"by_demonstration must be True or False (whether every demonstration is knocked out apart), got "
                f"{self.by_demonstration!r}."
            )
        if self.metric not in KNOCKOUT_METRICS:
            raise AnalysisError(f"Unknown knockout metric {self.metric!r}; use one of {list(KNOCKOUT_METRICS)}.")

    def run(
        self, model: Any, pool: PromptPool, n_per_task: int = N_PER_TASK, n_shots: ShotSpec = 4, seed: int = 0
    ) -> KnockoutEffects:
        """Sample ``n_per_task`` prompts per task of a token, text or regression pool (seeded); :meth:`run_batch`."""
        check_pool(pool, model)
        return self.run_batch(model, pool.sample(n_per_task, n_shots, seed), seed=seed)

    def run_batch(self, model: Any, batch: PromptBatch, seed: int = 0) -> KnockoutEffects:
        """Attention knockout on a given batch."""
        return attention_knockout(model, batch, config=self, seed=seed)


def _check_roles(roles: Any) -> None:
    if isinstance(roles, (str, bytes)) or not isinstance(roles, tuple) or not roles:
        raise AnalysisError(f"roles must be a non-empty tuple of role names from {list(PROMPT_ROLES)}, got {roles!r}.")
    unknown = [role for role in roles if role not in PROMPT_ROLES]
    if unknown or len(set(roles)) != len(roles):
        raise AnalysisError(
            f"roles must be distinct names from {list(PROMPT_ROLES)}, got {list(roles)}"
            + (f" ({unknown[0]!r} is not a role)." if unknown else " (a role twice).")
        )


def _role_keys(
    adapter: Any, batch: PromptRows, width: int, roles: tuple[str, ...], by_demonstration: bool
) -> tuple[tuple[str, ...], list[Bool[Tensor, "prompt pos"]], Bool[Tensor, "prompt pos"]]:
    """The roles knocked out, each one's positions, and every demonstration's answer tokens (the labels).

    All in the aligned layout ``[prompt, width]``. With ``by_demonstration``, every demonstration's part of a chosen
    role is a role of its own (prompt order).
    """
    if by_demonstration:
        ids, names = demonstration_roles(batch)
        chosen = tuple(name for name in names if name.split("[")[0] in roles)
        if not chosen:
            raise TaskError(
                f"The prompts have no demonstration parts of the roles {list(roles)} to knock out one by one (their "
                "most shots is 0); sample prompts with shots, or knock the roles out with by_demonstration=False."
            )
    else:
        ids, names, chosen = position_roles(batch), PROMPT_ROLES, roles
    shift = prepare_prompts(adapter, batch.inputs, batch.answer_pos, batch.attention_mask).shift
    ids = ids.cpu()
    columns = torch.arange(width)[None, :] + shift[:, None]
    aligned = ids.gather(1, columns.clamp(max=ids.shape[1] - 1)).masked_fill(columns >= ids.shape[1], -1)
    label_ids = torch.tensor([i for i, name in enumerate(names) if name.split("[")[0] == "demo_answer"])
    return chosen, [aligned == names.index(name) for name in chosen], torch.isin(aligned, label_ids)


def _knocked_somewhere(
    keys: list[Bool[Tensor, "prompt pos"]], labels: Bool[Tensor, "prompt pos"], query: str
) -> Bool[Tensor, "role prompt"]:
    """Whether a query of each prompt is kept from a position of each role (at or before it): something to knock out."""
    if query == "answer":  # every position of a role comes before the answer position
        return torch.stack([role_keys.any(-1) for role_keys in keys])
    columns = torch.arange(labels.shape[1])
    last_label = torch.where(labels, columns, -1).amax(-1, keepdim=True)  # -1: no demonstration
    return torch.stack([(role_keys & (columns <= last_label)).any(-1) for role_keys in keys])
