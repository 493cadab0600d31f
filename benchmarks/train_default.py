"""Train the default recipe, then the same run with TVP-loss; print wall time and held-out accuracy per task.

For each run and task: ICL accuracy (the query with its demonstrations), TVP accuracy at the prescribed
layer (the zero-shot query with the layer-``l`` vector of another prompt of its task injected at its pre-answer
position)
and zero-shot accuracy (the query alone), on held-out prompts; then mean TVP accuracy at every layer.

Run: ``python -m benchmarks.train_default [--threads 2] [--tvp-layer 2] [--lam 0.5] [--steps 1200]``. With the
TVP-loss at block 2 (λ = 0.5) and 1200 steps, TVP accuracy at block 2 reaches 1.0 with ICL unchanged
(docs/replication.md); at the recipe's 400 steps the TVP-loss run is still forming its vector.
Not a test: it trains two 4-block models (minutes of CPU). Wall time is reported next to the process's CPU
time: on a machine other jobs share, the wall time of a multi-threaded run can be many times its CPU time.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace

import torch

from tv_lens.models import adapt
from tv_lens.tasks import NULL_TASK
from tv_lens.training import TrainResult, TVPConfig, recipes, tvp_accuracy
from tv_lens.training.data import held_out_batch


def per_task_scores(result: TrainResult, pool, layer: int) -> dict[str, dict[str, float]]:
    """ICL, TVP (at ``layer``) and zero-shot accuracy per task on the run's held-out prompts."""
    batch = held_out_batch(pool, result.config.data)
    model = result.model.eval()
    with torch.no_grad():
        logits = model(batch.inputs)[torch.arange(len(batch)), batch.answer_pos]
        icl = (logits.argmax(-1) == batch.answers[:, 0]).double()
        zero_shot = batch.zero_shot()
        zs_logits = model(zero_shot.inputs)[torch.arange(len(batch)), zero_shot.answer_pos]
        zs = (zs_logits.argmax(-1) == zero_shot.answers[:, 0]).double()
    tvp = tvp_accuracy(model, batch, layer).double()
    return {
        task: {
            "icl": float(icl[batch.task_ids == t].mean()),
            "tvp": float(tvp[batch.task_ids == t].mean()),
            "zero_shot": float(zs[batch.task_ids == t].mean()),
        }
        for t, task in enumerate(batch.task_names)
    }


def tvp_by_layer(result: TrainResult, pool) -> list[float]:
    """Mean TVP accuracy over the real (non-Null) tasks, injecting at each layer in turn."""
    batch = held_out_batch(pool, result.config.data)
    real = torch.tensor([batch.task_names[t] != NULL_TASK for t in batch.task_ids.tolist()])
    return [
        float(tvp_accuracy(result.model, batch, layer).double()[real].mean())
        for layer in range(adapt(result.model).n_layers)
    ]


def report(title: str, result: TrainResult, wall_s: float, cpu_s: float, pool, layer: int) -> None:
    print(
        f"\n{title}: {result.steps} steps in {wall_s:.1f} s wall ({wall_s / 60:.2f} min), "
        f"{cpu_s:.1f} s CPU of this process"
    )
    scores = per_task_scores(result, pool, layer)
    print(f"  {'task':<12} {'ICL acc':>8} {f'TVP acc @ layer {layer}':>20} {'zero-shot acc':>14}")
    for task, row in scores.items():
        note = "  (Null: chance by construction)" if task == NULL_TASK else ""
        print(f"  {task:<12} {row['icl']:>8.3f} {row['tvp']:>20.3f} {row['zero_shot']:>14.3f}{note}")
    real = [row for task, row in scores.items() if task != NULL_TASK]
    means = {key: sum(row[key] for row in real) / len(real) for key in ("icl", "tvp", "zero_shot")}
    print(f"  {'mean (real)':<12} {means['icl']:>8.3f} {means['tvp']:>20.3f} {means['zero_shot']:>14.3f}")
    layers = ", ".join(f"{layer}: {acc:.3f}" for layer, acc in enumerate(tvp_by_layer(result, pool)))
    print(f"  TVP accuracy by injection layer (real tasks): {layers}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--tvp-layer", type=int, default=2, help="block whose output is the task vector")
    parser.add_argument("--lam", type=float, default=0.5, help="weight λ of the TVP-loss term")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--backend", default=None, help="'hooked', 'bridge' or the recipe's default")
    parser.add_argument("--skip-tvp", action="store_true", help="train only the default recipe")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = recipes["default"]
    schedule = recipe.train.schedule if args.steps is None else replace(recipe.train.schedule, max_steps=args.steps)
    pool = recipe.build_pool()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"recipe 'default': {recipe.description}")

    start, cpu = time.perf_counter(), time.process_time()
    result = recipe.run(backend=args.backend, progress=args.progress, schedule=schedule)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    report("default recipe (ICL loss)", result, wall_s, cpu_s, pool, args.tvp_layer)
    if args.skip_tvp:
        return
    tvp = TVPConfig(layer=args.tvp_layer, lam=args.lam)
    start, cpu = time.perf_counter(), time.process_time()
    result = recipe.run(backend=args.backend, progress=args.progress, schedule=schedule, tvp=tvp)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    report(f"default recipe + TVP-loss ({tvp})", result, wall_s, cpu_s, pool, args.tvp_layer)


if __name__ == "__main__":
    main()
