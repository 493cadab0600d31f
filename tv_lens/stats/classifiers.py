"""Out-of-sample task predictions from representations: leave-one-out k-NN and a cross-validated linear probe.

Both return one predicted label per point, never a prediction made by a model that saw that point's
label, so the accuracy of the predictions is an honest decodability estimate.

**Leave-one-out k-NN** (Han et al.'s TD): each point's ``k`` nearest *other* points vote, one vote each;
a vote tie goes to the lowest label, as in scikit-learn's ``KNeighborsClassifier``. Distances are computed
in float64, pair by pair (no ``|x|² - 2x·y + |y|²`` shortcut), so identical points are exactly at
distance 0. When several points are exactly as far as the k-th nearest, the ones taken are those first
in a canonical order of the points (lexicographic in their coordinates, then by label), so predictions
do not depend on the order of the prompts. Without exact ties (the generic case) the neighbours, and so
the predictions, are those of scikit-learn's ``KNeighborsClassifier`` evaluated leave-one-out; exact ties
arise where representations are identical, e.g. at the embedding output when every prompt ends with the
same separator token at the same position (there TD comes out at the frequency of one task: chance).

**Linear probe**: standardised features and multinomial logistic regression (``C`` the inverse L2
strength), predictions from stratified, shuffled ``n_folds``-fold cross-validation.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int

from tv_lens.checks import is_int, is_number, is_seed
from tv_lens.errors import AnalysisError

__all__ = [
    "KNN_METRICS",
    "check_knn",
    "knn_loo_predictions",
    "linear_probe",
    "pairwise_distances",
    "probe_cv_predictions",
    "sklearn_seed",
]

KNN_METRICS = ("euclidean", "cosine", "manhattan", "chebyshev")
"""k-NN distances: Euclidean, cosine (``1 - cos``), Manhattan (L1) and Chebyshev (L∞)."""


def knn_loo_predictions(
    points: Float[np.ndarray, "n d"],
    labels: Int[np.ndarray, " n"],
    k: int = 10,
    metric: str = "euclidean",
    groups: Int[np.ndarray, " n"] | None = None,
) -> Int[np.ndarray, " n"]:
    """Leave-one-out k-NN prediction of every point's label.

    Args:
        points: One row per point.
        labels: Integer label of each point (``>= 0``).
        k: Neighbours per vote.
        metric: One of :data:`KNN_METRICS`.
        groups: A group id per point; a point's neighbours are then taken outside its group (leave one group
            out), e.g. to keep a prompt's identical copies out of its vote. ``None``: each point is its own group.

    Returns:
        The label most common among each point's ``k`` nearest points outside its group (lowest label on ties).
    """
    check_knn(k, metric, len(points))
    x = torch.as_tensor(np.asarray(points, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    canonical = torch.from_numpy(np.lexsort((y.numpy(), *x.numpy().T[::-1])))  # first coordinate is primary
    distances = pairwise_distances(x[canonical], metric)
    distances.fill_diagonal_(float("inf"))  # leave one out
    if groups is not None:
        g = _checked_groups(groups, len(x), k)[canonical]
        distances.masked_fill_(g[:, None] == g[None, :], float("inf"))  # leave its group out
    nearest = torch.sort(distances, dim=1, stable=True).indices[:, :k]  # ties keep the canonical order
    votes = y[canonical][nearest]  # [n, k]
    counts = torch.nn.functional.one_hot(votes, int(y.max()) + 1).sum(dim=1)
    predicted = torch.empty_like(y)
    predicted[canonical] = counts.argmax(dim=1)  # argmax returns the first maximum: the lowest label
    return predicted.numpy()


def pairwise_distances(x: Float[torch.Tensor, "n d"], metric: str = "euclidean") -> Float[torch.Tensor, "n n"]:
    """Distances between all rows, computed pair by pair (identical rows are exactly 0 apart)."""
    if metric == "cosine":
        norms = x.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise AnalysisError("The cosine distance is undefined for an all-zero representation; use 'euclidean'.")
        unit = x / norms
        return torch.cdist(unit, unit, compute_mode="donot_use_mm_for_euclid_dist").pow(2) / 2
    p = {"euclidean": 2.0, "manhattan": 1.0, "chebyshev": float("inf")}[metric]
    return torch.cdist(x, x, p=p, compute_mode="donot_use_mm_for_euclid_dist")


def probe_cv_predictions(
    points: Float[np.ndarray, "n d"],
    labels: Int[np.ndarray, " n"],
    n_folds: int = 5,
    c: float = 1.0,
    seed: int = 0,
    groups: Int[np.ndarray, " n"] | None = None,
) -> Int[np.ndarray, " n"]:
    """Cross-validated logistic-regression prediction of every point's label.

    Args:
        points: One row per point.
        labels: Integer label of each point.
        n_folds: Stratified folds (shuffled with ``seed``); every label needs at least ``n_folds`` points.
        c: Inverse L2 regularisation strength of the logistic regression.
        seed: Seed of the fold assignment.
        groups: A group id per point; a group's points then share one fold (scikit-learn's
            ``StratifiedGroupKFold``), so no point is predicted by a probe trained on its group.

    Returns:
        Each point's label as predicted by the probe trained on the other folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    estimator, folds = linear_probe(n_folds, c, seed)
    if groups is None:
        return cross_val_predict(estimator, np.asarray(points, np.float64), labels, cv=folds)
    g = _checked_groups(groups, len(points), 0).numpy()
    n_groups = len(np.unique(g))
    if n_groups < n_folds:
        raise AnalysisError(
            f"A {n_folds}-fold probe that keeps each group in one fold needs at least {n_folds} groups, got "
            f"{n_groups}; sample more distinct prompts or lower n_folds."
        )
    grouped = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=sklearn_seed(seed))
    return cross_val_predict(estimator, np.asarray(points, np.float64), labels, groups=g, cv=grouped)


def linear_probe(n_folds: int = 5, c: float = 1.0, seed: int = 0) -> tuple[object, object]:
    """The probe's estimator (scaler + logistic regression) and its stratified folds, for reuse and checks."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not is_int(n_folds) or n_folds < 2:
        raise AnalysisError(f"n_folds must be an int >= 2, got {n_folds!r}; 5 is a common choice.")
    if not is_number(c) or not c > 0:
        raise AnalysisError(f"The probe's C (inverse regularisation) must be a number > 0, got {c!r}; 1.0 is usual.")
    estimator = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    return estimator, StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=sklearn_seed(seed))


def sklearn_seed(seed: int) -> int:
    """A seed scikit-learn and UMAP accept (``[0, 2**32)``) for any 64-bit seed tv_lens takes.

    Seeds below ``2**32`` are used as they are; larger ones are hashed to 32 bits (``numpy.random.SeedSequence``),
    so different 64-bit seeds still give different, reproducible folds.
    """
    if not is_seed(seed):
        raise AnalysisError(f"seed must be an int in [0, 2**64), got {seed!r}; the same seed gives the same result.")
    return seed if seed < 2**32 else int(np.random.SeedSequence(seed).generate_state(1)[0])


def _checked_groups(groups: Int[np.ndarray, " n"], n_points: int, k: int) -> Int[torch.Tensor, " n"]:
    """``groups`` as a long tensor, after checking one per point and, for k-NN, ``k`` points outside each group."""
    g = torch.as_tensor(np.asarray(groups))
    if g.shape != (n_points,) or g.is_floating_point() or g.dtype == torch.bool:
        raise AnalysisError(
            f"groups must hold one integer group id per point ({n_points}), got {g.dtype} with shape "
            f"{tuple(g.shape)}; pass e.g. the prompt ids of collect (Representations.prompt_ids)."
        )
    largest = int(torch.unique(g, return_counts=True)[1].max())
    if n_points - largest < k:
        raise AnalysisError(
            f"Leave-one-group-out k-NN with k={k} needs k points outside every group, but a group holds "
            f"{largest} of the {n_points} points; sample more distinct prompts or lower k."
        )
    return g.long()


def check_knn(k: int, metric: str, n_points: int | None = None) -> None:
    """Raise :class:`AnalysisError` for a k or metric the k-NN cannot use."""
    if not is_int(k) or k < 1:
        raise AnalysisError(f"k must be an int >= 1 (neighbours per vote), got {k!r}; Han et al. use k=10.")
    if metric not in KNN_METRICS:
        raise AnalysisError(f"Unknown k-NN metric {metric!r}; use one of {list(KNN_METRICS)}.")
    if n_points is not None and n_points < k + 1:
        raise AnalysisError(
            f"Leave-one-out k-NN with k={k} needs at least k+1={k + 1} points, got {n_points}; "
            "sample more prompts or lower k."
        )
