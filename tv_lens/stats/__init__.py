"""Numerics on plain tensors that the analyses and the results share.

- :mod:`~tv_lens.stats.groups`: means of per-prompt values within each task (group).
- :mod:`~tv_lens.stats.bootstrap`: stratified percentile bootstrap intervals of means, and the means per task and
  over the chosen prompts with their intervals that most results report (``task_means``).
- :mod:`~tv_lens.stats.classifiers`: the k-NN and linear-probe classifiers behind task decodability.
- :mod:`~tv_lens.stats.selection`: the best layer chosen on half the prompts and scored on the other half
  (:func:`held_out_best`), free of the optimism of scoring a choice on the prompts that made it.
- :mod:`~tv_lens.stats.overlap`: the Jaccard overlap of two random top-k sets (:func:`chance_jaccard`), the baseline
  of tasks' shared important heads.
- :mod:`~tv_lens.stats.seeds`: a claim over training seeds, the t-interval of its per-seed values
  (:func:`seed_interval`) and the verdict rule (:func:`seed_verdict`).
"""

from tv_lens.stats.groups import group_means
from tv_lens.stats.overlap import chance_jaccard
from tv_lens.stats.seeds import seed_interval, seed_verdict
from tv_lens.stats.selection import HeldOutBest, held_out_best

__all__ = ["HeldOutBest", "chance_jaccard", "group_means", "held_out_best", "seed_interval", "seed_verdict"]
