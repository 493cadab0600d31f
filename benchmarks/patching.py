"""Benchmark 3: a task-vector patching sweep (every layer x every source / target task) against the usual loop.

The usual way, after TransformerLens's ``generic_activation_patch``: one ``run_with_hooks`` per cell
(layer, source task, target task) on the source task's prompts, a hook writing the target's vector at the
answer positions, then the metric. tv_lens runs the clean prompts once and then every (layer, target) cell
in rows that hold each prompt's prefix once and one copy of its answer position per cell (a patch at the
answer position leaves every earlier position clean), where the model's attention hooks can keep the
copies apart; otherwise it stacks cells on the batch dimension. Both compute per-prompt correctness and
answer cross-entropy for every cell; the numbers are checked equal (to 1e-5) before a ratio is reported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import Row, Scale, bench_model, measure, pass_rows
from tv_lens.analyses.patching import TaskVectorPatching
from tv_lens.interventions import supports_blocked_keys
from tv_lens.interventions.sweep import start_skips_blocks
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import offset_pool


def bench_batch(scale: Scale, seed: int = 0):
    """ICL prompts of about ``scale.prompt_len`` tokens (3 tokens per shot, lengths varying by 4 shots).

    ``scale.n_prompts`` prompts over 4 offset tasks and Null; the quick scale uses half as many (and its
    prompts are shorter), so that the quick table runs in about two minutes on two CPU cores.
    """
    pool = offset_pool(offsets=(1, 2, 3, 4), n_values=16)
    n_prompts = scale.n_prompts if scale.n_prompts >= 400 else scale.n_prompts // 2
    shots = max(scale.prompt_len // 3 - 1, 5)
    return pool, pool.sample(max(n_prompts // len(pool), 1), (shots - 4, shots), seed)


def floor_note(model, n_layers: int, cells_per_layer: int, blocks_per_cell) -> str:
    """The compute floor of a sweep of cells stacked on the batch dimension, in block evaluations relative to
    one full pass per cell."""
    skips = start_skips_blocks(model)
    blocks = sum(blocks_per_cell(layer) if skips else n_layers for layer in range(n_layers))
    floor = (n_layers + cells_per_layer * blocks) / (cells_per_layer * n_layers**2)
    why = (
        "each cell from its first written block (start_at_layer skips the blocks below)"
        if skips
        else "every block of every cell: this model's start_at_layer does not skip blocks (TransformerLens 4.3's "
        "bridge runs them and discards their output)"
    )
    return f"compute floor of stacking {floor:.2f} (one clean pass, then {why})"


def _usual_loop(model, batch, vectors: TaskVectors, batch_size: int):
    """Per batch of one source task's prompts: a clean run, then one run_with_hooks per (layer, target).

    Returns correctness and loss ``[layer, target, prompt]`` and the clean loss ``[prompt]``.
    """
    n_layers, n_targets = len(vectors.layers), len(vectors.task_names)
    correct = torch.empty(n_layers, n_targets, len(batch))
    loss = torch.empty(n_layers, n_targets, len(batch))
    clean_loss = torch.empty(len(batch))
    for s in range(len(batch.task_names)):
        for members in (batch.task_ids == s).nonzero().flatten().split(batch_size):
            tokens, positions = batch.inputs[members], batch.answer_pos[members]
            target_tokens = batch.answers[members, 0]
            rows = torch.arange(len(members), device=tokens.device)
            members = members.cpu()
            clean = model(tokens)[rows, positions]
            clean_loss[members] = F.cross_entropy(clean.float(), target_tokens, reduction="none").cpu()
            for i, layer in enumerate(vectors.layers):
                for t in range(n_targets):
                    vector = vectors.vectors[t, i]

                    def hook(activation, hook, vector=vector, rows=rows, positions=positions):
                        activation[rows, positions] = vector
                        return activation

                    logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", hook)])
                    at_answer = logits[rows, positions]
                    correct[i, t, members] = (at_answer.argmax(-1) == target_tokens).float().cpu()
                    loss[i, t, members] = F.cross_entropy(at_answer.float(), target_tokens, reduction="none").cpu()
    return correct, loss, clean_loss


def _ours(model, batch, vectors: TaskVectors, rows_per_pass: int):
    return TaskVectorPatching(n_bootstrap=0, rows_per_pass=rows_per_pass).run_batch(model, batch, vectors)


def patching_rows(scale: Scale, device: str) -> list[Row]:
    model = bench_model(scale, device)
    pool, batch = bench_batch(scale)
    batch = batch.to(device)
    vectors = TaskVectors.from_model(model, pool.sample(len(batch) // len(pool), 4, 1))
    with torch.no_grad():
        (ours_s, usual_s), (ours, (correct, loss, clean_loss)) = measure(
            lambda: _ours(model, batch, vectors, pass_rows(device, scale.prompt_len)),
            lambda: _usual_loop(model, batch, vectors, pass_rows(device, scale.prompt_len)),
            rounds=scale.rounds,
        )
    torch.testing.assert_close(ours.loss.float(), loss, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours.loss.mean(-1).float(), loss.mean(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.correct.float().mean(-1), correct.mean(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.clean_loss.float(), clean_loss, atol=1e-5, rtol=1e-5)
    n_layers = len(vectors.layers)
    n_cells = n_layers * len(batch.task_names) * len(vectors.task_names)
    label = f"patching sweep, {n_cells} cells x {len(batch) // len(pool)} prompts"
    shared = supports_blocked_keys(model)
    how = (
        f"every (layer, target) cell in one pass over rows of prefix + {n_layers * len(vectors.task_names)} answer "
        "copies (attention of each copy masked to the prefix and itself through the attention hooks)"
        if shared
        else "cells stacked on the batch dimension (this model's attention hooks cannot mask it, so rows cannot "
        "share a prefix); "
        + floor_note(model, n_layers, len(vectors.task_names), lambda layer: max(n_layers - 1 - layer, 1))
    )
    note = (
        f"{int(batch.lengths.float().mean())} tokens per prompt; per-cell mean loss and accuracy checked equal "
        f"(1e-5) first; both run passes of at most {pass_rows(device, scale.prompt_len)} prompts. tv_lens: one "
        f"clean pass, then {how}"
    )
    return [
        Row(
            label,
            ours_s,
            usual_s,
            "clean run + run_with_hooks per cell (generic_activation_patch style)",
            "<= 0.33",
            ours_s <= usual_s / 3,
            note,
        )
    ]
