"""Benchmark 9: attention knockout of every prompt role in every block, batched, against one pass per knockout.

The usual way: for every (block, role), one ``run_with_hooks`` over the prompts with a hook that keeps the answer
position's row of that block's attention from the role's positions (scores set to -inf, or, where the model's
softmax reads the pattern, the pattern zeroed and renormalised: the hook point tv_lens uses), then the answer
cross-entropy. tv_lens stacks several knockouts per pass and starts each pass at its block from the clean residual.
The knocked-out losses are checked equal (to 1e-5) before a ratio is reported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import Row, Scale, bench_model, measure, pass_rows
from benchmarks.patching import bench_batch, floor_note
from tv_lens.analyses import AttentionKnockout
from tv_lens.interventions import knockout_strategy
from tv_lens.models import adapt
from tv_lens.tasks import PROMPT_ROLES, position_roles

ROLES = ("demo_input", "demo_answer", "query")


def _usual_loop(model, batch, roles, strategy: str, batch_size: int):
    """Per batch of prompts: a clean run, then one run_with_hooks per (block, role) with a hand-written mask.

    Returns the answer cross-entropy per prompt, knocked out ``[block, role, prompt]`` and clean ``[prompt]``.
    """
    n_layers = model.cfg.n_layers
    knocked = torch.empty(n_layers, len(ROLES), len(batch))
    clean = torch.empty(len(batch))
    site = "hook_attn_scores" if strategy == "scores" else "hook_pattern"
    for members in torch.arange(len(batch)).split(batch_size):
        index = members.to(batch.inputs.device)
        tokens, positions, targets = batch.inputs[index], batch.answer_pos[index], batch.answers[index, 0]
        rows = torch.arange(len(members), device=tokens.device)
        clean[members] = F.cross_entropy(model(tokens)[rows, positions].float(), targets, reduction="none").cpu()
        for r, role in enumerate(ROLES):
            keys = roles[index] == PROMPT_ROLES.index(role)  # [prompt, key]

            def mask(attention, hook, keys=keys, rows=rows, positions=positions):
                row = attention[rows, :, positions]  # [prompt, head, key]
                if strategy == "scores":
                    row = row.masked_fill(keys[:, None, :], float("-inf"))
                else:
                    row = row * ~keys[:, None, :]
                    row = row / row.sum(-1, keepdim=True)
                attention = attention.clone()
                attention[rows, :, positions] = row
                return attention

            for layer in range(n_layers):
                logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.{site}", mask)])
                at_answer = logits[rows, positions].float()
                knocked[layer, r, members] = F.cross_entropy(at_answer, targets, reduction="none").cpu()
    return knocked, clean


def knockout_rows(scale: Scale, device: str) -> list[Row]:
    model = bench_model(scale, device)
    _, batch = bench_batch(scale, seed=6)
    batch = batch.to(device)
    roles = position_roles(batch)
    strategy = knockout_strategy(adapt(model))
    size = pass_rows(device, scale.prompt_len)
    config = AttentionKnockout(roles=ROLES, n_bootstrap=0, rows_per_pass=size, batch_size=size)
    with torch.no_grad():
        (ours_s, usual_s), (ours, (usual, usual_clean)) = measure(
            lambda: config.run_batch(model, batch),
            lambda: _usual_loop(model, batch, roles, strategy, size),
            rounds=scale.rounds,
        )
    torch.testing.assert_close(ours.knocked_loss.float(), usual, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours.knocked_loss.mean(-1).float(), usual.mean(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.clean_loss.float(), usual_clean, atol=1e-5, rtol=1e-5)
    label = f"attention knockout, {scale.n_layers} blocks x {len(ROLES)} roles x {len(batch)} prompts"
    floor = floor_note(model, scale.n_layers, len(ROLES), lambda layer: scale.n_layers - layer)
    note = f"knocked-out losses checked equal (1e-5) first, masked at the {strategy}. {floor}"
    usual_name = "one run_with_hooks per (block, role) with a hand-written mask"
    return [Row(label, ours_s, usual_s, usual_name, "< 1", ours_s < usual_s, note)]
