"""Fuzzing the training entry points: :func:`train`, :func:`finetune` and :func:`tvp_losses`.

Each example builds a tiny model (one block of width 16) and trains it for one to three steps with settings drawn
in and out of range: data, optimiser, schedule, TVP-loss and finetuning configs, pools that do not fit the model or
are not pools, ``stop_after``, the objective, and grad modes. A call returns a result whose history is finite, or
raises a TvLensError; never another exception. A refused call leaves the model's weights as they were (settings
are checked before the first step), unless it is the divergence check of a step (a NonFiniteError).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import torch
from fuzz_helpers import fuzz_settings, mostly
from hypothesis import given
from hypothesis import strategies as st
from reliability_helpers import POOL, one_thread, tiny_model_config  # noqa: F401  (autouse: one thread)

from tv_lens import TvLensError
from tv_lens.errors import NonFiniteError
from tv_lens.models import build_model
from tv_lens.tasks import offset_pool
from tv_lens.training import (
    DataConfig,
    FinetuneConfig,
    LoRAConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    TVPConfig,
    finetune,
    train,
    tvp_losses,
)

GRAD_MODES = {"plain": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
MODES = mostly(st.just("plain"), st.sampled_from(["no_grad", "inference_mode"]))
WIDE_POOL = offset_pool(offsets=(1, 2), n_values=40)  # 43 tokens: more than the model's vocabulary


def weights(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def unchanged(model: Any, before: dict[str, torch.Tensor]) -> bool:
    """Whether every weight the model had is as it was (LoRA adapters added since are not weights it had)."""
    now = dict(model.named_parameters())
    return all(name in now and torch.equal(value, now[name]) for name, value in before.items())


def made(build: Any) -> Any:
    """``build()``, or the TvLensError it raised (a config refusing its own values), returned rather than raised."""
    try:
        return build()
    except TvLensError as error:
        return error


@st.composite
def train_configs(draw: Any) -> Any:
    """A TrainConfig of 1 to 3 steps with fields in and out of range (a refused sub-config is returned as its error)."""
    n_per_task = draw(mostly(st.sampled_from([1, 2]), st.sampled_from([0, -1, 1.5, "2", None, 10**12])))
    n_shots = draw(mostly(st.sampled_from([1, 2, (1, 3)]), st.sampled_from([0, -1, (3, 1), (1, 2, 3), "2", 10**6])))
    noise = draw(mostly(st.sampled_from([0.0, 0.5]), st.sampled_from([1.0, -0.1, float("nan"), "0"])))
    eval_batch = draw(mostly(st.sampled_from([256, 1]), st.sampled_from([0, -1, 2.5])))
    data = made(
        lambda: DataConfig(
            n_per_task=n_per_task, n_shots=n_shots, label_noise=noise, eval_n_per_task=2, eval_batch_size=eval_batch
        )
    )
    lr = draw(mostly(st.sampled_from([1e-3, 3e-2]), st.sampled_from([0.0, -1e-3, float("nan"), float("inf"), "1"])))
    steps = draw(mostly(st.integers(1, 3), st.sampled_from([0, -1, 1.5, None])))
    warmup = draw(mostly(st.sampled_from([0, 1]), st.sampled_from([-1, 10, 0.5])))
    min_lr = draw(mostly(st.just(1e-4), st.sampled_from([1.0, -1.0, float("nan")])))
    schedule = made(lambda: ScheduleConfig(max_steps=steps, lr=lr, min_lr=min_lr, warmup_steps=warmup))
    clip = draw(mostly(st.sampled_from([1.0, None]), st.sampled_from([0.0, -1.0, float("nan"), "1"])))
    decay = draw(mostly(st.sampled_from([0.1, 0.0]), st.sampled_from([-0.1, float("inf"), None])))
    betas = draw(mostly(st.just((0.9, 0.95)), st.sampled_from([(1.0, 0.9), (0.9,), (-0.1, 0.9), "ab"])))
    optim = made(lambda: OptimConfig(weight_decay=decay, betas=betas, grad_clip=clip))
    tvp_layer = draw(mostly(st.sampled_from([0, 1]), st.sampled_from([-1, 2, 5, 0.5, None])))
    tvp_lam = draw(mostly(st.sampled_from([1.0, 0.5]), st.sampled_from([-1.0, float("nan"), "1"])))
    tvp_mode = draw(mostly(st.sampled_from(["replace", "add"]), st.sampled_from(["swap", None])))
    tvp = draw(st.booleans()) and made(lambda: TVPConfig(layer=tvp_layer, lam=tvp_lam, mode=tvp_mode))
    blocks = draw(mostly(st.sampled_from([(0,), "last:1", "all"]), st.sampled_from([(5,), (), "first:0", "x", (0.5,)])))
    rank = draw(mostly(st.sampled_from([1, 2]), st.sampled_from([0, -1, 100, 1.5])))
    lora = draw(st.booleans()) and made(lambda: LoRAConfig(rank=rank))
    tuned = (
        draw(st.booleans()) and not isinstance(lora, TvLensError) and made(lambda: FinetuneConfig(blocks, lora or None))
    )
    eval_every = draw(mostly(st.sampled_from([1, 3]), st.sampled_from([0, -1, 1.5])))
    parts = (data, schedule, optim, tvp, tuned)
    refused = [part for part in parts if isinstance(part, TvLensError)]
    if refused:
        return refused[0]
    return made(
        lambda: TrainConfig(
            data=data, optim=optim, schedule=schedule, tvp=tvp or None, finetune=tuned or None, eval_every=eval_every
        )
    )


@cache
def tvp_model() -> Any:
    """The model :func:`tvp_losses` reads (it computes losses, never changes weights)."""
    return build_model(tiny_model_config())


POOLS = mostly(st.just("pool"), st.sampled_from(["wide", "none", "batch", "string"]))


def pool_of(kind: str) -> Any:
    return {"pool": POOL, "wide": WIDE_POOL, "none": None, "batch": POOL.sample(2, 1, seed=0), "string": "offset"}[kind]


@fuzz_settings(25)
@given(
    config=train_configs(),
    pool=POOLS,
    n_layers=st.sampled_from([1, 2]),
    stop_after=mostly(st.sampled_from([None, 1]), st.sampled_from([0, -1, 1.5, "1"])),
    mode=MODES,
)
def test_train(config: Any, pool: str, n_layers: int, stop_after: Any, mode: str) -> None:
    model = build_model(tiny_model_config(n_layers=n_layers))
    before = weights(model)
    try:
        if isinstance(config, TvLensError):
            raise config
        with GRAD_MODES[mode]():
            result = train(model, pool_of(pool), config, stop_after=stop_after, progress=False)
    except NonFiniteError:
        return  # a step diverged (a large learning rate): refused after training started
    except TvLensError:
        assert unchanged(model, before), "a refused run changed the model's weights"
        return
    steps = config.schedule.max_steps if stop_after is None else min(stop_after, config.schedule.max_steps)
    history = result.history
    assert len(history) == steps and all(math.isfinite(v) for v in history["loss"])
    assert unchanged(model, before) == (steps == 0)


@fuzz_settings(15)
@given(
    blocks=mostly(st.sampled_from([(0,), (1,), "first:1", "last:1", "all"]), st.sampled_from([(2,), (), "x", 0, None])),
    lora=mostly(st.sampled_from([None, 1, 2]), st.sampled_from([0, "lora", 1.5])),
    config=mostly(st.just("tiny"), st.sampled_from(["none", "dict", "tuned"])),
    mode=MODES,
)
def test_finetune(blocks: Any, lora: Any, config: str, mode: str) -> None:
    model = build_model(tiny_model_config())
    before = weights(model)
    settings = TrainConfig(
        data=DataConfig(n_per_task=2, n_shots=2, eval_n_per_task=2),
        schedule=ScheduleConfig(max_steps=2, lr=1e-2, min_lr=1e-3, warmup_steps=0),
        eval_every=2,
    )
    chosen: Any = {
        "tiny": settings,
        "none": None,
        "dict": settings.to_dict(),
        "tuned": TrainConfig(finetune=FinetuneConfig((0,))),
    }[config]
    lora_config: Any = LoRAConfig(rank=lora) if isinstance(lora, int) and lora > 0 else lora
    try:
        with GRAD_MODES[mode]():
            result = finetune(model, POOL, chosen, blocks, lora_config, progress=False)
    except TvLensError:
        assert unchanged(model, before), "a refused finetuning run changed the model's weights"
        return
    assert all(math.isfinite(v) for v in result.history["loss"])
    if lora_config is None:  # full finetuning: only the chosen blocks train
        now = dict(model.named_parameters())
        moved = {name.split(".")[1] for name, value in before.items() if not torch.equal(value, now[name])}
        assert moved and all(part.isdigit() for part in moved), f"parameters outside the blocks trained: {moved}"


@fuzz_settings(20)
@given(
    layer=mostly(st.sampled_from([0, 1]), st.sampled_from([2, -1])),
    lam=mostly(st.sampled_from([1.0, 0.0]), st.just(2.0)),
    tvp_mode=st.sampled_from(["replace", "add"]),
    detach=st.booleans(),
    batch=mostly(st.just("batch"), st.sampled_from(["zero shot", "one prompt", "tensor", "none", "wide"])),
    tvp=mostly(st.just("config"), st.sampled_from(["int", "dict", "none"])),
    mode=MODES,
)
def test_tvp_losses(layer: int, lam: float, tvp_mode: str, detach: bool, batch: str, tvp: str, mode: str) -> None:
    model = tvp_model()
    sample = POOL.sample(2, 2, seed=0)
    chosen: Any = {
        "batch": sample,
        "zero shot": sample.zero_shot(),
        "one prompt": sample.select(torch.tensor([0])),
        "tensor": sample.inputs,
        "none": None,
        "wide": WIDE_POOL.sample(1, 2, seed=0),
    }[batch]
    config = made(lambda: TVPConfig(layer=layer, lam=lam, mode=tvp_mode, detach=detach))
    if isinstance(config, TvLensError):
        return
    setting: Any = {"config": config, "int": layer, "dict": {"layer": layer}, "none": None}[tvp]
    try:
        with GRAD_MODES[mode]():
            losses = tvp_losses(model, chosen, setting)
    except TvLensError:
        return
    total, icl, tvp_term = (float(term.detach()) for term in (losses.total, losses.icl, losses.tvp))
    assert math.isfinite(total) and math.isfinite(icl) and math.isfinite(tvp_term)
    assert math.isclose(total, icl + lam * tvp_term, rel_tol=1e-5, abs_tol=1e-6)
