"""Benchmark 7: a recipe where shots matter — train ``recipes["shots"]``, then held-out ICL accuracy over shots.

The recipe's tasks are offsets mod 8 that depend on the parity of x (``offset(a,b)``: ``y = x + a`` for even x,
``x + b`` for odd x, ``a, b`` in 1 and 3) plus Null. One demonstration shows only the offset of its own parity, so
an ideal reader answers the query right with probability ``1 - 0.5 ** (shots + 1)``: 0.75, 0.875, 0.969, 0.998 at
1, 2, 4, 8 shots. After training, the library's own analysis (:class:`~tv_lens.analyses.ICLPerformance`) scores
held-out prompts at 1, 2, 4 and 8 shots, sampled from the run's held-out seed stream: its 8-shot prompts are the
ones the training loop evaluates, and the two accuracies are checked equal. Targets, on the real (non-Null) tasks:

- >= 95% held-out ICL accuracy at 8 shots;
- training in <= 3 minutes of wall time (the process's CPU time and the load average are printed next to it: on a
  machine other jobs share, two threads can take several times longer than one);
- accuracy rising over 1, 2, 4, 8 shots;
- at most 80% at 1 shot.

``--quick`` (and ``python -m benchmarks --quick``) trains a 1-block, d_model 32 version for 20 steps: it checks the
code path and that the numbers agree, not the targets.

Run alone: ``python -m benchmarks.shots_recipe [--threads 2] [--seed 0] [--backend bridge] [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
from dataclasses import dataclass, replace

import torch

from benchmarks.common import QUICK, Row, Scale, machine_lines, target_lines, timed_training
from tv_lens.analyses import ICLPerformance
from tv_lens.tasks import NULL_TASK
from tv_lens.training import Recipe, recipes
from tv_lens.training.data import held_out_seed

RECIPE = "shots"
SHOTS = (1, 2, 4, 8)
TARGET_ACCURACY = 0.95
TARGET_SECONDS = 180.0
MAX_ONE_SHOT = 0.8


@dataclass(frozen=True)
class ShotsRun:
    """One trained run: times, held-out accuracy per task at 8 shots, and the real tasks' mean per shot count."""

    recipe: Recipe
    wall_s: float
    cpu_s: float
    steps: int
    per_task: dict[str, float]
    curve: dict[int, float]
    loop_per_task: dict[str, float]

    @property
    def accuracy(self) -> float:
        """Mean held-out ICL accuracy at the largest shot count over the real tasks."""
        return self.curve[max(self.curve)]

    @property
    def consistent(self) -> bool:
        """Whether the analysis's 8-shot accuracy per task is the training loop's last evaluation."""
        return self.per_task.keys() == self.loop_per_task.keys() and all(
            abs(self.per_task[task] - self.loop_per_task[task]) < 1e-9 for task in self.per_task
        )

    def targets(self) -> list[tuple[str, bool]]:
        """(description, passed) of every target."""
        values = [self.curve[s] for s in SHOTS]
        return [
            (
                f">= {TARGET_ACCURACY} held-out ICL accuracy at 8 shots ({self.accuracy:.3f})",
                self.accuracy >= TARGET_ACCURACY,
            ),
            (
                f"training <= {TARGET_SECONDS:.0f} s wall ({self.wall_s:.1f} s; {self.cpu_s:.1f} s CPU)",
                self.wall_s <= TARGET_SECONDS,
            ),
            (
                f"accuracy rising over {', '.join(map(str, SHOTS))} shots",
                all(a < b for a, b in itertools.pairwise(values)),
            ),
            (f"1-shot accuracy <= {MAX_ONE_SHOT} ({self.curve[1]:.3f})", self.curve[1] <= MAX_ONE_SHOT),
        ]


def ideal_accuracy(shots: int) -> float:
    """Accuracy of an ideal reader of the recipe's prompts (two offsets per parity; Null's prior neglected)."""
    return 1 - 0.5 ** (shots + 1)


def quick_recipe(recipe: Recipe) -> Recipe:
    """A 1-block, d_model 32 version of ``recipe`` trained for 20 steps: the code path, in seconds."""
    schedule = replace(recipe.train.schedule, max_steps=20, warmup_steps=5)
    data = replace(recipe.train.data, eval_n_per_task=32)
    return replace(
        recipe,
        model=replace(recipe.model, n_layers=1, d_model=32),
        train=replace(recipe.train, data=data, schedule=schedule, eval_every=10),
    )


def run_shots_recipe(seed: int = 0, backend: str | None = None, device: str = "cpu", quick: bool = False) -> ShotsRun:
    """Train the recipe (model and data seeds set to ``seed``), then score held-out prompts over shots."""
    recipe = recipes[RECIPE]
    if quick:
        recipe = quick_recipe(recipe)
    recipe = recipe.with_seed(seed)
    data = recipe.train.data
    result, wall_s, cpu_s = timed_training(recipe, backend, device)
    pool = recipe.build_pool()
    analysis = ICLPerformance(shots=SHOTS, n_bootstrap=0)
    performance = analysis.run(result.model, pool, n_per_task=data.eval_n_per_task, seed=held_out_seed(data.seed))
    real = [t for t, task in enumerate(performance.task_names) if task != NULL_TASK]
    curve = {s: float(performance.values[real, j].mean()) for j, s in enumerate(performance.shots)}
    last = performance.shots.index(max(SHOTS))
    per_task = {task: float(performance.values[t, last]) for t, task in enumerate(performance.task_names)}
    return ShotsRun(recipe, wall_s, cpu_s, result.steps, per_task, curve, result.accuracy())


def report(run: ShotsRun, quick: bool) -> list[str]:
    """The lines printed for a run."""
    lines = [
        f"trained {run.steps} steps in {run.wall_s:.1f} s wall ({run.wall_s / 60:.2f} min), {run.cpu_s:.1f} s CPU of "
        f"this process, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}",
        f"held-out ICL accuracy at {max(SHOTS)} shots ({run.recipe.train.data.eval_n_per_task} prompts per task):",
    ]
    for task, accuracy in run.per_task.items():
        note = "  (Null: chance by construction)" if task == NULL_TASK else ""
        lines.append(f"  {task:<14} {accuracy:.3f}{note}")
    lines.append(f"  {'mean (real)':<14} {run.accuracy:.3f}")
    lines.append("accuracy over shots (real tasks): " + "  ".join(f"{s}: {run.curve[s]:.3f}" for s in SHOTS))
    lines.append("ideal reader:                      " + "  ".join(f"{s}: {ideal_accuracy(s):.3f}" for s in SHOTS))
    agree = "PASS" if run.consistent else "FAIL"
    lines.append(f"{agree}  the analysis's {max(SHOTS)}-shot accuracy per task equals the training loop's evaluation")
    return lines + target_lines(run.targets(), quick)


def shots_rows(scale: Scale, device: str) -> list[Row]:
    quick = scale == QUICK
    run = run_shots_recipe(device=device, quick=quick)
    if not run.consistent:
        raise AssertionError(
            f"ICLPerformance's 8-shot accuracy per task {run.per_task} differs from the training loop's evaluation of "
            f"the same prompts {run.loop_per_task}."
        )
    model = run.recipe.model
    shape = f"{model.n_layers} block{'s' * (model.n_layers != 1)}, d_model {model.d_model}, {run.steps} steps"
    curve = ", ".join(f"{run.curve[s]:.2f}" for s in SHOTS)
    if quick:
        return [
            Row(
                f"recipe {RECIPE!r}, quick: the code path",
                run.wall_s,
                None,
                "absolute wall time",
                "runs",
                True,
                f"{shape}: accuracy at {', '.join(map(str, SHOTS))} shots {curve}; the 8-shot accuracy per task "
                "equals the training loop's evaluation; the full run checks the targets",
            )
        ]
    failed = [description for description, passed in run.targets() if not passed]
    return [
        Row(
            f"recipe {RECIPE!r}: train, then accuracy by shots",
            run.wall_s,
            None,
            "absolute wall time",
            f"<= {TARGET_SECONDS:.0f} s",
            not failed,
            f"{shape}: accuracy at {', '.join(map(str, SHOTS))} shots {curve} (real tasks; targets >= "
            f"{TARGET_ACCURACY} at 8, <= {MAX_ONE_SHOT} at 1, rising); {run.cpu_s:.0f} s CPU"
            + (f"; FAILED: {'; '.join(failed)}" if failed else ""),
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and of the prompts")
    parser.add_argument("--backend", default=None, help="'hooked', 'bridge' or the recipe's default")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="a tiny version for 20 steps: the code path only")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}.")
    torch.set_num_threads(args.threads)
    for line in machine_lines(args.device):
        print(line)
    print(f"recipe {RECIPE!r}: {recipes[RECIPE].description}", flush=True)
    run = run_shots_recipe(seed=args.seed, backend=args.backend, device=args.device, quick=args.quick)
    for line in report(run, args.quick):
        print(line)


if __name__ == "__main__":
    main()
