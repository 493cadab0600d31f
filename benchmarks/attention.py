"""Benchmark 8: every head's attention at the answer position, summed by prompt role, against ``run_with_cache``.

The usual way: ``run_with_cache`` of every block's ``attn.hook_pattern`` (each ``[batch, head, pos, pos]``, kept
whole), then each prompt's answer row of each pattern, summed over the positions of each role. tv_lens keeps only
the answer rows, in the hook, and ends the pass after the last block read (the unembedding never runs). The shares
are checked equal (to 1e-5) before a ratio is reported. The floor is one plain forward pass of the same prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import Row, Scale, bench_model, measure, pass_rows
from benchmarks.patching import bench_batch
from tv_lens.analyses import HeadAttention
from tv_lens.tasks import PROMPT_ROLES, position_roles


def _usual(model, batch, roles, batch_size: int):
    """Per batch of prompts: ``run_with_cache`` of every pattern, then the answer rows summed by role.

    Returns the shares ``[layer, head, role, prompt]``.
    """
    n_layers, n_heads, n_roles = model.cfg.n_layers, model.cfg.n_heads, len(PROMPT_ROLES)
    shares = torch.empty(n_layers, n_heads, n_roles, len(batch))
    for members in torch.arange(len(batch)).split(batch_size):
        index = members.to(batch.inputs.device)
        tokens, positions = batch.inputs[index], batch.answer_pos[index]
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
        own = roles[index]
        one_hot = (F.one_hot(own.clamp(min=0), n_roles) * (own >= 0)[..., None]).float()  # [prompt, key, role]
        rows = torch.arange(len(members), device=tokens.device)
        for layer in range(n_layers):
            answer_rows = cache[f"blocks.{layer}.attn.hook_pattern"][rows, :, positions].float()  # [prompt, head, key]
            shares[layer, :, :, members] = torch.einsum("phk,pkr->hrp", answer_rows, one_hot).cpu()
    return shares


def attention_rows(scale: Scale, device: str) -> list[Row]:
    model = bench_model(scale, device)
    _, batch = bench_batch(scale, seed=5)
    batch = batch.to(device)
    roles = position_roles(batch)
    size = pass_rows(device, scale.prompt_len)
    config = HeadAttention(n_bootstrap=0, batch_size=size)
    with torch.no_grad():
        (ours_s, usual_s, floor_s), (ours, usual, _) = measure(
            lambda: config.run_batch(model, batch),
            lambda: _usual(model, batch, roles, size),
            lambda: [model(batch.inputs[index]) for index in torch.arange(len(batch)).split(size)],
            rounds=scale.rounds,
        )
    torch.testing.assert_close(ours.attention.float(), usual, atol=1e-5, rtol=0)
    label = f"head attention by role, {scale.n_layers * scale.n_heads} heads x {len(batch)} prompts"
    note = (
        "shares of every head's answer-row attention on each prompt role checked equal (1e-5) first; only the "
        "answer rows are kept, and the pass ends after the last block"
    )
    usual = "run_with_cache of every hook_pattern, then index"
    return [
        Row(label, ours_s, floor_s, "one plain forward pass (the floor)", "<= 1.15", ours_s <= 1.15 * floor_s),
        Row(label, ours_s, usual_s, usual, "< 1", ours_s < usual_s, note),
    ]
