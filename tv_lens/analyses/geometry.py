"""Geometry of task representations: a 2-D map of every layer's pre-answer residual, coloured by task.

Han et al. (§3.3, Figs. 2, 9–11) plot the representations of 100 prompts per task at each layer and watch
task clusters appear (with depth, and over training) where task decodability rises. Each layer is
projected on its own: PCA (always available; the two leading principal components of the centred rows,
signs fixed by scikit-learn's ``svd_flip``, computed in float64) or UMAP with Han et al.'s
``n_neighbors=15, min_dist=0.1`` (needs the optional ``umap-learn`` package). A projection is a picture, not a
measurement: use :mod:`tv_lens.analyses.decodability` for numbers.

>>> import torch
>>> reps = torch.randn(3, 30, 8)
>>> project(reps, torch.arange(3).repeat_interleave(10)).coords.shape
torch.Size([3, 30, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from tqdm.auto import tqdm

from tv_lens.analyses.options import PassOptions, analysis_config
from tv_lens.analyses.representations import LabelsInput, RepresentationAnalysis, RepsInput, labelled_stack
from tv_lens.checks import is_finite_number, is_int
from tv_lens.errors import AnalysisError
from tv_lens.results.geometry import Projection
from tv_lens.stats.classifiers import sklearn_seed

__all__ = ["Geometry", "Projection", "project"]

ProjectionMethod = Literal["pca", "umap"]


def project(
    reps: RepsInput,
    labels: LabelsInput | None = None,
    *,
    task_names: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    site: str | None = None,
    config: Geometry | None = None,
    seed: int = 0,
) -> Projection:
    """Project every layer of ``reps`` to 2-D, fitting each layer separately.

    The options are the attributes of :class:`Geometry` (``layers``, ``site`` and ``batch_size``, which read
    representations from a model, are not read: the representations are given).

    Args:
        reps: ``[layer, prompt, d]`` / ``[prompt, d]`` tensor or ``Representations`` (labels from its ``task_ids``).
        labels: Task id of each prompt (colours).
        task_names: Name of every task id.
        layers: Layers to use of ``Representations``, or the block index of each entry of a tensor.
        site: Site label for a plain tensor.
        config: The options (``None``: ``Geometry()``, PCA).
        seed: UMAP random state.
    """
    config = analysis_config(config, Geometry)
    method = config.method
    settings: dict[str, Any] = {"seed": seed}
    if method == "umap":
        settings = {"n_neighbors": config.n_neighbors, "min_dist": float(config.min_dist), "seed": seed}
    stack = labelled_stack(reps, labels, layers=layers, site=site, task_names=task_names)
    n_layers, n_prompts, d = stack.activations.shape
    if n_prompts < 3 or d < 2:
        raise AnalysisError(f"A 2-D projection needs at least 3 prompts and 2 features, got {n_prompts} and {d}.")
    coords = torch.empty(n_layers, n_prompts, 2, dtype=torch.float64)
    explained = torch.full((n_layers, 2), float("nan"), dtype=torch.float64)
    for i in tqdm(range(n_layers), desc=f"{method} per layer", disable=not config.progress, leave=False):
        points = stack.activations[i].numpy()
        if method == "pca":  # in float64: a float32 SVD differs between LAPACK builds in the 4th or 5th digit
            points = points.astype(np.float64)
            from sklearn.decomposition import PCA

            with np.errstate(invalid="ignore", divide="ignore"):  # identical points: variance ratio 0/0 = NaN
                pca = PCA(n_components=2, svd_solver="full").fit(points)
            coords[i] = torch.from_numpy(pca.transform(points))
            explained[i] = torch.from_numpy(np.asarray(pca.explained_variance_ratio_, dtype=np.float64))
        else:
            reducer = _umap()(
                n_components=2,
                n_neighbors=config.n_neighbors,
                min_dist=config.min_dist,
                random_state=sklearn_seed(seed),
            )
            coords[i] = torch.from_numpy(np.asarray(reducer.fit_transform(points), dtype=np.float64))
    return Projection(coords, stack.labels, explained, stack.layers, stack.task_names, stack.site, method, settings)


@dataclass(frozen=True)
class Geometry(RepresentationAnalysis[Projection], PassOptions):
    """Configuration of a per-layer projection analysis.

    Attributes:
        method: ``"pca"`` or ``"umap"`` (needs the optional ``umap-learn`` package).
        n_neighbors: UMAP neighbourhood size.
        min_dist: UMAP minimum distance, in ``[0, 1]`` (at most UMAP's ``spread``, 1.0).
        layers: Block indices to read (``None``: every block, and the embedding output for ``site="resid_post"``).
        site: Residual site to read.

    The keyword-only :class:`~tv_lens.analyses.options.PassOptions` (``batch_size``, ``progress``) apply too.
    """

    method: ProjectionMethod = "pca"
    n_neighbors: int = 15
    min_dist: float = 0.1
    layers: tuple[int, ...] | None = None
    site: str = "resid_post"
    _function = staticmethod(project)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in get_args(ProjectionMethod):
            raise AnalysisError(f"Unknown projection {self.method!r}; use 'pca' or 'umap'.")
        if self.method == "pca":
            return
        n_neighbors = self.n_neighbors
        if not is_int(n_neighbors) or n_neighbors < 2:
            raise AnalysisError(f"UMAP n_neighbors must be an int >= 2, got {n_neighbors!r} (Han et al.: 15).")
        if not is_finite_number(self.min_dist) or not 0 <= self.min_dist <= 1:
            raise AnalysisError(
                f"UMAP min_dist must be a number in [0, 1] (at most UMAP's spread, 1.0), got {self.min_dist!r} "
                "(Han et al.: 0.1)."
            )


def _umap() -> Any:
    try:
        import umap
    except ImportError as error:
        raise AnalysisError(
            "method='umap' needs the optional umap-learn package: pip install umap-learn (or use method='pca')."
        ) from error
    return umap.UMAP
