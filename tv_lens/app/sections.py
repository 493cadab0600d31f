"""What the report says about each analysis of the demo: its figures, the claim it tests, a line of its numbers.

The numbers are each result's own :meth:`~tv_lens.results.Result.headline`; this module only words and orders them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tv_lens.app.wording import block as _block
from tv_lens.app.wording import interval as _ci
from tv_lens.app.wording import number as _f
from tv_lens.app.wording import number_or_absent as _f_or_absent
from tv_lens.errors import ArtefactError
from tv_lens.results import (
    LAYER_AXIS_TITLE,
    Decodability,
    EmergenceResult,
    FinetuningComparison,
    HeadImportance,
    KnockoutEffects,
    PatchingEffects,
    Performance,
    Projection,
    PromptingAccuracy,
    Result,
    RoleAttention,
    TdAccuracyFit,
)
from tv_lens.results.axes import counted

__all__ = ["ANALYSIS_NAMES", "SECTIONS", "Numbers", "Section", "headline_numbers", "summary_lines", "wrong_kind"]

Numbers = dict[str, Any]


def wrong_kind(name: str, result: Result) -> str | None:
    """Why ``result`` cannot be the result of the demo analysis ``name`` (``None`` when it can, or no such one)."""
    section = SECTIONS_BY_NAME.get(name)
    if section is None or isinstance(result, section.kind):
        return None
    return (
        f"holds a {type(result).__name__}, but the report's section {section.title!r} needs a {section.kind.__name__}"
    )


def _performance_line(n: Numbers) -> str:
    zero = f" (0 shots: {_f_or_absent(n['zero_shot_accuracy'])})" if "zero_shot_accuracy" in n else ""
    shots, missing = counted(n["icl_shots"], "shot"), n.get("missing_tasks", [])
    left_out = f"; no prompts of {', '.join(missing)} at {shots}" if missing else ""
    return f"{_f_or_absent(n['icl_accuracy'])} {n['metric']} at {shots}{zero}, Null task left out{left_out}"


def _held_out(n: Numbers, value: str, what: str = "") -> str:
    if "held_out_layers" not in n:  # fewer than two prompts to split
        return ""
    layers = " and ".join(dict.fromkeys(_block(layer) for layer in n["held_out_layers"]))
    held_out = f"{what}{_f(n[value])} {_ci(n[f'{value}_ci'])}"
    return f"; held out (layer chosen on one half of the prompts, scored on the other): {held_out} at {layers}"


def _decodability_line(n: Numbers) -> str:
    return (
        f"best layer {_block(n['best_layer'])}: TD {_f(n['best_td'])} {_ci(n['best_td_ci'])} (chance {_f(n['chance'])})"
        + _held_out(n, "held_out_td")
        + _repeats(n)
    )


def _repeats(n: Numbers) -> str:
    """How many prompts had a copy of their task in TD's sample (one count, or one per shot count), if any."""
    repeated = n.get("repeated_prompts")
    voted = "left out of each other's votes" if n.get("repeats") == "leave_out" else "voting for each other"
    if isinstance(repeated, dict):
        by_shots = ", ".join(f"{counted(shots, 'shot')}: {k}" for shots, k in repeated.items() if k)
        return f"; prompts with a copy of their task in TD's sample ({by_shots}), {voted}" if by_shots else ""
    return f"; {counted(repeated, 'prompt')} with a copy of their task in the sample, {voted}" if repeated else ""


def _geometry_line(n: Numbers) -> str:
    first, second = n["explained_variance_last_layer"]
    at, method = _block(n["layers"][-1]), n.get("method", "pca")  # absent from summaries written before it was
    if method != "pca":
        return f"{method.upper()} at {counted(len(n['layers']), 'layer')}: no share of variance explained (PCA only)"
    if math.isnan(first + second):  # PCA of identical points: 0 / 0
        return f"the representations at {at} are all one point: no variance for PC1 and PC2 to explain"
    return f"PC1 + PC2 explain {first + second:.1%} of the variance at {at}"


def _td_accuracy_line(n: Numbers) -> str:
    low, high = n["score_range"]
    shots = f" at shots {', '.join(map(str, n['shots']))}" if "shots" in n else ""
    at = "" if n["layer"] is None else f", TD at {_block(n['layer'])}"  # None: a fit of given points
    where = f"over {n['n_points']} (task, shots) points{shots}{at}"
    if low == high:  # nothing to explain: the fit is undefined
        return f"{n['metric']} is {_f(low)} at every point ({where}): no variation for TD to predict"
    return (
        f"R² {_f(n['r2'])}, slope {_f(n['slope'])} {_ci(n['slope_ci'])} {where}; {n['metric']} ranges "
        f"{_f(low)} to {_f(high)}" + _repeats(n)
    )


def _patching_line(n: Numbers) -> str:
    shots = f", {counted(n['shots'], 'shot')}" if "shots" in n else ""
    if n["layer"] is None:
        return (
            f"no comparison ({n['mode']}{shots}): no layer has both correct and incorrect vectors patched (one task "
            "and no Null task?); the changes per layer are in the figure"
        )
    return (
        f"at {_block(n['layer'])} ({n['mode']}{shots}; the layer of largest incorrect - correct loss gap): loss change "
        f"correct {_f(n['correct_loss_change'])} {_ci(n['correct_loss_change_ci'])} vs incorrect "
        f"{_f(n['incorrect_loss_change'])} {_ci(n['incorrect_loss_change_ci'])}; accuracy change correct "
        f"{_f(n['correct_change'])} vs incorrect {_f(n['incorrect_change'])}"
        + _held_out(n, "held_out_loss_gap", "loss gap ")
    )


def _prompting_line(n: Numbers) -> str:
    return (
        f"best layer {_block(n['best_layer'])}: {_f(n['best_accuracy'])} {_ci(n['best_accuracy_ci'])} "
        f"(zero-shot {_f(n['zero_shot_accuracy'])}, ICL {_f(n['icl_accuracy'])})" + _held_out(n, "held_out_accuracy")
    )


def _heads_line(n: Numbers) -> str:
    chance = n.get("shared_chance", math.nan)  # absent from summaries written before it was
    beyond = "" if math.isnan(chance) else f" (two random sets: 95th percentile {_f(chance)})"
    shared = f"{_f(n['shared_mean'])}{beyond}"
    if math.isnan(n["shared_mean"]) and not n.get("shared_pairs"):  # absent from summaries written before it was
        shared = "not measured (fewer than two tasks besides Null)"
    elif math.isnan(n["shared_mean"]):
        shared = "not measured (a task's importance is the same at every head: no ranking of heads to compare)"
    return (
        f"most important {', '.join(n['top_heads'])} of {n['n_heads']}; mean {n['shared_method']} overlap of "
        f"tasks' top heads {shared}; attribution vs ablation Spearman {_screen_spearman(n)}"
    )


def _screen_spearman(n: Numbers) -> str:
    """The attribution screen's Spearman, or why it is not measured (NaN)."""
    if not math.isnan(n["attribution_spearman"]):
        return _f(n["attribution_spearman"])
    if n["n_heads"] < 2:
        return "not measured (one head: no ranking to compare)"
    if "attribution_method" not in n:  # absent from summaries written before it was
        return "not measured"
    if n["attribution_method"] is None:
        return "not measured (the attribution screen was not run)"
    return "not measured (the estimates or the loss increases have no ranking: all equal, or no prompt besides Null)"


def _attention_line(n: Numbers) -> str:
    top = ", ".join(f"{head} {_f(share)}" for head, share in zip(n["top_heads"], n["top_shares"], strict=True))
    shares = ", ".join(f"{role} {_f_or_absent(share)}" for role, share in n["mean_share"].items())
    return f"most attention on {n['role']}: {top}; mean share over all heads: {shares}"


def _knockout_line(n: Numbers) -> str:
    first, last = n["blocks"][0], n["blocks"][-1]
    blocks = f"L{first}" if first == last else f"L{first}-L{last}"
    harm = "loss increase" if n["metric"] == "cross_entropy" else "accuracy drop"
    largest = ", ".join(f"{role} {_f_or_absent(value)}" for role, value in n["max_harm"].items())
    return (
        f"most harm blocking {n['query']} from {n['role']} at {blocks}: {harm} {_f(n['harm'])} {_ci(n['harm_ci'])}; "
        f"largest harm per role: {largest}"
    )


def _emergence_line(n: Numbers) -> str:
    jumps = ", ".join(f"{task} {'none' if step is None else step}" for task, step in n["td_jump"].items())
    return (
        f"{n['performance']} and TD jump together in {n['coupled']} of {counted(n['n_tasks'], 'task')} over "
        f"{counted(n['n_checkpoints'], 'checkpoint')}; TD jump step per task: {jumps}"
    )


def _finetuning_line(n: Numbers) -> str:
    accuracy = ", ".join(f"{variant} {_f(value)}" for variant, value in n["accuracy"].items())
    td = ", ".join(f"{variant} {_f(value)}" for variant, value in n["td_last_layer"].items())
    return f"accuracy on unseen {', '.join(n['tasks'])}: {accuracy}; TD at {_block(n['last_layer'])}: {td}"


# --- sections --------------------------------------------------------------------------------------------


def _with_layer_slider(figure: Any) -> Any:
    """Name the layer indexing on a figure's layer slider."""
    for slider in figure.layout.sliders:
        slider.currentvalue.prefix = f"{LAYER_AXIS_TITLE}: "
    return figure


@dataclass(frozen=True)
class Section:
    """How the report presents one analysis.

    Attributes:
        name: The result's file stem (``decodability`` ...) and the section's HTML id.
        title: Section heading.
        shows: What the figures show.
        claim: The paper claim it tests.
        figures: The result's figures, in order.
        line: One line of text from the result's headline numbers (:meth:`~tv_lens.results.Result.headline`).
        kind: The result type of the analysis (a file of this name holding another is refused).
    """

    name: str
    title: str
    shows: str
    claim: str
    figures: Callable[[Any], list[Any]]
    line: Callable[[Numbers], str]
    kind: type[Result]


SECTIONS: tuple[Section, ...] = (
    Section(
        "decodability",
        "Task decodability across layers",
        "Task decodability (TD) at every layer: leave-one-out 10-nearest-neighbour classification of the latent "
        "task from the residual stream at the token right before the answer. Thick line: all prompts, with 95% "
        "bootstrap intervals; thin lines: per task; dashed: chance. The heatmap is the task confusion at the "
        "best layer (rows: true task, columns: the neighbours' vote).",
        "H §4: the model encodes the latent task into a representation from which it can be read off (TD well "
        "above chance), and TD peaks inside the model.",
        lambda r: [r.figure(), r.confusion_figure()],
        _decodability_line,
        Decodability,
    ),
    Section(
        "performance",
        "ICL performance against shots",
        "Accuracy of the query's answer against the number of demonstrations, per task (thin) and over all "
        "prompts including the Null task, whose answers are random (thick), with 95% bootstrap intervals. The "
        "headline leaves the Null task out.",
        "The model learns in context: accuracy rises with shots. This is the behaviour task vectors explain.",
        lambda r: [r.figure()],
        _performance_line,
        Performance,
    ),
    Section(
        "geometry",
        "Geometry of task representations",
        "PCA of the pre-answer representations of each layer, one point per prompt, coloured by task; the "
        "slider picks the layer. Where TD is high, the prompts of each task form their own cluster.",
        "H §3.3 (their Fig. 2, with UMAP): task representations separate by task in the layers that encode it.",
        lambda r: [r.figure()],
        _geometry_line,
        Projection,
    ),
    Section(
        "td_accuracy",
        "Task decodability predicts accuracy",
        "One point per (task, number of shots): TD at the layer of highest mean TD against accuracy on the "
        "same prompts; the dashed line is the ordinary-least-squares fit (R² and the slope's 95% interval in "
        "the title). The Null task is left out.",
        "H §4.2: TD predicts ICL performance (their R² 0.53 to 0.84 on language models).",
        lambda r: [r.figure()],
        _td_accuracy_line,
        TdAccuracyFit,
    ),
    Section(
        "patching",
        "Task-vector patching: correct vs incorrect vectors",
        "The residual stream at a prompt's pre-answer token is patched, at one layer at a time, with the mean "
        "vector of its own task (correct) or of another task (incorrect, Null included); the lines are the "
        "change in accuracy against the unpatched run with 95% intervals, and the override rate (how often "
        "the answer follows the injected task). The heatmap shows every (prompt task, injected task) pair at "
        "the layer the slider picks. On small models, replacing the residual can erase the query itself: "
        "compare the correct and incorrect lines, not their level.",
        "H §4.1: task vectors are causal: a correct vector keeps or improves performance, an incorrect one hurts it.",
        lambda r: [r.summary_figure(), _with_layer_slider(r.figure())],
        _patching_line,
        PatchingEffects,
    ),
    Section(
        "prompting",
        "Task-vector prompting",
        "A query-only (zero-shot) prompt gets, at one layer, the pre-answer residual of another in-context "
        "prompt of its task written in at its own pre-answer token; the line is its accuracy per layer, with "
        "the in-context accuracy (ceiling) and the plain zero-shot accuracy (floor). The Null task is left out.",
        "Y, after Hendel et al. (2023): a task vector alone makes a zero-shot prompt do the task; the layer where "
        "it works best is where the vector is formed.",
        lambda r: [r.figure()],
        _prompting_line,
        PromptingAccuracy,
    ),
    Section(
        "heads",
        "Attention-head importance and pruning",
        "The loss increase when one attention head's output (attn.hook_z) is zero-ablated, averaged over the "
        "prompts of every task but Null (heatmap: layer against head); then how much the tasks' most important "
        "heads overlap (Jaccard, task against task), and the loss as the least important heads are removed "
        "one after another.",
        "H §3.3 and App. F: tasks of one family share the heads that carry them, and a few heads suffice.",
        lambda r: [r.figure(), r.shared_figure(), r.pruning.figure()],
        _heads_line,
        HeadImportance,
    ),
    Section(
        "attention",
        "Where attention heads look from the answer position",
        "The share of each head's attention at the token right before the answer that falls on each role of the "
        "prompt: before the demonstrations, the demonstrations' inputs, their answers, what separates them (a text "
        "prompt's newline), the query, the answer position itself (heatmap: layer against head; the menu picks the "
        "role, the demonstrations' answers first), averaged over the prompts of every task but Null.",
        "Todd et al. (2024), after Wang et al. (2023): the heads that carry the task to the answer position read the "
        "demonstrations' answers; compare them with the important heads above.",
        lambda r: [r.figure()],
        _attention_line,
        RoleAttention,
    ),
    Section(
        "knockout",
        "What the answer needs of what it attends to",
        "The loss increase when the token right before the answer may not attend to the positions of one role of the "
        "prompt (the demonstrations' inputs, their answers, what separates them, the query) in one block, in every "
        "head (the other attention runs as usual), against the block; a line per role, averaged over the prompts of "
        "every task but Null.",
        "Wang et al. (2023): the answer position reads the demonstrations' answers (label words) in the deep blocks, "
        "so blocking it from them should harm most there; Geva et al. (2023) slide such knockouts over the blocks.",
        lambda r: [r.figure()],
        _knockout_line,
        KnockoutEffects,
    ),
    Section(
        "emergence",
        "Emergence during training",
        "At every training checkpoint, on the same prompts: accuracy per task (the query loss for regression "
        "tasks; solid, left axis) and TD per task "
        "at the best layer of the trained model (dashed, right axis); dotted vertical lines mark the steps where "
        "TD jumps.",
        "H §3.3 (Figs. 2, 9-11): accuracy and task decodability rise together during training (coupled emergence).",
        lambda r: [r.figure()],
        _emergence_line,
        EmergenceResult,
    ),
    Section(
        "finetuning",
        "Finetuning early vs late layers",
        "The trained model is finetuned with LoRA (rank 16) on offset tasks it was not trained on, once on its "
        "first blocks and once on its last blocks, with the same data; the lines are TD per layer of the base "
        "model and of both variants on held-out prompts, their accuracy in the legend. TD below the finetuned "
        "blocks cannot change, by construction.",
        "H §4.4 (Table 1): finetuning the early layers improves task encoding and accuracy more than finetuning "
        "the late layers.",
        lambda r: [r.figure()],
        _finetuning_line,
        FinetuningComparison,
    ),
)
"""Every analysis of the demo, in pipeline order."""

ANALYSIS_NAMES: tuple[str, ...] = tuple(section.name for section in SECTIONS)
SECTIONS_BY_NAME = {section.name: section for section in SECTIONS}


def headline_numbers(results: Mapping[str, Result], run_info: Mapping[str, Any] | None = None) -> dict[str, Numbers]:
    """The headline numbers of every known result, by analysis name (JSON-ready).

    With a demo's ``run_info`` (its ``run.json``) that records ``analysis_shots``, the patching numbers also say
    the shot count the patching ran at (a patching result does not hold it).

    Raises:
        ArtefactError: A result under a demo analysis's name is not of that analysis's type.
    """
    for name, result in results.items():
        problem = wrong_kind(name, result)
        if problem is not None:
            raise ArtefactError(
                f"The result named {name!r} {problem}; pass each demo analysis's result under its own name, and "
                "other results under other names."
            )
    numbers = {name: result.headline() for name, result in results.items() if name in SECTIONS_BY_NAME}
    chosen = (run_info or {}).get("analysis_shots")
    if chosen and "patching" in numbers:
        numbers["patching"] = {"shots": chosen["patching"], **numbers["patching"]}
    return numbers


def summary_lines(numbers: Mapping[str, Numbers]) -> list[tuple[str, str, str]]:
    """``(analysis name, section title, one line of numbers)`` for every analysis in ``numbers``, in order."""
    return [
        (name, SECTIONS_BY_NAME[name].title, SECTIONS_BY_NAME[name].line(numbers[name]))
        for name in ANALYSIS_NAMES
        if name in numbers
    ]
