"""Steering: apply a saved task vector or function vector to a model in one call.

A vector (an entry of :class:`~tv_lens.task_vectors.TaskVectors`, a task's
:class:`~tv_lens.results.FunctionVector`, or a plain ``[d_model]`` tensor) is written into the residual stream at
one block: ``"replace"`` overwrites the residual with ``scale * v``, ``"add"`` adds ``scale * v`` to it. The
defaults come from the vector's provenance (:class:`~tv_lens.results.provenance.VectorProvenance`): task vectors
replace (as in task-vector prompting), function vectors add at the best layer of their sweep. Before anything
runs, the vector is checked against the model: a model of other sizes than its source is an error, one of the
same sizes with other weights a warning (:mod:`tv_lens.results.provenance`).

- :func:`steer` runs prompts with the vector written at each prompt's last token and returns the logits
  there, or, with ``max_new_tokens``, greedy (or sampled) continuations from
  :func:`tv_lens.generation.generate` with the vector written once into the prompt. Either way the model runs in
  eval mode (no dropout), and every module gets its own mode back.
- :func:`steering` is a context manager that keeps the vector's hook on the model for your own calls
  (``model(tokens)``, ``model.run_with_cache``, ``model.run_with_hooks``): written at position ``pos`` of every
  pass (default ``-1``, the last token; ``"all"``: every position). The hook is removed on exit, also when an
  error is raised inside the block; hooks you attached are left alone.

Gradients flow into a plain tensor that requires grad, through :func:`steer`'s logits and the passes inside
:func:`steering` (to optimise a steering vector), unless the call is under ``torch.no_grad``.

>>> import torch
>>> from tv_lens.models import ModelConfig, build_model
>>> model = build_model(ModelConfig(d_vocab=16, n_layers=2, d_model=32, n_heads=4, n_ctx=32))
>>> tokens = torch.randint(0, 16, (3, 8))
>>> steer(model, torch.ones(32), tokens, layer=1).shape
torch.Size([3, 16])
>>> with steering(model, torch.ones(32), layer=1) as steered:
...     logits = model(tokens)
>>> steered.writes
1
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.checks import check_tensor_data, is_finite_number, is_int
from tv_lens.errors import AnalysisError, PositionError, ShapeError
from tv_lens.generation import Generation, generate
from tv_lens.generation.prompts import prompt_inputs
from tv_lens.interventions import add, replace, run_with_interventions
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.exclusive import evaluating
from tv_lens.models.running import attached_hooks, positioned_writes
from tv_lens.results.function_vectors import FunctionVector
from tv_lens.results.provenance import OPERATIONS
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks.batch import ICLBatch

__all__ = ["Steering", "steer", "steering"]

Steerable = TaskVectors | FunctionVector | Tensor


@dataclass
class Steering:
    """What :func:`steering` writes, and how many forward passes it has written to so far.

    Attributes:
        layer: Block written at (-1: the embedding output).
        site: Residual site (``"resid_post"`` ...).
        hook_name: The hook point written.
        operation: ``"replace"`` or ``"add"``.
        values: The vector written, ``scale`` included ``[d_model]``.
        pos: Position written in each pass (negative: from the end) or ``"all"``.
        writes: Passes written to.
    """

    layer: int
    site: str
    hook_name: str
    operation: str
    values: Float[Tensor, " d_model"]
    pos: int | Literal["all"]
    writes: int = 0


@dataclass(frozen=True)
class _Plan:
    adapter: ModelAdapter
    layer: int
    site: str
    operation: str
    values: Tensor


def steer(
    model: Any,
    vector: Steerable,
    prompts: Int[Tensor, "batch pos"] | ICLBatch,
    *,
    task: str | None = None,
    layer: int | None = None,
    operation: Literal["replace", "add"] | None = None,
    scale: float | None = None,
    answer_pos: int | Tensor | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    **generation: Any,
) -> Float[Tensor, "batch d_vocab"] | Generation:
    """Run ``prompts`` with ``vector`` written at each prompt's last token (``answer_pos``).

    Args:
        model: A TransformerLens model.
        vector: :class:`~tv_lens.task_vectors.TaskVectors` (one ``task`` at one ``layer`` is written), a
            :class:`~tv_lens.results.FunctionVector` (``task``'s vector), or a tensor ``[d_model]``.
        prompts: Tokens ``[batch, pos]`` or an :class:`~tv_lens.tasks.ICLBatch` (its answer positions and mask).
        task: The task whose vector is written (may be left out when the vectors cover one task).
        layer: Block to write at (-1: the embedding output). Default: the layer the vector's provenance records,
            or its only layer.
        operation: ``"replace"`` or ``"add"`` (default: the provenance's; else ``"replace"`` for task vectors and
            ``"add"`` otherwise).
        scale: Factor on the vector (default: the provenance's, else 1).
        answer_pos: Last token of each prompt (default: the last real token by ``attention_mask``).
        attention_mask: ``[batch, pos]``, 1 on real tokens; needed for left-padded prompts.
        max_new_tokens: ``None``: one forward pass, returning logits. An int: generate that many tokens with
            :func:`tv_lens.generation.generate` (the vector written once into the prompt) and return its
            :class:`~tv_lens.generation.Generation`.
        batch_size: Prompts per forward pass, or per batch of generation (``None``: all at once; halved after
            running out of memory).
        **generation: Further options of :func:`~tv_lens.generation.generate` (``do_sample``, ``stop_tokens``,
            ``every_new_token`` ...).

    Returns:
        Logits at each prompt's last token ``[batch, d_vocab]``, or the generation.

    Raises:
        ShapeError: A vector of another width, or from a model of other sizes.
        AnalysisError: No ``task`` / ``layer`` where several are possible; an unknown operation; a bad scale.
        TaskError: A task the vectors do not cover.
        LayerOutOfRangeError: A layer outside the model or the vectors.
    """
    plan = _plan(model, vector, task, layer, operation, scale)
    make = add if plan.operation == "add" else replace
    intervention = make(plan.layer, plan.values, pos="answer", site=plan.site)
    if max_new_tokens is not None:
        return generate(
            model,
            prompts,
            [intervention],
            max_new_tokens,
            answer_pos=answer_pos,
            attention_mask=attention_mask,
            batch_size=batch_size,
            **generation,
        )
    if generation:
        raise AnalysisError(
            f"Generation options {sorted(generation)} need max_new_tokens=; without it steer runs one forward pass."
        )
    tokens, answer_pos, attention_mask = prompt_inputs(prompts, answer_pos, attention_mask, "steer")
    with evaluating(plan.adapter.model):  # as generation: no dropout of a model left in train mode
        run = run_with_interventions(
            model, tokens, answer_pos, [intervention], attention_mask=attention_mask, batch_size=batch_size
        )
    return run.logits[:, 0]


@contextmanager
def steering(
    model: Any,
    vector: Steerable,
    *,
    task: str | None = None,
    layer: int | None = None,
    operation: Literal["replace", "add"] | None = None,
    scale: float | None = None,
    pos: int | Literal["all"] = -1,
) -> Iterator[Steering]:
    """Keep ``vector`` written into every forward pass of ``model`` inside the block; remove its hook on exit.

    Arguments as :func:`steer`; ``pos`` is the position written in each pass (``-1``: the last token, ``"all"``:
    every position). A pass too short to hold ``pos`` is left unchanged. With a KV cache (each step of
    ``model.generate`` runs only the new token), ``pos=-1`` writes at every generated token; use
    ``steer(..., max_new_tokens=...)`` to write into the prompt once. tv_lens's own analyses, probes and
    generation batch prompts by length and pad them, so inside a block with an int ``pos`` they raise a
    :class:`~tv_lens.errors.PositionError` (with ``pos="all"`` they run steered).

    Yields:
        A :class:`Steering` record whose ``writes`` counts the passes written to.
    """
    if pos != "all" and not is_int(pos):
        raise PositionError(f"pos must be an int position (negative: from the end) or 'all', got {pos!r}.")
    plan = _plan(model, vector, task, layer, operation, scale)
    hook_name = plan.adapter.hook_name(plan.site, plan.layer)
    state = Steering(plan.layer, plan.site, hook_name, plan.operation, plan.values, pos)
    hook = partial(_write, values=plan.values, pos=pos, accumulate=plan.operation == "add", state=state)
    with attached_hooks(plan.adapter, [(hook_name, hook)]), ExitStack() as stack:
        if pos != "all":  # one column of every pass: tv_lens's own batched passes refuse to run under it
            stack.enter_context(positioned_writes(plan.adapter, hook_name))
        yield state


def _write(
    activation: Tensor, hook: Any, *, values: Tensor, pos: int | str, accumulate: bool, state: Steering
) -> Tensor:
    """Hook body: write ``values`` at position ``pos`` of every row (out of place)."""
    n_pos = activation.shape[1]
    if pos == "all":
        index: slice | int = slice(None)
    else:
        index = int(pos) + n_pos if int(pos) < 0 else int(pos)
        if not 0 <= index < n_pos:
            return activation
    state.writes += 1
    new = activation.clone()
    written = values.to(activation.device, activation.dtype)
    new[:, index] = new[:, index] + written if accumulate else written
    return new


def _plan(
    model: Any, vector: Steerable, task: str | None, layer: int | None, operation: str | None, scale: float | None
) -> _Plan:
    """Check ``vector`` against ``model`` and resolve the task, layer, site, operation and scaled values."""
    if isinstance(vector, TaskVectors):
        adapter = vector.check_model(model)
        provenance, default_op, site = vector.provenance, "replace", vector.site
        task = _one(task, vector.task_names, "task", "task vectors cover")
        layer = _layer(layer, provenance.layers if provenance else (), vector.layers)
        values = vector.get(task, layer)
    elif isinstance(vector, FunctionVector):
        adapter = vector.check_model(model)
        provenance, default_op = vector.provenance, "add"
        site = provenance.site if provenance else "resid_post"
        task = _one(task, vector.task_names, "task", "function vector covers")
        layer = _layer(layer, provenance.layers if provenance else (), ())
        values = vector.get(task)
    elif isinstance(vector, Tensor):
        adapter = adapt(model)
        check_tensor_data(vector, "The steering vector")
        if vector.ndim != 1 or vector.shape[0] != adapter.d_model or not vector.is_floating_point():
            raise ShapeError(f"A plain vector must be float [d_model={adapter.d_model}], got {tuple(vector.shape)}.")
        if task is not None:
            raise AnalysisError("task= picks a task of TaskVectors or a FunctionVector; a plain tensor has none.")
        provenance, default_op, site = None, "add", "resid_post"
        layer = _layer(layer, (), ())
        values = vector
    else:
        raise ShapeError(
            f"vector must be TaskVectors, a FunctionVector or a float tensor [d_model], got {type(vector).__name__}."
        )
    adapter.check_layer(layer, allow_embed=True)
    operation = operation or (provenance.operation if provenance else default_op)
    if operation not in OPERATIONS:
        raise AnalysisError(f"Unknown operation {operation!r}; use one of {list(OPERATIONS)}.")
    scale = (provenance.scale if provenance else 1.0) if scale is None else scale
    if not is_finite_number(scale):
        raise AnalysisError(f"scale must be a finite number (the vector's factor), got {scale!r}.")
    scaled = values if scale == 1 else values * scale  # a vector that requires grad gets its gradient
    return _Plan(adapter, layer, site, operation, scaled)


def _one(name: str | None, names: tuple[str, ...], what: str, holder: str) -> str:
    """``name``, or the only entry of ``names`` when it is not given."""
    if name is None:
        if len(names) != 1:
            raise AnalysisError(f"Pass {what}= to choose one; the {holder} {list(names)}.")
        return names[0]
    return name


def _layer(layer: int | None, recorded: tuple[int, ...], available: tuple[int, ...]) -> int:
    """``layer``, else the provenance's only layer, else the vectors' only layer."""
    if layer is not None:
        if not is_int(layer):
            raise AnalysisError(f"layer must be an int block index, got {layer!r}.")
        return layer
    for candidates in (recorded, available):
        if len(candidates) == 1:
            return candidates[0]
    options = f" (one of {available})" if available else ""
    raise AnalysisError(f"Pass layer= to choose the block to write at{options}; the vector records no single layer.")
