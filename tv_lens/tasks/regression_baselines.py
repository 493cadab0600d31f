"""Reference predictors of regression prompts: least squares and ridge fitted on each prompt's demonstrations.

What an ideal reader of a linear prompt ``x_1, y_1, ..., x_n, y_n, x_q`` does (Garg et al.): fit ``w`` to the
``n`` demonstrations and answer ``ŵ·x_q``. Least squares takes the minimum-norm fit, so it answers
exactly once ``n >= d`` on noiseless linear prompts and interpolates below that; ridge shrinks ``ŵ``
towards 0 (``(XᵀX + αI)⁻¹ Xᵀy``), the Bayes-optimal answer for ``w ~ N(0, I)`` and noise variance ``α``.
A trained model's query error over shots is read against these and against predicting the mean.

>>> from tv_lens.tasks import regression_pool
>>> batch = regression_pool(("linear",), d=4, null=False).sample(n_per_task=8, n_shots=6, seed=0)
>>> predictions = least_squares_predictions(batch)
>>> predictions.shape, bool(torch.allclose(predictions, batch.answers, atol=1e-4))
(torch.Size([8, 1]), True)
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from tv_lens.checks import is_number
from tv_lens.errors import ConfigError
from tv_lens.tasks.regression_batch import RegressionBatch

__all__ = ["demonstrations", "least_squares_predictions", "ridge_predictions"]


def demonstrations(
    batch: RegressionBatch,
) -> tuple[Float[Tensor, "batch max_shots d_in"], Float[Tensor, "batch max_shots d_out"], Float[Tensor, "batch d_in"]]:
    """Each prompt's demonstration inputs and outputs (zero rows beyond its ``n_shots``) and its query input."""
    rows = torch.arange(len(batch), device=batch.inputs.device)
    is_demo = (batch.demo_start >= 0)[..., None]
    x_demo = torch.where(is_demo, batch.inputs[rows[:, None], batch.demo_start.clamp(min=0)], 0.0)
    return x_demo, batch.demo_answers, batch.inputs[rows, batch.answer_pos]


def least_squares_predictions(batch: RegressionBatch) -> Float[Tensor, "batch d_out"]:
    """``ŵ·x_q`` with ``ŵ`` the minimum-norm least-squares fit to each prompt's demonstrations (0 at 0 shots).

    Computed in float64 through the pseudo-inverse, so it is defined for any number of shots.
    """
    x, y, query = (t.double() for t in demonstrations(batch))
    weights = torch.linalg.pinv(x) @ y  # [batch, d_in, d_out]; zero rows of padding change nothing
    return (query[:, None, :] @ weights)[:, 0].to(batch.answers.dtype)


def ridge_predictions(batch: RegressionBatch, alpha: float) -> Float[Tensor, "batch d_out"]:
    """``ŵ·x_q`` with ``ŵ = (XᵀX + αI)⁻¹ Xᵀy`` fitted to each prompt's demonstrations (no intercept).

    Raises:
        ConfigError: ``alpha`` is not a finite number > 0 (for ``alpha = 0`` use least squares).
    """
    if not is_number(alpha) or not 0 < alpha < math.inf:
        raise ConfigError(
            f"ridge alpha must be a finite number > 0, got {alpha!r}; for no regularisation use "
            "least_squares_predictions(batch)."
        )
    x, y, query = (t.double() for t in demonstrations(batch))
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    gram = x.transpose(1, 2) @ x + alpha * eye
    weights = torch.linalg.solve(gram, x.transpose(1, 2) @ y)
    return (query[:, None, :] @ weights)[:, 0].to(batch.answers.dtype)
