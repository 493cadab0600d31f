"""Numerics on plain tensors that the analyses and the results share.

- :mod:`~tv_lens.stats.groups`: means of per-prompt values within each task (group).
- :mod:`~tv_lens.stats.bootstrap`: stratified percentile bootstrap intervals of means.
- :mod:`~tv_lens.stats.classifiers`: the k-NN and linear-probe classifiers behind task decodability.
"""

from tv_lens.stats.groups import group_means

__all__ = ["group_means"]
