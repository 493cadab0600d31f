"""Helpers of the causal-analysis tests: independent reference computations and fault injection."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from tv_lens.tasks import offset_pool

POOL = offset_pool(offsets=(1, 2, 3), n_values=8)  # 3 offsets + Null; vocabulary of 11 tokens fits the models


def sample(n_per_task: int = 4, n_shots=3, seed: int = 0):
    return POOL.sample(n_per_task, n_shots, seed)


def hooked_scores(model, tokens, answer_pos, answers, fwd_hooks=()):
    """Reference: TransformerLens run_with_hooks, then correctness and cross-entropy at the answer positions."""
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))
    rows = torch.arange(len(tokens))
    at_answer = logits[rows, answer_pos]
    target = answers[:, 0]
    correct = (at_answer.argmax(-1) == target).double()
    loss = F.cross_entropy(at_answer.double(), target, reduction="none")
    return correct, loss, at_answer


def editing_hook(edit):
    """A TransformerLens hook that applies ``edit(activation)`` to a copy and returns it."""

    def hook(activation, hook):
        activation = activation.clone()
        edit(activation)
        return activation

    return hook


@contextmanager
def failing_user_hook(model, name: str, fail_on_call: int, record=lambda activation: activation.shape[0]):
    """Attach the user's own hook at ``name`` that raises on its ``fail_on_call``-th call (0: never); remove it after.

    It yields what ``record`` makes of each call's activation (by default its batch size).
    """
    calls = []

    def hook(activation, hook):
        calls.append(record(activation))
        if len(calls) == fail_on_call:
            raise RuntimeError("injected fault")

    hook_point = model.hook_dict[name]
    before = list(hook_point.fwd_hooks)
    hook_point.add_hook(hook)
    try:
        yield calls
    finally:
        for handle in [h for h in hook_point.fwd_hooks if not any(h is old for old in before)]:
            handle.hook.remove()
            hook_point.fwd_hooks.remove(handle)


def left_pad(batch, inputs=None, answer_pos=None, mask=None):
    """The prompts of ``batch`` (or given right-padded ones) left-padded: (tokens, attention_mask, answer_pos)."""
    inputs = batch.inputs if inputs is None else inputs
    mask = batch.attention_mask if mask is None else mask
    answer_pos = batch.answer_pos if answer_pos is None else answer_pos
    lengths = mask.sum(-1)
    width = inputs.shape[1]
    left = torch.full_like(inputs, batch.pad_token)
    left_mask = torch.zeros_like(mask)
    for row, length in enumerate(lengths.tolist()):
        left[row, width - length :] = inputs[row, :length]
        left_mask[row, width - length :] = 1
    return left, left_mask, answer_pos + width - lengths


@contextmanager
def memory_limit(model, max_rows: int, max_positions: int | None = None, at: str = "blocks.0.hook_resid_pre"):
    """A user hook that raises CUDA's out-of-memory error for passes of more than ``max_rows`` rows (or more than
    ``max_positions`` rows x positions) at hook point ``at``."""
    seen: list[int] = []

    def fail(activation, hook):
        seen.append(activation.shape[0])
        too_many = max_positions is not None and activation.shape[0] * activation.shape[1] > max_positions
        if activation.shape[0] > max_rows or too_many:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook_point = model.hook_dict[at]
    hook_point.add_hook(fail)
    try:
        yield seen
    finally:
        hook_point.remove_hooks()
