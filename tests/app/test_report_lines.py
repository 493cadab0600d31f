"""The report's lines of numbers say only what the numbers support: no NaN printed as a number."""

from __future__ import annotations

import torch

from tv_lens.analyses import fit_td_accuracy
from tv_lens.analyses.decodability import TaskDecodability, task_decodability
from tv_lens.analyses.emergence import detect_coupling
from tv_lens.analyses.geometry import project
from tv_lens.analyses.performance import ICLPerformance, icl_performance
from tv_lens.app.sections import SECTIONS_BY_NAME
from tv_lens.results import EmergenceResult, Projection
from tv_lens.tasks.pool import NULL_TASK


def line(name: str, result) -> str:
    return SECTIONS_BY_NAME[name].line(result.headline())


def test_intervals_not_computed_are_said_to_be_absent():
    labels = torch.arange(4).repeat_interleave(10)
    reps = torch.randn(2, 40, 8, generator=torch.Generator().manual_seed(0))
    result = task_decodability(reps, labels, config=TaskDecodability(k=3, n_bootstrap=0))
    assert torch.isnan(result.td_ci).all()  # n_bootstrap=0: no intervals
    text = line("decodability", result)
    assert "nan" not in text
    assert f"TD {float(result.td[result.at(result.best_layer)]):.3f} (no interval)" in text
    with_intervals = line("decodability", task_decodability(reps, labels, config=TaskDecodability(k=3)))
    assert "(no interval)" not in with_intervals and "nan" not in with_intervals


def test_geometry_of_identical_points_explains_no_variance():
    result = project(torch.zeros(2, 6, 4), torch.tensor([0, 0, 0, 1, 1, 1]), task_names=("a", "b"))
    assert torch.isnan(result.explained_variance).all()
    assert (
        line("geometry", result)
        == "the representations at L1 are all one point: no variance for PC1 and PC2 to explain"
    )
    spread = project(torch.randn(2, 6, 4), torch.tensor([0, 0, 0, 1, 1, 1]), task_names=("a", "b"))
    share = float(spread.explained_variance[-1].sum())
    assert line("geometry", spread) == f"PC1 + PC2 explain {share:.1%} of the variance at L1"


def test_a_umap_projection_claims_no_explained_variance():
    pca = project(torch.randn(3, 6, 4), torch.tensor([0, 0, 0, 1, 1, 1]), task_names=("a", "b"))
    umap = Projection(
        pca.coords, pca.labels, torch.full((3, 2), float("nan"), dtype=torch.float64), pca.layers, pca.task_names,
        method="umap", settings={"n_neighbors": 5, "min_dist": 0.1, "seed": 0},
    )  # fmt: skip
    assert umap.headline()["method"] == "umap"
    assert line("geometry", umap) == "UMAP at 3 layers: no share of variance explained (PCA only)"


def test_icl_accuracy_of_tasks_with_prompts_at_the_most_shots():
    scores = torch.tensor([1.0, 0, 1, 1, 0, 1, 1, 1])
    tasks, shots = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 0, 2, 2, 0, 0, 4, 4])
    result = icl_performance(scores, tasks, shots, ("a", "b"), config=ICLPerformance(n_bootstrap=10))
    assert torch.isnan(result.values[0, -1])  # task a has no prompt of 4 shots
    numbers = result.headline()
    assert (numbers["icl_accuracy"], numbers["missing_tasks"], numbers["zero_shot_accuracy"]) == (1.0, ["a"], 0.5)
    text = line("performance", result)
    assert text == "1.000 accuracy at 4 shots (0 shots: 0.500), Null task left out; no prompts of a at 4 shots"
    regular = icl_performance(scores, tasks, torch.tensor([0, 0, 4, 4, 0, 0, 4, 4]), ("a", "b"))
    assert "missing_tasks" not in regular.headline() and regular.headline()["icl_accuracy"] == 1.0


def test_emergence_of_one_task_is_worded_in_the_singular():
    accuracy = torch.tensor([[0.3, 0.1], [0.9, 0.1], [0.9, 0.1]], dtype=torch.float64)  # task a, then Null
    td = torch.tensor([[0.2, 0.2], [0.9, 0.2], [0.9, 0.2]], dtype=torch.float64)
    performance_jump, td_jump, coupled = detect_coupling((0, 10, 20), accuracy, td)
    result = EmergenceResult(
        (0, 10, 20), accuracy, -accuracy, td.mean(-1, keepdim=True), td[:, None], (0,), ("a", NULL_TASK), 0,
        "accuracy", performance_jump, td_jump, coupled, 0.2, 1,
    )  # fmt: skip
    assert result.headline()["n_tasks"] == 1
    assert line("emergence", result).startswith("accuracy and TD jump together in 1 of 1 task over 3 checkpoints;")


def test_a_fit_of_given_points_names_no_layer():
    given = fit_td_accuracy(torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.1, 0.6, 0.8]), shots=[1, 1, 1])
    assert given.layer is None
    text = line("td_accuracy", given)
    assert "None" not in text
    assert text.startswith(f"R² {given.r2:.3f}, slope {given.slope:.3f} ") and "points at shots 1; accuracy" in text
    read = fit_td_accuracy(torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.1, 0.6, 0.8]), shots=[1, 1, 1], layer=2)
    assert "points at shots 1, TD at L2; accuracy ranges 0.100 to 0.800" in line("td_accuracy", read)
