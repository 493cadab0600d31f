"""Coupled emergence on in-context regression: query MSE and task decodability over training checkpoints.

Han et al. (§3.3, Fig. 2) train a small transformer on a mixture of sparse linear regressions and watch, over
training, the query MSE drop while the latent task (which sparse basis) becomes decodable from the residual stream,
with UMAP plots of the representations separating by task. This script replays that on a regression recipe:
``recipes["sparse_linear"]`` (2 bases of 2 coordinates in d = 4, plus Null; the default) or
``recipes["shifted_linear"]`` (3 tasks whose weights differ in their mean, plus Null):

1. train the recipe with a checkpoint every ``--every`` steps into ``OUT/checkpoints`` (a finished run there is
   reused, a stopped one resumed);
2. run :class:`~tv_lens.analyses.Emergence` over the initial model (step 0) and every checkpoint, on the same
   prompts: query MSE per task, TD per layer and task, and a PCA per layer (:class:`~tv_lens.analyses.Geometry`;
   also UMAP when ``umap-learn`` is installed);
3. run :class:`~tv_lens.analyses.HeadAblation` on the last checkpoint: do the tasks share their most important
   heads (Han et al.'s shared heads, on a regression family), beyond two random sets of as many heads?
4. save the results to ``OUT/results/emergence.safetensors`` (``EmergenceResult.load`` reads it back; every
   checkpoint's TD and projections are in its ``snapshots``) and ``OUT/results/heads.safetensors``, the numbers to
   ``OUT/summary.json``, and an HTML report to ``OUT/report.html``: MSE and TD against step, the heads, then the
   projections of every checkpoint.

Run with ``python demos/regression_emergence.py --out DIR [--recipe NAME] [--shots N] [--seed 0] [--steps N]
[--every K] [--quick]``; ``--gather DIR [DIR ...]`` then prints the tables of docs/replication.md from several
seeds' runs (each task's numbers, and the claims over seeds by :mod:`tv_lens.stats.seeds`' verdict rule); a full run
takes about 10 minutes of one CPU thread (``OMP_NUM_THREADS=1``): 8-9 to train, 1 to analyse 41 checkpoints (UMAP,
when installed, adds a fit per layer and checkpoint). ``--quick`` trains a 1-block model for 40 steps: the code path
in seconds, not the science. docs/replication.md reports full runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tv_lens.analyses import Emergence, Geometry, HeadAblation, TaskDecodability
from tv_lens.analyses.prompt_batches import sample_batch
from tv_lens.app.report import write_report
from tv_lens.app.run_files import SUMMARY_FILE, save_summary
from tv_lens.errors import ConfigError
from tv_lens.metrics import mse
from tv_lens.results import EmergenceResult, HeadImportance, Projection, Result
from tv_lens.stats import group_means, seed_interval, seed_verdict
from tv_lens.tasks import NULL_TASK
from tv_lens.training import Recipe, TrainConfig, latest_checkpoint, list_checkpoints, load_checkpoint, recipes, train

RECIPES = ("sparse_linear", "shifted_linear")
"""The regression recipes the script runs (the first is the default)."""
CHECKPOINTS = "checkpoints"
RESULT_FILE = Path("results") / "emergence.safetensors"
HEADS_FILE = Path("results") / "heads.safetensors"
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class Settings:
    """One run of the script: what to train and how to analyse it.

    Attributes:
        recipe: The training recipe (seeded).
        every: Training steps between checkpoints (must divide the recipe's steps).
        n_per_task: Analysis prompts per task (the same at every checkpoint).
        n_shots: Shots of the analysis prompts.
        seed: Seed of the recipe and of the analysis prompts.
        umap: Also project with UMAP (needs ``umap-learn``).
    """

    recipe: Recipe
    every: int = 50
    n_per_task: int = 100
    n_shots: int = 10
    seed: int = 0
    umap: bool = False

    def __post_init__(self) -> None:
        steps = self.recipe.train.schedule.max_steps
        if self.every < 1 or steps % self.every:
            raise ConfigError(
                f"The checkpoint interval ({self.every}) must divide the {steps} training steps, so that the last "
                "step is saved; pick --every (or --steps) accordingly."
            )

    def train_config(self) -> TrainConfig:
        """The recipe's training settings with this run's checkpoint interval."""
        return replace(self.recipe.train, checkpoint_every=self.every)

    def emergence(self) -> Emergence:
        """The emergence analysis: TD and a PCA (and a UMAP) of every layer at every checkpoint."""
        projections = (Geometry(method="pca"), Geometry(method="umap")) if self.umap else (Geometry(method="pca"),)
        return Emergence(analyses=(TaskDecodability(n_bootstrap=0), *projections), n_shots=self.n_shots)


def settings(
    seed: int = 0,
    steps: int | None = None,
    every: int | None = None,
    quick: bool = False,
    umap: bool | None = None,
    recipe: str = RECIPES[0],
    n_shots: int = 10,
) -> Settings:
    """The settings of a run: the full recipe, or with ``quick`` a 1-block, ``d_model`` 32 model trained 40 steps.

    ``umap=None`` uses UMAP exactly when ``umap-learn`` is installed.
    """
    if recipe not in RECIPES:
        raise ConfigError(f"Unknown regression recipe {recipe!r}; pick one of {list(RECIPES)}.")
    chosen = recipes[recipe].with_seed(seed)
    if quick:
        chosen = replace(
            chosen,
            model=replace(chosen.model, n_layers=1, d_model=32),
            train=replace(
                chosen.train,
                data=replace(chosen.train.data, n_per_task=8, eval_n_per_task=16),
                schedule=replace(chosen.train.schedule, max_steps=40, warmup_steps=5),
                eval_every=20,
            ),
        )
    if steps is not None:
        schedule = chosen.train.schedule
        warmup = min(schedule.warmup_steps, max(steps // 10, 1))
        chosen = replace(
            chosen, train=replace(chosen.train, schedule=replace(schedule, max_steps=steps, warmup_steps=warmup))
        )
    if umap is None:
        umap = importlib.util.find_spec("umap") is not None
    return Settings(
        chosen,
        every=every if every is not None else (10 if quick else 50),
        n_per_task=16 if quick else 100,
        n_shots=n_shots,
        seed=seed,
        umap=umap,
    )


def trained_checkpoints(out: Path, run: Settings, progress: bool = False) -> tuple[list[Path], float]:
    """The checkpoint files of ``run`` in ``out/checkpoints`` and its training time (s); trains only what is missing.

    Raises:
        ConfigError: ``out`` holds checkpoints of a run with other settings.
    """
    directory = out / CHECKPOINTS
    config, model_config = run.train_config(), run.recipe.model_config()
    last = latest_checkpoint(directory)
    if last is not None:
        checkpoint = load_checkpoint(last)
        if checkpoint.config != config or checkpoint.model_config != model_config:
            raise ConfigError(
                f"{directory} holds checkpoints of a run with other settings (seed, steps, checkpoint interval or "
                "model); use another --out directory, or delete those checkpoints."
            )
        if checkpoint.step >= config.schedule.max_steps:
            return list_checkpoints(directory), checkpoint.elapsed_s
    result = train(
        run.recipe.build_model(),
        run.recipe.build_pool(),
        config,
        model_config=model_config,
        checkpoint_dir=directory,
        resume_from=last,
        progress=progress,
    )
    return list(result.checkpoints), result.elapsed_s


def analyse(run: Settings, checkpoints: Sequence[Path], progress: bool = False) -> EmergenceResult:
    """The emergence analysis of the freshly initialised model (step 0) and every checkpoint."""
    analysis = replace(run.emergence(), progress=progress)
    initial = (0, run.recipe.build_model())  # the run's starting point: the recipe's seeded initialisation
    return analysis.run([initial, *checkpoints], run.recipe.build_pool(), n_per_task=run.n_per_task, seed=run.seed)


def head_importance(run: Settings, last: Path) -> HeadImportance:
    """Zero-ablation importance of every head of the last checkpoint, on the analysis prompts' sizes and seed."""
    model = load_checkpoint(last).load_model()
    pool = run.recipe.build_pool()
    return HeadAblation().run(model, pool, n_per_task=run.n_per_task, n_shots=run.n_shots, seed=run.seed)


def shared_heads_numbers(heads: HeadImportance) -> dict[str, Any]:
    """The tasks' (Null left out) mean pairwise overlap of top-k heads, and two random top-k sets' 95th percentile."""
    pairs = heads.task_overlaps()
    _, q95 = heads.chance_overlap()
    return {
        "top_k": heads.top_k,
        "n_heads": heads.n_layers * heads.n_heads,
        "overlap": float(pairs.mean()),
        "min_overlap": float(pairs.min()),
        "chance_q95": q95,
        "top_heads": [f"L{layer}H{head}" for layer, head in heads.top_heads(heads.top_k)],
    }


def projections(result: EmergenceResult) -> dict[str, Projection]:
    """Every checkpoint's projections, by ``"<method>_step_<step>"`` (``pca_step_00500`` ...), in step order."""
    found = {}
    for step, snapshot in zip(result.steps, result.snapshots, strict=True):
        for projection in snapshot.results.values():
            if isinstance(projection, Projection):
                found[f"{projection.method}_step_{step:05d}"] = projection
    return found


def separation(projection: Projection, layer: int) -> float:
    """Silhouette score of the tasks in the 2-D projection at block ``layer`` (1: apart, 0 or below: mixed)."""
    from sklearn.metrics import silhouette_score

    coords = projection.coords[projection.layers.index(layer)]
    return float(silhouette_score(coords.numpy(), projection.labels.numpy()))


def mean_predictor_mse(run: Settings) -> torch.Tensor:
    """Per task, the query MSE of predicting the pool's output mean (0) on the analysis prompts: the mean of y²."""
    pool = run.recipe.build_pool()
    batch = sample_batch(pool, run.n_per_task, run.n_shots, run.seed)
    return group_means(mse(torch.zeros_like(batch.answers), batch.answers), batch.task_ids, len(pool.task_names))


def summarise(result: EmergenceResult, reference: torch.Tensor) -> dict[str, Any]:
    """The numbers of the run: per task the jumps, MSE and TD at the first and last checkpoint; PCA separation."""
    best = result.layers.index(result.best_layer)
    pca = [p for name, p in projections(result).items() if name.startswith("pca_")]
    tasks = {}
    for t, name in enumerate(result.task_names):
        tasks[name] = {
            "mse_jump": result.performance_jump[t],
            "td_jump": result.td_jump[t],
            "coupled": result.coupled[t],
            "mse": [float(result.loss[0, t]), float(result.loss[-1, t])],
            "mse_over_mean_predictor": [float(result.loss[i, t] / reference[t]) for i in (0, -1)],
            "td": [float(result.td_per_task[0, best, t]), float(result.td_per_task[-1, best, t])],
            "td_max": float(result.td_per_task[:, best, t].max()),
        }
    return {
        "steps": list(result.steps),
        "best_layer": result.best_layer,
        "tolerance": result.tolerance,
        "n_per_task": result.n_per_task,
        "n_shots": result.n_shots,
        "td": [float(result.td[0, best]), float(result.td[-1, best])],
        "td_max": float(result.td.max()),
        "tasks": tasks,
        "pca_silhouette": {step: separation(p, result.best_layer) for step, p in zip(result.steps, pca, strict=True)},
    }


def description(run: Settings, numbers: dict[str, Any], training_s: float) -> list[str]:
    """The report's lines on the run and its numbers."""
    first, last = numbers["steps"][0], numbers["steps"][-1]
    model = run.recipe.model
    lines = [
        f"Recipe {run.recipe.name!r} (seed {run.seed}): {model.n_layers} blocks, d_model {model.d_model}, tasks "
        f"{', '.join(numbers['tasks'])}, trained {last} steps in {training_s:.0f} s; a "
        f"checkpoint every {run.every} steps, plus the initial model (step 0).",
        f"At every checkpoint: {run.n_per_task} prompts per task with {run.n_shots} shots (the same prompts), query "
        f"MSE per task, TD (10-NN, leave-one-out) per layer and task, and a projection of every layer.",
        f"Best layer (TD at step {last}): block {numbers['best_layer']}; overall TD there {numbers['td'][0]:.3f} at "
        f"step {first}, {numbers['td'][1]:.3f} at step {last} (highest at any layer and checkpoint: "
        f"{numbers['td_max']:.3f}). Jumps: the first checkpoint that covers half the "
        f"series' improvement; coupled when at most {numbers['tolerance']} steps apart.",
    ]
    for name, task in numbers["tasks"].items():
        if name == NULL_TASK:
            continue
        loss, ratio, td = task["mse"], task["mse_over_mean_predictor"], task["td"]
        lines.append(
            f"{name}: MSE {loss[0]:.3f} -> {loss[1]:.3f} ({ratio[0]:.2f} -> {ratio[1]:.2f} x the mean predictor's), "
            f"TD {td[0]:.3f} -> {td[1]:.3f} (highest {task['td_max']:.3f}); jump of the MSE: "
            f"{_jump(task['mse_jump'])}, of TD: {_jump(task['td_jump'])}; "
            f"{'coupled' if task['coupled'] else 'not coupled'}."
        )
    heads = numbers["heads"]
    lines.append(
        f"Heads of the last checkpoint (zero ablation): the tasks' top-{heads['top_k']} heads of {heads['n_heads']} "
        f"overlap {heads['overlap']:.2f} on average (Jaccard; least {heads['min_overlap']:.2f}); two random sets of "
        f"{heads['top_k']}: 95th percentile {heads['chance_q95']:.2f}. Most important overall: "
        f"{', '.join(heads['top_heads'])}."
    )
    silhouette = numbers["pca_silhouette"]
    lines.append(
        "Silhouette of the tasks in the PCA plane at the best layer: "
        + ", ".join(f"step {step} {value:.2f}" for step, value in silhouette.items() if step in (first, last))
        + f" (max {max(silhouette.values()):.2f})."
    )
    return lines


def _jump(step: int | None, why: str = " (it never improved by min_rise)") -> str:
    return f"none{why}" if step is None else f"step {step}"


def report_results(result: EmergenceResult, heads: HeadImportance) -> dict[str, Result]:
    """What the report shows: the emergence figure (MSE and TD against step), the heads, then the projections."""
    return {"emergence": result, "heads": heads, **projections(result)}


def run_all(out: Path, run: Settings, progress: bool = False) -> tuple[EmergenceResult, dict[str, Any]]:
    """Train (or reuse), analyse, save the result, the numbers and the report; returns the result and the numbers."""
    checkpoints, training_s = trained_checkpoints(out, run, progress)
    start = time.perf_counter()
    result = analyse(run, checkpoints, progress)
    heads = head_importance(run, checkpoints[-1])
    analysis_s = time.perf_counter() - start
    result.save(out / RESULT_FILE)
    heads.save(out / HEADS_FILE)
    numbers = {
        "seed": run.seed,
        **summarise(result, mean_predictor_mse(run)),
        "heads": shared_heads_numbers(heads),
        "training_s": training_s,
        "analysis_s": analysis_s,
    }
    save_summary(out, numbers)
    report = report_results(result, heads)
    write_report(report, out / REPORT_FILE, {"description": description(run, numbers, training_s)})
    return result, numbers


def gather(runs: Sequence[Path]) -> list[str]:
    """The markdown tables of docs/replication.md from several seeds' runs: each task's numbers, then the claims.

    Claims over seeds (Null excluded from the coupling): the overall TD at the best block rises from the first to
    the last checkpoint (> 0), and the MSE and TD jumps of more than half of the tasks are coupled (> 0.5); where
    every run has them, the tasks' mean overlap of top-k heads exceeds two random top-k sets' 95th percentile (> 0).

    Raises:
        ConfigError: Fewer than two runs, a run without its ``summary.json`` (or from before it named its seed), or
            two runs of one seed.
    """
    summaries = []
    for folder in runs:
        path = Path(folder) / SUMMARY_FILE
        summary = json.loads(path.read_text()) if path.exists() else {}
        if "seed" not in summary:
            raise ConfigError(
                f"{path} is missing or does not name its seed; run this script with --out {folder} (a finished run "
                "is reused, only analysed)."
            )
        summaries.append(summary)
    seeds = [summary["seed"] for summary in summaries]
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise ConfigError(f"--gather needs the runs of two or more different seeds, got seeds {seeds}.")
    rows = [
        "| seed | overall TD at the best block, first → last step | task | MSE / mean, first → last step | TD, first → "
        "last step (highest) | MSE jump | TD jump | coupled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rises, coupled = [], []
    for summary in summaries:
        tasks = {name: task for name, task in summary["tasks"].items() if name != NULL_TASK}
        for i, (name, task) in enumerate(tasks.items()):
            first = (summary["seed"], f"{summary['td'][0]:.3f} → {summary['td'][1]:.3f}") if i == 0 else ("", "")
            ratio, td = task["mse_over_mean_predictor"], task["td"]
            rows.append(
                f"| {first[0]} | {first[1]} | {name} | {ratio[0]:.2f} → {ratio[1]:.2f} | {td[0]:.2f} → {td[1]:.2f} "
                f"({task['td_max']:.2f}) | {_jump(task['mse_jump'], '')} | {_jump(task['td_jump'], '')} | "
                f"{'yes' if task['coupled'] else 'no'} |"
            )
        rises.append(summary["td"][1] - summary["td"][0])
        coupled.append(sum(task["coupled"] for task in tasks.values()) / len(tasks))
    rows += [
        "",
        "| claim | statistic | mean over seeds [95% interval] | seeds where it holds | verdict |",
        "|---|---|---|---|---|",
    ]
    claims = [
        ("TD rises with training", "overall TD at the best block, last step − first step > 0", rises, 0.0),
        ("MSE and TD jump together", "fraction of tasks whose jumps are coupled > 0.5", coupled, 0.5),
    ]
    if all("heads" in summary for summary in summaries):
        heads = [summary["heads"] for summary in summaries]
        claims.append(
            (
                "Tasks share important heads",
                f"mean pairwise overlap of the tasks' top-{heads[0]['top_k']} heads − 95th percentile of two random "
                f"sets ({heads[0]['chance_q95']:.2f}) > 0",
                [h["overlap"] - h["chance_q95"] for h in heads],
                0.0,
            )
        )
    for claim, statistic, values, null in claims:
        mean, low, high = seed_interval(values)
        holds = [value > null for value in values]
        rows.append(
            f"| {claim} | {statistic} | {mean:+.3f} [{low:+.3f}, {high:+.3f}] | {sum(holds)}/{len(holds)} | "
            f"{seed_verdict(values, holds, null, 'greater')} |"
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="directory of the run, results and report")
    where.add_argument("--gather", type=Path, nargs="+", help="run directories of several seeds: print the tables")
    parser.add_argument("--recipe", choices=RECIPES, default=RECIPES[0], help="the regression recipe to train")
    parser.add_argument("--shots", type=int, default=10, help="shots of the analysis prompts (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the training data and the prompts")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's 2000)")
    parser.add_argument("--every", type=int, default=None, help="steps between checkpoints (default 50)")
    parser.add_argument("--quick", action="store_true", help="a 1-block model, 40 steps: the code path in seconds")
    parser.add_argument("--no-umap", action="store_true", help="PCA only, even if umap-learn is installed")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    if args.gather:
        print("\n".join(gather(args.gather)))
        return
    run = settings(
        args.seed, args.steps, args.every, args.quick, False if args.no_umap else None, args.recipe, args.shots
    )
    _, numbers = run_all(args.out, run, args.progress)
    for line in description(run, numbers, numbers["training_s"]):
        print(line)
    print(f"Analysis: {numbers['analysis_s']:.0f} s. Report: {args.out / REPORT_FILE}")


if __name__ == "__main__":
    main()
