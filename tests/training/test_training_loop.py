"""The training loop: loss, schedule, evaluation, bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS
from training_helpers import (
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    tiny_config,
    tiny_model,
    tiny_model_config,
    tiny_pool,
)

from tv_lens.errors import ConfigError, LayerOutOfRangeError, PositionError, TaskError
from tv_lens.tasks import offset_pool
from tv_lens.training import (
    DataConfig,
    FinetuneConfig,
    LoRAConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    TVPConfig,
    get_lr,
    train,
)
from tv_lens.training.data import batch_seed, held_out_batch, held_out_seed, training_batch
from tv_lens.training.evaluation import evaluate
from tv_lens.training.objectives import TokenObjective, answer_targets


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_decreases_on_a_tiny_pool(backend: str) -> None:
    model = tiny_model(backend)
    config = tiny_config(max_steps=40, data=DataConfig(n_per_task=8, n_shots=4, eval_n_per_task=8))
    result = train(model, tiny_pool(), config, progress=False)
    losses = result.history["loss"].to_numpy()
    assert len(losses) == 40 and result.steps == 40
    assert losses[-5:].mean() < 0.85 * losses[:5].mean()
    assert not model.training  # handed back in eval mode, as build_model made it


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_gives_every_module_its_own_mode_back(backend: str) -> None:
    model = tiny_model(backend)
    model.train()
    model.blocks[0].eval()  # dropout of one block switched off by hand: a model whose modules differ in mode
    modes = {name: module.training for name, module in model.named_modules()}
    seen: list[bool] = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(module.training))
    config = tiny_config(max_steps=2, eval_every=1, data=DataConfig(n_per_task=4, n_shots=2, eval_n_per_task=4))
    train(model, tiny_pool(), config, progress=False)
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert True in seen and False in seen  # trained in train mode, evaluated in eval mode


def test_get_lr_matches_a_hand_computation() -> None:
    schedule = ScheduleConfig(max_steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert get_lr(0, schedule) == pytest.approx(1e-4)  # 1e-3 * 1 / 10
    assert get_lr(4, schedule) == pytest.approx(5e-4)  # 1e-3 * 5 / 10
    assert get_lr(9, schedule) == pytest.approx(1e-3)
    assert get_lr(10, schedule) == pytest.approx(1e-3)  # cosine starts at the peak
    assert get_lr(55, schedule) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half-way: cos(pi/2) = 0
    t = (70 - 10) / 90
    assert get_lr(70, schedule) == pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * t)))
    assert get_lr(100, schedule) == pytest.approx(1e-4)
    assert get_lr(500, schedule) == pytest.approx(1e-4)
    no_warmup = ScheduleConfig(max_steps=10, lr=2e-3, min_lr=0.0, warmup_steps=0)
    assert get_lr(0, no_warmup) == pytest.approx(2e-3)


def test_the_loop_uses_the_schedule_and_the_step_batches() -> None:
    config = tiny_config(max_steps=5)
    result = train(tiny_model(BACKENDS[0]), tiny_pool(), config, progress=False)
    assert result.history["lr"].tolist() == pytest.approx([get_lr(s, config.schedule) for s in range(5)])
    # Batches depend on (seed, step) only; held-out prompts use another seed stream.
    first = training_batch(tiny_pool(), config.data, 3)
    again = training_batch(tiny_pool(), config.data, 3)
    assert torch.equal(first.inputs, again.inputs)
    seeds = {batch_seed(0, step) for step in range(1000)}
    assert len(seeds) == 1000 and held_out_seed(0) not in seeds


def test_context_loss_matches_a_hand_computation() -> None:
    model = tiny_model(BACKENDS[0], dtype="float64")
    pool = offset_pool(offsets=(1, 2), n_values=8, null=True)
    batch = pool.sample(3, (0, 4), seed=5, label_noise=0.3)
    assert bool(batch.demo_noisy.any())
    objective = TokenObjective()
    from tv_lens.models import adapt

    loss = objective.context_loss(adapt(model), batch)
    logits = model(batch.inputs)
    terms = []
    for i in range(len(batch)):
        for j in range(int(batch.n_shots[i])):
            if not batch.demo_noisy[i, j]:
                p = int(batch.demo_answer_pos[i, j])
                terms.append(F.cross_entropy(logits[i, p], batch.inputs[i, p + 1]))
        p = int(batch.answer_pos[i])
        terms.append(F.cross_entropy(logits[i, p], batch.answers[i, 0]))
    assert len(answer_targets(batch)[0]) == len(terms)
    torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=1e-10, atol=1e-12)


def test_evaluation_matches_a_hand_computation() -> None:
    model = tiny_model(BACKENDS[0], dtype="float64")
    pool = tiny_pool()
    batch = held_out_batch(pool, DataConfig(eval_n_per_task=6, n_shots=3))
    from tv_lens.models import adapt

    rows = evaluate(adapt(model), TokenObjective(), batch, batch_size=5)
    with torch.no_grad():
        logits = model(batch.inputs)[torch.arange(len(batch)), batch.answer_pos]
    correct = (logits.argmax(-1) == batch.answers[:, 0]).double()
    ce = F.cross_entropy(logits, batch.answers[:, 0], reduction="none")
    assert [row["task"] for row in rows] == list(pool.task_names)
    for task_id, row in enumerate(rows):
        mask = batch.task_ids == task_id
        assert row["accuracy"] == pytest.approx(float(correct[mask].mean()))
        assert row["loss"] == pytest.approx(float(ce[mask].mean()))
        assert row["n_prompts"] == 6


def test_result_tables_and_accuracy() -> None:
    result = train(tiny_model(BACKENDS[0]), tiny_pool(), tiny_config(max_steps=4, eval_every=2), progress=False)
    assert list(result.history.columns) == ["step", "lr", "loss", "loss_icl", "loss_tvp", "grad_norm", "elapsed_s"]
    assert result.history["loss_tvp"].isna().all()
    assert sorted(set(result.evals["step"])) == [2, 4]
    accuracy = result.accuracy()
    assert set(accuracy) == {"offset(1)", "offset(2)", "null"}
    assert result.icl_accuracy() == pytest.approx((accuracy["offset(1)"] + accuracy["offset(2)"]) / 2)
    with pytest.raises(ConfigError, match="No evaluation at step 3"):
        result.accuracy(step=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_decay_only_on_weight_matrices(backend: str) -> None:
    from tv_lens.training.loop import make_optimizer

    model = tiny_model(backend)
    named = list(model.named_parameters())
    optimizer = make_optimizer(named, OptimConfig(weight_decay=0.3), ScheduleConfig())
    decayed, plain = optimizer.param_groups
    names = {id(p): name for name, p in named}
    decayed_names = [names[id(p)] for p in decayed["params"]]
    plain_names = [names[id(p)] for p in plain["params"]]
    assert decayed["weight_decay"] == 0.3 and plain["weight_decay"] == 0.0
    assert len(decayed_names) + len(plain_names) == len(named)
    assert all(p.ndim >= 2 for p in decayed["params"])
    # Matrices (embeddings, attention, MLP, unembedding) decay; norms and biases, even 2-D per-head ones, do not.
    assert not any(n.endswith(("bias", "b_Q", "b_K", "b_V")) for n in decayed_names)
    assert any(n.endswith(("W_Q", "q._original_component.weight")) for n in decayed_names)
    assert all(
        ("ln" in n) or n.rsplit(".", 1)[-1] in ("bias", "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U")
        for n in plain_names
    ), plain_names


def test_pool_vocabulary_that_does_not_fit_the_model() -> None:
    big_pool = offset_pool(offsets=(1, 2), n_values=16)  # 19 token ids; the model has 11
    with pytest.raises(TaskError, match=r"vocabulary does not fit the model.*d_vocab=11"):
        train(tiny_model(BACKENDS[0]), big_pool, tiny_config(), progress=False)


def test_prompts_longer_than_the_context() -> None:
    config = tiny_config(data=DataConfig(n_per_task=2, n_shots=12))  # 39 tokens > n_ctx=24
    with pytest.raises(PositionError, match="n_ctx=24"):
        train(tiny_model(BACKENDS[0]), tiny_pool(), config, progress=False)


def test_layer_sets_out_of_range() -> None:
    model = tiny_model(BACKENDS[0])
    with pytest.raises(LayerOutOfRangeError, match="out of range"):
        train(model, tiny_pool(), tiny_config(tvp=TVPConfig(layer=2)), progress=False)
    with pytest.raises(LayerOutOfRangeError, match=r"Block\(s\) \[5\] out of range"):
        train(model, tiny_pool(), tiny_config(finetune=FinetuneConfig(blocks=(0, 5))), progress=False)
    with pytest.raises(LayerOutOfRangeError, match="asks for 3 blocks but the model has 2"):
        train(model, tiny_pool(), tiny_config(finetune=FinetuneConfig(blocks="last:3")), progress=False)


def test_config_validation_errors() -> None:
    with pytest.raises(ConfigError, match=r"lam \(λ\) must be >= 0"):
        TVPConfig(layer=1, lam=-0.5)
    with pytest.raises(ConfigError, match="'replace' or 'add'"):
        TVPConfig(layer=1, mode="swap")
    with pytest.raises(ConfigError, match="warmup_steps must be an int in"):
        ScheduleConfig(max_steps=10, warmup_steps=20)
    with pytest.raises(ConfigError, match="min_lr <= lr"):
        ScheduleConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ConfigError, match="n_shots must be"):
        DataConfig(n_shots=(4, 2))
    with pytest.raises(ConfigError, match="Unknown LoRA target"):
        LoRAConfig(targets=("W_E",))
    with pytest.raises(ConfigError, match="'first:k'"):
        FinetuneConfig(blocks="middle:2")
    with pytest.raises(ConfigError, match="checkpoint_dir="):
        train(tiny_model(BACKENDS[0]), tiny_pool(), tiny_config(checkpoint_every=2), progress=False)


def test_arguments_of_the_wrong_kind_are_config_errors_before_the_model_is_touched() -> None:
    """Each was a TypeError or AttributeError from deep inside; objective=0 trained on the default objective."""
    model = tiny_model(BACKENDS[0])
    before = [p.detach().clone() for p in model.parameters()]
    model_config = tiny_model_config(BACKENDS[0])
    for options, problem in (
        ({"checkpoint_dir": 5}, r"checkpoint_dir must be a path \(a str or pathlib\.Path\) or None, got 5 \(int\)"),
        ({"resume_from": b"runs"}, r"resume_from must be a path .* got b'runs' \(bytes\)"),
        ({"model_config": model_config.to_dict()}, r"model_config must be the ModelConfig .* got a dict"),
        ({"objective": 0}, r"objective must have the methods of tv_lens\.training\.Objective .* got 0;"),
        ({"objective": F.cross_entropy}, r"objective must have the methods"),
    ):
        with pytest.raises(ConfigError, match=problem):
            train(model, tiny_pool(), tiny_config(max_steps=2), progress=False, **options)
    assert all(torch.equal(p, old) for p, old in zip(model.parameters(), before, strict=True))


def test_config_round_trips_through_a_dict() -> None:
    config = TrainConfig(
        data=DataConfig(n_shots=(1, 5)),
        tvp=TVPConfig(layer=1, lam=0.5, mode="add", detach=True),
        finetune=FinetuneConfig(blocks=(0, 1), lora=LoRAConfig(rank=2, targets=("W_Q", "W_out"))),
    )
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert (
        TrainConfig.from_dict(replace(config, finetune=FinetuneConfig("last:1")).to_dict()).finetune.blocks == "last:1"
    )
