"""Geometry: PCA against numpy's SVD, the UMAP wiring, the layer slider, frames and errors."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
from analyses_helpers import POOL, clusters, collect_batch, sample

from tv_lens.analyses import Geometry, project
from tv_lens.errors import AnalysisError, LayerOutOfRangeError


def numpy_pca(points: np.ndarray):
    centred = points - points.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, (s[:2] ** 2) / (s**2).sum()


def test_pca_equals_numpy_svd_per_layer_up_to_sign(model):
    batch = sample(n_per_task=6, n_shots=(1, 4), seed=0)
    reps = collect_batch(model, batch)
    result = project(reps, task_names=batch.task_names)
    assert result.coords.shape == (4, len(batch), 2) and result.layers == (-1, 0, 1, 2)
    for i in range(4):
        expected, ratio = numpy_pca(reps.activations[i].numpy())
        got = result.coords[i].numpy()
        signs = np.sign((got * expected).sum(0))
        np.testing.assert_allclose(got, expected * signs, atol=1e-9)
        np.testing.assert_allclose(result.explained_variance[i].numpy(), ratio, atol=1e-9)


def test_identical_points_project_without_warnings():
    result = project(torch.ones(12, 5, dtype=torch.float64), torch.arange(3).repeat(4))
    assert torch.equal(result.coords, torch.zeros(1, 12, 2, dtype=torch.float64))


def test_umap_gets_han_et_al_parameters(monkeypatch):
    calls = []

    class FakeUMAP:
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def fit_transform(self, points):
            return points[:, :2] * 2

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    points, labels = clusters(n_tasks=3, n_per_task=5)
    result = Geometry(method="umap").compute(torch.stack([points, points + 1]), labels, seed=4)
    assert calls == [{"n_components": 2, "n_neighbors": 15, "min_dist": 0.1, "random_state": 4}] * 2
    assert torch.equal(result.coords[1], (points + 1)[:, :2] * 2)
    assert result.method == "umap" and torch.isnan(result.explained_variance).all()
    assert result.settings == {"n_neighbors": 15, "min_dist": 0.1, "seed": 4}


def test_umap_without_the_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap raises ImportError
    points, labels = clusters(n_tasks=3, n_per_task=5)
    with pytest.raises(AnalysisError, match="pip install umap-learn"):
        project(points, labels, config=Geometry(method="umap"))


def test_figure_has_one_slider_step_per_layer_showing_that_layer(model):
    result = Geometry().run(model, POOL, n_per_task=5, n_shots=3, seed=1)
    figure = result.figure()
    n_tasks, n_layers = len(POOL), len(result.layers)
    assert len(figure.data) == n_tasks * n_layers
    steps = figure.layout.sliders[0].steps
    assert [s.label for s in steps] == ["embed", "L0 resid_post", "L1 resid_post", "L2 resid_post"]
    for i, step in enumerate(steps):
        visible = step.args[0]["visible"]
        shown = [j for j, v in enumerate(visible) if v]
        assert shown == list(range(i * n_tasks, (i + 1) * n_tasks))
    first_task_at_layer_1 = figure.data[2 * n_tasks]
    rows = (result.labels == 0).nonzero().flatten()
    assert list(first_task_at_layer_1.x) == result.coords[2, rows, 0].tolist()
    assert [t.visible for t in figure.data].count(True) == n_tasks  # the last layer shows first
    with pytest.raises(LayerOutOfRangeError):
        result.traces(7)


def test_frame_has_one_row_per_layer_and_prompt():
    points, labels = clusters(n_tasks=2, n_per_task=4)
    result = project(torch.stack([points, -points]), labels, layers=(-1, 3), task_names=("a", "b"))
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "layer_label", "prompt", "task", "x", "y"]
    assert len(frame) == 16 and frame.layer.tolist() == [-1] * 8 + [3] * 8
    assert frame.task.tolist()[:8] == ["a"] * 4 + ["b"] * 4
    assert frame.x.tolist()[8:] == result.coords[1, :, 0].tolist()


def test_bad_settings_raise_clear_errors():
    with pytest.raises(AnalysisError, match="Unknown projection"):
        Geometry(method="tsne")
    with pytest.raises(AnalysisError, match="n_neighbors"):
        Geometry(method="umap", n_neighbors=1)
    # a string was a TypeError; above 1 (UMAP's spread) was umap-learn's ValueError at the first layer's fit
    for min_dist in ("0.1", 1.5, math.inf, -0.1):
        with pytest.raises(AnalysisError, match=rf"min_dist must be a number in \[0, 1\] .*, got {min_dist!r}"):
            Geometry(method="umap", min_dist=min_dist)
    assert Geometry(method="umap", min_dist=1).min_dist == 1
    with pytest.raises(AnalysisError, match="at least 3 prompts"):
        project(torch.ones(2, 4), [0, 1])
