"""The overlap of two random top-k sets: the Jaccard overlap of two tasks' important heads by chance alone.

Two sets of ``k`` heads drawn at random from ``n`` share ``i`` heads with the hypergeometric probability
``C(k, i) C(n - k, k - i) / C(n, k)``; their Jaccard overlap is ``i / (2k - i)``. :func:`chance_jaccard` gives that
distribution's mean and quantile exactly: the baseline for the overlap of two tasks' top heads.

>>> mean, q95 = chance_jaccard(16, 4)
>>> round(mean, 4), round(q95, 4)
(0.158, 0.3333)
"""

from __future__ import annotations

from math import comb

from tv_lens.checks import is_int, is_number
from tv_lens.errors import AnalysisError

__all__ = ["chance_jaccard"]


def chance_jaccard(n: int, k: int, q: float = 0.95) -> tuple[float, float]:
    """Mean and ``q``-quantile of the Jaccard overlap of two independent random ``k``-subsets of ``n`` items.

    The quantile is the smallest overlap whose probability of not being exceeded is at least ``q``.

    Raises:
        AnalysisError: ``n`` or ``k`` not ints with ``1 <= k <= n``, or ``q`` outside ``(0, 1)``.
    """
    if not (is_int(n) and is_int(k) and 1 <= k <= n):
        raise AnalysisError(f"n and k must be ints with 1 <= k <= n (k of n heads), got n={n!r}, k={k!r}.")
    if not is_number(q) or not 0 < q < 1:
        raise AnalysisError(f"q is a probability in (0, 1), e.g. 0.95; got {q!r}.")
    total = comb(n, k)
    shares = [(i / (2 * k - i), comb(k, i) * comb(n - k, k - i) / total) for i in range(k + 1)]
    mean = sum(overlap * p for overlap, p in shares)
    below = 0.0
    for overlap, p in shares:  # increasing overlap
        below += p
        if below >= q - 1e-12:
            return mean, overlap
    return mean, 1.0
