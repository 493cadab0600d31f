"""The training loop: a small model learns a task pool in context, from scratch, on CPU.

Readable on purpose (after nanoGPT): each step samples a fresh batch from a seed derived from the
step, computes the loss at every answer of every prompt (plus the TVP term if asked), clips the
gradient, sets the learning rate from the pure schedule and takes an AdamW step (decay on 2-D+ weights
only). Every ``eval_every`` steps it scores held-out prompts per task; every ``checkpoint_every`` steps
it writes a checkpoint from which :func:`train` can resume bit-exactly (``resume_from=``).

>>> from tv_lens.models import ModelConfig, build_model
>>> from tv_lens.tasks import offset_pool
>>> pool = offset_pool(offsets=(1, 2), n_values=8)
>>> model = build_model(ModelConfig(d_vocab=pool.vocab_size, n_layers=1, d_model=32, n_heads=2, n_ctx=32))
>>> config = TrainConfig(schedule=ScheduleConfig(max_steps=3, warmup_steps=1), eval_every=3)
>>> result = train(model, pool, config, progress=False)
>>> list(result.history["step"]), result.evals["task"].tolist()
([1, 2, 3], ['offset(1)', 'offset(2)', 'null'])
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from tv_lens.checks import is_int
from tv_lens.errors import CheckpointError, ConfigError, NonFiniteError
from tv_lens.models import ModelAdapter, ModelConfig, adapt
from tv_lens.models.exclusive import in_mode
from tv_lens.training.accumulation import loss_counter, step_gradients
from tv_lens.training.checkpoints import check_checkpoint_directory, latest_checkpoint, list_checkpoints
from tv_lens.training.config import FinetuneConfig, LoRAConfig, OptimConfig, ScheduleConfig, TrainConfig
from tv_lens.training.data import held_out_batch, training_batch
from tv_lens.training.evaluation import evaluate
from tv_lens.training.finetune import FrozenCheck, prepare_model, restore_point
from tv_lens.training.objectives import Objective, check_objective, objective_for
from tv_lens.training.result import TrainResult
from tv_lens.training.run_state import RunState, checkpoint_directory, resume_run, save_run
from tv_lens.training.schedule import get_lr

__all__ = ["finetune", "make_optimizer", "train"]


def train(
    model: Any,
    pool: Any,
    config: TrainConfig | None = None,
    *,
    model_config: ModelConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    objective: Objective | None = None,
) -> TrainResult:
    """Train ``model`` in place on prompts of ``pool``.

    Finetuning (``config.finetune``) freezes what it leaves out for the run only: when the call returns or raises,
    every parameter has the ``requires_grad`` it had before (new LoRA adapters are trainable).

    Args:
        model: A TransformerLens model (e.g. ``build_model(ModelConfig(d_vocab=pool.vocab_size))``).
        pool: The task pool prompts are sampled from.
        config: Data, optimiser, schedule, evaluation and checkpoint settings (default ``TrainConfig()``).
        model_config: The config ``model`` was built from; stored in checkpoints so that
            ``load_checkpoint(path).load_model()`` can rebuild the model, and checked on resume.
        checkpoint_dir: Where checkpoints go (``step-0000100.pt`` ...). Must not hold checkpoints of
            another run unless resuming. Defaults to the directory of ``resume_from``.
        resume_from: A checkpoint file, or a directory (its latest checkpoint), to continue from. The
            model, pool and config must be those of the run that wrote it.
        stop_after: Stop once this many steps are done, as if interrupted (no extra checkpoint or
            evaluation); the schedule still runs to ``config.schedule.max_steps``. A run resumed from the
            checkpoint of step ``stop_after`` trains nothing and says so (a ``UserWarning``).
        progress: Show a tqdm progress bar.
        objective: Loss and scores (default: :func:`~tv_lens.training.objectives.objective_for` the pool).

    Raises:
        ConfigError: A setting that cannot work, e.g. ``stop_after`` before the step of the checkpoint resumed from.
        TaskError: The pool's vocabulary does not fit the model.
        LayerOutOfRangeError: A TVP layer or finetuned block outside the model.
        CheckpointError: ``resume_from`` is corrupt or from a different run, or ``checkpoint_dir`` holds
            another run's checkpoints.
        NonFiniteError: The loss became NaN or infinite.
    """
    config = TrainConfig() if config is None else config
    _check_config(config)
    if not isinstance(progress, bool):  # a string such as "no" would read as true
        raise ConfigError(f"progress must be True or False (show a progress bar), got {progress!r}.")
    if stop_after is not None and (not is_int(stop_after) or stop_after < 0):
        raise ConfigError(
            f"stop_after must be None (train to the end) or a number of steps >= 0, got {stop_after!r}; e.g. "
            "stop_after=100."
        )
    if torch.is_inference_mode_enabled():
        raise ConfigError(
            "train() was called inside torch.inference_mode(), where no gradient can be computed (and inference mode "
            "cannot be left for the model's weights). Call train() outside the inference_mode block; under "
            "torch.no_grad() it works (training enables gradients itself)."
        )
    adapter = adapt(model)
    objective = objective_for(pool) if objective is None else check_objective(objective)
    if config.data.micro_batch is not None and loss_counter(objective) is None:
        raise ConfigError(
            f"DataConfig.micro_batch needs the objective to count its loss terms, and this "
            f"{type(objective).__name__} has no loss_terms(batch) method; add one (how many terms context_loss "
            "averages over) or set micro_batch=None."
        )
    held_out = held_out_batch(pool, config.data)
    longest = config.data.n_shots if isinstance(config.data.n_shots, int) else config.data.n_shots[1]
    objective.check(adapter, pool, held_out)
    objective.check(adapter, pool, pool.sample(1, longest, seed=0))
    if config.tvp is not None:
        adapter.check_layer(config.tvp.layer)
    _check_model_config(adapter, model_config)
    checkpoint_dir = checkpoint_directory(config, checkpoint_dir, resume_from)

    # However the run ends, every parameter gets its requires_grad back (finetuning froze some); a run that fails
    # before its first step hands back the model as it was, without the LoRA adapters it attached.
    restore = restore_point(model)
    state = RunState()
    first: int | None = None  # the step this call starts from, once the run is set up
    try:
        chosen = {id(p) for p in prepare_model(model, config.finetune) if p.requires_grad}
        named = [(name, p) for name, p in model.named_parameters() if id(p) in chosen]
        if not named:
            raise ConfigError(
                "Nothing to train: every parameter of the model is frozen (requires_grad=False). Unfreeze what "
                "should train (parameter.requires_grad_(True)), or choose blocks with "
                "TrainConfig(finetune=FinetuneConfig(...))."
            )
        trainable = [p for _, p in named]
        optimizer = make_optimizer(named, config.optim, config.schedule)
        if resume_from is not None:
            state = resume_run(resume_from, config, pool, model, model_config, optimizer, checkpoint_dir, stop_after)
        elif checkpoint_dir is not None and list_checkpoints(checkpoint_dir):
            raise CheckpointError(
                f"{checkpoint_dir} already holds checkpoints ({latest_checkpoint(checkpoint_dir)} ...). Pass "
                "resume_from= that directory to continue that run, or use an empty directory for a new one."
            )
        if checkpoint_dir is not None and config.checkpoint_every:
            check_checkpoint_directory(checkpoint_dir)
        frozen = FrozenCheck(model, trainable, known=state.frozen) if config.finetune is not None else None
        # A model not built from a config (a pretrained one) is loaded again to resume: checkpoints of its
        # finetuning hold what trains, and digests of the rest.
        left_out = frozen.digests if frozen is not None and model_config is None else None
        first = state.step
        end = config.schedule.max_steps if stop_after is None else min(stop_after, config.schedule.max_steps)
        bar = tqdm(total=config.schedule.max_steps, initial=state.step, disable=not progress, desc="train")
        start = time.perf_counter() - state.elapsed_s
        micro_batch = config.data.micro_batch  # halves for good after a step runs out of memory
        # a run started under torch.no_grad() trains all the same; every module gets its own mode back after it
        with torch.enable_grad(), in_mode(model, training=True):
            try:
                for step in range(state.step, end):
                    lr = get_lr(step, config.schedule)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    batch = training_batch(pool, config.data, step)
                    losses, micro_batch = step_gradients(adapter, objective, batch, config.tvp, micro_batch, trainable)
                    grad_norm = nn.utils.clip_grad_norm_(trainable, config.optim.grad_clip or math.inf)
                    loss = float(losses.total.detach())
                    if not math.isfinite(loss):
                        raise NonFiniteError(
                            f"The training loss is {loss} at step {step}; lower the learning rate (schedule.lr) or "
                            "enable gradient clipping (optim.grad_clip)."
                        )
                    optimizer.step()
                    state.step = step + 1
                    state.elapsed_s = time.perf_counter() - start
                    state.history.append(
                        {
                            "step": state.step,
                            "lr": lr,
                            "loss": loss,
                            "loss_icl": float(losses.icl.detach()),
                            "loss_tvp": math.nan if losses.tvp is None else float(losses.tvp.detach()),
                            "grad_norm": float(grad_norm),
                            "elapsed_s": state.elapsed_s,
                        }
                    )
                    if state.step % config.eval_every == 0 or state.step == config.schedule.max_steps:
                        rows = evaluate(adapter, objective, held_out, config.data.eval_batch_size, config.tvp)
                        state.evals += [{"step": state.step, **row} for row in rows]
                        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{_mean_accuracy(rows):.3f}")
                    if (
                        checkpoint_dir is not None
                        and config.checkpoint_every
                        and state.step % config.checkpoint_every == 0
                    ):
                        save_run(checkpoint_dir, state, config, model_config, pool, model, optimizer, left_out)
                    bar.update(1)
            finally:
                bar.close()
        if frozen is not None:
            frozen.verify()
    except BaseException:
        if first is None or state.step == first:  # no step was taken: the model is as it was before the run
            restore()
        raise
    finally:
        restore(adapters=False)
    return TrainResult(
        model=model,
        config=config,
        model_config=model_config,
        history=pd.DataFrame(state.history, columns=_HISTORY_COLUMNS),
        evals=pd.DataFrame(state.evals),
        checkpoints=tuple(list_checkpoints(checkpoint_dir)) if checkpoint_dir is not None else (),
        steps=state.step,
        elapsed_s=state.elapsed_s,
    )


_HISTORY_COLUMNS = ["step", "lr", "loss", "loss_icl", "loss_tvp", "grad_norm", "elapsed_s"]


def make_optimizer(
    named_parameters: list[tuple[str, nn.Parameter]], optim: OptimConfig, schedule: ScheduleConfig
) -> torch.optim.AdamW:
    """AdamW with weight decay on the 2-D and larger weights only.

    Embeddings and weight matrices decay; norms and biases do not (HookedTransformer's per-head biases
    ``b_Q/b_K/b_V`` are 2-D but are biases all the same).
    """
    decay = [p for name, p in named_parameters if _decays(name, p)]
    no_decay = [p for name, p in named_parameters if not _decays(name, p)]
    groups = [
        {"params": group, "weight_decay": wd} for group, wd in ((decay, optim.weight_decay), (no_decay, 0.0)) if group
    ]
    return torch.optim.AdamW(groups, lr=schedule.lr, betas=optim.betas, eps=optim.eps)


def _decays(name: str, parameter: nn.Parameter) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return parameter.ndim >= 2 and not (leaf == "bias" or leaf.startswith("b_"))


def _mean_accuracy(rows: list[dict[str, Any]]) -> float:
    return sum(row["accuracy"] for row in rows) / max(1, len(rows))


def _check_model_config(adapter: ModelAdapter, model_config: ModelConfig | None) -> None:
    """The model must have the shape ``model_config`` describes (checkpoints rebuild it from that config)."""
    if model_config is None:
        return
    if not isinstance(model_config, ModelConfig):
        raise ConfigError(
            f"model_config must be the ModelConfig the model was built from (or None), got a "
            f"{type(model_config).__name__}; pass e.g. ModelConfig(**fields) for a dict of fields."
        )
    names = ("d_vocab", "n_layers", "d_model", "n_heads", "n_ctx")
    wrong = [
        f"{n}={getattr(adapter, n)} (config: {getattr(model_config, n)})"
        for n in names
        if getattr(adapter, n) != getattr(model_config, n)
    ]
    if wrong:
        raise ConfigError(
            f"The model does not match model_config: {', '.join(wrong)}. Pass the config the model was built from."
        )


def finetune(
    model: Any,
    pool: Any,
    config: TrainConfig,
    blocks: tuple[int, ...] | str,
    lora: LoRAConfig | None = None,
    **train_kwargs: Any,
) -> TrainResult:
    """Train only ``blocks`` of ``model`` on ``pool`` (fully, or LoRA if ``lora`` is given).

    Shorthand for ``train(model, pool, replace(config, finetune=FinetuneConfig(blocks, lora)), ...)``;
    ``train_kwargs`` go to :func:`tv_lens.training.train`. The model keeps its LoRA adapters, trainable (fold them
    in with :func:`tv_lens.training.merge_lora`); its other parameters get back the ``requires_grad`` they had before
    the call, whether it returns or raises.
    """
    _check_config(config)
    if config.finetune is not None:
        raise ConfigError("config.finetune is already set; pass blocks= and lora= or the config, not both.")
    return train(model, pool, replace(config, finetune=FinetuneConfig(blocks, lora)), **train_kwargs)


def _check_config(config: Any) -> None:
    if not isinstance(config, TrainConfig):
        raise ConfigError(
            f"config must be a TrainConfig, got {type(config).__name__}; build one, e.g. "
            "TrainConfig(schedule=ScheduleConfig(max_steps=200)), or TrainConfig.from_dict(d) for a dict."
        )
