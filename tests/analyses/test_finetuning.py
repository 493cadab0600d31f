"""Layer finetuning: variants, TD unchanged below the trained blocks, numbers against direct scoring, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from causal_helpers import POOL, failing_user_hook, hooked_scores, sample
from conftest import hook_snapshot, tiny_config

from tv_lens.analyses import finetuning
from tv_lens.analyses.decodability import TaskDecodability
from tv_lens.analyses.finetuning import LayerFinetuning, compare_models
from tv_lens.errors import AnalysisError, ConfigError, LayerOutOfRangeError, TaskError
from tv_lens.models import build_model
from tv_lens.results.base import Result
from tv_lens.results.finetuning import FinetuningComparison
from tv_lens.training import DataConfig, LoRAConfig, ScheduleConfig, TrainConfig
from tv_lens.training.lora import has_lora, lora_parameters

CONFIG = LayerFinetuning(
    k=1,
    lora=LoRAConfig(rank=2, alpha=2.0, dropout=0.1),
    train=TrainConfig(
        data=DataConfig(n_per_task=3, n_shots=3, eval_n_per_task=2),
        schedule=ScheduleConfig(max_steps=2, lr=1e-2, warmup_steps=1),
        eval_every=2,
    ),
    decodability=TaskDecodability(k=2, n_bootstrap=0),
    n_per_task=4,
    n_shots=3,
    n_bootstrap=20,
)


@pytest.fixture(scope="module")
def experiment(model):
    weights = [p.detach().clone() for p in model.parameters()]
    models, losses = CONFIG.finetune_variants(model, POOL)
    result = CONFIG.compare(models, losses, POOL, seed=1)  # what run() does after finetune_variants()
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))  # input untouched
    return model, models, losses, result


def test_variants_train_the_first_and_last_blocks(experiment):
    model, models, _, result = experiment
    assert result.variants == ("base", "first:1", "last:1")
    assert result.blocks == ((), (0,), (2,))
    assert np.isnan(float(result.final_loss[0])) and torch.isfinite(result.final_loss[1:]).all()
    assert list(models) == ["base", "first:1", "last:1"] and models["base"] is model
    tokens = sample(n_per_task=2).inputs
    with torch.no_grad():
        base = model.run_with_cache(tokens)[1]
        first = models["first:1"].run_with_cache(tokens)[1]
        last = models["last:1"].run_with_cache(tokens)[1]
    assert torch.equal(last["blocks.1.hook_resid_post"], base["blocks.1.hook_resid_post"])  # blocks 0-1 frozen
    assert not torch.equal(last["blocks.2.hook_resid_post"], base["blocks.2.hook_resid_post"])
    assert torch.equal(first["blocks.0.hook_resid_pre"], base["blocks.0.hook_resid_pre"])  # embedding frozen
    assert not torch.equal(first["blocks.0.hook_resid_post"], base["blocks.0.hook_resid_post"])


def test_variants_come_back_with_the_requires_grad_of_the_base_model(experiment):
    """Finetuning freezes the blocks it leaves out for its run only; each variant's adapters stay trainable."""
    model, models, _, _ = experiment
    flags = sorted(p.requires_grad for p in model.parameters())
    for name in ("first:1", "last:1"):
        adapters = {id(p) for p in lora_parameters(models[name])}
        assert adapters and all(p.requires_grad for p in lora_parameters(models[name]))
        assert sorted(p.requires_grad for p in models[name].parameters() if id(p) not in adapters) == flags


def test_td_below_the_finetuned_blocks_is_unchanged_by_construction(experiment):
    _, _, _, result = experiment
    assert result.layers == (-1, 0, 1, 2)
    torch.testing.assert_close(result.td_change("last:1")[:3], torch.zeros(3, dtype=torch.float64), atol=0, rtol=0)
    assert float(result.td_change("first:1")[0]) == 0.0  # the embedding is frozen


def test_numbers_equal_direct_scoring_of_each_model(experiment):
    _, models, _, result = experiment
    batch = POOL.sample(4, 3, 1)
    for v, name in enumerate(result.variants):
        correct, _, _ = hooked_scores(models[name], batch.inputs, batch.answer_pos, batch.answers)
        for t in range(4):
            assert float(result.accuracy[v, t]) == pytest.approx(float(correct[batch.task_ids == t].mean()))
        assert float(result.overall[v]) == pytest.approx(float(correct[batch.task_ids != 3].mean()))
        td = TaskDecodability(k=2, n_bootstrap=0).run_batch(models[name], batch, seed=1)
        assert torch.equal(result.td[v], td.td)


def test_run_trains_adapters_in_place_with_the_numbers_of_deep_copies(experiment):
    """run() with LoRA keeps one model: each variant's adapters train on it, are scored, then removed."""
    model, _, _, result = experiment
    weights = [p.detach().clone() for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    assert CONFIG.run(model, POOL, seed=1) == result
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))
    assert [p.requires_grad for p in model.parameters()] == flags and model.training == was_training
    assert not has_lora(model)


def test_a_fault_after_a_variant_trained_leaves_the_model_as_it_was(experiment, monkeypatch):
    model = experiment[0]
    weights = [p.detach().clone() for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    scored = []

    def failing_scores(*args, **kwargs):
        scored.append(has_lora(model))
        if len(scored) == 2:  # the first variant, its adapters attached
            raise RuntimeError("injected fault")
        return real_scores(*args, **kwargs)

    real_scores = finetuning._scores
    monkeypatch.setattr(finetuning, "_scores", failing_scores)
    with pytest.raises(RuntimeError, match="injected fault"):
        CONFIG.run(model, POOL, seed=1)
    assert scored == [False, True]
    assert not has_lora(model) and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))


def test_a_model_with_adapters_is_refused_before_training(experiment):
    lora_model = experiment[1]["first:1"]
    assert has_lora(lora_model)
    with pytest.raises(ConfigError, match=r"already has LoRA adapters; merge them first"):
        CONFIG.run(lora_model, POOL, seed=1)


def test_frame_figure_and_save_load(experiment, tmp_path):
    _, _, _, result = experiment
    frame = result.to_frame()
    assert len(frame) == 3 * 4 and list(frame.variant.unique()) == ["base", "first:1", "last:1"]
    assert frame[frame.variant == "last:1"].blocks.iloc[0] == "2"
    accuracy = result.accuracy_frame()
    assert len(accuracy) == 3 * 5 and accuracy[accuracy.task == "all"].accuracy.tolist() == result.overall.tolist()
    traces = result.figure().data
    assert len(traces) == 3 and list(traces[2].y) == result.td[2].tolist()
    assert result.settings["k"] == 1 and result.settings["lora"]["rank"] == 2
    path = result.save(tmp_path / "finetuning.safetensors")
    assert FinetuningComparison.load(path) == result and Result.load(path) == result


def test_bad_settings_name_the_problem(model):
    with pytest.raises(LayerOutOfRangeError, match="k=4 blocks to finetune, but the model has only 3 blocks"):
        LayerFinetuning(k=4).run(model, POOL)
    with pytest.raises(LayerOutOfRangeError, match="k must be a positive number of blocks"):
        LayerFinetuning(k=0)
    # the comparison prompts are sampled after the variants train: these failed only after both had trained
    with pytest.raises(TaskError, match="n_per_task must be an int >= 1, got 0"):
        LayerFinetuning(n_per_task=0)
    with pytest.raises(TaskError, match=r"n_shots must be an int >= 0.*got -1"):
        LayerFinetuning(n_shots=-1)
    with pytest.raises(TaskError, match=r"progress must be True or False \(show training progress bars\), got 'no'"):
        LayerFinetuning(progress="no")  # was read as True


def test_models_of_other_depths_are_refused_unless_the_td_layers_are_shared(model):
    batch = sample(n_per_task=4)
    shallower = build_model(tiny_config(dtype="float64", n_layers=2))
    config = LayerFinetuning(decodability=TaskDecodability(k=2, n_bootstrap=0), n_bootstrap=0)
    with pytest.raises(AnalysisError, match=r"different numbers of blocks \(\{'base': 3, 'small': 2\}\)"):
        compare_models({"base": model, "small": shallower}, batch, config=config)  # was torch.stack's RuntimeError
    shared = LayerFinetuning(decodability=TaskDecodability(k=2, n_bootstrap=0, layers=(0, 1)), n_bootstrap=0)
    result = compare_models({"base": model, "small": shallower}, batch, config=shared)
    alone = compare_models({"small": shallower}, batch, config=shared)
    assert result.layers == (0, 1) and torch.equal(result.td[1], alone.td[0])


def test_hooks_are_restored_after_a_fault_while_comparing(model):
    batch = sample(n_per_task=4)
    with failing_user_hook(model, "blocks.1.hook_resid_post", fail_on_call=1) as calls:
        before = hook_snapshot(model)
        with pytest.raises(RuntimeError, match="injected fault"):
            compare_models(
                {"base": model}, batch, config=LayerFinetuning(decodability=TaskDecodability(k=2, n_bootstrap=0))
            )
        assert hook_snapshot(model) == before and calls
