"""Attribution patching of attention heads: a first-order estimate of every head ablation from one backward.

Ablating head ``h`` of block ``l`` moves its output ``z = attn.hook_z[..., h, :]`` to an ablated value
``z'`` (zero, or the head's mean) at every position. To first order the answer loss then changes by

    Δloss ≈ Σ_pos ⟨ ∂loss/∂z , z' − z ⟩

(Nanda 2023, "Attribution patching"; Syed et al. 2023). The gradient of every head at every layer comes
from ONE forward and ONE backward pass over the clean prompts, so the estimate for all heads costs about
as much as three forward passes, against one (batched) pass per head for the exact ablations. It is a
screen: the exact effect is nonlinear in the ablation, so :mod:`tv_lens.analyses.heads` reports the
estimate's Spearman rank agreement with the exact loss changes.

The gradient is taken with respect to a zero tensor added to each ``hook_z`` (the total derivative, with
every path through later heads kept), so it works whether or not the model's weights require gradients,
and no weight's ``.grad`` is touched. Each prompt's estimate uses the gradient of its own loss only
(rows of a batch do not interact), so one backward of the summed loss gives every prompt's estimate.

Saturation (``HeadAblation.attribution_method``). A trained model predicts its answers with near-certainty,
so the clean loss sits on the flat floor of the cross-entropy: its gradient is ``1 - p(answer)`` times the
logit gradient and nearly vanishes, while ablating an important head costs nats. The default ``"log_odds"``
linearizes the answer token's log-odds instead, ``lo = logit[answer] - logsumexp(logit[other tokens])`` (not saturated:
its gradient does not shrink as ``p(answer) -> 1``), and maps the estimate through the exact loss, which is
``softplus(-lo)``:

    Δloss ≈ softplus(-(lo + Δlo)) - softplus(-lo),   Δlo = Σ_pos ⟨ ∂lo/∂z , z' − z ⟩

per prompt and answer token (then averaged over the prompt's answer tokens, as the loss is). Its first-order
term equals the plain estimate's; it costs one backward pass per answer token. ``"loss"`` is the plain
first-order estimate of the loss. A continuous answer (a regression prompt's) has no log-odds: ``"log_odds"``
linearizes each output coordinate at the answer position and maps it through the exact squared error,
``mean((e + Δo)² − e²)`` with ``e`` the clean error; ``"loss"`` linearizes the squared error.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tv_lens.checks import check_tensor_data
from tv_lens.errors import AnalysisError, NonFiniteError, ShapeError
from tv_lens.interventions.sweep import AlignedPrompts
from tv_lens.metrics import answer_loss, continuous_answers
from tv_lens.models.adapter import ModelAdapter, adapt
from tv_lens.models.exclusive import evaluating
from tv_lens.models.memory import fitting
from tv_lens.models.running import forward
from tv_lens.positions import answer_columns, prompt_batches

if TYPE_CHECKING:
    from tv_lens.analyses.heads import HeadAblation  # which imports this module

__all__ = ["ATTRIBUTION_METHODS", "head_attribution"]

ATTRIBUTION_METHODS: tuple[str, ...] = ("log_odds", "loss")


def head_attribution(
    model: Any,
    prompts: AlignedPrompts,
    answers: Int[Tensor, "prompt n_answer"] | Float[Tensor, "prompt d_out"],
    ablation_values: Float[Tensor, "layer head d_head"],
    *,
    config: HeadAblation,
) -> Float[Tensor, "layer head prompt"]:
    """First-order estimate of each prompt's answer-loss increase when each head is ablated (model in eval mode).

    The options are the attributes of :class:`~tv_lens.analyses.HeadAblation` read here: ``attribution_method``
    (what the estimate linearizes, see the module docstring) and ``batch_size`` (prompts per forward/backward pass).

    Args:
        model: A TransformerLens model.
        prompts: Aligned prompts (:func:`tv_lens.interventions.sweep.align`).
        answers: Answer tokens of each prompt, or continuous answers ``[prompt, d_out]`` (a regression batch's).
        ablation_values: What each head's ``hook_z`` is ablated to, at every position.
        config: The options, e.g. ``HeadAblation()`` for the defaults.

    Returns:
        ``[layer, head, prompt]`` estimates (float64, on the CPU).

    Raises:
        AnalysisError: Weights created in inference mode.
    """
    adapter = adapt(model)
    if not isinstance(prompts, AlignedPrompts):
        raise ShapeError(
            f"prompts must be AlignedPrompts, got a {type(prompts).__name__}; make them with "
            "tv_lens.interventions.sweep.align(model, inputs, answer_pos, attention_mask, n_answer_tokens)."
        )
    expected = (adapter.n_layers, adapter.n_heads, adapter.d_head)
    if not isinstance(ablation_values, Tensor) or tuple(ablation_values.shape) != expected:
        got = tuple(ablation_values.shape) if isinstance(ablation_values, Tensor) else type(ablation_values).__name__
        raise ShapeError(f"ablation_values must be a tensor [layer, head, d_head]={expected}, got {got}.")
    check_tensor_data(ablation_values, "ablation_values")
    if not ablation_values.is_floating_point():
        raise ShapeError(
            f"ablation_values must be floats (what each head is ablated to), got {ablation_values.dtype}; pass e.g. "
            "zeros or each head's mean activation."
        )
    if not bool(torch.isfinite(ablation_values).all()):
        raise NonFiniteError("ablation_values hold NaN or infinite values; pass finite values (zeros, or means).")
    continuous = isinstance(answers, Tensor) and continuous_answers(answers)
    tokens_fit = isinstance(answers, Tensor) and tuple(answers.shape) == (len(prompts), prompts.n_answer_tokens)
    if not (tokens_fit or (continuous and answers.ndim == 2 and len(answers) == len(prompts))):
        got = tuple(answers.shape) if isinstance(answers, Tensor) else type(answers).__name__
        raise ShapeError(
            f"answers must be the prompts' answer tokens [prompt={len(prompts)}, n_answer="
            f"{prompts.n_answer_tokens}] or continuous answers [prompt={len(prompts)}, d_out], got {got}; pass "
            "answer_tokens(batch.answers, len(batch)), or a regression batch's answers."
        )
    if torch.is_inference_mode_enabled():
        # The estimate needs one backward pass: leave inference mode for it. Tensors made inside it (the
        # prompts, the ablation values) are read through copies, never kept for the backward pass.
        if any(parameter.is_inference() for parameter in model.parameters()):
            raise AnalysisError(
                "The attribution estimate needs gradients, but this model's weights were created inside "
                "torch.inference_mode(), so no gradient can flow through them. Build or load the model outside "
                "inference mode, or pass attribution=False."
            )
        with torch.inference_mode(False):
            copies = replace(
                prompts,
                inputs=prompts.inputs.clone(),
                answer_pos=prompts.answer_pos.clone(),
                answer_lengths=prompts.answer_lengths.clone(),
            )
            return head_attribution(model, copies, answers.clone(), ablation_values.clone(), config=config)
    n_answer = prompts.n_answer_tokens
    out = torch.empty(adapter.n_layers, adapter.n_heads, len(prompts), dtype=torch.float64)
    values = ablation_values.to(adapter.device, adapter.dtype)

    def every_batch(size: int) -> None:  # each prompt's entries are written, so a retry redoes them all
        for index, inputs in prompt_batches(prompts.inputs, prompts.ends, size, adapter.device):
            captured: dict[int, tuple[Tensor, Tensor]] = {}
            hooks = [
                (
                    adapter.hook_name("attn.hook_z", layer),
                    partial(_add_zero, adapter=adapter, store=captured, layer=layer),
                )
                for layer in range(adapter.n_layers)
            ]
            with torch.enable_grad():
                logits = forward(adapter, inputs, hooks=hooks)
                columns = answer_columns(prompts.answer_pos[index], prompts.answer_lengths[index], n_answer)
                columns = columns.to(logits.device)
                rows = torch.arange(len(index), device=logits.device)[:, None]
                targets = answers[index].to(logits.device)
                layers = sorted(captured)
                leaves = [captured[layer][1] for layer in layers]
                if config.attribution_method == "loss":  # cross-entropy, or a continuous answer's squared error
                    losses = answer_loss(logits[rows, columns], targets)
                    grads = torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
                    for layer, grad in zip(layers, grads, strict=True):
                        out[layer, :, index] = _directional(grad, captured[layer][0], values[layer])
                    continue
                if continuous:  # the outputs at the answer position, as the squared error reads them
                    outputs = logits[rows, columns][:, 0, : targets.shape[-1]]
                    out[:, :, index] = _squared_error_estimate(outputs, targets, leaves, layers, captured, values)
                    continue
                odds = _log_odds(logits[rows, columns], targets)  # [batch, n_answer]
                real = targets >= 0
                shifts = torch.zeros(adapter.n_layers, adapter.n_heads, len(index), n_answer, dtype=torch.float64)
                for k in range(n_answer):
                    grads = torch.autograd.grad(
                        odds[:, k].sum(), leaves, allow_unused=True, retain_graph=k + 1 < n_answer
                    )
                    for layer, grad in zip(layers, grads, strict=True):
                        shifts[layer, :, :, k] = _directional(grad, captured[layer][0], values[layer])
            odds, real = odds.detach().to("cpu", torch.float64), real.cpu()
            change = F.softplus(-(odds + shifts)) - F.softplus(-odds)  # [layer, head, batch, n_answer]
            out[:, :, index] = (change * real).sum(-1) / real.sum(-1)

    with evaluating(adapter.model):
        fitting(every_batch, config.batch_size, "batch_size")
    return out


def _squared_error_estimate(
    outputs: Float[Tensor, "batch d_out"],
    targets: Float[Tensor, "batch d_out"],
    leaves: list[Tensor],
    layers: list[int],
    captured: dict[int, tuple[Tensor, Tensor]],
    values: Tensor,
) -> Float[Tensor, "layer head batch"]:
    """Estimated squared-error increase of each prompt's continuous answer when each head is ablated (``"log_odds"``).

    Every output coordinate is linearized (one backward pass each) and the estimate mapped through the exact squared
    error, ``mean((e + Δo)² − e²)``.
    """
    d_out = outputs.shape[-1]
    shifts = torch.zeros(values.shape[0], values.shape[1], len(outputs), d_out, dtype=torch.float64)
    for j in range(d_out):
        grads = torch.autograd.grad(outputs[:, j].sum(), leaves, allow_unused=True, retain_graph=j + 1 < d_out)
        for layer, grad in zip(layers, grads, strict=True):
            shifts[layer, :, :, j] = _directional(grad, captured[layer][0], values[layer])
    clean = (outputs - targets.to(outputs.dtype)).detach().to("cpu", torch.float64)
    return ((clean + shifts).pow(2) - clean.pow(2)).mean(-1)


def _directional(grad: Tensor | None, clean: Tensor, values: Tensor) -> Float[Tensor, "head batch"]:
    """``Σ_pos ⟨grad, values − clean⟩`` per head and prompt; ``grad``, ``clean``: ``[batch, pos, head, d_head]``."""
    if grad is None:
        return torch.zeros(clean.shape[2], clean.shape[0], dtype=torch.float64)
    delta = values.to(clean.device)[None, None] - clean
    return (grad * delta).sum((1, 3)).T.detach().to("cpu", torch.float64)


def _log_odds(
    logits: Float[Tensor, "batch n_answer d_vocab"], answers: Int[Tensor, "batch n_answer"]
) -> Float[Tensor, "batch n_answer"]:
    """``logit[answer] - logsumexp(logit[every other token])`` (padded answers ``-1`` read token 0)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    target = answers.clamp(min=0)[..., None]
    answer = logits.gather(-1, target)[..., 0]
    others = logits.scatter(-1, target, -torch.inf).logsumexp(-1)
    return answer - others


def _add_zero(
    activation: Tensor, hook: Any, *, adapter: ModelAdapter, store: dict[int, tuple[Tensor, Tensor]], layer: int
) -> Tensor:
    """Hook body: add a zero tensor that requires grad (its gradient is ∂loss/∂hook_z); keep both."""
    adapter.check_head_outputs(activation, hook.name)
    zero = torch.zeros_like(activation, requires_grad=True)
    store[layer] = (activation.detach(), zero)
    return activation + zero
