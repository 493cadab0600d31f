"""Benchmark: the memory of layer finetuning with LoRA, adapters trained in place against deep copies.

``LayerFinetuning.run`` with LoRA trains each variant's adapters on the model itself, scores it and removes the
adapters; ``finetune_variants`` then ``compare`` give the same comparison with both variants kept as deep copies of
the model. Each side runs in a fresh process on the same model (4 blocks, d_model 512: about 50 MB of float32
weights, so that copies of it stand out from the rest of the process) and reports the growth of its peak resident
set (``VmHWM``) over the loaded model; both comparisons are checked equal first. Target: in place, at most half
the deep copies' peak. Both sides also hold one CPU copy of the frozen weights while a variant trains (the
bit-identity check of finetuning).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import in_fresh_processes, peak_mb
from tv_lens.analyses import LayerFinetuning, TaskDecodability
from tv_lens.models import ModelConfig, build_model
from tv_lens.tasks import offset_pool
from tv_lens.training import DataConfig, LoRAConfig, ScheduleConfig, TrainConfig

SIDES = ("in_place", "deep_copies")


def _experiment() -> LayerFinetuning:
    return LayerFinetuning(
        k=1,
        lora=LoRAConfig(rank=4, alpha=4.0, dropout=0.0),
        train=TrainConfig(
            data=DataConfig(n_per_task=4, n_shots=4, eval_n_per_task=4),
            schedule=ScheduleConfig(max_steps=2, lr=1e-3, min_lr=1e-4, warmup_steps=1),
            eval_every=2,
        ),
        decodability=TaskDecodability(k=3, n_bootstrap=0),
        n_per_task=8,
        n_shots=4,
        n_bootstrap=0,
    )


def measure_side(side: str) -> dict[str, Any]:
    """Peak memory growth (MB) of one side and its comparison's numbers; run in a fresh process."""
    torch.set_num_threads(1)
    pool = offset_pool(offsets=(1, 2, 3), n_values=16)
    config = ModelConfig(d_vocab=pool.vocab_size, n_layers=4, d_model=512, n_heads=8, n_ctx=64, seed=0)
    model = build_model(config)
    experiment = _experiment()
    results: list[Any] = []

    def in_place() -> None:
        results.append(experiment.run(model, pool, seed=0))

    def deep_copies() -> None:
        models, losses = experiment.finetune_variants(model, pool)
        results.append(experiment.compare(models, losses, pool, seed=0))

    peak = peak_mb(in_place if side == "in_place" else deep_copies, "cpu")
    comparison = results[0]
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {
        "peak_mb": peak,
        "weights_mb": weights_mb,
        "numbers": [comparison.td.tolist(), comparison.accuracy.tolist(), comparison.final_loss.tolist()],
    }


def memory_report() -> list[str]:
    """Both sides in fresh processes, side by side: their peaks, the ratio and the target."""
    code = (
        "import json, sys; from benchmarks.finetuning import measure_side; print(json.dumps(measure_side(sys.argv[1])))"
    )
    runs = {side: [side] for side in SIDES}
    results = in_fresh_processes(code, runs, "the memory of layer finetuning", {"MALLOC_MMAP_THRESHOLD_": "131072"})
    if results["in_place"]["numbers"] != results["deep_copies"]["numbers"]:
        raise AssertionError("layer finetuning in place and with deep copies gave different comparisons")
    ours, copies = results["in_place"]["peak_mb"], results["deep_copies"]["peak_mb"]
    weights = results["in_place"]["weights_mb"]
    if ours is None or copies is None:
        return ["peak resident set not measurable on this system (no /proc/self/clear_refs)"]
    ratio = ours / copies
    return [
        f"model weights {weights:.0f} MB; comparisons checked equal",
        f"peak RSS growth: in place {ours:.0f} MB, deep copies {copies:.0f} MB -> x{ratio:.2f} "
        f"(target: <= x0.5) -> {'pass' if ratio <= 0.5 else 'FAIL'}",
    ]
