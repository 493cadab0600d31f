"""Benchmark 8: regression recipes that learn in context — train each, then query MSE by shots against references.

``recipes["linear_regression"]`` (Yang et al.'s linear regression in d = 4), ``recipes["sparse_linear"]`` (Han et
al.'s sparse linear mixture, scaled down to 2 bases in d = 4, plus Null) and ``recipes["shifted_linear"]`` (3 linear
tasks whose weights differ in their mean, plus Null) each train a continuous-input model from scratch (the recipes
of :data:`RECIPES`; ``--recipe`` picks one). After training,
held-out prompts (from the run's held-out seed stream) at 1, 2, 5, 10 and 15 shots are scored by the library's
own analysis path (:func:`~tv_lens.analyses.performance.score_batch`, squared error of the query) and, on the same
prompts, by three references: the mean predictor (the pool's output mean, 0: its MSE is the variance of ``y``),
least squares and ridge fitted on each prompt's demonstrations (:mod:`tv_lens.tasks.regression_baselines`).
Errors are averaged over the real tasks (Null prompts' outputs are unpredictable by construction). Targets:

- query MSE at 10 or more shots <= 0.25 x the mean predictor's;
- training in <= 15 minutes of CPU time of this process.

``--quick`` (and ``python -m benchmarks --quick``) trains each recipe for 20 steps on a 1-block, d_model 32 model:
the code path and the same table, not the targets.

Run alone: ``python -m benchmarks.regression_recipes [--threads 1] [--seed 0] [--backend bridge] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from typing import Any

import torch

from benchmarks.common import QUICK, Row, Scale, machine_lines, target_lines, timed_training
from tv_lens.analyses.performance import score_batch
from tv_lens.tasks import NULL_TASK, RegressionPool
from tv_lens.tasks.regression_baselines import least_squares_predictions, ridge_predictions
from tv_lens.training import Recipe, recipes
from tv_lens.training.data import held_out_seed

RECIPES = ("linear_regression", "sparse_linear", "shifted_linear")
SHOTS = (1, 2, 5, 10, 15)
RIDGE_ALPHA = 0.1
TARGET_RATIO = 0.25
TARGET_CPU_SECONDS = 900.0
PREDICTORS = ("model", "mean", "least squares", f"ridge {RIDGE_ALPHA}")


@dataclass(frozen=True)
class RegressionRun:
    """One trained recipe: times, and the real tasks' query MSE per shot count for the model and the references."""

    recipe: Recipe
    wall_s: float
    cpu_s: float
    steps: int
    mse: dict[str, dict[int, float]]
    null_mse: dict[int, float]

    @property
    def shots(self) -> tuple[int, ...]:
        """The evaluated shot counts."""
        return tuple(self.mse["model"])

    @property
    def ratio(self) -> float:
        """Model MSE over the mean predictor's, averaged over the shot counts >= 10."""
        many = [s for s in self.shots if s >= 10]
        return sum(self.mse["model"][s] / self.mse["mean"][s] for s in many) / len(many)

    def targets(self) -> list[tuple[str, bool]]:
        """(description, passed) of every target."""
        return [
            (
                f"model MSE / mean MSE at 10+ shots <= {TARGET_RATIO} ({self.ratio:.3f})",
                self.ratio <= TARGET_RATIO,
            ),
            (
                f"training <= {TARGET_CPU_SECONDS:.0f} s CPU ({self.cpu_s:.1f} s CPU; {self.wall_s:.1f} s wall)",
                self.cpu_s <= TARGET_CPU_SECONDS,
            ),
        ]


def quick_recipe(recipe: Recipe) -> Recipe:
    """A 1-block, d_model 32 version of ``recipe`` trained for 20 steps: the code path, in seconds."""
    schedule = replace(recipe.train.schedule, max_steps=20, warmup_steps=5)
    data = replace(recipe.train.data, n_per_task=16, eval_n_per_task=32)
    return replace(
        recipe,
        model=replace(recipe.model, n_layers=1, d_model=32),
        train=replace(recipe.train, data=data, schedule=schedule, eval_every=20),
    )


def evaluate_shots(
    model: Any, pool: RegressionPool, shots: tuple[int, ...], n_per_task: int, seed: int
) -> tuple[dict[str, dict[int, float]], dict[int, float]]:
    """Query MSE of ``model`` and the references at each shot count over the real tasks, and the model's on Null."""
    mse: dict[str, dict[int, float]] = {name: {} for name in PREDICTORS}
    null_mse: dict[int, float] = {}
    for k in shots:
        batch = pool.sample(n_per_task, k, seed=seed)
        real = torch.tensor([pool.task_names[t] != NULL_TASK for t in batch.task_ids.tolist()])
        answers = batch.answers[real].double()
        predictions = {
            "mean": torch.zeros_like(answers),  # the pool's output mean: w ~ N(0, I) makes every output centred
            "least squares": least_squares_predictions(batch)[real].double(),
            f"ridge {RIDGE_ALPHA}": ridge_predictions(batch, RIDGE_ALPHA)[real].double(),
        }
        model_errors = score_batch(model, batch, "mse").double()
        mse["model"][k] = float(model_errors[real].mean())
        for name, predicted in predictions.items():
            mse[name][k] = float(((predicted - answers) ** 2).mean())
        if not bool(real.all()):
            null_mse[k] = float(model_errors[~real].mean())
    return mse, null_mse


def run_regression_recipe(
    name: str, seed: int = 0, backend: str | None = None, device: str = "cpu", quick: bool = False
) -> RegressionRun:
    """Train recipe ``name`` (model and data seeds set to ``seed``), then score held-out prompts over shots."""
    recipe = recipes[name]
    if quick:
        recipe = quick_recipe(recipe)
    recipe = recipe.with_seed(seed)
    data = recipe.train.data
    result, wall_s, cpu_s = timed_training(recipe, backend, device)
    longest = data.n_shots if isinstance(data.n_shots, int) else data.n_shots[1]
    shots = tuple(s for s in SHOTS if s <= longest)
    pool = recipe.build_pool()
    n_per_task = max(256, data.eval_n_per_task)
    mse, null_mse = evaluate_shots(result.model, pool, shots, n_per_task, seed=held_out_seed(seed))
    return RegressionRun(recipe, wall_s, cpu_s, result.steps, mse, null_mse)


def report(run: RegressionRun, quick: bool) -> list[str]:
    """The lines printed for a run."""
    lines = [
        f"recipe {run.recipe.name!r}: trained {run.steps} steps in {run.cpu_s:.1f} s CPU of this process "
        f"({run.cpu_s / 60:.2f} min), {run.wall_s:.1f} s wall, {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.1f}",
        "query MSE by shots (real tasks; mean = variance of y):",
        f"  {'shots':<16}" + "".join(f"{s:>9}" for s in run.shots),
    ]
    for name, values in run.mse.items():
        lines.append(f"  {name:<16}" + "".join(f"{values[s]:>9.3f}" for s in run.shots))
    lines.append(
        f"  {'model / mean':<16}" + "".join(f"{run.mse['model'][s] / run.mse['mean'][s]:>9.3f}" for s in run.shots)
    )
    if run.null_mse:
        lines.append(f"  {'model on Null':<16}" + "".join(f"{run.null_mse[s]:>9.3f}" for s in run.shots))
    return lines + target_lines(run.targets(), quick)


def regression_rows(scale: Scale, device: str) -> list[Row]:
    quick = scale == QUICK
    rows = []
    for name in RECIPES:
        run = run_regression_recipe(name, device=device, quick=quick)
        model = run.recipe.model
        shape = f"{model.n_layers} block{'s' * (model.n_layers != 1)}, d_model {model.d_model}, {run.steps} steps"
        curve = ", ".join(f"{run.mse['model'][s] / run.mse['mean'][s]:.2f}" for s in run.shots)
        note = f"{shape}: model/mean MSE at {', '.join(map(str, run.shots))} shots {curve}; {run.cpu_s:.0f} s CPU"
        if quick:
            rows.append(
                Row(
                    f"recipe {name!r}, quick: the code path", run.wall_s, None, "absolute wall time", "runs", True, note
                )
            )
            continue
        failed = [description for description, passed in run.targets() if not passed]
        rows.append(
            Row(
                f"recipe {name!r}: train, then query MSE by shots",
                run.wall_s,
                None,
                "absolute wall time",
                f"<= {TARGET_RATIO} x mean MSE at 10+ shots",
                not failed,
                note + (f"; FAILED: {'; '.join(failed)}" if failed else ""),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and of the prompts")
    parser.add_argument("--backend", default=None, help="'hooked', 'bridge' or the recipe's default")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--recipe", choices=RECIPES, default=None, help="train only this recipe (default: all)")
    parser.add_argument("--quick", action="store_true", help="a tiny version for 20 steps: the code path only")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}.")
    torch.set_num_threads(args.threads)
    for line in machine_lines(args.device):
        print(line)
    for name in RECIPES if args.recipe is None else (args.recipe,):
        print(f"\nrecipe {name!r}: {recipes[name].description}", flush=True)
        run = run_regression_recipe(name, seed=args.seed, backend=args.backend, device=args.device, quick=args.quick)
        for line in report(run, args.quick):
            print(line, flush=True)


if __name__ == "__main__":
    main()
