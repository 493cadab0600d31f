"""Head attention: where each head looks from the answer position, by the role of the positions in the prompt.

The answer position (the token right before the answer) is where the task representation is read and the answer
predicted. Which earlier positions do its heads read? Wang et al. (2023, "Label words are anchors") find that the
information of a demonstration flows through its label tokens, and Todd et al. (2024) that the heads whose output
carries the task (function-vector heads, :mod:`tv_lens.analyses.function_vectors`) attend to the demonstrations'
answers. :func:`role_attention` reads every head's attention weights at the answer position
(``blocks.{l}.attn.hook_pattern``) and sums them over the positions of each role of the prompt
(:func:`~tv_lens.tasks.position_roles`: prefix, demonstration input, answer and separator, query, the answer
position itself), per prompt; means per task and over every task but Null, with stratified bootstrap intervals, follow.

The roles of a batch follow from its demonstration spans; ``by_demonstration=True`` keeps every demonstration apart,
counted back from the query (:func:`~tv_lens.tasks.demonstration_roles`). Prompts of your own
(:class:`~tv_lens.analyses.Prompts`) carry no spans: give ``roles``, a role id per position, and their ``role_names``.

Speed: one forward pass per batch of prompts, stopped after the last block read; only each prompt's answer row of
each pattern is kept. On grouped-query-attention models every query head has its own pattern.

>>> from tv_lens import ModelConfig, build_model, offset_pool
>>> pool = offset_pool(offsets=(1, 2), n_values=8)
>>> model = build_model(ModelConfig(d_vocab=pool.vocab_size, n_layers=2, d_model=32, n_heads=4, n_ctx=64))
>>> result = HeadAttention(n_bootstrap=0).run(model, pool, n_per_task=4, n_shots=3)
>>> result.attention.shape, result.role_names  # [layer, head, role, prompt]
(torch.Size([2, 4, 6, 12]), ('prefix', 'demo_input', 'demo_answer', 'separator', 'query', 'answer_pos'))
>>> bool(torch.allclose(result.attention.sum(2), torch.ones(2, 4, 12, dtype=torch.float64)))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.analyses.answers import prompt_task_ids, real_task_prompts
from tv_lens.analyses.options import N_PER_TASK, IntervalOptions, PassOptions, analysis_config
from tv_lens.analyses.prompt_batches import LabelledPrompts, PromptBatch, PromptPool, check_prompts, sample_batch
from tv_lens.checks import is_integer_tensor, tensor_of
from tv_lens.errors import AnalysisError, ConfigError, ModelNotSupportedError, ShapeError, TaskError
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.running import HookFn, read_batches
from tv_lens.positions import prepare_prompts
from tv_lens.probes import check_finite_rows
from tv_lens.results.attention import RoleAttention
from tv_lens.stats.bootstrap import task_means
from tv_lens.tasks import NULL_TASK, ShotSpec
from tv_lens.tasks.prompt_rows import PromptRows
from tv_lens.tasks.roles import PROMPT_ROLES, demonstration_roles, position_roles

__all__ = ["HeadAttention", "RoleAttention", "role_attention"]


def role_attention(
    model: Any,
    prompts: LabelledPrompts,
    roles: Int[Tensor, "batch pos"] | None = None,
    *,
    role_names: Sequence[str] | None = None,
    null_task: str = NULL_TASK,
    config: HeadAttention | None = None,
    seed: int = 0,
) -> RoleAttention:
    """Each head's attention at the answer position, summed over the positions of each role, per prompt.

    The options are the attributes of :class:`HeadAttention`.

    Args:
        model: A TransformerLens model.
        prompts: The prompts (an ``ICLBatch`` or ``RegressionBatch``, or :class:`~tv_lens.analyses.Prompts`, whose
            ``answers`` may be ``None``: none are read): inputs, answer positions, task ids and names, and the
            attention mask (needed for left padding).
        roles: The role id of every position ``[batch, pos]``, in the layout of ``prompts.inputs``: an index into
            ``role_names`` at every real position up to the answer position (any value after it). ``None``: the
            roles of a batch, :func:`~tv_lens.tasks.position_roles` (:func:`~tv_lens.tasks.demonstration_roles`
            with ``by_demonstration``).
        role_names: The name of every role id (with ``roles``).
        null_task: Name of the Null task (left out of the overall numbers).
        config: The options (``None``: ``HeadAttention()``).
        seed: Seed of the bootstrap.

    Raises:
        TaskError: ``prompts`` without a field of :class:`~tv_lens.analyses.LabelledPrompts`, prompts without
            demonstration spans and no ``roles``, or a role id outside ``role_names`` at a position the answer
            position attends to.
        ShapeError: ``roles`` not integer ids of the shape of the prompts.
        ConfigError: ``roles`` without ``role_names`` or the other way round, role names that are not distinct
            strings, or ``roles`` with ``by_demonstration``.
        ModelNotSupportedError: ``attn.hook_pattern`` is not ``[batch, n_heads, pos, pos]``.
        NonFiniteError: NaN or infinite attention weights.
    """
    config = analysis_config(config, HeadAttention)
    adapter = adapt(model)
    layers = tuple(range(adapter.n_layers)) if config.layers is None else adapter.check_layers(config.layers)
    check_prompts(prompts)
    roles, names = _roles(prompts, roles, role_names, config.by_demonstration)
    prepared = prepare_prompts(adapter, prompts.inputs, prompts.answer_pos, prompts.attention_mask)
    task_names = tuple(prompts.task_names)
    ids = prompt_task_ids(prompts.task_ids, task_names, len(prepared))
    real = real_task_prompts(ids, task_names, null_task, "head attention")
    weights = _role_weights(roles, prepared.shift, prepared.answer_pos, names)  # [prompt, width, role]
    shares = torch.zeros(len(prepared), len(layers), adapter.n_heads, len(names), dtype=torch.float64)

    def hooks_for(index: Tensor) -> list[tuple[str, HookFn]]:
        pos, chunk = prepared.answer_pos[index], weights[index]
        return [
            (
                adapter.hook_name("attn.hook_pattern", layer),
                partial(_role_shares, adapter=adapter, store=shares[:, i], index=index, pos=pos, weights=chunk),
            )
            for i, layer in enumerate(layers)
        ]

    ends = prepared.answer_pos + 1
    read_batches(
        adapter, prepared.inputs, ends, config.batch_size, hooks_for, desc="attention", progress=config.progress
    )
    attention = shares.permute(1, 2, 3, 0).contiguous()  # [layer, head, role, prompt]
    check_finite_rows(
        attention.flatten(1, 2).transpose(1, 2), layers, "attention weights", "Check the model's weights and inputs."
    )
    present = weights.any(1).T  # [role, prompt]: the prompt has a position of the role
    means = task_means(attention, ids, len(task_names), real, config.n_bootstrap, config.ci, seed, present)
    return RoleAttention(
        layers=layers,
        role_names=names,
        task_names=task_names,
        task_ids=ids,
        attention=attention,
        **means._asdict(),
        present=present,
        null_task=null_task,
        **config.interval_settings(seed),
    )


@dataclass(frozen=True)
class HeadAttention(IntervalOptions, PassOptions):
    """Configuration of a head-attention analysis; :meth:`run` samples prompts and reads every head's attention.

    Attributes:
        layers: Blocks to read (``None``: every block).
        by_demonstration: Keep every demonstration's input, answer and separator apart, counted back from the query
            (:func:`~tv_lens.tasks.demonstration_roles`), instead of one role each for all demonstrations' inputs,
            answers and separators.

    The keyword-only :class:`~tv_lens.analyses.options.IntervalOptions` (``n_bootstrap``, ``ci``) and
    :class:`~tv_lens.analyses.options.PassOptions` (``batch_size``, ``progress``) apply too.
    """

    layers: tuple[int, ...] | None = None
    by_demonstration: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.by_demonstration, bool):
            raise AnalysisError(
                f"by_demonstration must be True or False (whether every demonstration is a role of its own), got "
                f"{self.by_demonstration!r}."
            )

    def run(
        self, model: Any, pool: PromptPool, n_per_task: int = N_PER_TASK, n_shots: ShotSpec = 4, seed: int = 0
    ) -> RoleAttention:
        """Sample ``n_per_task`` prompts per task of a token, text or regression pool (seeded); :meth:`run_batch`."""
        return self.run_batch(model, sample_batch(pool, n_per_task, n_shots, seed, model=model), seed=seed)

    def run_batch(self, model: Any, batch: PromptBatch, seed: int = 0) -> RoleAttention:
        """Head attention by role on a given batch (the roles its demonstration spans give)."""
        return role_attention(model, batch, config=self, seed=seed)


def _roles(
    prompts: LabelledPrompts, roles: Any, role_names: Sequence[str] | None, by_demonstration: bool
) -> tuple[Int[Tensor, "batch pos"], tuple[str, ...]]:
    """The role ids ``[batch, pos]`` on the CPU and their names: given, or those of a batch."""
    if roles is not None and by_demonstration:
        raise ConfigError(
            "by_demonstration splits the roles of a batch, not roles of your own: give every demonstration its own "
            "role id in roles, or pass roles=None."
        )
    if roles is None:
        if role_names is not None:
            raise ConfigError(
                "role_names name the ids of roles: pass roles too (a role id per position), or neither for the roles "
                "of a batch."
            )
        if not isinstance(prompts, PromptRows):
            raise TaskError(
                f"{type(prompts).__name__} prompts carry no demonstration spans to read roles from: pass roles (a "
                "role id per position [batch, pos]) and role_names, or a batch of a task pool (pool.sample(...))."
            )
        if by_demonstration:
            ids, names = demonstration_roles(prompts)
            return ids.cpu(), names
        return position_roles(prompts).cpu(), PROMPT_ROLES
    if role_names is None:
        raise ConfigError("roles need role_names, the name of every role id (e.g. ('demo_answer', 'other')).")
    if isinstance(role_names, (str, bytes)) or not all(isinstance(name, str) and name for name in role_names):
        raise ConfigError(f"role_names must be a sequence of non-empty strings, one per role id, got {role_names!r}.")
    names = tuple(role_names)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"role_names must be distinct, at least one, got {names!r}.")
    shape = tuple(prompts.inputs.shape[:2])
    ids = tensor_of(roles, "roles", f"one integer role id per position {shape}")
    if not is_integer_tensor(ids) or tuple(ids.shape) != shape:
        raise ShapeError(
            f"roles must be integer role ids of shape {shape} (one per position), got {ids.dtype} {tuple(ids.shape)}."
        )
    return ids.cpu().long(), names


def _role_weights(
    roles: Int[Tensor, "batch pos"],
    shift: Int[Tensor, " batch"],
    answer_pos: Int[Tensor, " batch"],
    names: tuple[str, ...],
) -> Float[Tensor, "batch width role"]:
    """One-hot role of every aligned position up to the last answer position (``width``; zero rows after each prompt's).

    Raises:
        TaskError: A role id outside ``names`` at a position up to the answer position.
    """
    width = int(answer_pos.max()) + 1 if len(answer_pos) else 0
    columns = torch.arange(width)[None, :]
    attended = columns <= answer_pos[:, None]
    aligned = roles.gather(1, (columns + shift[:, None]).clamp(max=max(roles.shape[1] - 1, 0)))
    bad = attended & ((aligned < 0) | (aligned >= len(names)))
    if bool(bad.any()):
        prompt, column = (int(i) for i in bad.nonzero()[0])
        raise TaskError(
            f"roles[{prompt}, {column + int(shift[prompt])}] is {int(aligned[prompt, column])}, but every position up "
            f"to the answer position needs a role id in 0 .. {len(names) - 1} (role_names {names})."
        )
    weights = torch.nn.functional.one_hot(aligned.clamp(0, len(names) - 1), len(names)).double()
    return weights * attended[..., None]


def _role_shares(
    pattern: Tensor,
    hook: Any,
    *,
    adapter: ModelAdapter,
    store: Tensor,
    index: Tensor,
    pos: Tensor,
    weights: Tensor,
) -> None:
    """Hook body: each prompt's answer row of every head's pattern, summed by role into ``store[index]``."""
    if pattern.ndim != 4 or pattern.shape[1] != adapter.n_heads or pattern.shape[2] != pattern.shape[3]:
        raise ModelNotSupportedError(
            f"The attention pattern ({hook.name}) has shape {tuple(pattern.shape)}, not [batch, n_heads="
            f"{adapter.n_heads}, pos, pos]; head attention reads one pattern per query head there."
        )
    rows = torch.arange(len(pos), device=pattern.device)
    answer_rows = pattern[rows, :, pos.to(pattern.device)].detach().to("cpu", torch.float64)  # [chunk, head, key]
    store[index] = torch.einsum("phk,pkr->phr", answer_rows, weights[:, : pattern.shape[3]])
