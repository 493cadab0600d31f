"""chance_jaccard: the exact overlap of two random top-k sets, against enumeration and a Monte Carlo draw."""

from __future__ import annotations

from itertools import combinations

import pytest
import torch

from tv_lens.errors import AnalysisError
from tv_lens.stats import chance_jaccard


def enumerated(n: int, k: int) -> list[float]:
    """Every pair of k-subsets of n items: their Jaccard overlaps (each pair equally likely)."""
    sets = [set(c) for c in combinations(range(n), k)]
    return [len(a & b) / len(a | b) for a in sets for b in sets]


@pytest.mark.parametrize(("n", "k"), [(5, 2), (6, 3), (7, 1), (4, 4)])
def test_mean_and_quantiles_equal_the_enumeration_of_every_pair(n, k):
    overlaps = sorted(enumerated(n, k))
    for q in (0.5, 0.9, 0.95):
        mean, quantile = chance_jaccard(n, k, q)
        assert mean == pytest.approx(sum(overlaps) / len(overlaps), abs=1e-12)
        smallest = next(v for v in overlaps if sum(o <= v for o in overlaps) >= q * len(overlaps) - 1e-9)
        assert quantile == pytest.approx(smallest, abs=1e-12)


def test_a_large_case_agrees_with_random_draws():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(20_000, 144, generator=generator).argsort(-1)[:, :12]
    b = torch.rand(20_000, 144, generator=generator).argsort(-1)[:, :12]
    common = (a[:, :, None] == b[:, None, :]).sum((1, 2)).double()
    drawn = common / (24 - common)
    mean, q95 = chance_jaccard(144, 12)
    assert mean == pytest.approx(float(drawn.mean()), abs=2e-3)
    # a discrete quantile: at least 95% of the draws at or below it, fewer than 95% strictly below
    assert float((drawn <= q95).double().mean()) > 0.94 and float((drawn < q95).double().mean()) < 0.96


@pytest.mark.parametrize(
    ("n", "k", "q", "message"),
    [(4, 5, 0.95, "1 <= k <= n"), (4, 0, 0.95, "1 <= k <= n"), (4.0, 2, 0.95, "ints"), (4, 2, 1.0, "probability")],
)
def test_bad_arguments_name_the_problem(n, k, q, message):
    with pytest.raises(AnalysisError, match=message):
        chance_jaccard(n, k, q)
