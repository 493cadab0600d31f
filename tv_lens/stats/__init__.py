"""Numerics on plain tensors that the analyses and the results share.

- :mod:`~tv_lens.stats.groups`: means of per-prompt values within each task (group).
"""

from tv_lens.stats.groups import group_means

__all__ = ["group_means"]
