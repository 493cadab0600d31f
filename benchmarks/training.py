"""Benchmark 5: training — seconds per step of a recipe against a bare PyTorch loop, and time to 95% accuracy.

tv_lens ``train`` (through ``recipes[name].run``) against the usual hand-written loop: the same model
initialisation, the same batches, AdamW with the same parameter groups, learning-rate schedule and gradient
clipping, the loss taken at every answer position, and nothing else (no evaluation, history or checkpoint
bookkeeping). The first steps' losses of the two are checked equal before their step times are compared.
The tv_lens run evaluates held-out prompts every ``EVAL_EVERY`` steps; the time to the first evaluation at
>= 95% mean held-out ICL accuracy over the real (non-Null) tasks is reported.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.common import Row, Scale
from tv_lens.tasks import NULL_TASK
from tv_lens.training import recipes, train
from tv_lens.training.data import training_batch
from tv_lens.training.objectives import answer_targets
from tv_lens.training.schedule import get_lr

EVAL_EVERY = 25
PLAIN_STEPS = 40
TARGET_ACCURACY = 0.95


def _plain_loop(recipe, device: str, n_steps: int) -> tuple[list[float], list[float]]:
    """The usual PyTorch training loop for ``n_steps``: (loss per step, seconds per step)."""
    config = recipe.train
    pool = recipe.build_pool()
    model = recipe.build_model(device=device).train()
    named = list(model.named_parameters())
    leaves = [name.rsplit(".", 1)[-1] for name, _ in named]
    decays = [
        p.ndim >= 2 and not (leaf == "bias" or leaf.startswith("b_"))
        for leaf, (_, p) in zip(leaves, named, strict=True)
    ]
    groups = [
        {
            "params": [p for (_, p), d in zip(named, decays, strict=True) if d],
            "weight_decay": config.optim.weight_decay,
        },
        {"params": [p for (_, p), d in zip(named, decays, strict=True) if not d], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.schedule.lr, betas=config.optim.betas, eps=config.optim.eps)
    losses, seconds = [], []
    for step in range(n_steps):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, config.schedule)
        batch = training_batch(pool, config.data, step)
        logits = model(batch.inputs.to(device))
        rows, columns, targets = answer_targets(batch)
        loss = F.cross_entropy(logits[rows.to(device), columns.to(device)].float(), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return losses, seconds


def _time_to_accuracy(result) -> tuple[int | None, float, float]:
    """First evaluated step at >= TARGET_ACCURACY mean real-task accuracy: (step or None, seconds, accuracy)."""
    evals = result.evals[result.evals.task != NULL_TASK]
    by_step = evals.groupby("step").accuracy.mean()
    reached = by_step[by_step >= TARGET_ACCURACY]
    step = int(reached.index[0]) if len(reached) else None
    elapsed = result.history.set_index("step").elapsed_s
    seconds = float(elapsed[step]) if step is not None else float(result.elapsed_s)
    accuracy = float(by_step[step]) if step is not None else float(by_step.iloc[-1])
    return step, seconds, accuracy


def _step_times(recipe, device: str, n_steps: int, rounds: int) -> tuple[float, float, list[float], list[float]]:
    """Median step time of tv_lens ``train`` and of the bare loop over their first ``n_steps``, best of
    ``rounds`` interleaved rounds; and the losses of the first round of each."""
    ours, plain = [], []
    for round_ in range(rounds):
        model = recipe.build_model(device=device)
        result = train(model, recipe.build_pool(), recipe.train, stop_after=n_steps, progress=False)
        losses, seconds = _plain_loop(recipe, device, n_steps)
        ours.append(statistics.median(result.history.elapsed_s.diff().dropna()))
        plain.append(statistics.median(seconds[1:]))
        if round_ == 0:
            ours_losses, plain_losses = list(result.history.loss), losses
    return min(ours), min(plain), ours_losses, plain_losses


def training_rows(scale: Scale, device: str) -> list[Row]:
    recipe = recipes[scale.recipe]
    n_steps = min(PLAIN_STEPS, recipe.train.schedule.max_steps, recipe.train.eval_every - 1)
    with torch.enable_grad():
        ours_step, plain_step, ours_losses, plain_losses = _step_times(recipe, device, n_steps, min(scale.rounds, 2))
        result = recipe.run(device=device, progress=False, eval_every=EVAL_EVERY)
    ours = torch.tensor(ours_losses, dtype=torch.float64)
    torch.testing.assert_close(ours, torch.tensor(plain_losses, dtype=torch.float64), atol=1e-5, rtol=0)
    step, seconds, accuracy = _time_to_accuracy(result)
    model = recipe.model
    label = f"training step, recipe {recipe.name!r} ({model.n_layers} blocks, d_model {model.d_model})"
    return [
        Row(
            label,
            ours_step,
            plain_step,
            "bare PyTorch loop (same model, data, AdamW)",
            "<= 1.15",
            ours_step <= 1.15 * plain_step,
            f"{1 / ours_step:.1f} steps/s (bare loop {1 / plain_step:.1f}): median step time over the first "
            f"{n_steps} steps, whose losses are checked equal (1e-5) first; best of {min(scale.rounds, 2)} "
            "interleaved runs",
        ),
        Row(
            f"time to >= 95% held-out ICL accuracy, {recipe.name!r}",
            seconds,
            None,
            "absolute wall time",
            "reached",
            step is not None,
            (
                f"first reached at step {step} of {result.steps} (mean accuracy {accuracy:.3f} over the real tasks, "
                f"evaluated every {EVAL_EVERY} steps, evaluations included); the whole run took "
                f"{result.elapsed_s:.1f} s"
                if step is not None
                else f"not reached in {result.steps} steps (last mean accuracy {accuracy:.3f})"
            ),
        ),
    ]
