"""Test the claims of Han et al. (2025), Yang et al. (2025), Todd et al. (2024) and Wang et al. (2023) over seeds.

Run with ``python demos/replication.py [--runs DIR] [--seeds 0 1 2 3 4 5 6] [--out FILE]``. For every seed it trains (or
reuses or resumes, in ``DIR/seed-<seed>/<run>``) five runs: ``recipes["shots"]`` (accuracy grows with shots), and on
``recipes["default"]`` the model with a checkpoint every 25 steps, two 1200-step twins without and with the
TVP-loss, and the same recipe on the pair-marker format. A seed sets the model's initialisation and the
training and held-out prompt streams (``ModelConfig.seed``, ``DataConfig.seed``); the analyses of seed ``s``
sample their prompts with seed ``10 * s``. Each seed's numbers are written to ``DIR/seed-<seed>/claims.json``
and reused by later calls (``--fresh`` recomputes them), so seeds can run in separate processes and a last call
gathers them. Everything runs on ``--threads`` torch threads (1 by default): on a CPU the trained weights, and so
every number, differ between thread counts and between kinds of CPU, so a seed's numbers are kept with the
environment they were computed in (``environment.json``) and a call under another thread count, torch version or
CPU kind does not add to them.

Each claim is one number per seed (a difference, a slope, an overlap ...) with a null value and a claimed
direction. Over seeds it is reported as the mean with a 95% Student-t interval over the per-seed values
(``seed_interval``): the interval covers training seeds and, since each seed samples its own prompts, prompts.
Verdict rule (``verdict``): a claim **holds** when the interval over seeds excludes the null value in the
claimed direction *and* the claim holds in every seed (that seed's own 95% interval, a bootstrap over prompts or
an OLS slope's interval, excludes the null value in the claimed direction); **mixed** when only one of the two
is true; **does not hold** otherwise.
``docs/replication.md`` reports a run of it over seven seeds. One seed costs about 12 minutes of CPU time on one
thread, much of it the 1200-step TVP-loss twins (``--skip default-1200 default-tvp-loss-1200`` leaves them and
their claims out); seven seeds in three processes took 51 minutes on two shared cores.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch

from tv_lens.analyses import (
    AttentionKnockout,
    Emergence,
    FunctionVectors,
    HeadAblation,
    HeadAttention,
    ICLPerformance,
    LayerFinetuning,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TdAccuracy,
    ols,
)
from tv_lens.environment import environment_differences, software_environment
from tv_lens.errors import ConfigError
from tv_lens.metrics import answer_logits, token_accuracy
from tv_lens.results.shared import real_prompts
from tv_lens.stats.bootstrap import stratified_bootstrap_ci
from tv_lens.stats.seeds import Direction, seed_interval
from tv_lens.stats.seeds import seed_verdict as verdict
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import offset_pool
from tv_lens.training import (
    Recipe,
    TVPConfig,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    recipes,
    train,
)
from tv_lens.training.checkpoints import checkpoint_path

__all__ = ["CLAIMS", "Claim", "SeedNumber", "run_specs", "seed_interval", "summarise", "verdict"]

N_PER_TASK = 100
N_SHOTS = 8
PATCH_SHOTS = 1  # shots of the patched prompts: the shots recipe is at ~75% there (8 shots: >= 99%)
TWIN_STEPS = 1200  # both TVP-loss twins train 3x the default recipe's steps: the loss needs them
TVP_LAYER, TVP_LAM = 2, 0.5
NOISE = 0.25
KNOCKOUT_WINDOW = 2  # of the default recipe's 4 blocks: windows 0-1, 1-2 and 2-3
LEVEL = 0.95


@dataclass(frozen=True)
class Claim:
    """A claim tested as one number per seed against ``null`` in ``direction``."""

    key: str
    name: str
    measured: str
    statistic: str
    null: float
    direction: Direction
    recipe: str = "default"


@dataclass(frozen=True)
class SeedNumber:
    """One seed's statistic of a claim, whether the claim holds in that seed, and the numbers behind it."""

    value: float
    holds: bool
    numbers: str


def summarise(claim: Claim, numbers: Sequence[SeedNumber]) -> dict[str, Any]:
    """The table row of ``claim`` over seeds: mean and interval, seeds where it holds, verdict."""
    values = [n.value for n in numbers]
    mean, low, high = seed_interval(values, LEVEL)
    return {
        "claim": claim.name,
        "recipe": claim.recipe,
        "measured": claim.measured,
        "statistic": claim.statistic,
        "null": claim.null,
        "direction": claim.direction,
        "mean": mean,
        "interval": [low, high],
        "seeds_holding": sum(n.holds for n in numbers),
        "n_seeds": len(numbers),
        "verdict": verdict(values, [n.holds for n in numbers], claim.null, claim.direction, LEVEL),
    }


# --- training -------------------------------------------------------------------------------------------------


def marker_pool() -> Any:
    """The default recipe's tasks in Y's other format: a marker token before each (x, y) pair, no separator."""
    return offset_pool(offsets=(1, 2, 3, 4), n_values=16, null=True, fmt="marker")


@dataclass(frozen=True)
class RunSpec:
    """One training run of a seed: a recipe, its steps, its checkpoint spacing and train-config overrides."""

    name: str
    recipe: Recipe
    steps: int
    every: int
    overrides: dict[str, Any] = field(default_factory=dict)


def run_specs(seed: int) -> dict[str, RunSpec]:
    """Every run the claims need, for one seed, by name (the name is also the run's directory)."""
    default, shots = recipes["default"].with_seed(seed), recipes["shots"].with_seed(seed)
    marker = replace(default, name="default-marker", pool=marker_pool)
    return {
        "shots": RunSpec("shots", shots, shots.train.schedule.max_steps, 100),
        "default": RunSpec("default", default, default.train.schedule.max_steps, 25),
        "default-marker": RunSpec("default-marker", marker, marker.train.schedule.max_steps, 100),
        f"default-{TWIN_STEPS}": RunSpec(f"default-{TWIN_STEPS}", default, TWIN_STEPS, 200),
        f"default-tvp-loss-{TWIN_STEPS}": RunSpec(
            f"default-tvp-loss-{TWIN_STEPS}", default, TWIN_STEPS, 200, {"tvp": TVPConfig(layer=TVP_LAYER, lam=TVP_LAM)}
        ),
    }


def trained(directory: Path, spec: RunSpec) -> Any:
    """The model of ``spec`` trained into ``directory``; a finished run there is reused, a stopped one resumed."""
    schedule = replace(spec.recipe.train.schedule, max_steps=spec.steps)
    last = latest_checkpoint(directory)
    if last is None or load_checkpoint(last).step < spec.steps:
        config = replace(spec.recipe.train, schedule=schedule, checkpoint_every=spec.every, **spec.overrides)
        train(
            spec.recipe.build_model(),
            spec.recipe.build_pool(),
            config,
            model_config=spec.recipe.model,
            checkpoint_dir=directory,
            resume_from=last,
            progress=False,
        )
    return load_checkpoint(checkpoint_path(directory, spec.steps)).load_model()


# --- the claims -----------------------------------------------------------------------------------------------

_PATCH = (
    f"{PATCH_SHOTS}-shot prompts of the shots recipe patched at the answer position with {N_SHOTS}-shot task means "
    "(a separate sample), at the block of the largest incorrect − correct loss gap; Null prompts excluded"
)
CLAIMS: tuple[Claim, ...] = (
    Claim(
        "encoding",
        "H: tasks are encoded (TD well above chance, peaking inside the model)",
        f"leave-one-out 10-NN TD per layer, {N_PER_TASK} prompts per task, {N_SHOTS} shots; chance 0.20",
        "TD at the block chosen on the other half of the prompts − chance",
        0.1,
        "greater",
    ),
    Claim(
        "td_shots",
        "H: TD predicts ICL accuracy (over shots)",
        "OLS of accuracy on TD at the best block over (task, shots in 1, 2, 4, 8), Null excluded, 16 points",
        "slope",
        0.0,
        "greater",
        "shots",
    ),
    Claim(
        "td_shots_distinct",
        "H: the same, a prompt's copies left out of its TD vote",
        'as above, TD with repeats="leave_out" (at 1 and 2 shots the sample repeats prompts: 8 inputs)',
        "slope",
        0.0,
        "greater",
        "shots",
    ),
    Claim(
        "td_training",
        "H: TD predicts ICL accuracy (over training)",
        "OLS of accuracy on TD at the emergence block over (task, checkpoint every 25 steps), Null excluded, 64 points",
        "slope",
        0.0,
        "greater",
    ),
    Claim(
        "emergence",
        "H: accuracy and TD jump together during training (coupled emergence)",
        "checkpoint where accuracy and TD at the best block cover half their rise (if ≥ 0.2), per offset task; "
        "coupled when at most one checkpoint (25 steps) apart",
        "fraction of tasks whose jumps are coupled",
        0.5,
        "greater",
    ),
    Claim(
        "icl_default",
        "H/Y: the trained model learns in context (default recipe)",
        "held-out accuracy over all tasks (Null included) by shots",
        "accuracy at 8 shots − at 0 shots",
        0.3,
        "greater",
    ),
    Claim(
        "icl_shots",
        "H/Y: the trained model learns in context (shots recipe)",
        "the same, shots recipe",
        "accuracy at 8 shots − at 0 shots",
        0.3,
        "greater",
        "shots",
    ),
    Claim(
        "patch_replace_correct",
        "H: a correct task vector helps (replace)",
        _PATCH + "; vector written in place of the residual",
        "answer-loss change, own task's vector",
        0.0,
        "less",
        "shots",
    ),
    Claim(
        "patch_replace_incorrect",
        "H: an incorrect task vector hurts (replace)",
        "as above",
        "answer-loss change, mean over other tasks' vectors (Null's included)",
        0.0,
        "greater",
        "shots",
    ),
    Claim(
        "patch_add_correct",
        "H: a correct task vector helps (add)",
        _PATCH + "; vector added to the residual",
        "answer-loss change, own task's vector",
        0.0,
        "less",
        "shots",
    ),
    Claim(
        "patch_add_incorrect",
        "H: an incorrect task vector hurts (add)",
        "as above",
        "answer-loss change, mean over other tasks' vectors (Null's included)",
        0.0,
        "greater",
        "shots",
    ),
    Claim(
        "tvp_other_replace",
        "Y/Hendel: a task vector alone makes a zero-shot prompt do the task (another prompt's vector, replace)",
        "accuracy of the query-only prompt with the vector written at the query's separator, at the block chosen on "
        "the other half of the prompts",
        "TVP accuracy − zero-shot accuracy",
        0.0,
        "greater",
    ),
    Claim(
        "tvp_mean_add",
        "Y/Hendel: the same with the task's mean vector, added",
        "as above",
        "TVP accuracy − zero-shot accuracy",
        0.0,
        "greater",
    ),
    Claim(
        "function_vector",
        "Todd: a function vector makes a zero-shot prompt do the task",
        "query-only prompt with the task's FV (top-10 heads by CIE on 8-shot prompts with 99% wrong labels) added "
        "at the query's separator, at the block chosen on the other half of the prompts, 32 prompts per task, Null "
        "excluded",
        "FV accuracy − zero-shot accuracy",
        0.0,
        "greater",
    ),
    Claim(
        "function_vector_shuffled",
        "Todd: the same, heads found with Todd et al.'s corruption",
        "as above, the CIE on 8-shot prompts whose labels are shuffled among their demonstrations",
        "FV accuracy − zero-shot accuracy",
        0.0,
        "greater",
    ),
    Claim(
        "fv_heads_attention",
        "Todd: the heads that carry the task attend to the demonstrations' answers",
        "share of each head's attention at the query's separator on the demonstrations' answer tokens, "
        f"{N_PER_TASK} prompts per task, {N_SHOTS} shots, Null excluded; the top-10 heads by CIE of the "
        "function-vector claim against the other heads",
        "mean share, top-10 CIE heads − other heads",
        0.0,
        "greater",
    ),
    Claim(
        "labels_gather",
        "Wang: the demonstrations' answers gather their demonstrations in the shallow blocks",
        f"answer-loss increase when every demonstration's answer token is kept from the demonstrations' inputs in "
        f"every head of {KNOCKOUT_WINDOW} consecutive blocks (windows 0–1, 1–2, 2–3), {N_PER_TASK} prompts per task, "
        f"{N_SHOTS} shots, Null excluded",
        "loss increase, first window − last window",
        0.0,
        "greater",
    ),
    Claim(
        "answer_reads_labels",
        "Wang: the answer reads the demonstrations' answers in the deep blocks",
        "answer-loss increase when the query's separator (the answer position) is kept from the demonstrations' "
        "answer tokens, windows as above",
        "loss increase, last window − first window",
        0.0,
        "greater",
    ),
    Claim(
        "heads",
        "H: tasks of one family share important heads",
        "Jaccard overlap of each pair of offset tasks' top-4 heads (of 16) by zero-ablation loss increase",
        "mean pairwise overlap − 95th percentile of two random top-4 sets (0.33)",
        0.0,
        "greater",
    ),
    Claim(
        "finetuning",
        "H: finetuning early blocks helps more than late blocks",
        "LoRA (rank 16, alpha 16, dropout 0.1) on block 0 vs block 3, on offsets 5–8 the base model never saw",
        "held-out accuracy, first block − last block",
        0.0,
        "greater",
    ),
    Claim(
        "tvp_loss_forms",
        f"Y: TVP-loss forms the task vector at the prescribed block ({TVP_LAYER})",
        f"TVP accuracy at block {TVP_LAYER} (another prompt's vector, replace); twins trained {TWIN_STEPS} steps "
        f"without and with the TVP-loss (λ = {TVP_LAM})",
        "TVP accuracy, with − without TVP-loss",
        0.0,
        "greater",
    ),
    Claim(
        "tvp_loss_icl",
        "Y: … without hurting ICL",
        "ICL accuracy of the same twins, 8 shots",
        "ICL accuracy, with − without TVP-loss",
        -0.05,
        "greater",
    ),
    Claim(
        "format_td",
        "Y: whether a task vector forms depends on the prompt format (TD)",
        "TD (block chosen on the other half of the prompts) of the default recipe trained on each format (separator "
        "token, or a marker before each pair)",
        "TD, marker − separator",
        0.0,
        "differs",
    ),
    Claim(
        "format_tvp",
        "Y: … (TVP)",
        "TVP accuracy (task mean, added; block chosen on the other half of the prompts) of the same two models",
        "TVP accuracy, marker − separator",
        0.0,
        "differs",
    ),
    Claim(
        "noise",
        "Y: TVP-loss makes ICL more robust to label noise",
        f"held-out ICL accuracy with {NOISE:.0%} of the demonstrations relabelled wrongly, {N_SHOTS} shots, Null "
        "excluded, the twins above",
        "accuracy, with − without TVP-loss",
        0.0,
        "greater",
    ),
)


def interval(value: float, ci: Any) -> str:
    """``value [low, high]`` with three decimals."""
    low, high = (float(x) for x in ci)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def above(a: Any, b: Any) -> bool:
    """Whether interval ``a`` lies entirely above interval ``b`` (both ``(low, high)``)."""
    return float(a[0]) > float(b[1])


def held_out(best: Any, same_prompts: float, layer: int) -> str:
    """The held-out estimate with the blocks chosen on each half, beside the same-prompt best it corrects."""
    first, second = best.chosen
    return (
        f"{interval(best.value, best.ci)} (blocks {first}, {second} chosen on the halves; same-prompt best "
        f"{same_prompts:.3f} at block {layer})"
    )


def noisy_accuracy(model: Any, pool: Any, label_noise: float, seed: int) -> tuple[float, Any]:
    """Query accuracy (Null excluded) and its 95% bootstrap interval, demonstrations carrying label noise."""
    batch = pool.sample(n_per_task=N_PER_TASK, n_shots=N_SHOTS, seed=seed + 7, label_noise=label_noise)
    with torch.no_grad():
        logits = model(batch.inputs)
    correct = token_accuracy(answer_logits(logits, batch.answer_pos, batch.n_answer_tokens), batch.answers)
    keep = real_prompts(batch.task_ids, batch.task_names)
    _, overall = stratified_bootstrap_ci(correct[keep], batch.task_ids[keep], len(batch.task_names))
    return float(correct[keep].mean()), overall


Numbers = dict[str, SeedNumber]


def encoding(model: Any, pool: Any, seed: int) -> tuple[Numbers, Any]:
    """TD per layer; the claim and the result (reused by the format claim)."""
    td = TaskDecodability().run(model, pool, n_per_task=N_PER_TASK, n_shots=N_SHOTS, seed=seed)
    best = td.held_out_best()
    text = "TD by layer " + ", ".join(f"{layer}: {float(v):.2f}" for layer, v in zip(td.layers, td.td, strict=True))
    text += f"; held out {held_out(best, float(td.td[td.at(td.best_layer)]), td.best_layer)}"
    return {"encoding": SeedNumber(best.value - td.chance, best.ci[0] > td.chance + 0.1, text)}, td


def td_over_shots(model: Any, pool: Any, seed: int, repeats: Literal["keep", "leave_out"] = "keep") -> Numbers:
    """OLS of accuracy on TD over (task, shots), shots recipe; ``repeats="leave_out"`` keeps copies out of votes."""
    td = TaskDecodability(n_bootstrap=0, repeats=repeats)
    fit = TdAccuracy(shots=(1, 2, 4, 8), decodability=td).run(model, pool, n_per_task=N_PER_TASK, seed=seed)
    text = (
        f"slope {fit.slope:.2f} [{fit.slope_ci[0]:.2f}, {fit.slope_ci[1]:.2f}], R² {fit.r2:.2f} at block {fit.layer}; "
        f"TD {float(fit.td.min()):.2f}–{float(fit.td.max()):.2f}, accuracy {float(fit.score.min()):.2f}–"
        f"{float(fit.score.max()):.2f}"
    )
    key = "td_shots" if repeats == "keep" else "td_shots_distinct"
    return {key: SeedNumber(fit.slope, fit.slope_ci[0] > 0, text)}


def learns_in_context(model: Any, pool: Any, seed: int, key: str) -> Numbers:
    """Held-out accuracy by shots (0 to 8), Null included."""
    performance = ICLPerformance(shots=(0, 1, 2, 4, 8)).run(model, pool, n_per_task=N_PER_TASK, seed=seed)
    icl, ci = performance.overall, performance.overall_ci
    text = ", ".join(f"{s}: {float(v):.2f}" for s, v in zip(performance.shots, icl, strict=True))
    return {key: SeedNumber(float(icl[-1] - icl[0]), float(ci[-1, 0]) > float(ci[0, 1]) + 0.3, f"by shots {text}")}


def patching(model: Any, pool: Any, seed: int, mode: Literal["replace", "add"]) -> Numbers:
    """Correct and incorrect task vectors patched into few-shot prompts (shots recipe)."""
    analysis = TaskVectorPatching(mode=mode)
    vectors = TaskVectors.from_model(model, pool.sample(50, N_SHOTS, seed + 1), analysis.layers, analysis.reduce)
    result = analysis.run(model, pool, n_per_task=50, n_shots=PATCH_SHOTS, seed=seed, vectors=vectors)
    j = int((result.incorrect_loss_change - result.correct_loss_change).argmax())
    where, b = f"block {result.layers[j]}", int(result.correct_loss_change.argmin())
    helpful = interval(float(result.correct_loss_change[b]), result.correct_loss_change_ci[b])
    correct = (
        f"loss {interval(float(result.correct_loss_change[j]), result.correct_loss_change_ci[j])}, accuracy "
        f"{interval(float(result.correct_change[j]), result.correct_change_ci[j])} at {where} (most helpful: "
        f"block {result.layers[b]}, loss {helpful})"
    )
    incorrect = (
        f"loss {interval(float(result.incorrect_loss_change[j]), result.incorrect_loss_change_ci[j])}, accuracy "
        f"{interval(float(result.incorrect_change[j]), result.incorrect_change_ci[j])}, override "
        f"{float(result.override_rate[j]):.2f} at {where}"
    )
    return {
        f"patch_{mode}_correct": SeedNumber(
            float(result.correct_loss_change[j]), float(result.correct_loss_change_ci[j, 1]) < 0, correct
        ),
        f"patch_{mode}_incorrect": SeedNumber(
            float(result.incorrect_loss_change[j]), float(result.incorrect_loss_change_ci[j, 0]) > 0, incorrect
        ),
    }


def prompting(model: Any, pool: Any, seed: int, source: str, mode: str, key: str) -> tuple[Numbers, Any]:
    """Task-vector prompting of query-only prompts at the block chosen on held-out prompts; the claim and the result."""
    tvp = TaskVectorPrompting(source=source, mode=mode).run(model, pool, n_per_task=50, n_shots=N_SHOTS, seed=seed)  # type: ignore[arg-type]
    best = tvp.held_out_best()
    text = (
        f"TVP {held_out(best, tvp.best_accuracy, tvp.best_layer)}; zero-shot "
        f"{interval(tvp.zero_shot_accuracy, tvp.zero_shot_ci)}; ICL {tvp.icl_accuracy:.3f}"
    )
    holds = above(best.ci, tvp.zero_shot_ci)
    return {key: SeedNumber(best.value - tvp.zero_shot_accuracy, holds, text)}, tvp


def function_vector(model: Any, pool: Any, seed: int, shuffled: bool = False) -> tuple[Numbers, Any]:
    """Todd et al.'s function vector added to query-only prompts; the claim and the result.

    Heads are ranked by their CIE on prompts with 99% wrong labels, or (``shuffled``) with Todd et al.'s corruption:
    each prompt's labels shuffled among its demonstrations. The result's heads serve :func:`fv_heads_attention`.
    """
    config = FunctionVectors(k=10, label_noise=0.0, shuffle_labels=True) if shuffled else FunctionVectors(k=10)
    result = config.run(model, pool, n_per_task=32, n_shots=N_SHOTS, seed=seed)
    fv = result.prompting
    sweep, best = fv.prompting, fv.held_out_best()
    text = (
        f"FV {held_out(best, fv.best_accuracy, fv.best_layer)}; zero-shot "
        f"{interval(fv.zero_shot_accuracy, sweep.zero_shot_ci)}; ICL {fv.icl_accuracy:.3f}"
    )
    holds = above(best.ci, sweep.zero_shot_ci)
    key = "function_vector_shuffled" if shuffled else "function_vector"
    return {key: SeedNumber(best.value - fv.zero_shot_accuracy, holds, text)}, result


def fv_heads_attention(model: Any, pool: Any, seed: int, heads: Sequence[tuple[int, int]]) -> Numbers:
    """How much more attention the function-vector ``heads`` put on the demonstrations' answers than the others."""
    attention = HeadAttention().run(model, pool, n_per_task=N_PER_TASK, n_shots=N_SHOTS, seed=seed)
    shares = attention.attention[:, :, attention.role_index("demo_answer")]  # [layer, head, prompt]
    top = torch.zeros(shares.shape[:2], dtype=torch.bool)
    top[tuple(torch.tensor(heads).T)] = True
    keep = real_prompts(attention.task_ids, attention.task_names, attention.null_task)
    difference = (shares[top].mean(0) - shares[~top].mean(0))[keep]
    _, ci = stratified_bootstrap_ci(difference, attention.task_ids[keep], len(attention.task_names))
    on_top, on_others = float(shares[top][:, keep].mean()), float(shares[~top][:, keep].mean())
    per_head = shares[..., keep].mean(-1)  # [layer, head]
    both = [layer for layer in range(len(top)) if top[layer].any() and not top[layer].all()]
    within = ", ".join(
        f"L{layer} {float(per_head[layer][top[layer]].mean()):.2f} vs {float(per_head[layer][~top[layer]].mean()):.2f}"
        for layer in both
    )
    text = (
        f"top-10 CIE heads {on_top:.3f}, other heads {on_others:.3f}; difference "
        f"{interval(float(difference.mean()), ci)}; in blocks with both, top vs other: {within or 'none'}; heads "
        f"{', '.join(f'L{a}H{b}' for a, b in heads)}"
    )
    return {"fv_heads_attention": SeedNumber(float(difference.mean()), float(ci[0]) > 0, text)}


def label_words(model: Any, pool: Any, seed: int) -> Numbers:
    """Wang et al.'s information flow: the labels gather their demonstrations early, the answer reads them late."""
    gather = AttentionKnockout(window=KNOCKOUT_WINDOW, roles=("demo_input",), query="demo_answer")
    read = AttentionKnockout(window=KNOCKOUT_WINDOW, roles=("demo_answer",))
    numbers: Numbers = {}
    for key, config, deep_first in (("labels_gather", gather, False), ("answer_reads_labels", read, True)):
        result = config.run(model, pool, n_per_task=N_PER_TASK, n_shots=N_SHOTS, seed=seed)
        harm, ci = result.overall[:, 0], result.overall_ci[:, 0]  # [window]: the one role knocked out
        high, low = (len(harm) - 1, 0) if deep_first else (0, len(harm) - 1)
        text = "loss increase by window " + ", ".join(
            f"{window[0]}–{window[-1]}: {interval(float(harm[w]), ci[w])}" for w, window in enumerate(result.windows)
        )
        numbers[key] = SeedNumber(float(harm[high] - harm[low]), above(ci[high], ci[low]), text)
    return numbers


def shared_heads(model: Any, pool: Any, seed: int) -> Numbers:
    """Overlap of the offset tasks' most important heads against random sets of heads."""
    heads = HeadAblation().run(model, pool, n_per_task=50, n_shots=N_SHOTS, seed=seed)
    off_diagonal = heads.task_overlaps()
    _, q95 = heads.chance_overlap()
    mean = float(off_diagonal.mean())
    text = (
        f"overlap {mean:.2f} (min {float(off_diagonal.min()):.2f}); attribution vs exact ablation Spearman "
        f"{heads.attribution_spearman:.2f}"
    )
    return {"heads": SeedNumber(mean - q95, mean > q95, text)}


def finetuning(model: Any, seed: int) -> Numbers:
    """LoRA on the first vs the last block, on offsets the model never saw."""
    unseen = offset_pool(offsets=(5, 6, 7, 8), n_values=16, null=True)
    result = LayerFinetuning(k=1).run(model, unseen, seed=seed)
    variants = list(result.variants)
    first, last = variants.index("first:1"), variants.index("last:1")
    text = ", ".join(f"{v}: {interval(float(result.overall[n]), result.overall_ci[n])}" for n, v in enumerate(variants))
    value = float(result.overall[first] - result.overall[last])
    return {"finetuning": SeedNumber(value, above(result.overall_ci[first], result.overall_ci[last]), text)}


def emergence(run: Path, pool: Any, seed: int) -> Numbers:
    """Coupled jumps of accuracy and TD over the checkpoints, and OLS of accuracy on TD over training."""
    result = Emergence(analyses=(TaskDecodability(n_bootstrap=0),), n_shots=N_SHOTS).run(
        list_checkpoints(run), pool, n_per_task=50, seed=seed
    )
    jumps = "; ".join(
        f"{name}: {a}/{t}"
        for name, a, t in zip(result.task_names, result.performance_jump, result.td_jump, strict=True)
        if name != "null"
    )
    tasks = [n for n, name in enumerate(result.task_names) if name != "null"]
    coupled = [result.coupled[n] for n in tasks]
    fraction = sum(coupled) / len(coupled)
    fit = ols(result.td_at_best_layer[:, tasks].flatten(), result.accuracy[:, tasks].flatten())
    return {
        "emergence": SeedNumber(
            fraction, fraction > 0.5, f"steps of the accuracy/TD jumps (block {result.best_layer}) {jumps}"
        ),
        "td_training": SeedNumber(
            fit["slope"],
            fit["slope_ci"][0] > 0,
            f"slope {fit['slope']:.2f} [{fit['slope_ci'][0]:.2f}, {fit['slope_ci'][1]:.2f}], R² {fit['r2']:.2f} "
            f"at block {result.best_layer}",
        ),
    }


def tvp_loss(plain: Any, with_loss: Any, pool: Any, seed: int) -> Numbers:
    """The TVP-loss twins: TVP at the prescribed block, ICL accuracy, and ICL under label noise."""
    at_layer = TaskVectorPrompting(layers=(TVP_LAYER,))
    a = at_layer.run(plain, pool, n_per_task=50, n_shots=N_SHOTS, seed=seed)
    b = at_layer.run(with_loss, pool, n_per_task=50, n_shots=N_SHOTS, seed=seed)
    noisy_a, noisy_a_ci = noisy_accuracy(plain, pool, NOISE, seed)
    noisy_b, noisy_b_ci = noisy_accuracy(with_loss, pool, NOISE, seed)
    return {
        "tvp_loss_forms": SeedNumber(
            b.best_accuracy - a.best_accuracy,
            above(b.accuracy_ci[0], a.accuracy_ci[0]),
            f"TVP {interval(a.best_accuracy, a.accuracy_ci[0])} → {interval(b.best_accuracy, b.accuracy_ci[0])}",
        ),
        "tvp_loss_icl": SeedNumber(
            b.icl_accuracy - a.icl_accuracy,
            float(b.icl_ci[0]) > float(a.icl_ci[1]) - 0.05,
            f"ICL {interval(a.icl_accuracy, a.icl_ci)} → {interval(b.icl_accuracy, b.icl_ci)}",
        ),
        "noise": SeedNumber(
            noisy_b - noisy_a,
            above(noisy_b_ci, noisy_a_ci),
            f"without {interval(noisy_a, noisy_a_ci)}, with TVP-loss {interval(noisy_b, noisy_b_ci)}",
        ),
    }


def prompt_format(td: Any, tvp: Any, marker_model: Any, seed: int) -> Numbers:
    """TD and TVP (task mean, added) of the separator model (``td``, ``tvp``) and of the marker-format twin."""
    pool = marker_pool()
    marker_td = TaskDecodability().run(marker_model, pool, n_per_task=N_PER_TASK, n_shots=N_SHOTS, seed=seed)
    marker_tvp = TaskVectorPrompting(source="task_mean", mode="add").run(
        marker_model, pool, n_per_task=50, n_shots=N_SHOTS, seed=seed
    )
    td_best, marker_td_best = td.held_out_best(), marker_td.held_out_best()
    tvp_best, marker_tvp_best = tvp.held_out_best(), marker_tvp.held_out_best()

    def separated(a: Any, b: Any) -> bool:
        return above(a.ci, b.ci) or above(b.ci, a.ci)

    def td_text(result: Any, best: Any) -> str:
        return held_out(best, float(result.td[result.at(result.best_layer)]), result.best_layer)

    return {
        "format_td": SeedNumber(
            marker_td_best.value - td_best.value,
            separated(td_best, marker_td_best),
            f"separator {td_text(td, td_best)}, marker {td_text(marker_td, marker_td_best)}",
        ),
        "format_tvp": SeedNumber(
            marker_tvp_best.value - tvp_best.value,
            separated(tvp_best, marker_tvp_best),
            f"separator {held_out(tvp_best, tvp.best_accuracy, tvp.best_layer)}, marker "
            f"{held_out(marker_tvp_best, marker_tvp.best_accuracy, marker_tvp.best_layer)} "
            f"(zero-shot {marker_tvp.zero_shot_accuracy:.2f}), ICL {marker_tvp.icl_accuracy:.2f}",
        ),
    }


Step = tuple[tuple[str, ...], Callable[[], Numbers]]


def seed_steps(root: Path, seed: int) -> dict[str, Step]:
    """One seed's analyses by name: the runs each needs (trained, or reused, when first needed) and the function."""
    specs = run_specs(seed)
    pool, shots_pool, prompts = recipes["default"].build_pool(), recipes["shots"].build_pool(), 10 * seed

    @cache
    def model(name: str) -> Any:
        return trained(root / name, specs[name])

    def encoding_td() -> Any:
        return encoding(model("default"), pool, prompts)

    def tvp(source: str, mode: str, key: str) -> Any:
        return prompting(model("default"), pool, prompts, source, mode, key)

    @cache
    def fv(shuffled: bool) -> tuple[Numbers, Any]:
        return function_vector(model("default"), pool, prompts, shuffled)

    kept = cache(encoding_td), cache(tvp)
    twins = f"default-{TWIN_STEPS}", f"default-tvp-loss-{TWIN_STEPS}"
    return {
        "td_shots": (("shots",), lambda: td_over_shots(model("shots"), shots_pool, prompts)),
        "td_shots_distinct": (
            ("shots",),
            lambda: td_over_shots(model("shots"), shots_pool, prompts, repeats="leave_out"),
        ),
        "icl_shots": (("shots",), lambda: learns_in_context(model("shots"), shots_pool, prompts, "icl_shots")),
        "patch_replace": (("shots",), lambda: patching(model("shots"), shots_pool, prompts, "replace")),
        "patch_add": (("shots",), lambda: patching(model("shots"), shots_pool, prompts, "add")),
        "encoding": (("default",), lambda: kept[0]()[0]),
        "icl_default": (("default",), lambda: learns_in_context(model("default"), pool, prompts, "icl_default")),
        "tvp_other": (("default",), lambda: kept[1]("other_prompt", "replace", "tvp_other_replace")[0]),
        "tvp_mean": (("default",), lambda: kept[1]("task_mean", "add", "tvp_mean_add")[0]),
        "heads": (("default",), lambda: shared_heads(model("default"), pool, prompts)),
        "function_vector": (("default",), lambda: fv(False)[0]),
        "function_vector_shuffled": (("default",), lambda: fv(True)[0]),
        "fv_heads_attention": (
            ("default",),
            lambda: fv_heads_attention(model("default"), pool, prompts, fv(False)[1].effects.top_heads(10)),
        ),
        "label_words": (("default",), lambda: label_words(model("default"), pool, prompts)),
        "emergence": (("default",), lambda: emergence(root / "default", pool, prompts)),
        "finetuning": (("default",), lambda: finetuning(model("default"), prompts)),
        "format": (
            ("default", "default-marker"),
            lambda: prompt_format(
                kept[0]()[1], kept[1]("task_mean", "add", "tvp_mean_add")[1], model("default-marker"), prompts
            ),
        ),
        "tvp_loss": (twins, lambda: tvp_loss(model(twins[0]), model(twins[1]), pool, prompts)),
    }


def check_same_environment(claims: Path, kept_environment: Path) -> None:
    """Refuse to add numbers to ``claims`` computed under other software than those kept (or under unknown)."""
    if not kept_environment.exists():
        differences = [f"{kept_environment.name} is missing"]
    else:
        differences = environment_differences(json.loads(kept_environment.read_text()), software_environment())
    if differences:
        raise ConfigError(
            f"The numbers kept in {claims} were computed in another or an unrecorded environment "
            f"({'; '.join(differences)}); one seed's numbers must come from one environment: run with the recorded "
            "--threads and versions on the same kind of CPU, or recompute them all with --fresh."
        )


def seed_numbers(root: Path, seed: int, skip: Sequence[str] = (), fresh: bool = False) -> Numbers:
    """One seed's numbers; each analysis's are kept in ``root/seed-<seed>/claims.json`` and reused unless ``fresh``.

    Analyses that need a run named in ``skip`` are left out (and their claims with them). The software they were
    computed with is kept in ``environment.json`` beside it: a seed's numbers come from one environment, so a call
    under another torch version, thread count or CPU kind that would add numbers to kept ones is refused (weights
    and numbers differ between them).
    """
    path = root / f"seed-{seed}" / "claims.json"
    done: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() and not fresh else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    kept_environment = path.with_name("environment.json")
    for name, (runs, step) in seed_steps(root / f"seed-{seed}", seed).items():
        if name in done or set(runs) & set(skip):
            continue
        if done:
            check_same_environment(path, kept_environment)
        else:  # the first numbers of this seed: they and all later ones come from this environment
            kept_environment.write_text(json.dumps(software_environment(), indent=1))
        found = step()
        done[name] = {k: asdict(v) for k, v in found.items()}
        path.write_text(json.dumps(done, indent=1))
        print(f"seed {seed}: " + ", ".join(f"{k} {n.value:+.3f}" for k, n in found.items()), flush=True)
    return {key: SeedNumber(**number) for numbers in done.values() for key, number in numbers.items()}


SIGNS: dict[Direction, str] = {"greater": ">", "less": "<", "differs": "≠"}


def print_tables(rows: list[dict[str, Any]], per_seed: dict[int, Numbers]) -> None:
    """The claims over seeds (when there are rows), then each seed's numbers: the tables of docs/replication.md."""
    if rows:
        print(
            f"\n| claim | recipe | measured | statistic | mean over seeds [{LEVEL:.0%} interval] | seeds where it "
            "holds | verdict |"
        )
        print("|---|---|---|---|---|---|---|")
    for row in rows:
        low, high = row["interval"]
        print(
            f"| {row['claim']} | {row['recipe']} | {row['measured']} | {row['statistic']} "
            f"{SIGNS[row['direction']]} {row['null']:g} | {row['mean']:+.3f} [{low:+.3f}, {high:+.3f}] | "
            f"{row['seeds_holding']}/{row['n_seeds']} | {row['verdict']} |"
        )
    seeds = sorted(per_seed)
    print("\n| claim | " + " | ".join(f"seed {s}" for s in seeds) + " |\n|---|" + "---|" * len(seeds))
    for claim in CLAIMS:
        if all(claim.key in per_seed[s] for s in seeds):
            cells = [per_seed[s][claim.key] for s in seeds]
            text = " | ".join(f"**{c.value:+.3f}** ({'holds' if c.holds else 'no'}); {c.numbers}" for c in cells)
            print(f"| {claim.name} | {text} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/replication"), help="run folders, one per seed")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6], help="training seeds (one: no interval)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/replication.json"), help="numbers as JSON")
    parser.add_argument(
        "--skip", nargs="+", default=[], choices=sorted(run_specs(0)), help="runs to leave out, with their claims"
    )
    parser.add_argument("--fresh", action="store_true", help="recompute the per-seed numbers kept in --runs")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (the tables' numbers hold for one thread count)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wall, cpu = time.time(), time.process_time()
    seeds = sorted(set(args.seeds))
    per_seed = {seed: seed_numbers(args.runs, seed, args.skip, args.fresh) for seed in seeds}
    rows = [
        summarise(claim, [per_seed[s][claim.key] for s in seeds])
        for claim in CLAIMS
        if len(seeds) > 1 and all(claim.key in per_seed[s] for s in seeds)
    ]
    print_tables(rows, per_seed)
    missing = [claim.name for claim in CLAIMS if not all(claim.key in per_seed[s] for s in seeds)]
    if missing:
        print("\nNot run in every seed: " + "; ".join(missing))
    print(f"\n{time.time() - wall:.0f} s wall, {time.process_time() - cpu:.0f} s CPU in this process")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    environments = {s: args.runs / f"seed-{s}" / "environment.json" for s in seeds}
    record = {
        "seeds": seeds,
        "level": LEVEL,
        "claims": rows,
        "per_seed": {str(s): {k: asdict(v) for k, v in n.items()} for s, n in per_seed.items()},
        "environment": {str(s): json.loads(path.read_text()) for s, path in environments.items() if path.exists()},
    }
    args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
