"""LoRA, text-task finetuning and the layer-finetuning experiment on real architectures, through every loader.

LoRA is checked against the model with the update written into its weights by hand: on the bridge without
compatibility mode, into the Hugging Face model's own layers (GPT-2's fused ``c_attn`` and GPT-NeoX's
head-interleaved ``query_key_value`` included); on the other loaders, into TransformerLens's weights laid out
as this file lays them out. The text objective's loss is checked against each prompt run alone.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS
from lora_helpers import (
    MIXTURES_OF_EXPERTS,
    TOKENS,
    adapted,
    edit_huggingface,
    edit_transformer_lens,
    logits,
    targets_of,
)
from pretrained_helpers import (
    COMBINATIONS,
    GQA_ARCHITECTURES,
    HOOKED_ARCHITECTURES,
    load,
    loaded,
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    pretrained_fixture,  # noqa: F401  (fixture `pretrained`: every architecture x loader)
)
from training_helpers import tiny_config, tiny_model

from tv_lens.analyses import LayerFinetuning, TaskDecodability
from tv_lens.errors import CheckpointError, ConfigError, PositionError, TaskError
from tv_lens.models import adapt
from tv_lens.models.local_hf import ARCHITECTURES, build_local_model, build_tokenizer
from tv_lens.tasks import TextPool, TextTask
from tv_lens.training import (
    DataConfig,
    LoRAConfig,
    ScheduleConfig,
    TextObjective,
    TrainConfig,
    TVPConfig,
    apply_lora,
    attach_lora,
    finetune,
    list_checkpoints,
    load_checkpoint,
    lora_parameters,
    merge_lora,
    train,
)
from tv_lens.training.data import held_out_batch, training_batch
from tv_lens.training.finetune import parameter_digest
from tv_lens.training.lora import has_lora, weight_targets

TOL = {"atol": 1e-5, "rtol": 1e-5}
PAIRS = (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("good", "bad"), ("old", "new"))
TASKS = (TextTask("antonym", PAIRS), TextTask("twice", tuple((x, f"{x} {x}") for x, _ in PAIRS)))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lora_equals_the_huggingface_model_with_the_update_in_its_weights(tmp_path_factory, arch):
    from transformers import AutoModelForCausalLM

    pretrained = loaded(tmp_path_factory, arch, "bridge")
    model, deltas = adapted(pretrained.model, arch)
    hf = AutoModelForCausalLM.from_pretrained(pretrained.folder, attn_implementation="eager").eval()
    for block, target, delta in deltas:
        edit_huggingface(hf, arch, block, target, delta)
    with torch.no_grad():
        expected = hf(TOKENS).logits.double()
    torch.testing.assert_close(logits(model), expected, **TOL)
    assert not torch.allclose(logits(pretrained.model), expected, **TOL)
    torch.testing.assert_close(logits(merge_lora(model)), expected, **TOL)


@pytest.mark.parametrize(
    ("arch", "loader"),
    [c for c in COMBINATIONS if c[1] != "bridge"],
    ids=[f"{a}-{loader}" for a, loader in COMBINATIONS if loader != "bridge"],
)
def test_lora_equals_the_update_written_into_the_weights(tmp_path_factory, arch, loader):
    pretrained = loaded(tmp_path_factory, arch, loader)
    model, deltas = adapted(pretrained.model, arch)
    edited = copy.deepcopy(pretrained.model)
    for block, target, delta in deltas:
        edit_transformer_lens(edited, block, target, delta)
    expected = logits(edited)
    torch.testing.assert_close(logits(model), expected, **TOL)
    assert not torch.allclose(logits(pretrained.model), expected, **TOL)
    torch.testing.assert_close(logits(merge_lora(model)), expected, **TOL)


def test_every_weight_is_found_with_its_grouped_query_shape(pretrained):
    targets = weight_targets(pretrained.model, 0)
    assert tuple(targets) == tuple(t for t in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out") if t in targets)
    assert set(targets) == set(targets_of(pretrained.arch))
    cfg = pretrained.model.cfg
    key = targets["W_K"]
    weight = getattr(key.module, key.attribute)
    kv_heads = (cfg.n_key_value_heads or cfg.n_heads) if pretrained.arch in GQA_ARCHITECTURES else cfg.n_heads
    assert weight.numel() == cfg.d_model * kv_heads * cfg.d_head


def test_a_gate_is_refused_where_the_mlp_has_none(tmp_path_factory):
    model = copy.deepcopy(loaded(tmp_path_factory, "gpt2", "bridge").model)
    with pytest.raises(ConfigError, match="has no W_gate"):
        apply_lora(model, (0,), LoRAConfig(targets=("W_Q", "W_gate")))
    assert weight_targets(model, 0)["W_Q"].module.__dict__.get("_modules", {}).get("parametrizations") is None


@pytest.mark.parametrize("arch", MIXTURES_OF_EXPERTS)
def test_the_mlp_of_a_mixture_of_experts_is_refused_and_its_attention_adapted(tmp_path_factory, arch):
    model = copy.deepcopy(loaded(tmp_path_factory, arch, "bridge").model)
    with pytest.raises(ConfigError) as info:
        apply_lora(model, (0, 1), LoRAConfig())  # the default targets include W_in and W_out
    message = str(info.value)
    assert "Block 0 has no W_in, W_out (no MLP weight was found in it: a mixture of experts has none" in message
    assert "pass LoRAConfig(targets=('W_Q', 'W_K', 'W_V', 'W_O'))" in message, message
    assert not has_lora(model)
    assert len(apply_lora(model, (0, 1), LoRAConfig(targets=("W_Q", "W_K", "W_V", "W_O")))) == 8


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_text_objective_is_the_cross_entropy_of_each_query_answer(tmp_path_factory, arch):
    pretrained = loaded(tmp_path_factory, arch, "bridge")
    pool = TextPool(TASKS, pretrained.tokenizer, template="{x} -> {y}", bos=True)
    batch = pool.sample(3, 2, seed=1)
    assert len(set(batch.answer_lengths.tolist())) > 1
    loss = TextObjective().context_loss(adapt(pretrained.model), batch)
    terms = []
    for i in range(len(batch)):
        length, ap, n = int(batch.lengths[i]), int(batch.answer_pos[i]), int(batch.answer_lengths[i])
        with torch.no_grad():
            row = pretrained.model(batch.inputs[i : i + 1, :length])[0, ap : ap + n]
        terms.append(F.cross_entropy(row.double(), batch.answers[i, :n], reduction="none"))
    torch.testing.assert_close(loss.double(), torch.cat(terms).mean(), atol=2e-5, rtol=1e-5)


def test_a_text_pool_of_another_tokenizer_is_refused(tmp_path_factory):
    """A model whose vocabulary is smaller than the pool's tokenizer: one clear error, before any step."""
    pool = TextPool(TASKS, loaded(tmp_path_factory, "gpt2", "bridge").tokenizer)
    model = tiny_model(BACKENDS[-1])
    with pytest.raises(TaskError, match=r"model's own tokenizer: TextPool\(tasks, model.tokenizer"):
        train(model, pool, tiny_config(max_steps=2))
    pretrained = copy.deepcopy(loaded(tmp_path_factory, "gpt2", "bridge").model)  # ids of another tokenizer, all fit
    before = {name: p.detach().clone() for name, p in pretrained.named_parameters()}
    with pytest.raises(TaskError, match=r"Build the pool with the model's own tokenizer"):
        train(pretrained, TextPool(TASKS, build_tokenizer(512)), tiny_config(max_steps=2))
    assert all(torch.equal(p, before[name]) for name, p in pretrained.named_parameters())


def test_a_pad_token_the_model_lacks_trains_as_the_model_tokenizer_does(tmp_path_factory):
    """A pad token added to the tokenizer (an id past the model's vocabulary) only pads the prompts, which are never
    read: training (with TVP-loss, and its evaluations) gives what the model's own tokenizer gives, as the analyses
    do. Before, it was refused as a tokenizer of another model. A tokenizer with another id past the vocabulary still
    is."""
    pretrained = loaded(tmp_path_factory, "llama", "bridge")
    tokenizer = copy.deepcopy(pretrained.tokenizer)
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    assert tokenizer.pad_token_id == pretrained.model.cfg.d_vocab
    config = TrainConfig(
        data=DataConfig(n_per_task=3, n_shots=(1, 2), eval_n_per_task=3),
        schedule=ScheduleConfig(max_steps=2, lr=5e-2, warmup_steps=1),
        eval_every=2,
        tvp=TVPConfig(layer=0),
    )
    runs = []
    for each in (pretrained.tokenizer, tokenizer):
        pool = TextPool(TASKS, each, template="{x} -> {y}", null=True, bos=True)
        assert (pool.sample(3, (1, 2), seed=0).inputs == each.pad_token_id).any()
        lora = LoRAConfig(rank=2, alpha=2.0, dropout=0.0)
        runs.append(finetune(copy.deepcopy(pretrained.model), pool, config, "first:1", lora, progress=False))
    assert runs[0].history.drop(columns="elapsed_s").equals(runs[1].history.drop(columns="elapsed_s"))
    assert runs[0].evals.equals(runs[1].evals)
    for ours, theirs in zip(lora_parameters(runs[0].model), lora_parameters(runs[1].model), strict=True):
        assert torch.equal(ours, theirs)
    tokenizer.add_special_tokens({"additional_special_tokens": ["[SEP2]"]})
    with pytest.raises(TaskError, match=r"has 1026 token ids but the model has d_vocab=1024"):
        train(copy.deepcopy(pretrained.model), TextPool(TASKS, tokenizer), tiny_config(max_steps=2))


@pytest.mark.parametrize("loader", BACKENDS)
def test_a_training_batch_longer_than_the_context_is_a_position_error(tmp_path, loader):
    """A text pool's prompts vary in length with their examples: a training batch can be longer than the prompts
    checked before the run. It is a PositionError naming the fix, and the model is handed back as it was; before,
    the model's own IndexError or RuntimeError."""
    model = load(build_local_model("gpt2", tmp_path / "gpt2", n_layers=1, d_model=32, n_heads=2, n_ctx=30), loader)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    long = ("extraordinarily long phrase here", "another extraordinarily long answer phrase")
    pool = TextPool((TextTask("upper", (*((c, c.upper()) for c in "abcdefghijklmnopqrstu"), long)),), model.tokenizer)
    config = TrainConfig(
        data=DataConfig(n_per_task=8, n_shots=3, eval_n_per_task=2, seed=1),
        schedule=ScheduleConfig(max_steps=2, warmup_steps=1),
        eval_every=2,
    )
    checked = [held_out_batch(pool, config.data), pool.sample(1, 3, seed=0)]  # what train() checks before a step
    assert (
        max(int(batch.lengths.max()) for batch in checked)
        <= 30
        < int(training_batch(pool, config.data, 0).lengths.max())
    )
    with pytest.raises(PositionError, match=r"Prompts of \d+ positions do not fit the model's context n_ctx=30"):
        train(model, pool, config, progress=False)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


FINETUNING = [
    ("gpt2", "bridge"),
    ("llama", "bridge-compat"),
    ("mixtral", "bridge"),
    *(("qwen2", "hooked"),) * ("qwen2" in HOOKED_ARCHITECTURES),
]


@pytest.mark.parametrize(("arch", "loader"), FINETUNING, ids=[f"{a}-{loader}" for a, loader in FINETUNING])
def test_layer_finetuning_runs_on_text_tasks(tmp_path_factory, arch, loader):
    """Han et al.'s experiment on a real architecture: the model is untouched, each variant trains its own block."""
    model = loaded(tmp_path_factory, arch, loader).model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    pool = TextPool(TASKS, model.tokenizer, template="{x} -> {y}", null=True, bos=True)
    experiment = LayerFinetuning(
        k=1,
        lora=LoRAConfig(rank=2, alpha=2.0, dropout=0.1, targets=targets_of(arch)),
        train=TrainConfig(
            data=DataConfig(n_per_task=4, n_shots=2, eval_n_per_task=4),
            schedule=ScheduleConfig(max_steps=3, lr=5e-2, min_lr=5e-3, warmup_steps=1),
            eval_every=3,
        ),
        decodability=TaskDecodability(k=3, n_bootstrap=0),
        n_per_task=5,
        n_shots=2,
        n_bootstrap=0,
    )
    models, losses = experiment.finetune_variants(model, pool)
    comparison = experiment.compare(models, losses, pool, seed=0)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    assert comparison.variants == ("base", "first:1", "last:1")
    assert comparison.blocks == ((), (0,), (1,))
    assert comparison.accuracy.shape == (3, len(pool.task_names))
    assert torch.isfinite(comparison.final_loss[1:]).all()
    first_block = {name: first_block_output(m, pool) for name, m in models.items()}
    assert torch.equal(first_block["last:1"], first_block["base"])
    assert not torch.allclose(first_block["first:1"], first_block["base"])
    below_last = [i for i, layer in enumerate(comparison.layers) if layer < 1]
    torch.testing.assert_close(comparison.td[2, below_last], comparison.td[0, below_last], atol=0, rtol=0)


def first_block_output(model, pool) -> torch.Tensor:
    batch = pool.sample(2, 2, seed=3)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.inputs, names_filter="blocks.0.hook_resid_post")
    return cache["blocks.0.hook_resid_post"]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3_moe"])
def test_text_finetuning_in_micro_batches_trains_as_the_whole_batch(tmp_path_factory, arch):
    """Answers of different token lengths: each micro-batch weighs by its answer tokens, not by its prompts.

    (Architectures without dropout: GPT-2's dropout draws other masks for other passes.)
    """
    model = loaded(tmp_path_factory, arch, "bridge").model
    pool = TextPool(TASKS, model.tokenizer, template="{x} -> {y}", bos=True)
    lora = LoRAConfig(rank=2, alpha=2.0, dropout=0.0, targets=targets_of(arch))
    runs = []
    for micro_batch in (None, 3):
        config = TrainConfig(
            data=DataConfig(n_per_task=4, n_shots=2, eval_n_per_task=2, micro_batch=micro_batch),
            schedule=ScheduleConfig(max_steps=3, lr=5e-2, min_lr=5e-3, warmup_steps=1),
            eval_every=3,
        )
        run = finetune(copy.deepcopy(model), pool, config, "first:1", lora, progress=False)
        runs.append((run.history["loss"].to_numpy(), [p.detach().clone() for p in lora_parameters(run.model)]))
    torch.testing.assert_close(runs[1][0], runs[0][0], atol=1e-6, rtol=1e-5)
    # Adam divides by the root of each weight's second moment, so where the gradient is tiny the summation order's
    # float32 differences reach ~1e-6 in the weights (Hugging Face's norms compute in float32 even in a float64
    # model); a micro-batch weighed wrongly moves them by the order of a step (lr 5e-2).
    for split, whole in zip(runs[1][1], runs[0][1], strict=True):
        torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-4)
    assert any(torch.count_nonzero(p) for p in runs[0][1][1::2])  # the B matrices trained


def digests_taken(monkeypatch) -> list[torch.Tensor]:
    """From now on, every tensor whose frozen-parameter digest tv_lens takes, in order."""
    taken: list[torch.Tensor] = []

    def counted(parameter):
        taken.append(parameter)
        return parameter_digest(parameter)

    for module in ("tv_lens.training.finetune", "tv_lens.training.checkpoint_record"):
        monkeypatch.setattr(importlib.import_module(module), "parameter_digest", counted)
    return taken


CHECKPOINTED = [("llama", "bridge"), *(("qwen2", "hooked"),) * ("qwen2" in HOOKED_ARCHITECTURES)]


@pytest.mark.parametrize(("arch", "loader"), CHECKPOINTED, ids=[f"{a}-{loader}" for a, loader in CHECKPOINTED])
def test_finetuning_checkpoints_of_a_pretrained_model_hold_what_trains_and_resume_exactly(
    tmp_path_factory, tmp_path, monkeypatch, arch, loader
):
    """The frozen weights are left out (their digests kept); resuming on the model loaded again is bit-exact."""
    folder = loaded(tmp_path_factory, arch, loader).folder
    pool = TextPool(TASKS, loaded(tmp_path_factory, arch, loader).tokenizer, template="{x} -> {y}", bos=True)
    lora = LoRAConfig(rank=2, alpha=2.0, dropout=0.1)
    config = TrainConfig(
        data=DataConfig(n_per_task=4, n_shots=2, eval_n_per_task=2),
        schedule=ScheduleConfig(max_steps=4, lr=5e-2, min_lr=5e-3, warmup_steps=1),
        eval_every=2,
        checkpoint_every=2,
    )

    def run(model=None, **options):
        model = load(folder, loader) if model is None else model
        return finetune(model, pool, config, "first:1", lora, progress=False, **options)

    whole = run(checkpoint_dir=tmp_path / "a")
    first = run(checkpoint_dir=tmp_path / "b", stop_after=2)
    checkpoint = load_checkpoint(list_checkpoints(tmp_path / "b")[0])
    adapters = {id(p) for p in lora_parameters(first.model)}
    assert set(checkpoint.parameters) == {n for n, p in first.model.named_parameters() if id(p) in adapters}
    assert all("lora_" in name for name in checkpoint.parameters)
    assert len(checkpoint.frozen) > len(checkpoint.parameters)
    digested = digests_taken(monkeypatch)
    resumed = run(resume_from=tmp_path / "b")
    assert resumed.history["loss"].tolist() == whole.history["loss"].tolist()
    # Each frozen weight is read when the checkpoint is checked against the model and when the run ends, not again.
    frozen = {name: p for name, p in resumed.model.named_parameters() if name in checkpoint.frozen}
    assert len(frozen) == len(checkpoint.frozen)
    assert sorted(id(t) for t in digested) == sorted(id(p) for p in frozen.values() for _ in range(2))
    monkeypatch.undo()
    for ours, theirs in zip(lora_parameters(resumed.model), lora_parameters(whole.model), strict=True):
        assert torch.equal(ours, theirs)

    fresh = load(folder, loader)
    attach_lora(fresh, checkpoint.config.finetune)
    checkpoint.load_into(fresh)
    for ours, theirs in zip(lora_parameters(fresh), lora_parameters(first.model), strict=True):
        assert torch.equal(ours, theirs)
    other = load(folder, loader)
    with torch.no_grad():
        dict(other.named_parameters())[sorted(checkpoint.frozen)[-1]].add_(0.5)  # a frozen weight not the run's
    with pytest.raises(CheckpointError, match="frozen parameters are not the ones that run started from"):
        run(other, resume_from=tmp_path / "b")
    assert not has_lora(other)  # the failed resume took its adapters off again
