"""Where the demo runs TD→accuracy and patching: shot counts below the accuracy ceiling, and how the report says so."""

from __future__ import annotations

import math

import pytest
import torch

from tv_lens.app.demo import AnalysisShots, DemoConfig, choose_analysis_shots, finetuning_pool, shots_below_ceiling
from tv_lens.app.report import shots_sentence
from tv_lens.app.run_files import check_run_info
from tv_lens.errors import ArtefactError, ConfigError
from tv_lens.results import Performance
from tv_lens.tasks import NULL_TASK, parity_offset_pool
from tv_lens.training import recipes

SHOTS = (0, 1, 2, 4, 8)


def curve(rows: list[list[float]], names: tuple[str, ...], metric: str = "accuracy") -> Performance:
    """A Performance of given per-task values ``[task, shots]`` at :data:`SHOTS` (intervals unused)."""
    values = torch.tensor(rows, dtype=torch.float64)
    n_task, n_shots = values.shape
    return Performance(
        values=values,
        ci=torch.zeros(n_task, n_shots, 2),
        overall=values.mean(0),
        overall_ci=torch.zeros(n_shots, 2),
        n_prompts=torch.full((n_task, n_shots), 10),
        shots=SHOTS,
        task_names=names,
        metric=metric,
        higher_is_better=metric == "accuracy",
    )


# Per-task accuracy at 0, 1, 2, 4, 8 shots of a model like the "shots" recipe's (two tasks and Null).
RISING = [[0.1, 0.7, 0.85, 0.96, 1.0], [0.2, 0.8, 0.9, 0.98, 0.99], [0.1, 0.1, 0.1, 0.1, 0.1]]
FLAT = [[0.1, 1.0, 1.0, 1.0, 1.0], [0.2, 0.97, 0.99, 1.0, 1.0], [0.1, 0.1, 0.1, 0.1, 0.1]]
NAMES = ("offset(1,1)", "offset(1,3)", NULL_TASK)


def reference(rows: list[list[float]], candidates: tuple[int, ...], ceiling: float, minimum: int) -> tuple[int, ...]:
    """The rule written out by hand: mean of the two real tasks, below the ceiling, then the smallest others."""
    accuracy = {s: (rows[0][SHOTS.index(s)] + rows[1][SHOTS.index(s)]) / 2 for s in candidates}
    chosen = sorted(s for s in candidates if accuracy[s] < ceiling)
    for s in sorted(candidates):
        if len(chosen) >= minimum:
            break
        if s not in chosen:
            chosen.append(s)
    return tuple(sorted(chosen))


@pytest.mark.parametrize(
    ("rows", "candidates", "ceiling", "minimum", "expected"),
    [
        (RISING, (1, 2, 4, 8), 0.95, 2, (1, 2)),  # 0.75, 0.875 below; 0.97, 0.995 at ceiling
        (RISING, (1, 2, 4, 8), 0.99, 2, (1, 2, 4)),
        (RISING, (1, 2, 4, 8), 1.0, 2, (1, 2, 4, 8)),
        (RISING, (2, 4, 8), 0.88, 2, (2, 4)),  # one below: topped up with the smallest other
        (RISING, (4, 8), 0.95, 2, (4, 8)),
        (RISING, (1, 2, 4, 8), 0.95, 1, (1, 2)),
        (FLAT, (1, 2, 4, 8), 0.95, 2, (1, 2)),  # at ceiling everywhere: the smallest
        (FLAT, (8, 4, 2), 0.95, 3, (2, 4, 8)),
        (FLAT, (1, 2, 4, 8), 0.99, 2, (1, 2)),  # 0.985 at 1 shot is below 0.99
        (RISING, (0, 1, 2), 0.5, 2, (0, 1)),  # 0 shots: 0.15, below any sensible ceiling
    ],
)
def test_shots_below_ceiling_matches_the_rule_written_out(rows, candidates, ceiling, minimum, expected):
    chosen = shots_below_ceiling(curve(rows, NAMES), candidates, ceiling, minimum)
    assert chosen == expected == reference(rows, candidates, ceiling, minimum)


def test_the_null_task_never_counts_and_missing_cells_are_skipped():
    rows = [[0.1, 0.9, 0.99, 1.0, 1.0], [0.1, 1.0, 1.0, 1.0, 1.0]]
    assert shots_below_ceiling(curve(rows, ("a", NULL_TASK)), (1, 2, 4, 8)) == (1, 2)  # only task a: 0.9 at 1 shot
    with_gap = [[0.1, math.nan, 0.9, 1.0, 1.0], [0.1, 0.8, 1.0, 1.0, 1.0], [0.1] * 5]
    choice = choose_analysis_shots(curve(with_gap, NAMES), DemoConfig())
    assert choice.accuracy == {1: pytest.approx(0.8), 2: pytest.approx(0.95), 4: 1.0, 8: 1.0}
    assert choice.td_accuracy == (1, 2) and choice.patching == 1  # 0.95 is at the ceiling


def test_patching_runs_at_the_largest_shot_count_below_the_ceiling_else_the_smallest():
    rising = choose_analysis_shots(curve(RISING, NAMES), DemoConfig())
    assert rising == AnalysisShots((1, 2), 2, rising.accuracy, 0.95)
    assert rising.accuracy == pytest.approx({1: 0.75, 2: 0.875, 4: 0.97, 8: 0.995})
    assert rising.below_ceiling == (1, 2)
    flat = choose_analysis_shots(curve(FLAT, NAMES), DemoConfig(td_accuracy_shots=(2, 4, 8)))
    assert (flat.td_accuracy, flat.patching, flat.below_ceiling) == ((2, 4), 2, ())
    lenient = choose_analysis_shots(curve(RISING, NAMES), DemoConfig(ceiling=1))
    assert (lenient.td_accuracy, lenient.patching) == ((1, 2, 4, 8), 8)
    assert lenient.to_dict() == {
        "td_accuracy": [1, 2, 4, 8],
        "patching": 8,
        "accuracy": {str(s): lenient.accuracy[s] for s in (1, 2, 4, 8)},
        "ceiling": 1.0,
    }


def test_a_curve_that_cannot_choose_is_a_config_error():
    with pytest.raises(ConfigError, match=r"candidates \[1, 3\].*at shots \[0, 1, 2, 4, 8\].*at every candidate"):
        shots_below_ceiling(curve(RISING, NAMES), (1, 3))
    with pytest.raises(ConfigError, match="on tasks other than Null"):
        shots_below_ceiling(curve([[0.1] * 5], (NULL_TASK,)), (1, 2))
    with pytest.raises(ConfigError, match="metric 'accuracy'"):
        shots_below_ceiling(curve(RISING, NAMES, metric="cross_entropy"), (1, 2))
    for bad in (0, 1.5, -0.1, True, "0.9"):
        with pytest.raises(ConfigError, match=r"DemoConfig.ceiling is an accuracy in \(0, 1\]"):
            DemoConfig(ceiling=bad)


def test_full_preset_trains_the_shots_recipe_and_quick_stays_quick():
    assert DemoConfig.full().recipe == "shots" and DemoConfig().recipe == "shots"
    assert DemoConfig.quick().recipe == "quick" and DemoConfig.full().ceiling == DemoConfig.quick().ceiling == 0.95
    assert recipes["shots"].train.schedule.max_steps % DemoConfig.full().checkpoint_every == 0


def test_finetuning_pool_of_parity_offsets_takes_the_offsets_neither_parity_used():
    pool = finetuning_pool(parity_offset_pool(offsets=(1, 3), n_values=8))
    assert pool.task_names == ("offset(4)", "offset(5)", "offset(6)", "offset(7)", NULL_TASK)
    assert pool.vocab == recipes["shots"].build_pool().vocab
    mixed = finetuning_pool(parity_offset_pool(offsets=(2, 5), n_values=12, null=False), n_tasks=3)
    assert mixed.task_names == ("offset(6)", "offset(7)", "offset(8)") and not mixed.null
    with pytest.raises(ConfigError, match=r"Only 3 offsets mod 8 are unseen by the pool, 4 needed"):
        finetuning_pool(parity_offset_pool(offsets=(1, 2, 3, 4), n_values=8), n_tasks=4)


def test_report_states_the_chosen_shots_and_why():
    below = AnalysisShots((1, 2), 2, {1: 0.75, 2: 0.875, 4: 0.97, 8: 0.995}, 0.95).to_dict()
    assert shots_sentence(below) == (
        "TD → accuracy ran at shots 1, 2 and patching at 2 shots: the shot counts where ICL accuracy on the non-Null "
        "tasks is below 0.95 (1 shot 0.750, 2 shots 0.875, 4 shots 0.970, 8 shots 0.995)."
    )
    at_ceiling = AnalysisShots((1, 2), 1, {1: 1.0, 2: 1.0}, 0.95).to_dict()
    assert "the smallest shot counts: ICL accuracy on the non-Null tasks is at least 0.95" in shots_sentence(at_ceiling)


@pytest.mark.parametrize(
    ("chosen", "field"),
    [
        ([1, 2], "'analysis_shots' should be an object"),
        ({"td_accuracy": [], "patching": 1, "accuracy": {}, "ceiling": 0.95}, "'analysis_shots.td_accuracy'"),
        ({"td_accuracy": [1], "patching": "1", "accuracy": {}, "ceiling": 0.95}, "'analysis_shots.patching'"),
        ({"td_accuracy": [1], "patching": 1, "accuracy": {"1": "x"}, "ceiling": 0.95}, "'analysis_shots.accuracy'"),
        ({"td_accuracy": [1], "patching": 1, "accuracy": {}, "ceiling": None}, "'analysis_shots.ceiling'"),
    ],
)
def test_run_info_with_a_malformed_shot_choice_is_refused(chosen, field):
    with pytest.raises(ArtefactError, match=field):
        check_run_info({"config": DemoConfig().to_dict(), "analysis_shots": chosen})
