"""Benchmarks 1 and 2: collecting representations at answer positions for every layer (the cost of a TD curve).

1. Time: tv_lens ``collect`` against one plain forward pass over the same prompts (the floor), the usual
   ``run_with_cache`` of every layer then indexing, and a per-layer loop. Numbers are checked equal first.
2. Memory: peak RSS (in a fresh process) and retained bytes for 400 vs 4,000 prompts and 64 vs 512 tokens.
"""

from __future__ import annotations

import json
import resource

import torch

from benchmarks.common import Row, Scale, bench_model, bench_prompts, in_fresh_processes, measure, pass_rows
from tv_lens.probes import collect

MEMORY_BATCH = 64


def _usual_way(model, tokens, answer_pos, names, batch_size):
    rows = {name: [] for name in names}
    for chunk, positions in zip(tokens.split(batch_size), answer_pos.split(batch_size), strict=True):
        _, cache = model.run_with_cache(chunk, names_filter=lambda name: name in names)
        for name in names:
            rows[name].append(cache[name][torch.arange(len(chunk)), positions])
    return torch.stack([torch.cat(rows[name]) for name in names])


def _per_layer_loop(model, tokens, answer_pos, names, batch_size):
    return torch.stack([_usual_way(model, tokens, answer_pos, [name], batch_size)[0] for name in names])


def _floor(model, tokens, batch_size):
    for chunk in tokens.split(batch_size):
        model(chunk)


def timing_rows(scale: Scale, device: str) -> list[Row]:
    model = bench_model(scale, device)
    tokens, answer_pos = bench_prompts(scale)
    tokens = tokens.to(device)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(scale.n_layers)]
    answer_pos_device = answer_pos.to(device)
    size = pass_rows(device, scale.prompt_len)
    fns = {
        "ours": lambda: collect(model, tokens, answer_pos, batch_size=size, progress=False).activations,
        "floor": lambda: _floor(model, tokens, size),
        "usual": lambda: _usual_way(model, tokens, answer_pos_device, names, size).cpu(),
        "loop": lambda: _per_layer_loop(model, tokens, answer_pos_device, names, size).cpu(),
    }
    with torch.no_grad():
        measured, outputs = measure(*fns.values(), rounds=max(scale.rounds, 3))
    ours, _, usual, loop = outputs
    torch.testing.assert_close(ours, usual, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours, loop, atol=1e-4, rtol=1e-4)
    times = dict(zip(fns, measured, strict=True))
    label = f"representations, {len(names)} layers x {scale.n_prompts} prompts"
    note = (
        "rows checked equal to run_with_cache's (1e-4) first; prompts are trimmed to their answer position and "
        "the pass stops before the unembedding"
    )
    return [
        Row(
            label,
            times["ours"],
            times["floor"],
            "one plain forward pass (floor)",
            "<= 1.15",
            times["ours"] <= 1.15 * times["floor"],
            note,
        ),
        Row(label, times["ours"], times["usual"], "run_with_cache + index", "< 1", times["ours"] < times["usual"]),
        Row(label, times["ours"], times["loop"], "per-layer run_with_cache loop", "< 1", times["ours"] < times["loop"]),
    ]


def _measure(n_prompts: int, prompt_len: int, scale_json: str) -> dict:
    """In a fresh process: peak RSS growth while collecting, and bytes retained by the result."""
    scale = Scale(**json.loads(scale_json))
    model = bench_model(scale, "cpu")
    tokens, _ = bench_prompts(scale, n_prompts, prompt_len)
    answer_pos = torch.full((n_prompts,), prompt_len - 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        reps = collect(model, tokens, answer_pos, batch_size=MEMORY_BATCH, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"peak_mb": peak / 1024, "retained_mb": reps.activations.numel() * reps.activations.element_size() / 2**20}


def memory_report(scale: Scale) -> list[str]:
    settings = [(400, 64), (4000, 64), (400, 512)] if scale.n_prompts >= 400 else [(100, 32), (1000, 32), (100, 256)]
    scale_json = json.dumps(scale.__dict__)
    runs = {
        (n_prompts, prompt_len): [str(n_prompts), str(prompt_len), scale_json] for n_prompts, prompt_len in settings
    }
    code = (
        "import json, sys; from benchmarks.representations import _measure; "
        "print(json.dumps(_measure(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])))"
    )
    results = in_fresh_processes(code, runs, "the memory of collected representations (prompts, tokens)")
    (p0, l0), (p1, _), (_, l1) = settings
    base, more_prompts, longer = results[settings[0]], results[settings[1]], results[settings[2]]
    lines = [f"{'prompts':>8} {'tokens':>7} {'retained MB':>12} {'peak RSS growth MB':>19}"]
    lines += [
        f"{p:>8} {length:>7} {r['retained_mb']:>12.2f} {r['peak_mb']:>19.1f}" for (p, length), r in results.items()
    ]
    prompt_growth = more_prompts["retained_mb"] / base["retained_mb"]
    length_growth = longer["retained_mb"] / base["retained_mb"]
    lines.append(
        f"retained memory x{prompt_growth:.1f} for x{p1 // p0} prompts (target: x{p1 // p0}), "
        f"x{length_growth:.1f} for x{l1 // l0} tokens (target: x1, flat) -> "
        f"{'pass' if abs(prompt_growth - p1 / p0) < 0.01 and abs(length_growth - 1) < 0.01 else 'FAIL'}"
    )
    lines.append(
        "peak RSS includes one batch's transient activations, which grow with tokens per prompt (attention is "
        "quadratic); lower batch_size to bound it"
    )
    return lines
