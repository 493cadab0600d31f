"""Layer-restricted finetuning (full and LoRA) and LoRA merging, on every backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import BACKENDS, hook_snapshot
from training_helpers import (
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    parameters_of,
    tiny_config,
    tiny_model,
    tiny_model_config,
    tiny_pool,
)

from tv_lens.errors import CheckpointError, ConfigError, ShapeError, TvLensError
from tv_lens.training import (
    FinetuneConfig,
    LoRAConfig,
    apply_lora,
    finetune,
    load_checkpoint,
    loop,
    lora_parameters,
    merge_lora,
    remove_lora,
    select_blocks,
    train,
)
from tv_lens.training.finetune import FrozenCheck
from tv_lens.training.lora import has_lora, weight_targets


def block_of(name: str) -> int | None:
    for prefix in ("blocks.", "layers."):
        if name.startswith(prefix):
            return int(name.split(".")[1])
    return None


def test_select_blocks() -> None:
    assert select_blocks("first:2", 4) == (0, 1)
    assert select_blocks("last:2", 4) == (2, 3)
    assert select_blocks("all", 3) == (0, 1, 2)
    assert select_blocks((3, 1, 1), 4) == (1, 3)
    assert select_blocks([0, 2], 4) == (0, 2)


@pytest.mark.parametrize("blocks", ["middle:2", "first", "first:x", "last:0", (1.5,), (True,), (), 3])
def test_select_blocks_refuses_what_is_no_selection(blocks) -> None:
    """'middle:2' selected the last two blocks and (1.5,) or () came back as selections; 'first' and 3 were Python's
    ValueError and TypeError."""
    with pytest.raises(ConfigError, match=r"must be block indices such as \(0, 1\), or 'first:k', 'last:k' or 'all'"):
        select_blocks(blocks, 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("blocks", ["first:1", "last:1"])
def test_full_finetuning_leaves_every_other_parameter_bit_identical(backend: str, blocks: str) -> None:
    model = tiny_model(backend)
    before = parameters_of(model)
    result = finetune(model, tiny_pool(), tiny_config(max_steps=3), blocks=blocks)
    chosen = select_blocks(blocks, 2)[0]
    after = parameters_of(result.model)
    assert after.keys() == before.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "the chosen block did not train"
    assert all(block_of(name) == chosen for name in changed), changed
    matrices = [n for n, v in before.items() if block_of(n) == chosen and v.ndim >= 2]
    assert set(matrices) <= changed


@pytest.mark.parametrize("backend", BACKENDS)
def test_lora_finetuning_freezes_the_base_and_merges_to_an_equivalent_model(backend: str) -> None:
    model = tiny_model(backend)
    before = parameters_of(model)
    weights = {id(getattr(t.module, t.attribute)) for t in weight_targets(model, 1).values()}
    targets = {name for name, p in model.named_parameters() if id(p) in weights}
    assert len(targets) == 6
    lora = LoRAConfig(rank=2, alpha=4.0, dropout=0.2)
    result = finetune(model, tiny_pool(), tiny_config(max_steps=4), blocks=(1,), lora=lora)
    assert has_lora(model) and len(lora_parameters(model)) == 2 * 6
    assert all(p.requires_grad for p in lora_parameters(model))
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)  # as before the run
    assert any(torch.count_nonzero(p) for p in lora_parameters(model)[1::2]), "B matrices did not train"

    tokens = tiny_pool().sample(3, 4, seed=9).inputs
    with torch.no_grad():
        adapted = result.model(tokens)
    merge_lora(model)
    assert not has_lora(model)
    after = parameters_of(model)
    assert list(after) == list(before)  # the same names, in the same order
    for name in before:
        if name in targets:
            assert not torch.equal(before[name], after[name]), name
        else:
            assert torch.equal(before[name], after[name]), name
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), adapted, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lora_update_has_the_documented_form(backend: str) -> None:
    """The adapted weight is W + (alpha / rank) A B, laid out as the backend stores W (checked per target)."""
    model = tiny_model(backend, dtype="float64")
    targets = weight_targets(model, 0)
    originals = {name: getattr(t.module, t.attribute).detach().clone() for name, t in targets.items()}
    config = LoRAConfig(rank=3, alpha=6.0)
    updates = apply_lora(model, (0,), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for update in updates:
            update.lora_B.copy_(torch.randn(update.lora_B.shape, generator=generator, dtype=torch.float64))
    for name, update in zip(config.targets, updates, strict=True):
        target = targets[name]
        low_rank = 2.0 * update.lora_A.detach() @ update.lora_B.detach()  # [d_in, d_out]
        weight = getattr(target.module, target.attribute).detach()
        if weight.ndim == 3 and name in ("W_Q", "W_K", "W_V"):  # HookedTransformer [n_heads, d_model, d_head]
            expected = originals[name] + low_rank.reshape(weight.shape[1], weight.shape[0], -1).permute(1, 0, 2)
        elif target.layout == "out_in":  # nn.Linear [out, in]
            expected = originals[name] + low_rank.T
        else:
            expected = originals[name] + low_rank.reshape(weight.shape)
        torch.testing.assert_close(weight, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_removing_lora_gives_back_the_parameters_in_their_order(backend: str) -> None:
    model = tiny_model(backend)
    before = parameters_of(model)
    objects = [id(p) for p in model.parameters()]
    updates = apply_lora(model, (0, 1), LoRAConfig(rank=2))
    with torch.no_grad():
        for update in updates:
            update.lora_B.fill_(0.5)
    remove_lora(model)
    after = parameters_of(model)
    assert list(after) == list(before) and [id(p) for p in model.parameters()] == objects
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_adapters_of_a_bfloat16_model_train_in_float32() -> None:
    model = tiny_model(BACKENDS[-1], dtype="bfloat16")
    lora = LoRAConfig(rank=2, alpha=2.0, targets=("W_Q", "W_in"))
    result = finetune(model, tiny_pool(), tiny_config(max_steps=3), blocks=(0,), lora=lora)
    adapters = lora_parameters(model)
    assert {p.dtype for p in adapters} == {torch.float32} and any(torch.count_nonzero(p) for p in adapters[1::2])
    target = weight_targets(model, 0)["W_Q"]
    assert getattr(target.module, target.attribute).dtype == torch.bfloat16
    tokens = tiny_pool().sample(3, 4, seed=9).inputs
    with torch.no_grad():
        adapted = result.model(tokens)
        merged = merge_lora(model)(tokens)
    assert torch.equal(merged, adapted)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_frozen_check_sees_one_bit_change_and_holds_no_copy(dtype: str) -> None:
    model = tiny_model(BACKENDS[-1], dtype=dtype)
    trainable = list(model.blocks[1].parameters())
    check = FrozenCheck(model, trainable)
    frozen = [p for p in model.parameters() if all(p is not q for q in trainable)]
    assert len(check.names) == len(frozen) and not any(isinstance(v, torch.Tensor) for v in vars(check).values())
    with torch.no_grad():
        for p in trainable:
            p.add_(1.0)  # trained parameters may move
    check.verify()
    with torch.no_grad():
        frozen[-1].view(-1).view(torch.uint8)[0] ^= 1  # the lowest bit of one value
    with pytest.raises(TvLensError, match="Frozen parameters changed during layer-restricted finetuning"):
        check.verify()


def test_lora_twice_and_bad_blocks_are_errors() -> None:
    model = tiny_model(BACKENDS[0])
    apply_lora(model, (0,), LoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="already has LoRA adapters"):
        apply_lora(model, (1,), LoRAConfig(rank=2))
    with pytest.raises(ConfigError, match=r"config\.finetune is already set"):
        finetune(model, tiny_pool(), tiny_config(finetune=FinetuneConfig("all")), blocks="all")


def test_lora_finetuning_resumes_bit_exactly(tmp_path: Path) -> None:
    backend = BACKENDS[0]
    lora = LoRAConfig(rank=2, dropout=0.5, targets=("W_Q", "W_in"))
    config = tiny_config(max_steps=6, checkpoint_every=3, finetune=FinetuneConfig("last:1", lora=lora))
    model_config = tiny_model_config(backend)
    full = train(
        tiny_model(backend),
        tiny_pool(),
        config,
        model_config=model_config,
        checkpoint_dir=tmp_path / "a",
        progress=False,
    )
    killed = tmp_path / "b"
    train(
        tiny_model(backend),
        tiny_pool(),
        config,
        model_config=model_config,
        checkpoint_dir=killed,
        stop_after=4,
        progress=False,
    )
    resumed = train(
        tiny_model(backend), tiny_pool(), config, model_config=model_config, resume_from=killed, progress=False
    )
    for name, value in parameters_of(full.model).items():
        assert torch.equal(value, parameters_of(resumed.model)[name]), name
    rebuilt = load_checkpoint(resumed.checkpoints[-1]).load_model()
    tokens = tiny_pool().sample(2, 3, seed=1).inputs
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(tokens), resumed.model.eval()(tokens), rtol=0, atol=0)


def test_a_lora_run_that_fails_before_training_hands_back_the_model_as_it_was(tmp_path: Path) -> None:
    model = tiny_model(BACKENDS[0])
    names_before = sorted(name for name, _ in model.named_parameters())
    flags_before = [p.requires_grad for p in model.parameters()]
    train(
        tiny_model(BACKENDS[0]),
        tiny_pool(),
        tiny_config(max_steps=2, checkpoint_every=2),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    lora = tiny_config(max_steps=2, finetune=FinetuneConfig("first:1", lora=LoRAConfig(rank=2)))
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(model, tiny_pool(), lora, checkpoint_dir=tmp_path, progress=False)
    assert not has_lora(model)
    assert sorted(name for name, _ in model.named_parameters()) == names_before
    assert [p.requires_grad for p in model.parameters()] == flags_before
    apply_lora(model, (0,), LoRAConfig(rank=2))
    remove_lora(model)  # undoes apply_lora
    assert not has_lora(model) and sorted(name for name, _ in model.named_parameters()) == names_before


def test_a_lora_run_whose_first_step_fails_hands_back_the_model_as_it_was() -> None:
    model = tiny_model(BACKENDS[0])
    names_before = sorted(name for name, _ in model.named_parameters())
    flags_before = [p.requires_grad for p in model.parameters()]

    def fail_when_training(activation, hook):
        if torch.is_grad_enabled():
            raise ShapeError("injected fault in the first training step")
        return activation

    lora = tiny_config(max_steps=2, finetune=FinetuneConfig("first:1", lora=LoRAConfig(rank=2)))
    model.blocks[0].hook_resid_post.add_hook(fail_when_training)
    try:
        with pytest.raises(ShapeError, match="injected fault"):
            train(model, tiny_pool(), lora, progress=False)
    finally:
        model.reset_hooks()
    assert not has_lora(model)
    assert sorted(name for name, _ in model.named_parameters()) == names_before
    assert [p.requires_grad for p in model.parameters()] == flags_before
    trained = train(model, tiny_pool(), lora, progress=False)  # and the model trains as a fresh one
    assert has_lora(trained.model) and len(trained.history) == 2


def requires_grad_of(model) -> dict[int, bool]:
    """``requires_grad`` of every parameter, by the parameter's identity (LoRA renames the weights it adapts)."""
    return {id(p): p.requires_grad for p in model.parameters()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lora", [None, LoRAConfig(rank=2)], ids=["full", "lora"])
def test_finetuning_gives_every_parameter_its_requires_grad_back(backend: str, lora: LoRAConfig | None) -> None:
    """The blocks left out are frozen for the run only: the model comes back with the user's flags (a parameter
    the user froze, in or out of the finetuned block, stays frozen), its new adapters trainable."""
    model = tiny_model(backend)
    for block in (0, 1):
        next(model.blocks[block].parameters()).requires_grad_(False)
    flags = requires_grad_of(model)
    finetune(model, tiny_pool(), tiny_config(max_steps=2), blocks="last:1", lora=lora)
    after = requires_grad_of(model)
    assert {key: after[key] for key in flags} == flags
    adapters = after.keys() - flags.keys()
    assert len(adapters) == (0 if lora is None else 2 * 6) and all(after[key] for key in adapters)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    train(model, tiny_pool(), tiny_config(max_steps=2), progress=False)  # a plain run after it trains it all
    changed = {id(p) for p in model.parameters() if not torch.equal(p, before[id(p)])}
    assert changed == {key for key, flag in after.items() if flag}


@pytest.mark.parametrize("fault", ["evaluation", "frozen-check"])
@pytest.mark.parametrize("lora", [None, LoRAConfig(rank=2)], ids=["full", "lora"])
def test_a_finetuning_run_that_fails_after_its_first_step_gives_requires_grad_back(
    monkeypatch: pytest.MonkeyPatch, fault: str, lora: LoRAConfig | None
) -> None:
    """Steps taken stay taken (and the adapters that took them stay attached), but no parameter stays frozen and no
    hook stays attached."""
    model = tiny_model(BACKENDS[0])
    next(model.parameters()).requires_grad_(False)
    flags = requires_grad_of(model)
    hooks = {name: hooks for name, hooks in hook_snapshot(model).items() if name.startswith("hp:")}
    before = {id(p): p.detach().clone() for p in model.parameters()}

    def fail(*args, **kwargs):
        raise ShapeError("injected fault")

    if fault == "evaluation":
        monkeypatch.setattr(loop, "evaluate", fail)
    else:
        monkeypatch.setattr(FrozenCheck, "verify", fail)
    with pytest.raises(ShapeError, match="injected fault"):
        finetune(model, tiny_pool(), tiny_config(max_steps=4, eval_every=2), blocks="first:1", lora=lora)
    after = requires_grad_of(model)
    assert {key: after[key] for key in flags} == flags
    assert has_lora(model) == (lora is not None) and all(after[key] for key in after.keys() - flags.keys())
    assert {name: hooks for name, hooks in hook_snapshot(model).items() if name.startswith("hp:")} == hooks
    if lora is None:
        assert any(not torch.equal(p, before[id(p)]) for p in model.parameters())
    else:
        assert any(torch.count_nonzero(p) for p in lora_parameters(model)[1::2])
