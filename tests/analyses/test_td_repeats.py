"""TD with repeated prompts: copies vote under ``repeats="keep"`` and are left out under ``"leave_out"``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analyses_helpers import POOL
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tv_lens.analyses import TaskDecodability, TdAccuracy, task_decodability
from tv_lens.app.sections import SECTIONS_BY_NAME
from tv_lens.errors import AnalysisError, ShapeError
from tv_lens.probes import collect
from tv_lens.results.decodability import Decodability
from tv_lens.results.prediction import TdAccuracyFit
from tv_lens.stats.classifiers import knn_loo_predictions, probe_cv_predictions


def hashed_prompts(n_tasks: int = 4, n_distinct: int = 10, copies: int = 2, d: int = 64, seed: int = 0):
    """Points that carry no task: each distinct prompt a random vector, sampled ``copies`` times within its task."""
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.arange(n_tasks * n_distinct).repeat_interleave(copies)
    vectors = torch.randn(n_tasks * n_distinct, d, generator=gen, dtype=torch.float64)
    return vectors[prompts], prompts // n_distinct, prompts


def test_copies_decide_td_under_keep_and_not_under_leave_out():
    points, labels, prompt_ids = hashed_prompts()
    config = {"k": 1, "n_bootstrap": 0}
    kept = task_decodability(points, labels, prompt_ids=prompt_ids, config=TaskDecodability(**config))
    left = task_decodability(
        points, labels, prompt_ids=prompt_ids, config=TaskDecodability(**config, repeats="leave_out")
    )
    assert float(kept.td[0]) == 1.0  # every prompt's nearest other point is its copy
    assert float(left.td[0]) < 0.5  # random vectors: near chance (0.25) once copies are left out
    assert kept.n_repeated == left.n_repeated == len(labels)
    assert (kept.settings["repeats"], left.settings["repeats"]) == ("keep", "leave_out")


def test_leave_one_group_out_knn_equals_sklearn_fitted_outside_each_group():
    gen = np.random.default_rng(1)
    points = gen.normal(size=(60, 5))
    labels = np.repeat(np.arange(3), 20)
    groups = gen.integers(0, 25, size=60)  # groups of several points, some across labels
    got = knn_loo_predictions(points, labels, k=4, groups=groups)
    for i in range(len(points)):
        outside = groups != groups[i]
        reference = KNeighborsClassifier(n_neighbors=4, algorithm="brute").fit(points[outside], labels[outside])
        assert got[i] == reference.predict(points[i : i + 1])[0]
    singletons = knn_loo_predictions(points, labels, k=4, groups=np.arange(60))
    np.testing.assert_array_equal(singletons, knn_loo_predictions(points, labels, k=4))


def test_the_probe_keeps_each_group_in_one_fold():
    points, labels, prompt_ids = hashed_prompts(n_distinct=12, d=8, seed=2)
    got = probe_cv_predictions(points.numpy(), labels.numpy(), n_folds=3, seed=5, groups=prompt_ids.numpy())
    x, y, g = points.numpy(), labels.numpy(), prompt_ids.numpy()
    expected = np.empty_like(y)
    for train, test in StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=5).split(x, y, g):
        assert not set(g[train]) & set(g[test])
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], y[train])
        expected[test] = probe.predict(x[test])
    np.testing.assert_array_equal(got, expected)
    # one-hot prompts: a probe that saw a copy recalls it, one that did not can only guess
    one_hot = torch.nn.functional.one_hot(prompt_ids).double()
    kept = task_decodability(one_hot, labels, config=TaskDecodability(method="probe", n_folds=3, n_bootstrap=0))
    left = task_decodability(
        one_hot,
        labels,
        prompt_ids=prompt_ids,
        config=TaskDecodability(method="probe", n_folds=3, n_bootstrap=0, repeats="leave_out"),
    )
    # kept: a prompt is recalled unless both copies fell in its test fold (about one in three)
    assert float(kept.td[0]) > 0.6 and float(left.td[0]) < 0.4


def test_run_groups_the_prompts_that_are_identical_token_for_token(model):
    """One shot over few inputs repeats prompts; the run's groups are those a dict of token rows gives."""
    batch = POOL.sample(40, 1, seed=0)
    rows = [tuple(row[: int(pos) + 1].tolist()) for row, pos in zip(batch.inputs, batch.answer_pos, strict=True)]
    ids = torch.tensor([sorted(set(rows)).index(row) for row in rows])
    tasks = batch.task_ids.tolist()
    repeated = {
        i for i in range(len(rows)) for j in range(len(rows)) if i != j and (rows[i], tasks[i]) == (rows[j], tasks[j])
    }
    assert repeated  # the sample has repeats to leave out
    config = TaskDecodability(k=3, n_bootstrap=0, repeats="leave_out", progress=False)
    run = config.run_batch(model, batch)
    assert run.n_repeated == len(repeated)
    assert run.headline()["repeated_prompts"] == len(repeated)
    collected = collect(model, batch.inputs, batch.answer_pos, progress=False)
    direct = task_decodability(
        collected.activations,
        batch.task_ids,
        layers=collected.layers,
        prompt_ids=ids,
        task_names=batch.task_names,
        config=config,
    )
    torch.testing.assert_close(run.predictions, direct.predictions, rtol=0, atol=0)
    kept = TaskDecodability(k=3, n_bootstrap=0, progress=False).run_batch(model, batch)
    assert not torch.equal(kept.predictions, run.predictions)  # the copies changed some votes


def test_results_save_and_load_their_prompt_ids(tmp_path, model):
    result = TaskDecodability(k=3, n_bootstrap=0, progress=False).run(model, POOL, 12, 1, seed=0)
    path = tmp_path / "td.safetensors"
    result.save(path)
    loaded = Decodability.load(path)
    assert loaded == result and loaded.n_repeated == result.n_repeated


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda p, y, g: TaskDecodability(repeats="drop"), AnalysisError, "Unknown repeats='drop'"),
        (
            lambda p, y, g: task_decodability(p, y, config=TaskDecodability(k=1, repeats="leave_out")),
            AnalysisError,
            "needs to know which prompts are identical",
        ),
        (lambda p, y, g: task_decodability(p, y, prompt_ids=g[:5]), ShapeError, "prompt_ids has 5 entries"),
        (
            lambda p, y, g: task_decodability(
                p,
                y,
                prompt_ids=torch.zeros(len(y), dtype=torch.long) + (torch.arange(len(y)) < 75),
                config=TaskDecodability(k=10, repeats="leave_out"),
            ),
            AnalysisError,
            "k points outside every group",
        ),
    ],
)
def test_bad_repeats_input_is_refused(call, error, words):
    points, labels, prompt_ids = hashed_prompts()
    with pytest.raises(error, match=words):
        call(points, labels, prompt_ids)


def test_the_report_line_says_how_many_prompts_repeat_and_whether_they_voted(model):
    line = SECTIONS_BY_NAME["decodability"].line
    for repeats, says in (("keep", "voting for each other"), ("leave_out", "left out of each other's votes")):
        result = TaskDecodability(k=3, n_bootstrap=0, repeats=repeats, progress=False).run(model, POOL, 40, 1)
        assert result.n_repeated
        assert f"; {result.n_repeated} prompts with a copy of their task in the sample, {says}" in line(
            result.headline()
        )
    distinct = TaskDecodability(k=3, n_bootstrap=0, progress=False).run(model, POOL, 12, 4)
    assert distinct.n_repeated == 0 and "copy" not in line(distinct.headline())


def test_td_over_shots_counts_the_repeats_of_each_shot_count(model, tmp_path):
    config = TaskDecodability(k=3, n_bootstrap=0, progress=False)
    fit = TdAccuracy(shots=(1, 4), decodability=config).run(model, POOL, n_per_task=40, seed=3)
    alone = [config.run(model, POOL, 40, shots, seed=3).n_repeated for shots in (1, 4)]
    assert fit.repeated is not None and fit.repeated.tolist() == alone and alone[0] > 0
    assert fit.headline()["repeated_prompts"] == {"1": alone[0], "4": alone[1]}
    line = SECTIONS_BY_NAME["td_accuracy"].line(fit.headline())
    assert f"prompts with a copy of their task in TD's sample (1 shot: {alone[0]}" in line
    assert "voting for each other" in line
    fit.save(tmp_path / "fit.safetensors")
    loaded = TdAccuracyFit.load(tmp_path / "fit.safetensors")
    assert loaded == fit and loaded.repeated is not None and loaded.repeated.tolist() == alone
