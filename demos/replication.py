"""Test the claims of Han et al. (2025) and Yang et al. (2025) on tv_lens's default model; print the numbers.

Run with ``python demos/replication.py [--run DIR] [--out FILE]``. It trains ``recipes["default"]`` into
``DIR`` with a checkpoint every 25 steps (or reuses the run already there), trains two longer twins without and
with the TVP-loss and one on the pair-marker prompt format, runs one analysis per claim and prints a markdown
table: claim, what was measured, the numbers with 95% bootstrap confidence intervals, and whether the claim holds
on this model. ``docs/replication.md`` reports a run of it. With every run trained, the analyses take about 10
minutes of CPU; training the four runs takes about 35 more.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tv_lens.analyses import (
    Emergence,
    FunctionVectors,
    HeadAblation,
    ICLPerformance,
    LayerFinetuning,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TdAccuracy,
    ols,
)
from tv_lens.analyses.bootstrap import stratified_bootstrap_ci
from tv_lens.metrics import answer_logits, token_accuracy
from tv_lens.tasks import offset_pool
from tv_lens.training import TVPConfig, latest_checkpoint, list_checkpoints, load_checkpoint, recipes

N_PER_TASK = 100
N_SHOTS = 8


def marker_pool() -> Any:
    """The default recipe's tasks in Y's other format: a marker token before each (x, y) pair, no separator."""
    return offset_pool(offsets=(1, 2, 3, 4), n_values=16, null=True, fmt="marker")


def trained(directory: Path, steps: int | None = None, every: int = 25, recipe: Any = None, **overrides: Any) -> Any:
    """``recipe``'s model (default recipe) trained into ``directory`` for ``steps``; a finished run is reused."""
    recipe = recipe or recipes["default"]
    schedule = recipe.train.schedule if steps is None else replace(recipe.train.schedule, max_steps=steps)
    last = latest_checkpoint(directory)
    if last is None or load_checkpoint(last).step < schedule.max_steps:
        recipe.run(checkpoint_dir=directory, checkpoint_every=every, schedule=schedule, **overrides)
    return load_checkpoint(latest_checkpoint(directory)).load_model()


def random_jaccard(n: int, k: int, draws: int = 20_000) -> tuple[float, float]:
    """Mean and 95th percentile of the Jaccard overlap of two random ``k``-subsets of ``n`` heads."""
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(draws, n, generator=generator).argsort(-1)[:, :k]
    b = torch.rand(draws, n, generator=generator).argsort(-1)[:, :k]
    common = (a[:, :, None] == b[:, None, :]).sum((1, 2)).double()
    jaccard = common / (2 * k - common)
    return float(jaccard.mean()), float(jaccard.quantile(0.95))


def noisy_accuracy(model: Any, pool: Any, label_noise: float) -> tuple[float, Any]:
    """Query accuracy (Null excluded) and its 95% bootstrap interval, demonstrations carrying label noise."""
    batch = pool.sample(n_per_task=N_PER_TASK, n_shots=N_SHOTS, seed=7, label_noise=label_noise)
    with torch.no_grad():
        logits = model(batch.inputs)
    correct = token_accuracy(answer_logits(logits, batch.answer_pos, batch.n_answer_tokens), batch.answers)
    keep = batch.task_ids != batch.task_names.index("null")
    _, overall = stratified_bootstrap_ci(correct[keep], batch.task_ids[keep], len(batch.task_names))
    return float(correct[keep].mean()), overall


def separated(a: Any, b: Any) -> bool:
    """Whether two (low, high) intervals do not overlap."""
    return float(a[0]) > float(b[1]) or float(b[0]) > float(a[1])


def interval(value: float, ci: Any) -> str:
    low, high = (float(x) for x in ci)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=Path("runs/default"), help="training run directory")
    parser.add_argument("--out", type=Path, default=Path("runs/replication.json"), help="numbers as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    pool = recipes["default"].build_pool()
    model = trained(args.run)
    rows: list[dict[str, str]] = []

    def claim(name: str, measured: str, numbers: str, holds: bool) -> None:
        rows.append({"claim": name, "measured": measured, "numbers": numbers, "holds": "yes" if holds else "no"})
        print(f"{name}: {numbers} -> {'holds' if holds else 'does not hold'}", flush=True)

    td = TaskDecodability().run(model, pool, n_per_task=N_PER_TASK, n_shots=N_SHOTS)
    best = td.best_layer
    i = td.at(best)
    claim(
        "H: tasks are encoded (TD well above chance, peaking inside the model)",
        f"leave-one-out 10-NN TD per layer, {N_PER_TASK} prompts per task, {N_SHOTS} shots; chance {td.chance:.2f}",
        "TD by layer "
        + ", ".join(f"{layer}: {float(v):.2f}" for layer, v in zip(td.layers, td.td, strict=True))
        + f"; best block {best}: {interval(float(td.td[i]), td.td_ci[i])}",
        float(td.td_ci[i, 0]) > td.chance + 0.1,
    )

    fit = TdAccuracy(shots=(1, 2, 4, 8)).run(model, pool, n_per_task=N_PER_TASK)
    claim(
        "H: TD predicts ICL accuracy (over shots)",
        "OLS of accuracy on TD at the best block over (task, shots in 1, 2, 4, 8), Null excluded",
        f"R² {fit.r2:.3f}, slope {fit.slope:.2f} [{fit.slope_ci[0]:.2f}, {fit.slope_ci[1]:.2f}]; accuracy "
        f"ranges {float(fit.score.min()):.2f}-{float(fit.score.max()):.2f}",
        fit.slope_ci[0] > 0,
    )

    performance = ICLPerformance(shots=(0, 1, 2, 4, 8)).run(model, pool, n_per_task=N_PER_TASK)
    icl = performance.overall
    claim(
        "H/Y: the trained model learns in context",
        "held-out accuracy over all tasks (Null included) by shots",
        ", ".join(f"{s} shots: {float(v):.2f}" for s, v in zip(performance.shots, icl, strict=True)),
        float(icl[-1]) > float(icl[0]) + 0.3,
    )

    for mode in ("replace", "add"):
        patching = TaskVectorPatching(mode=mode).run(model, pool, n_per_task=50, n_shots=N_SHOTS)
        j = int((patching.incorrect_loss_change - patching.correct_loss_change).argmax())
        claim(
            f"H: correct task vectors help, incorrect ones hurt ({mode})",
            f"change vs unpatched of answer loss and accuracy, patched at the answer position of block "
            f"{patching.layers[j]} (largest incorrect - correct loss gap); override = answers that follow the "
            "injected task",
            f"loss: correct {interval(float(patching.correct_loss_change[j]), patching.correct_loss_change_ci[j])}, "
            f"incorrect {interval(float(patching.incorrect_loss_change[j]), patching.incorrect_loss_change_ci[j])}; "
            f"accuracy: correct {interval(float(patching.correct_change[j]), patching.correct_change_ci[j])}, "
            f"incorrect {interval(float(patching.incorrect_change[j]), patching.incorrect_change_ci[j])}; "
            f"override {float(patching.override_rate[j]):.2f}",
            float(patching.correct_loss_change_ci[j, 1]) < 0 < float(patching.incorrect_loss_change_ci[j, 0]),
        )

    for source, mode in (("other_prompt", "replace"), ("task_mean", "add")):
        tvp = TaskVectorPrompting(source=source, mode=mode).run(model, pool, n_per_task=50, n_shots=N_SHOTS)
        k = tvp.layers.index(tvp.best_layer)
        claim(
            f"Y/Hendel: a task vector alone makes a zero-shot prompt do the task ({source}, {mode})",
            "accuracy of the query-only prompt with the vector injected at the query's separator, best block",
            f"TVP {interval(tvp.best_accuracy, tvp.accuracy_ci[k])} at block {tvp.best_layer}; zero-shot "
            f"{interval(tvp.zero_shot_accuracy, tvp.zero_shot_ci)}; ICL {interval(tvp.icl_accuracy, tvp.icl_ci)}",
            float(tvp.accuracy_ci[k, 0]) > float(tvp.zero_shot_ci[1]),
        )

    fv = FunctionVectors(k=10).run(model, pool, n_per_task=32, n_shots=N_SHOTS).prompting
    sweep, k = fv.prompting, fv.layers.index(fv.best_layer)
    claim(
        "Todd: a function vector makes a zero-shot prompt do the task",
        "accuracy of the query-only prompt with the task's FV (top-10 heads by CIE on 8-shot prompts with 99% wrong "
        "labels) added at the query's separator, best block, 32 prompts per task, Null excluded",
        f"FV {interval(fv.best_accuracy, fv.accuracy_ci[k])} at block {fv.best_layer}; zero-shot "
        f"{interval(fv.zero_shot_accuracy, sweep.zero_shot_ci)}; ICL {interval(fv.icl_accuracy, sweep.icl_ci)}",
        float(fv.accuracy_ci[k, 0]) > float(sweep.zero_shot_ci[1]),
    )

    heads = HeadAblation().run(model, pool, n_per_task=50, n_shots=N_SHOTS)
    tasks = [n for n in heads.task_names if n != heads.null_task]
    idx = [heads.task_names.index(n) for n in tasks]
    shared = heads.shared[idx][:, idx]
    off_diagonal = shared[~torch.eye(len(idx), dtype=torch.bool)]
    chance = random_jaccard(heads.n_layers * heads.n_heads, heads.top_k)
    claim(
        "H: tasks of one family share important heads",
        f"Jaccard overlap of each task's top-{heads.top_k} heads (of {heads.n_layers * heads.n_heads}) by "
        "zero-ablation loss increase, offset tasks, against two random top-k sets (95th percentile)",
        f"mean pairwise overlap {float(off_diagonal.mean()):.2f} (min {float(off_diagonal.min()):.2f}); random "
        f"sets: mean {chance[0]:.2f}, 95th percentile {chance[1]:.2f}; attribution vs exact ablation Spearman "
        f"{heads.attribution_spearman:.2f}",
        float(off_diagonal.mean()) > chance[1],
    )

    unseen = offset_pool(offsets=(5, 6, 7, 8), n_values=16, null=True)
    finetuning = LayerFinetuning(k=1).run(model, unseen)
    variants = list(finetuning.variants)
    acc = {v: interval(float(finetuning.overall[n]), finetuning.overall_ci[n]) for n, v in enumerate(variants)}
    first, last = variants.index("first:1"), variants.index("last:1")
    claim(
        "H: finetuning early blocks helps more than late blocks",
        "LoRA (rank 16) on block 0 vs block 3, on offsets 5-8 the base model never saw; held-out accuracy",
        ", ".join(f"{v}: {a}" for v, a in acc.items()),
        float(finetuning.overall_ci[first, 0]) > float(finetuning.overall_ci[last, 1]),
    )

    emergence = Emergence(analyses=(TaskDecodability(n_bootstrap=0),), n_shots=N_SHOTS).run(
        list_checkpoints(args.run), pool, n_per_task=50
    )
    claim(
        "H: accuracy and TD jump together during training (coupled emergence)",
        f"step of the first rise >= {emergence.min_rise} in accuracy and in TD at block {emergence.best_layer}, "
        "per task",
        "; ".join(
            f"{name}: accuracy {a}, TD {t}"
            for name, a, t in zip(emergence.task_names, emergence.performance_jump, emergence.td_jump, strict=True)
        ),
        sum(emergence.coupled) > len(emergence.coupled) / 2,
    )
    tasks_only = [n for n, name in enumerate(emergence.task_names) if name != "null"]
    over_training = ols(
        emergence.td_at_best_layer[:, tasks_only].flatten(), emergence.accuracy[:, tasks_only].flatten()
    )
    claim(
        "H: TD predicts ICL accuracy (over training)",
        f"OLS of accuracy on TD at block {emergence.best_layer} over (task, checkpoint), Null excluded",
        f"R² {over_training['r2']:.3f}, slope {over_training['slope']:.2f} [{over_training['slope_ci'][0]:.2f}, "
        f"{over_training['slope_ci'][1]:.2f}], {len(tasks_only) * len(emergence.steps)} points",
        over_training["slope_ci"][0] > 0,
    )

    # Both twins train 3x the recipe's steps: the TVP-loss needs them to form the vector without costing ICL.
    tvp_layer, tvp_lam, tvp_steps = 2, 0.5, 1200
    plain_model = trained(args.run.parent / f"{args.run.name}-{tvp_steps}", steps=tvp_steps, every=200)
    tvp_model = trained(
        args.run.parent / f"{args.run.name}-tvp-loss-{tvp_steps}",
        steps=tvp_steps,
        every=200,
        tvp=TVPConfig(layer=tvp_layer, lam=tvp_lam),
    )
    at_layer = TaskVectorPrompting(layers=(tvp_layer,))
    plain = at_layer.run(plain_model, pool, n_per_task=50, n_shots=N_SHOTS)
    with_loss = at_layer.run(tvp_model, pool, n_per_task=50, n_shots=N_SHOTS)
    claim(
        f"Y: TVP-loss forms the task vector at the prescribed block ({tvp_layer}) without hurting ICL",
        f"TVP accuracy at block {tvp_layer} (other prompt's vector, replace) and ICL accuracy, {tvp_steps} steps "
        f"without vs with TVP-loss (λ = {tvp_lam}), same seed",
        f"TVP {interval(plain.best_accuracy, plain.accuracy_ci[0])} → "
        f"{interval(with_loss.best_accuracy, with_loss.accuracy_ci[0])}; ICL "
        f"{interval(plain.icl_accuracy, plain.icl_ci)} → {interval(with_loss.icl_accuracy, with_loss.icl_ci)}",
        float(with_loss.accuracy_ci[0, 0]) > float(plain.accuracy_ci[0, 1])
        and with_loss.icl_accuracy >= plain.icl_accuracy - 0.05,
    )
    marker_recipe = replace(recipes["default"], name="default-marker", pool=marker_pool)
    marker_model = trained(args.run.parent / f"{args.run.name}-marker", recipe=marker_recipe)
    formats = {"x → y (separator)": (model, pool), "marker before each pair": (marker_model, marker_pool())}
    summaries, texts = [], []
    for name, (format_model, format_pool) in formats.items():
        format_td = TaskDecodability().run(format_model, format_pool, n_per_task=N_PER_TASK, n_shots=N_SHOTS)
        format_tvp = TaskVectorPrompting(source="task_mean", mode="add").run(
            format_model, format_pool, n_per_task=50, n_shots=N_SHOTS
        )
        i, k = format_td.at(format_td.best_layer), format_tvp.layers.index(format_tvp.best_layer)
        summaries.append((format_td.td_ci[i], format_tvp.accuracy_ci[k]))
        texts.append(
            f"{name}: ICL {format_tvp.icl_accuracy:.2f}, TD {interval(float(format_td.td[i]), format_td.td_ci[i])} at "
            f"block {format_td.best_layer}, TVP {interval(format_tvp.best_accuracy, format_tvp.accuracy_ci[k])} at "
            f"block {format_tvp.best_layer} (zero-shot {format_tvp.zero_shot_accuracy:.2f})"
        )
    (td_a, tvp_a), (td_b, tvp_b) = summaries
    claim(
        "Y: whether a task vector forms depends on the prompt format",
        "best-block TD and TVP (task mean, added; best block) of the default recipe trained on each format, same seed",
        "; ".join(texts),
        separated(td_a, td_b) or separated(tvp_a, tvp_b),
    )

    noise = 0.25
    plain_acc, plain_ci = noisy_accuracy(plain_model, pool, noise)
    tvp_acc, tvp_ci = noisy_accuracy(tvp_model, pool, noise)
    claim(
        "Y: TVP-loss makes ICL more robust to label noise",
        f"held-out ICL accuracy with {noise:.0%} of the demonstrations relabelled wrongly, {N_SHOTS} shots, Null "
        "excluded, the twins above",
        f"without {interval(plain_acc, plain_ci)}, with TVP-loss {interval(tvp_acc, tvp_ci)}",
        float(tvp_ci[0]) > float(plain_ci[1]),
    )
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


def print_table(rows: list[dict[str, str]]) -> None:
    print("\n| claim | measured | numbers | holds |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['claim']} | {row['measured']} | {row['numbers']} | {row['holds']} |")


if __name__ == "__main__":
    main()
