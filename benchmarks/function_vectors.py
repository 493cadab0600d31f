"""Benchmark 7: the causal indirect effect of every head, batched, against one forward pass per head.

The usual way (Todd et al.'s code does this): for every (layer, head), one ``run_with_hooks`` over the corrupted
prompts with a hook writing each prompt's task-mean ``attn.hook_z`` into that head at the answer position, then
the probability of the right answer. tv_lens stacks the heads' cells on the batch dimension: the patch writes at
the answer position only, so the copies of a prompt share its prefix where the model's attention allows, and
each pass starts at the patched block. The per-head probabilities are checked equal (to 1e-5) before a ratio is
reported.
"""

from __future__ import annotations

from functools import partial

import torch

from benchmarks.common import Row, Scale, bench_model, measure, pass_rows
from benchmarks.patching import bench_batch
from tv_lens.analyses import FunctionVectors, causal_indirect_effects, mean_head_activations


def _usual_loop(model, batch, means, n_layers: int, n_heads: int, batch_size: int):
    """Per batch of prompts: a clean run, then one run_with_hooks per head writing its task mean.

    Returns the probability of the first answer token per prompt, patched ``[layer, head, prompt]`` and clean
    ``[prompt]``.
    """
    patched = torch.empty(n_layers, n_heads, len(batch))
    clean = torch.empty(len(batch))
    task_means = means.activations[batch.task_ids.cpu()]  # [prompt, layer, head, d_head]
    for members in torch.arange(len(batch)).split(batch_size):
        index = members.to(batch.inputs.device)
        tokens, positions, targets = batch.inputs[index], batch.answer_pos[index], batch.answers[index, 0]
        rows = torch.arange(len(members), device=tokens.device)
        clean[members] = _answer_prob(model(tokens), rows, positions, targets)
        for layer in range(n_layers):
            for head in range(n_heads):
                hook = partial(
                    _write_mean, rows=rows, positions=positions, head=head, values=task_means[members, layer, head]
                )
                logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
                patched[layer, head, members] = _answer_prob(logits, rows, positions, targets)
    return patched, clean


def _answer_prob(logits, rows, positions, targets):
    return logits[rows, positions].float().softmax(-1)[rows, targets].cpu()


def _write_mean(z, hook, *, rows, positions, head, values):
    z[rows, positions, head] = values.to(z.device, z.dtype)
    return z


def _ours(model, batch, means, rows_per_pass: int):
    return causal_indirect_effects(
        model, batch, means, config=FunctionVectors(n_bootstrap=0, rows_per_pass=rows_per_pass)
    )


def cie_rows(scale: Scale, device: str) -> list[Row]:
    model = bench_model(scale, device)
    pool, clean = bench_batch(scale, seed=3)
    shots = (clean.demo_answer_pos >= 0).sum(-1)  # the corrupted prompts: as many, as long, with wrong labels
    n_per_task = int((clean.task_ids == 0).sum())
    corrupted = pool.sample(n_per_task, (int(shots.min()), int(shots.max())), 4, label_noise=0.9)
    null = pool.task_names.index("null")
    clean = clean.select(clean.task_ids != null).to(device)
    corrupted = corrupted.select(corrupted.task_ids != null).to(device)
    with torch.no_grad():
        means = mean_head_activations(model, clean)
        rows = pass_rows(device, scale.prompt_len)
        (ours_s, usual_s), (ours, (usual, usual_clean)) = measure(
            lambda: _ours(model, corrupted, means, rows),
            lambda: _usual_loop(model, corrupted, means, scale.n_layers, scale.n_heads, rows),
            rounds=1 if scale.recipe == "quick" else scale.rounds,  # the loop is slow: one round in quick mode
        )
    torch.testing.assert_close(ours.patched_prob.float(), usual, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.corrupted_prob.float(), usual_clean, atol=1e-5, rtol=0)
    n_heads = scale.n_layers * scale.n_heads
    label = f"causal indirect effect, {n_heads} heads x {len(corrupted)} prompts"
    note = (
        "per-head P(answer) with the task mean written at the answer position checked equal (1e-5) first; the "
        "heads' copies of a prompt share its prefix and start at the patched block"
    )
    baseline = "clean run + one run_with_hooks per head"
    return [Row(label, ours_s, usual_s, baseline, "<= 0.33", ours_s <= usual_s / 3, note)]
