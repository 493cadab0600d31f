"""The bad-input catalogue: each wrong use of the public API raises a TvLensError that names the problem and the fix.

Every row of ``CASES`` is one distinct bad input: the call that makes it, the exception type expected, and
two regular expressions the message must match: one for what is wrong (the problem) and one for what to do
instead (the fix). The number of rows is printed at the end of every test run ("bad-input catalogue: N cases").
The static checks at the bottom keep the library honest where no catalogue row reaches: no bare ``assert``
guards user input, and every exception the library raises itself is a :class:`TvLensError`.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import copy
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from reliability_helpers import one_thread  # noqa: F401  (autouse: tiny models run on one thread)

from tv_lens.analyses import (
    AttentionKnockout,
    CompareVectors,
    Emergence,
    Geometry,
    HeadAblation,
    HeadAttention,
    ICLPerformance,
    LayerFinetuning,
    Prompts,
    Suite,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    compare_models,
    decode_vectors,
    fit_td_accuracy,
    head_attribution,
    head_importance,
    icl_performance,
    ols,
    patch_task_vectors,
    role_attention,
    task_decodability,
    task_vector_prompting,
)
from tv_lens.analyses.function_vectors import (
    FunctionVectors,
    IndirectEffects,
    MeanHeadActivations,
    causal_indirect_effects,
    function_vector,
    mean_head_activations,
)
from tv_lens.app.pretrained import PretrainedConfig, read_pretrained_config
from tv_lens.app.run_files import write_run_info
from tv_lens.errors import (
    AnalysisError,
    ArtefactError,
    CheckpointError,
    ConfigError,
    HookNotFoundError,
    InterventionNotAppliedError,
    LayerOutOfRangeError,
    MissingFileError,
    ModelNotSupportedError,
    NonFiniteError,
    PositionError,
    ResultFileError,
    ResultWriteError,
    ShapeError,
    TaskError,
    TvLensError,
    UnknownNameError,
)
from tv_lens.generation import Generation, generate, token_match
from tv_lens.interventions import ablate_head, add, knockout, run_with_interventions
from tv_lens.interventions import replace as replace_at
from tv_lens.metrics import token_accuracy
from tv_lens.models import ModelAdapter, ModelConfig, build_model
from tv_lens.models.local_hf import build_local_model, load_local_model
from tv_lens.probes import collect
from tv_lens.results import Performance, Result
from tv_lens.stats import held_out_best, seed_interval
from tv_lens.stats.bootstrap import stratified_bootstrap_ci
from tv_lens.steering import steering
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import (
    Task,
    TaskPool,
    TextPool,
    TextTask,
    Vocabulary,
    bitwise_text_tasks,
    load_examples,
    load_tasks,
    offset_pool,
    permutation_pool,
    regression_pool,
)
from tv_lens.training import (
    DataConfig,
    LoRAConfig,
    ScheduleConfig,
    TrainConfig,
    TVPConfig,
    apply_lora,
    export_huggingface,
    finetune,
    list_checkpoints,
    load_checkpoint,
    load_parameters,
    select_blocks,
    train,
    tvp_accuracy,
    tvp_losses,
)

ROOT = Path(__file__).resolve().parents[1]
POOL = offset_pool(offsets=(1, 2, 3), n_values=8)  # 3 offsets + Null, 11 tokens


def small_model(**overrides: Any) -> Any:
    config = dict(d_vocab=POOL.vocab_size, n_layers=3, d_model=32, n_heads=4, n_ctx=40)
    return build_model(ModelConfig(**{**config, **overrides}))


def tiny_train_config(**overrides: Any) -> TrainConfig:
    config = TrainConfig(
        data=DataConfig(n_per_task=2, n_shots=2, eval_n_per_task=2),
        schedule=ScheduleConfig(max_steps=2, lr=1e-3, min_lr=1e-4, warmup_steps=1),
        eval_every=2,
    )
    return replace(config, **overrides)


def resume_before_the_latest(directory: Path) -> Any:
    """Resume a run that wrote steps 2 and 4 from step 2, into its own directory (step 4 would be written over)."""
    model_config = ModelConfig(d_vocab=POOL.vocab_size, n_layers=1, d_model=16, n_heads=2, n_ctx=24)
    config = tiny_train_config(schedule=ScheduleConfig(max_steps=4, warmup_steps=1), checkpoint_every=2)
    run = train(build_model(model_config), POOL, config, checkpoint_dir=directory, progress=False)
    return train(build_model(model_config), POOL, config, resume_from=run.checkpoints[0], progress=False)


def resume_into_another_run(w: SimpleNamespace) -> Any:
    """Resume the world's run (data seed 0) into a directory holding the checkpoint of a run of data seed 1."""
    directory = w.files / "another-run"
    config = tiny_train_config(checkpoint_every=2)
    if not list_checkpoints(directory):
        other = replace(config, data=replace(config.data, seed=1))
        train(
            build_model(w.model_config),
            POOL,
            other,
            model_config=w.model_config,
            checkpoint_dir=directory,
            progress=False,
        )
    return train(
        build_model(w.model_config),
        POOL,
        config,
        model_config=w.model_config,
        resume_from=w.checkpoint,
        checkpoint_dir=directory,
        progress=False,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """Everything the cases misuse: a model, a pool, a batch, task vectors, a saved result, a checkpoint."""
    files = tmp_path_factory.mktemp("bad-inputs")
    model = small_model()
    nan_model = copy.deepcopy(model)
    with torch.no_grad():
        next(iter(nan_model.parameters())).fill_(float("nan"))
    labels = torch.arange(3).repeat_interleave(6)
    reps = torch.randn(18, 4, generator=torch.Generator().manual_seed(0)) + 5 * labels[:, None]
    result_file = task_decodability(reps, labels, config=TaskDecodability(k=3, n_bootstrap=0)).save(
        files / "td.safetensors"
    )
    model_config = ModelConfig(d_vocab=POOL.vocab_size, n_layers=1, d_model=16, n_heads=2, n_ctx=24)
    run = train(
        build_model(model_config),
        POOL,
        tiny_train_config(checkpoint_every=2),
        model_config=model_config,
        checkpoint_dir=files / "run",
        progress=False,
    )
    return SimpleNamespace(
        files=files,
        model=model,
        nan_model=nan_model,
        batch=POOL.sample(4, 3, seed=0),
        vectors=TaskVectors.from_model(model, POOL, layers=(0, 1), n_per_task=3),
        result_file=result_file,
        model_config=model_config,
        run_dir=files / "run",
        checkpoint=run.checkpoints[-1],
    )


@dataclass(frozen=True)
class Case:
    """One bad input: ``call(w)`` must raise ``error`` with ``problem`` and ``fix`` in its message."""

    id: str
    call: Callable[[SimpleNamespace], object]
    error: type[TvLensError]
    problem: str
    fix: str


def _copy_with(w: SimpleNamespace, name: str, data: bytes) -> Path:
    path = w.files / name
    path.write_bytes(data)
    return path


def _flip_middle_bytes(path: Path) -> bytes:
    """Flip a run of bytes in the middle (one byte alone may land in an archive's unused padding)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 64):
        data[i] ^= 0xFF
    return bytes(data)


def _flip_header_byte(path: Path) -> bytes:
    """A safetensors file with one byte of its JSON header changed."""
    data = bytearray(path.read_bytes())
    data[8 + int.from_bytes(data[:8], "little") // 2] ^= 0xFF
    return bytes(data)


def _flip_last_byte(path: Path) -> bytes:
    """A safetensors file with one byte of its last tensor changed (the header still parses)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    return bytes(data)


def _with_orphan_hook_point(w: SimpleNamespace, name: str) -> None:
    """Make the adapter hand out a HookPoint no forward pass calls for ``name`` (as if the model skipped it)."""
    from transformer_lens.hook_points import HookPoint

    orphan = HookPoint()
    real = ModelAdapter.hook_point
    w.monkeypatch.setattr(
        ModelAdapter, "hook_point", lambda self, wanted: orphan if wanted == name else real(self, wanted)
    )


def _word_tokenizer(n_words: int) -> Any:
    """A word-level tokenizer of ``n_words`` words plus ``[UNK]`` and ``->``: a vocabulary of its own."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "->": 1, **{f"w{i}": i + 2 for i in range(n_words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def _text_pool() -> TextPool:
    tasks = (
        TextTask("next", tuple((f"w{i}", f"w{i + 1}") for i in range(0, 20, 2))),
        TextTask("back", tuple((f"w{i + 1}", f"w{i}") for i in range(0, 20, 2))),
    )
    return TextPool(tasks, _word_tokenizer(30), template="{x} -> {y}", separator=" ")


def _two_files_named_alike(w: SimpleNamespace) -> list[Path]:
    """``a/antonyms.json`` and ``b/antonyms.json``: two task files whose stems (the default task names) agree."""
    paths = []
    for folder in ("a", "b"):
        (w.files / folder).mkdir(exist_ok=True)
        paths.append(_copy_with(w, f"{folder}/antonyms.json", b'{"hot": "cold", "up": "down"}'))
    return paths


def _without_cuda(w: SimpleNamespace) -> None:
    """Make this machine look as if it had no CUDA (the case then means the same with or without a GPU)."""
    w.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _truncated(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def _inside_steering(w: SimpleNamespace, call: Callable[[], Any]) -> Any:
    """``call()`` inside a steering block that writes at the last position of every pass."""
    with steering(w.model, torch.zeros(32), layer=0, pos=-1):
        return call()


def _means(w: SimpleNamespace, value: float | None = None, device: str = "cpu") -> MeanHeadActivations:
    """Mean head activations of the world's batch; one entry set to ``value`` if given; on ``device``."""
    means = mean_head_activations(w.model, w.batch)
    activations = means.activations.clone()
    if value is not None:
        activations[0, 0, 0, 0] = value
    return replace(means, activations=activations.to(device))


def _indirect_effects(w: SimpleNamespace, **changes: Any) -> IndirectEffects:
    """The CIE of the world's batch (as if corrupted) with one argument changed."""
    b = w.batch
    args = dict(answers=b.answers, task_ids=b.task_ids, label_noise=0.0)
    args.update(changes)
    prompts = Prompts(b.inputs, b.answer_pos, args["answers"], args["task_ids"], b.task_names)
    return causal_indirect_effects(
        w.model, prompts, _means(w), label_noise=args["label_noise"], config=FunctionVectors(n_bootstrap=0)
    )


def _separable(n_per_task: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Representations ``[prompt, 4]`` of three well separated tasks, and their labels."""
    labels = torch.arange(3).repeat_interleave(n_per_task)
    return torch.randn(len(labels), 4, generator=torch.Generator().manual_seed(0)) + 5 * labels[:, None], labels


def _aligned(w: SimpleNamespace) -> tuple[Any, torch.Tensor]:
    """The world's batch aligned for head attribution, with its answers."""
    from tv_lens.analyses.answers import answer_counts, answer_tokens
    from tv_lens.interventions.sweep import align

    answers = answer_tokens(w.batch.answers, len(w.batch))
    return align(w.model, w.batch.inputs, w.batch.answer_pos, w.batch.attention_mask, answer_counts(answers)), answers


def _up_to_the_answer(batch: Any) -> torch.Tensor:
    """Every position up to each prompt's answer position ``[batch, pos]``."""
    return torch.arange(batch.inputs.shape[1])[None, :] <= batch.answer_pos[:, None]


@cache
def _sliding_window_model(folder: Path) -> Any:
    """A one-block Mistral of random weights, through the bridge: its attention sees the last 8 positions only."""
    return load_local_model(build_local_model("mistral", folder, n_layers=1, d_model=32, n_heads=2), "bridge")


def _retyped_result(w: SimpleNamespace) -> Path:
    """The saved decodability result with its ``method`` field made a number, both digests recomputed."""
    import json

    from safetensors.torch import load, save

    from tv_lens.results.storage import METADATA_KEY, canonical_json, document_digest, tensor_digest

    data = w.result_file.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    document = json.loads(header["__metadata__"][METADATA_KEY])
    document["result"]["fields"]["method"] = 3
    tensors = load(data)
    document["tensors"] = tensor_digest(tensors)
    document["digest"] = document_digest(document)
    return _copy_with(w, "retyped.safetensors", save(tensors, metadata={METADATA_KEY: canonical_json(document)}))


def _nan_checkpoint(w: SimpleNamespace) -> Path:
    """A copy of the world's checkpoint whose first parameter is NaN, its digest recomputed."""
    from tv_lens.training.checkpoints import _digest

    record = torch.load(w.checkpoint, map_location="cpu", weights_only=True)
    record.pop("digest")
    name = next(iter(record["parameters"]))
    record["parameters"] = {**record["parameters"], name: torch.full_like(record["parameters"][name], float("nan"))}
    record["digest"] = _digest(record)
    path = w.files / "nan" / "step-0000002.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save(record, path)
    return path


CASES = [
    # --- models and model configs ---
    Case(
        "model-is-a-name",
        lambda w: TaskDecodability(k=2).run("gpt2", POOL, n_per_task=4),
        ModelNotSupportedError,
        r"cannot use a str: it has no TransformerLens `cfg`",
        r"TransformerBridge\.boot_transformers",
    ),
    Case(
        "model-is-a-plain-torch-module",
        lambda w: collect(torch.nn.Linear(4, 4), w.batch.inputs, w.batch.answer_pos, progress=False),
        ModelNotSupportedError,
        r"cannot use a Linear",
        r"Pass a TransformerLens HookedTransformer or TransformerBridge",
    ),
    Case(
        "model-config-zero-vocabulary",
        lambda w: ModelConfig(d_vocab=0),
        ConfigError,
        r"ModelConfig\.d_vocab .*got 0",
        r"must be a positive int",
    ),
    Case(
        "model-config-dtype-object",
        lambda w: ModelConfig(d_vocab=8, dtype=torch.float32),  # type: ignore[arg-type]
        ConfigError,
        r"got torch\.float32",
        r"such as 'float32' \(a string\)",
    ),
    Case(
        "model-config-heads-do-not-divide",
        lambda w: ModelConfig(d_vocab=8, d_model=30, n_heads=4),
        ConfigError,
        r"d_model=30 is not divisible by n_heads=4",
        r"set d_head explicitly",
    ),
    Case(
        "model-config-head-width-zero",
        lambda w: ModelConfig(d_vocab=8, d_model=32, n_heads=4, d_head=0),
        ConfigError,
        r"ModelConfig\.d_head must be a positive int or None .*got 0",
        r"None \(for d_model // n_heads\)",
    ),
    Case(
        "model-config-mlp-width-zero",
        lambda w: ModelConfig(d_vocab=8, d_mlp=0),
        ConfigError,
        r"ModelConfig\.d_mlp must be a positive int or None .*got 0",
        r"None \(for 4 \* d_model\)",
    ),
    Case(
        "model-config-unknown-normalization",
        lambda w: ModelConfig(d_vocab=8, normalization_type="BatchNorm"),
        ConfigError,
        r"Unknown normalization_type 'BatchNorm'",
        r"use one of \['LN', 'LNPre', 'RMS', 'RMSPre', None\]",
    ),
    Case(
        "model-config-integer-dtype",
        lambda w: ModelConfig(d_vocab=8, dtype="int64"),
        ConfigError,
        r"dtype 'int64' cannot hold trainable weights",
        r"use a floating-point dtype, one of \['float32', 'float64'",
    ),
    Case(
        "model-config-unknown-activation",
        lambda w: ModelConfig(d_vocab=8, act_fn="tanh"),
        ConfigError,
        r"Unknown act_fn 'tanh'",
        r"use one of \['gelu', 'gelu_new', 'relu', 'silu'",
    ),
    Case(
        "model-config-seed-beyond-64-bits",
        lambda w: build_model(ModelConfig(d_vocab=8, n_layers=1, d_model=16, n_heads=2, seed=2**70)),
        ConfigError,
        r"ModelConfig\.seed must be an int in \[0, 2\*\*64\), got 1180591620717411303424",
        r"e\.g\. seed=0",
    ),
    Case(
        "model-larger-than-memory",
        lambda w: build_model(ModelConfig(d_vocab=8, n_layers=1, d_model=16, n_heads=2, d_mlp=2**40)),
        ConfigError,
        r"A model of this ModelConfig needs at least [\d,.]+ GiB, but only [\d,.]+ GiB of memory is free",
        r"use smaller sizes \(d_vocab, d_model, d_mlp, n_layers, n_ctx\)",
    ),
    Case(
        "model-config-as-a-dict",
        lambda w: build_model({"d_vocab": 8}),  # type: ignore[arg-type]
        ConfigError,
        r"build_model needs a ModelConfig, got dict",
        r"ModelConfig\(\*\*fields\)",
    ),
    Case(
        "model-on-cuda-without-cuda",
        lambda w: (_without_cuda(w), build_model(w.model_config, device="cuda")),
        ConfigError,
        r"device='cuda' but CUDA is not available here",
        r"use device='cpu'",
    ),
    Case(
        "model-on-an-unknown-device",
        lambda w: build_model(w.model_config, device="gpu"),
        ConfigError,
        r"Unknown device 'gpu'",
        r"use e\.g\. 'cpu' or 'cuda'",
    ),
    # --- prompts: types, shapes, positions, lengths, vocabularies ---
    Case(
        "tokens-not-a-tensor",
        lambda w: collect(w.model, [[1, 2, 3]], 2, progress=False),
        ShapeError,
        r"got list",
        r"must be a torch\.Tensor",
    ),
    Case(
        "tokens-one-dimensional",
        lambda w: collect(w.model, torch.tensor([1, 2, 3, 4, 5]), 4, progress=False),
        ShapeError,
        r"got shape \(5,\)",
        r"Int\[batch, pos\]",
    ),
    Case(
        "answer-positions-float",
        lambda w: collect(w.model, w.batch.inputs, w.batch.answer_pos.float(), progress=False),
        ShapeError,
        r"got dtype torch\.float32",
        r"must hold integer token positions",
    ),
    Case(
        "answer-position-past-the-prompt",
        lambda w: collect(w.model, torch.ones(2, 6, dtype=torch.long), 6, progress=False),
        PositionError,
        r"answer_pos 6 of prompt 0 lies outside the prompt's tokens",
        r"index of the token right before the answer",
    ),
    Case(
        "answer-tokens-past-the-prompt",
        lambda w: run_with_interventions(w.model, torch.ones(2, 6, dtype=torch.long), 4, [], n_answer_tokens=3),
        PositionError,
        r"Prompt 0's answer has 3 tokens, but the prompt \(positions 0\.\.5\) stops 1 token\(s\) short of them",
        r"put the answer's tokens in the prompt right after answer_pos",
    ),
    Case(
        "answer-tokens-not-the-prompts",
        lambda w: head_importance(
            w.model,
            Prompts(
                w.batch.inputs,
                w.batch.answer_pos,
                torch.stack([(w.batch.answers[:, 0] + 1) % POOL.vocab_size, w.batch.answers[:, 0]], dim=1),
                w.batch.task_ids,
                w.batch.task_names,
            ),
            config=HeadAblation(n_bootstrap=0),
        ),
        PositionError,
        r"Prompt 0's answer token 0 is id \d+, but the prompt holds id \d+ in its place \(1 after answer_pos\)",
        r"answers must be the prompt's own tokens after answer_pos",
    ),
    Case(
        "prompt-longer-than-n_ctx",
        lambda w: TaskDecodability(k=2, n_bootstrap=0).run(w.model, POOL, n_per_task=4, n_shots=30),
        PositionError,
        r"needs \d+ tokens but the model's context is n_ctx=40",
        r"Use fewer shots or shorter prompts, or a model with a longer context",
    ),
    Case(
        "pool-vocabulary-larger-than-the-model",
        lambda w: TaskDecodability(k=2, n_bootstrap=0).run(small_model(d_vocab=6), POOL, n_per_task=4),
        ShapeError,
        r"Token ids must lie in \[0, 6\)",
        r"d_vocab >= pool\.vocab_size",
    ),
    Case(
        "text-pool-tokenizer-not-the-models",
        lambda w: TaskDecodability(k=2, n_bootstrap=0).run(w.model, _text_pool(), n_per_task=4, n_shots=2),
        ShapeError,
        r"Token ids must lie in \[0, 11\) for this model's vocabulary",
        r"tokenize text prompts with the model's own tokenizer",
    ),
    Case(
        "pretrained-template-with-an-escape-as-text",
        lambda w: PretrainedConfig(model="gpt2", tasks=("bitwise",), template="Q: {x}\\nA: {y}"),
        ConfigError,
        r"template 'Q: \{x\}\\\\nA: \{y\}' holds '\\\\n': a backslash and a letter",
        r"Write the character itself, e\.g\. in bash --template \$'Q: \{x\}\\nA: \{y\}'",
    ),
    Case(
        "bitwise-text-tasks-more-examples-than-pairs",
        lambda w: bitwise_text_tasks(n_bits=3),
        TaskError,
        r"n_examples must be an int in 1 \.\. 64 \(the distinct pairs of 3-bit numbers\), got 256",
        r"pass n_examples=64 or fewer, or more bits",
    ),
    Case(
        "text-pool-of-another-tokenizer-within-the-vocabulary",
        lambda w: TaskDecodability(k=2, n_bootstrap=0).run(
            _sliding_window_model(w.files / "mistral"), _text_pool(), n_per_task=4, n_shots=2
        ),
        TaskError,
        r"The TextPool's tokenizer splits 'w0 -> w1' into the ids \[2, 1, 3\] but the model's tokenizer into",
        r"Build the pool with the model's own tokenizer, TextPool\(tasks, model\.tokenizer, \.\.\.\)",
    ),
    Case(
        "attention-mask-of-another-shape",
        lambda w: collect(w.model, w.batch.inputs, w.batch.answer_pos, attention_mask=torch.ones(3, 3), progress=False),
        ShapeError,
        r"got \(3, 3\)",
        r"must have the shape of the prompts",
    ),
    Case(
        "attention-mask-with-a-hole",
        lambda w: collect(
            w.model, torch.ones(1, 5, dtype=torch.long), 4, attention_mask=torch.tensor([[1, 0, 1, 1, 1]])
        ),
        ShapeError,
        r"row 0 is not one contiguous run of real tokens",
        r"pad only on the left or the right",
    ),
    Case(
        "batch-size-not-an-int",
        lambda w: collect(w.model, w.batch.inputs, w.batch.answer_pos, batch_size=2.5, progress=False),
        ShapeError,
        r"got 2\.5",
        r"batch_size must be an int ≥ 1",
    ),
    # --- layers, heads, sites ---
    Case(
        "layer-out-of-range",
        lambda w: collect(w.model, w.batch.inputs, w.batch.answer_pos, layers=[5], progress=False),
        LayerOutOfRangeError,
        r"Layer 5 is out of range: this model has 3 blocks",
        r"use a layer in \[-1, 2\]",
    ),
    Case(
        "layers-given-as-one-int",
        lambda w: TaskVectors.from_model(w.model, POOL, layers=1, n_per_task=3),  # type: ignore[arg-type]
        LayerOutOfRangeError,
        r"layers must be a sequence of block indices .*got 1",
        r"one-element tuple, e\.g\. \(1,\)",
    ),
    Case(
        "unknown-site",
        lambda w: TaskDecodability(k=2, site="resid", n_bootstrap=0).run(w.model, POOL, n_per_task=4),
        HookNotFoundError,
        r"Unknown site 'resid'",
        r"Use one of \['resid_pre', 'resid_mid', 'resid_post'",
    ),
    Case(
        "head-out-of-range",
        lambda w: run_with_interventions(w.model, w.batch.inputs, w.batch.answer_pos, [ablate_head(0, 9)]),
        LayerOutOfRangeError,
        r"Head 9 is out of range: blocks have 4 heads",
        r"use a head in \[0, 3\]",
    ),
    Case(
        "tvp-loss-layer-out-of-range",
        lambda w: train(w.model, POOL, tiny_train_config(tvp=TVPConfig(layer=5)), progress=False),
        LayerOutOfRangeError,
        r"Layer 5 is out of range",
        r"use a layer in \[0, 2\]",
    ),
    Case(
        "tvp-accuracy-unknown-mode",
        lambda w: tvp_accuracy(w.model, w.batch, 1, mode="Replace"),
        AnalysisError,
        r"Unknown TVP mode 'Replace'",
        r"use one of \['replace', 'add'\]",
    ),
    Case(
        "tvp-accuracy-objective-a-loss-name",
        lambda w: tvp_accuracy(w.model, w.batch, 1, objective="cross_entropy"),  # type: ignore[arg-type]
        ConfigError,
        r"objective must have the methods of tv_lens\.training\.Objective .*got 'cross_entropy'",
        r"pass None \(the pool's own, objective_for\(pool\)\)",
    ),
    Case(
        "tvp-accuracy-batch-a-tensor",
        lambda w: tvp_accuracy(w.model, w.batch.inputs, 1),  # type: ignore[arg-type]
        TaskError,
        r"batch must be an ICLBatch \(or RegressionBatch\) of prompts, got a Tensor",
        r"pass pool\.sample\(n_per_task, n_shots, seed\)",
    ),
    Case(
        "tvp-losses-objective-a-loss-name",
        lambda w: tvp_losses(w.model, w.batch, TVPConfig(layer=1), objective="mse"),  # type: ignore[arg-type]
        ConfigError,
        r"objective must have the methods of tv_lens\.training\.Objective .*got 'mse'",
        r"RegressionObjective\(tolerance=0\.05\)",
    ),
    Case(
        "tvp-accuracy-unknown-source",
        lambda w: tvp_accuracy(w.model, w.batch, 1, source="same"),
        AnalysisError,
        r"Unknown vector source 'same'",
        r"one of \['other_prompt', 'same_prompt'\]; pass one of them",
    ),
    Case(
        "finetune-more-blocks-than-the-model-has",
        lambda w: LayerFinetuning(k=5).run(w.model, POOL),
        LayerOutOfRangeError,
        r"k=5 blocks to finetune, but the model has only 3 blocks",
        r"use k in 1 \.\. 3",
    ),
    Case(
        "task-vectors-of-a-layer-not-read",
        lambda w: w.vectors.get("offset(1)", 2),
        LayerOutOfRangeError,
        r"Layer 2 is not among the layers of these task vectors, \(0, 1\)",
        r"compute these task vectors again with that layer",
    ),
    Case(
        "task-vectors-combined-from-a-list",
        lambda w: w.vectors.combine([("offset(1)", 1.0)], "mine"),
        AnalysisError,
        r"combine takes a dict of task name -> weight",
        r"e\.g\. \{'first-antonym': 1\.0, 'last-copy': 1\.0, 'first-copy': -1\.0\}",
    ),
    Case(
        "task-vectors-select-of-no-task",
        lambda w: w.vectors.select(tasks=[]),
        TaskError,
        r"select takes tasks as a non-empty list, got \[\]",
        r"or None to keep them all",
    ),
    Case(
        "task-vectors-combining-a-task-they-lack",
        lambda w: w.vectors.combine({"offset(1)": 1.0, "xor": -1.0}, "mine"),
        TaskError,
        r"Task 'xor' has no task vector; these cover \['offset\(1\)'",
        r"Combine tasks among them",
    ),
    # --- NaN and infinities ---
    Case(
        "nan-weights-decodability",
        lambda w: TaskDecodability(k=2, n_bootstrap=0).run(w.nan_model, POOL, n_per_task=4),
        NonFiniteError,
        r"NaN or infinite activations at layers",
        r"check them with torch\.isfinite",
    ),
    Case(
        "nan-weights-performance",
        lambda w: ICLPerformance(shots=(1,), n_bootstrap=0).run(w.nan_model, POOL, n_per_task=2),
        NonFiniteError,
        r"outputs at the answer positions are NaN or infinite for 8 (of 8 )?prompt",
        r"[Cc]heck (them|the model's weights .*) with torch\.isfinite",
    ),
    Case(
        "nan-weights-patching",
        lambda w: TaskVectorPatching(n_bootstrap=0).run(
            w.nan_model,
            POOL,
            n_per_task=2,
            vectors=replace(w.vectors, provenance=None),  # not the NaN model's own
        ),
        NonFiniteError,
        r"outputs at the answer positions are NaN or infinite",
        r"Check them with torch\.isfinite",
    ),
    Case(
        "nan-weights-head-ablation",
        lambda w: HeadAblation(n_bootstrap=0, prune_steps=0).run(w.nan_model, POOL, n_per_task=2),
        NonFiniteError,
        r"outputs at the answer positions are NaN or infinite",
        r"Check them with torch\.isfinite",
    ),
    Case(
        "nan-representations",
        lambda w: task_decodability(
            torch.full((10, 4), float("nan")), torch.arange(10) % 2, config=TaskDecodability(k=2)
        ),
        NonFiniteError,
        r"NaN or infinite values in reps at layers \[0\] for 10 prompt",
        r"Drop those prompts or check the model",
    ),
    Case(
        "nan-intervention-vector",
        lambda w: run_with_interventions(
            w.model, w.batch.inputs, w.batch.answer_pos, [add(0, torch.full((32,), float("nan")))]
        ),
        NonFiniteError,
        r"got NaN or infinite values",
        r"pass a finite vector",
    ),
    Case(
        "single-intervention-not-in-a-list",
        lambda w: run_with_interventions(w.model, w.batch.inputs, w.batch.answer_pos, add(0, torch.ones(32))),
        ShapeError,
        r"interventions must be a list of interventions",
        r"wrap a single one: \[intervention\]",
    ),
    Case(
        "interventions-a-number",
        lambda w: generate(w.model, w.batch.inputs, 5),
        ShapeError,
        r"interventions must be a list of interventions .*got int 5",
        r"pass \[\] for none, and the options after it by keyword \(e\.g\. max_new_tokens=5\)",
    ),
    Case(
        "intervention-batch-size-zero",
        lambda w: run_with_interventions(w.model, w.batch.inputs, w.batch.answer_pos, [], batch_size=0),
        ShapeError,
        r"batch_size must be an int ≥ 1 \(prompts per pass\)",
        r"or None for all, got 0",
    ),
    Case(
        "zero-answer-tokens",
        lambda w: run_with_interventions(w.model, w.batch.inputs, w.batch.answer_pos, [], n_answer_tokens=0),
        ShapeError,
        r"n_answer_tokens must be an int >= 1",
        r"answer tokens read per prompt\), got 0",
    ),
    # --- pools, prompt counts, analysis settings ---
    Case(
        "empty-pool",
        lambda w: offset_pool(offsets=()),
        TaskError,
        r"TaskPool needs at least one task, got none",
        r"pass e\.g\. tasks=",
    ),
    Case(
        "pool-is-not-a-pool",
        lambda w: TaskDecodability(k=2).run(w.model, "offset", n_per_task=4),  # type: ignore[arg-type]
        TaskError,
        r"Cannot sample prompts from a str",
        r"pass a task pool such as tv_lens\.tasks\.offset_pool\(\)",
    ),
    Case(
        "zero-prompts-per-task",
        lambda w: HeadAblation(n_bootstrap=0).run(w.model, POOL, n_per_task=0),
        TaskError,
        r"got 0",
        r"n_per_task must be an int >= 1",
    ),
    Case(
        "negative-shot-count",
        lambda w: POOL.sample(2, n_shots=-1, seed=0),
        TaskError,
        r"got -1",
        r"n_shots must be an int >= 0",
    ),
    Case(
        "seed-not-an-int",
        lambda w: POOL.sample(2, n_shots=1, seed=1.5),  # type: ignore[arg-type]
        TaskError,
        r"got 1\.5",
        r"seed must be an int",
    ),
    Case(
        "probe-c-a-string",
        lambda w: TaskDecodability(k=2, method="probe", probe_c="1"),  # type: ignore[arg-type]
        AnalysisError,
        r"The probe's C \(inverse regularisation\) must be a number > 0, got '1'",
        r"1\.0 is usual",
    ),
    Case(
        "negative-seed",
        lambda w: TaskDecodability(k=2, method="probe", n_folds=2, n_bootstrap=0).run(
            w.model, POOL, n_per_task=4, seed=-1
        ),
        TaskError,
        r"seed must be an int in \[0, 2\*\*64\), got -1",
        r"pass a non-negative int such as seed=0",
    ),
    Case(
        "prompts-that-cannot-fit-in-memory",
        lambda w: POOL.sample(10**12, n_shots=2, seed=0),
        TaskError,
        r"n_per_task=1000000000000 with up to 2 shots asks for 4000000000000 prompts .* need at least .* GiB, but only",
        r"sample fewer prompts per task or fewer shots",
    ),
    Case(
        "shot-range-that-cannot-fit-in-memory",
        lambda w: POOL.sample(2, n_shots=(0, 10**15), seed=0),
        TaskError,
        r"n_per_task=2 with up to 1000000000000000 shots asks for 8 prompts of up to 1000000000000001 examples",
        r"sample fewer prompts per task or fewer shots",
    ),
    Case(
        "label-noise-not-a-number",
        lambda w: POOL.sample(2, n_shots=1, seed=0, label_noise=None),  # type: ignore[arg-type]
        TaskError,
        r"got None",
        r"label_noise must lie in \[0, 1\)",
    ),
    Case(
        "pool-of-task-names-not-tasks",
        lambda w: TaskPool(("offset(1)",), Vocabulary(8), 1, 8, 8),  # type: ignore[arg-type]
        TaskError,
        r"TaskPool tasks must be Task objects, got str 'offset\(1\)'",
        r"build each with Task\('id', fn\)",
    ),
    Case(
        "task-named-null",
        lambda w: TaskPool((Task("null", lambda x: x[:, 0]),), Vocabulary(8), 1, 8, 8, null=False),
        TaskError,
        r"not 'null', got \['null'\]: 'null' names the Null task",
        r"Rename the task, and pass null=True for the Null task",
    ),
    Case(
        "task-rule-returns-floats",
        lambda w: TaskPool((Task("half", lambda x: x[:, 0] / 2),), Vocabulary(8), 1, 8, 8).sample(2, 1, seed=0),
        TaskError,
        r"Task 'half' returned torch\.float32 values; a rule must return integer outputs",
        r"use integer operations \(x // 2\) or \.long\(\)",
    ),
    Case(
        "offset-pool-offset-a-float",
        lambda w: offset_pool(offsets=(1.5, 2), n_values=8),
        TaskError,
        r"offsets must be ints, got \(1\.5, 2\)",
        r"e\.g\. offsets=\(1, 3\)",
    ),
    Case(
        "text-task-examples-as-a-dict",
        lambda w: TextTask("directions", {"up": "down", "in": "out"}),  # type: ignore[arg-type]
        TaskError,
        r"TextTask 'directions': examples is a dict, but a TextTask takes \(input, output\) pairs",
        r"TextTask\(name, tuple\(mapping\.items\(\)\)\)",
    ),
    Case(
        "text-task-example-a-two-character-string",
        lambda w: TextTask("directions", ["up", "in"]),  # type: ignore[list-item]
        TaskError,
        r"every example must be an \(input, output\) pair of strings, got 'up'",
        r"pass e\.g\. \('hot', 'cold'\)",
    ),
    Case(
        "text-task-example-of-three-strings",
        lambda w: TextTask("antonyms", [("hot", "cold", "warm")]),  # type: ignore[list-item]
        TaskError,
        r"got \('hot', 'cold', 'warm'\)",
        r"every example must be an \(input, output\) pair",
    ),
    Case(
        "task-files-named-alike",
        lambda w: load_tasks(_two_files_named_alike(w)),
        TaskError,
        r"a/antonyms\.json and .*b/antonyms\.json would both be named 'antonyms'",
        r"rename one file, or load them with load_task\(path, name=\.\.\.\)",
    ),
    Case(
        "task-files-one-path-not-a-list",
        lambda w: load_tasks(str(_copy_with(w, "one.json", b'{"hot": "cold"}'))),  # type: ignore[arg-type]
        TaskError,
        r"load_tasks takes a list of task file paths, got '.*one\.json'",
        r"wrap one path: \[path\]",
    ),
    Case(
        "task-file-missing",
        lambda w: load_examples(w.files / "nowhere.json"),
        MissingFileError,
        r"No task file at .*nowhere\.json",
        r"check the path",
    ),
    Case(
        "task-file-is-a-directory",
        lambda w: load_examples(w.files),
        TaskError,
        r"is a directory, not a task file",
        r"pass the path of a JSON file in it",
    ),
    Case(
        "task-file-not-utf8",
        lambda w: load_examples(_copy_with(w, "latin1.json", '{"café": "coffee"}'.encode("latin-1"))),
        TaskError,
        r"latin1\.json is not UTF-8 text \(byte 5 is b'\\xe9'\)",
        r"save the task file as UTF-8 JSON",
    ),
    Case(
        "task-file-nested-too-deeply",
        lambda w: load_examples(_copy_with(w, "deep.json", b"[" * 100_000 + b"]" * 100_000)),
        TaskError,
        r"deep\.json nests JSON arrays or objects too deeply to read",
        r"a task file must be a \{\"input\": \"output\", \.\.\.\} object",
    ),
    Case(
        "task-file-key-given-twice",
        lambda w: load_examples(_copy_with(w, "repeated.json", b'{"hot": "cold", "big": "small", "hot": "icy"}')),
        TaskError,
        r"the key 'hot' appears more than once in one JSON object, so all but its last value would be dropped",
        r"Give each input once, or use the records format",
    ),
    Case(
        "task-file-one-record-not-in-a-list",
        lambda w: load_examples(_copy_with(w, "record.json", b'{"input": "hot", "output": "cold"}')),
        TaskError,
        r"record\.json is one JSON object with 'input' and 'output' keys: one record",
        r"wrap it in a list, \[\{\"input\": \.\.\., \"output\": \.\.\.\}\]",
    ),
    Case(
        "too-few-prompts-per-task-for-knn",
        lambda w: TaskDecodability(k=10, n_bootstrap=0).run(w.model, POOL, n_per_task=5),
        AnalysisError,
        r"k=10 needs at least k\+1=11 prompts per task .*got \{'offset\(1\)': 5",
        r"Sample more prompts per task or lower k",
    ),
    Case(
        "k-zero",
        lambda w: TaskDecodability(k=0),
        AnalysisError,
        r"got 0",
        r"k must be an int >= 1",
    ),
    Case(
        "null-prompts-alone-head-ablation",
        lambda w: HeadAblation(n_bootstrap=0, prune_steps=0).run_batch(
            w.model, w.batch.select(w.batch.task_ids == w.batch.task_names.index("null"))
        ),
        AnalysisError,
        r"Every prompt is of the Null task 'null' \(random answers\), and head importance reports means",
        r"Pass prompts of at least one other task; .* pass null_task=''",
    ),
    Case(
        "null-prompts-alone-task-vector-prompting",
        lambda w: TaskVectorPrompting(n_bootstrap=0).run_batch(
            w.model, w.batch.select(w.batch.task_ids == w.batch.task_names.index("null"))
        ),
        AnalysisError,
        r"Every prompt is of the Null task 'null' .* task-vector prompting reports means",
        r"Pass prompts of at least one other task",
    ),
    Case(
        "train-progress-not-a-flag",
        lambda w: train(w.model, POOL, TrainConfig(), progress="no"),
        ConfigError,
        r"progress must be True or False \(show a progress bar\), got 'no'",
        r"True or False",
    ),
    Case(
        "td-unknown-repeats",
        lambda w: TaskDecodability(repeats="drop"),
        AnalysisError,
        r"Unknown repeats='drop'",
        r"use 'keep' .* or 'leave_out'",
    ),
    Case(
        "td-leave-out-repeats-without-prompt-ids",
        lambda w: task_decodability(
            torch.randn(10, 4), torch.arange(10) % 2, config=TaskDecodability(k=2, repeats="leave_out")
        ),
        AnalysisError,
        r"repeats='leave_out' needs to know which prompts are identical",
        r"pass Representations from tv_lens\.probes\.collect, or prompt_ids=",
    ),
    Case(
        "td-leave-out-a-group-too-large",
        lambda w: task_decodability(
            torch.randn(10, 4),
            torch.arange(10) % 2,
            prompt_ids=(torch.arange(10) < 9).long(),
            config=TaskDecodability(k=2, repeats="leave_out"),
        ),
        AnalysisError,
        r"k=2 needs k points outside every group, but a group holds 9 of the 10 points",
        r"sample more distinct prompts or lower k",
    ),
    Case(
        "td-prompt-ids-of-another-length",
        lambda w: task_decodability(torch.randn(10, 4), torch.arange(10) % 2, prompt_ids=torch.arange(4)),
        ShapeError,
        r"prompt_ids has 4 entries but reps has 10 prompts",
        r"pass one prompt id per prompt",
    ),
    Case(
        "a-single-task",
        lambda w: task_decodability(
            torch.randn(10, 4), torch.zeros(10, dtype=torch.long), config=TaskDecodability(k=2)
        ),
        AnalysisError,
        r"TD needs prompts of at least two tasks, got prompts of 1",
        r"sample a pool with several tasks",
    ),
    Case(
        "labels-of-another-length",
        lambda w: task_decodability(torch.randn(10, 4), torch.arange(9) % 2, config=TaskDecodability(k=2)),
        ShapeError,
        r"labels has 9 entries but reps has 10 prompts",
        r"pass one task id per prompt",
    ),
    Case(
        "tvp-with-one-prompt-per-task",
        lambda w: TaskVectorPrompting(n_bootstrap=0).run(w.model, POOL, n_per_task=1),
        TaskError,
        r"task 'offset\(1\)' has 1 prompt",
        r"Sample at least 2 prompts per task",
    ),
    Case(
        "projection-of-two-prompts",
        lambda w: Geometry().compute(torch.randn(2, 4), torch.tensor([0, 1])),
        AnalysisError,
        r"got 2 and 4",
        r"needs at least 3 prompts",
    ),
    Case(
        "head-top-k-larger-than-the-heads",
        lambda w: HeadAblation(top_k=100, n_bootstrap=0).run(w.model, POOL, n_per_task=2),
        AnalysisError,
        r"got 100",
        r"top_k must be an int in \[1, 12\]",
    ),
    Case(
        "unknown-patching-mode",
        lambda w: TaskVectorPatching(mode="swap"),  # type: ignore[arg-type]
        AnalysisError,
        r"Unknown patching mode 'swap'",
        r"use one of \['replace', 'add', 'add_difference'\]",
    ),
    Case(
        "confidence-level-above-one",
        lambda w: TaskDecodability(ci=1.5),
        AnalysisError,
        r"got 1\.5",
        r"confidence level in \(0, 1\), e\.g\. 0\.95",
    ),
    Case(
        "answers-of-fewer-prompts",
        lambda w: head_importance(
            w.model,
            Prompts(w.batch.inputs, w.batch.answer_pos, w.batch.answers[:3], w.batch.task_ids, w.batch.task_names),
        ),
        ShapeError,
        r"answers must be integer token ids \[batch=16, n_answer\] \(batch\.answers.*\), got torch\.int64 \(3, 1\)",
        r"pass the answers of these prompts",
    ),
    Case(
        "task-vectors-from-another-model",
        lambda w: TaskVectorPatching(n_bootstrap=0).run(
            w.model, POOL, n_per_task=2, vectors=TaskVectors.from_model(small_model(d_model=16), POOL, n_per_task=2)
        ),
        ShapeError,
        r"task vectors have d_model=16 but the model has d_model=32",
        r"build them from this model",
    ),
    Case(
        "task-without-a-vector",
        lambda w: w.vectors.get("xor", 0),
        TaskError,
        r"Task 'xor' has no vector",
        r"Build them from prompts of that task",
    ),
    Case(
        "suite-result-of-an-analysis-not-run",
        lambda w: Suite((TaskDecodability(k=2, n_bootstrap=0),)).run(w.model, POOL, n_per_task=3)["geometry"],
        UnknownNameError,
        r"No analysis 'geometry' in this suite; it holds \['decodability'\]",
        r"add the analysis to the Suite",
    ),
    Case(
        "suite-run-batch-with-a-model-analysis",
        lambda w: Suite((ICLPerformance(),)).run_batch(w.model, w.batch),
        AnalysisError,
        r"run_batch runs representation analyses only",
        r"need run\(model, pool, \.\.\.\)",
    ),
    Case(
        "emergence-of-unknown-checkpoints",
        lambda w: Emergence().run([1, 2], POOL),  # type: ignore[list-item]
        AnalysisError,
        r"Unknown checkpoint int",
        r"pass checkpoint files \(list_checkpoints\(dir\)\)",
    ),
    Case(
        "emergence-of-a-directory",
        lambda w: Emergence().run(w.run_dir, POOL),
        AnalysisError,
        r"checkpoints must be a list of checkpoints, got the path '.*run'",
        r"pass the files of a run's directory \(list_checkpoints\(dir\)\)",
    ),
    Case(
        "emergence-checkpoint-without-model-config",
        lambda w: Emergence().run([replace(load_checkpoint(w.checkpoint), model_config=None)], POOL),
        AnalysisError,
        r"step-0000002\.pt has no model config \(its run was started without model_config=\)",
        r"Pass \(step, load\) pairs instead, whose load\(\) builds or loads the model",
    ),
    Case(
        "compare-no-models",
        lambda w: compare_models({}, w.batch),
        AnalysisError,
        r"got an empty dict",
        r"\{'base': model, 'finetuned': other\}",
    ),
    # --- interventions that write nothing, through each entry point that intervenes ---
    Case(
        "intervention-selecting-no-prompt",
        lambda w: run_with_interventions(
            w.model, w.batch.inputs, w.batch.answer_pos, [replace_at(1, torch.zeros(0, 32), rows=[])]
        ),
        InterventionNotAppliedError,
        r"replace\(layer 1, resid_post, pos=answer\) wrote to no prompt",
        r"Check its rows= selection",
    ),
    Case(
        "patching-hook-the-model-never-calls",
        lambda w: (
            _with_orphan_hook_point(w, "blocks.1.hook_resid_pre"),
            TaskVectorPatching(layers=(0,), n_bootstrap=0).run(w.model, POOL, n_per_task=2, vectors=w.vectors),
        ),
        InterventionNotAppliedError,
        r"replace\(layer 1, resid_pre, .*\) wrote to no prompt: hook 'blocks\.1\.hook_resid_pre' never ran",
        r"the model calls this hook point in its forward pass",
    ),
    Case(
        "prompting-hook-the-model-never-calls",
        lambda w: (
            _with_orphan_hook_point(w, "blocks.1.hook_resid_pre"),
            TaskVectorPrompting(layers=(0,), n_bootstrap=0).run(w.model, POOL, n_per_task=3),
        ),
        InterventionNotAppliedError,
        r"replace\(layer 1, resid_pre, .*\) wrote to no prompt",
        r"the model calls this hook point in its forward pass",
    ),
    Case(
        "head-ablation-hook-the-model-never-calls",
        lambda w: (
            _with_orphan_hook_point(w, "blocks.1.attn.hook_z"),
            HeadAblation(n_bootstrap=0, prune_steps=0, attribution=False).run(w.model, POOL, n_per_task=2),
        ),
        InterventionNotAppliedError,
        r"ablate_head\(layer 1 head 0, attn\.hook_z, .*\) wrote to no prompt",
        r"the model calls this hook point in its forward pass",
    ),
    # --- reads at hook points the model never calls: an error, never rows left empty ---
    Case(
        "collect-hook-the-model-never-calls",
        lambda w: (
            _with_orphan_hook_point(w, "blocks.1.hook_resid_post"),
            collect(w.model, w.batch.inputs, w.batch.answer_pos, layers=[0, 1], progress=False),
        ),
        HookNotFoundError,
        r"never called hook point\(s\) \['blocks\.1\.hook_resid_post'\], so nothing was read there",
        r"a model that calls these hook points in its forward pass",
    ),
    Case(
        "task-vectors-hook-the-model-never-calls",
        lambda w: (
            _with_orphan_hook_point(w, "blocks.0.hook_resid_post"),
            TaskVectors.from_model(w.model, w.batch, layers=(0,), reduce="mean_over_demo_positions"),
        ),
        HookNotFoundError,
        r"never called hook point\(s\) \['blocks\.0\.hook_resid_post'\]",
        r"a model that calls these hook points in its forward pass",
    ),
    Case(
        "mean-ablation-hook-the-model-never-calls",
        lambda w: (
            _with_orphan_hook_point(w, "blocks.2.attn.hook_z"),
            HeadAblation(mode="mean", n_bootstrap=0, prune_steps=0).run(w.model, POOL, n_per_task=2),
        ),
        HookNotFoundError,
        r"never called hook point\(s\) \['blocks\.2\.attn\.hook_z'\]",
        r"a model that calls these hook points in its forward pass",
    ),
    Case(
        "tvp-loss-hook-the-model-never-calls",
        lambda w: (
            _with_orphan_hook_point(w, "blocks.1.hook_resid_post"),
            tvp_losses(w.model, w.batch, TVPConfig(layer=1)),
        ),
        HookNotFoundError,
        r"never called hook point 'blocks\.1\.hook_resid_post', so no task vector was read",
        r"a model that calls it in its forward pass",
    ),
    # --- saved results ---
    Case(
        "result-file-truncated",
        lambda w: Result.load(_copy_with(w, "truncated.safetensors", _truncated(w.result_file))),
        ResultFileError,
        r"truncated\.safetensors is not a readable result file .*corrupt or truncated",
        r"Re-run the analysis and save it again",
    ),
    Case(
        "result-file-header-garbled",
        lambda w: Result.load(_copy_with(w, "garbled.safetensors", _flip_header_byte(w.result_file))),
        ResultFileError,
        r"garbled\.safetensors is not a readable result file .*corrupt or truncated",
        r"Re-run the analysis and save it again",
    ),
    Case(
        "result-file-tensor-bytes-altered",
        lambda w: Result.load(_copy_with(w, "altered.safetensors", _flip_last_byte(w.result_file))),
        ResultFileError,
        r"altered\.safetensors is corrupt: its tensors do not match the digest",
        r"Re-run the analysis and save it again",
    ),
    Case(
        "result-file-of-another-type",
        lambda w: Performance.load(w.result_file),
        ResultFileError,
        r"holds a Decodability, not a Performance",
        r"load it with Decodability\.load",
    ),
    Case(
        "result-file-is-a-checkpoint",
        lambda w: Result.load(w.checkpoint),
        ResultFileError,
        r"step-0000002\.pt is not a readable result file",
        r"was not written by Result\.save",
    ),
    Case(
        "result-saved-over-a-checkpoint",
        lambda w: w.vectors.save(w.checkpoint),
        ResultFileError,
        r"step-0000002\.pt is an existing file that is not a tv_lens result .* it is not overwritten",
        r"Save the result to another path, or move that file away first",
    ),
    Case(
        "result-file-missing",
        lambda w: Result.load(w.files / "nowhere.safetensors"),
        MissingFileError,
        r"No result file at .*nowhere\.safetensors",
        r"check the path",
    ),
    Case(
        "result-path-is-a-directory",
        lambda w: Result.load(w.files),
        ResultFileError,
        r"is a directory, not a result file",
        r"pass the path of a file written by Result\.save",
    ),
    Case(
        "result-saved-onto-a-directory",
        lambda w: w.vectors.save(w.files),
        ResultFileError,
        r"is a directory",
        r"save to a file path inside it",
    ),
    # --- checkpoints ---
    Case(
        "checkpoint-truncated",
        lambda w: load_checkpoint(_copy_with(w, "cut.pt", _truncated(w.checkpoint))),
        CheckpointError,
        r"cut\.pt is truncated or corrupt",
        r"resume from an earlier checkpoint of the run",
    ),
    Case(
        "checkpoint-altered",
        lambda w: load_checkpoint(_copy_with(w, "altered.pt", _flip_middle_bytes(w.checkpoint))),
        CheckpointError,
        r"altered\.pt is (truncated or )?corrupt",
        r"resume from an earlier checkpoint of the run",
    ),
    Case(
        "checkpoint-from-another-config",
        lambda w: train(
            build_model(w.model_config),
            POOL,
            tiny_train_config(schedule=ScheduleConfig(max_steps=2, lr=5e-3, min_lr=1e-4, warmup_steps=1)),
            model_config=w.model_config,
            resume_from=w.run_dir,
            progress=False,
        ),
        CheckpointError,
        r"comes from a run with a different config: config\.schedule\.lr = 0\.001 in the checkpoint but 0\.005",
        r"Resume with the same model, pool and config",
    ),
    Case(
        "checkpoint-into-a-model-of-another-shape",
        lambda w: load_parameters(w.model, load_checkpoint(w.checkpoint).parameters),
        CheckpointError,
        r"do not match the model's",
        r"model built from the same ModelConfig",
    ),
    Case(
        "checkpoint-directory-of-another-run",
        lambda w: train(
            build_model(w.model_config), POOL, tiny_train_config(), checkpoint_dir=w.run_dir, progress=False
        ),
        CheckpointError,
        r"already holds checkpoints",
        r"Pass resume_from= that directory to continue that run, or use an empty directory",
    ),
    Case(
        "resume-before-later-checkpoints",
        lambda w: resume_before_the_latest(w.files / "three-checkpoints"),
        CheckpointError,
        r"holds checkpoints later than step 2, the one resumed from \(step-0000004\.pt\)",
        r"Resume from the latest \(resume_from= the directory\), or .*checkpoint_dir= a new directory",
    ),
    Case(
        "resume-into-a-directory-of-another-run",
        resume_into_another_run,
        CheckpointError,
        r"another-run holds checkpoints of another run \(step-0000002\.pt differs from .* in config\.data\.seed\)",
        r"Write the resumed run to checkpoint_dir= a new directory, or to that of its checkpoint",
    ),
    Case(
        "resume-past-stop-after",
        lambda w: train(
            build_model(w.model_config),
            POOL,
            tiny_train_config(checkpoint_every=2),
            model_config=w.model_config,
            resume_from=w.run_dir,
            stop_after=1,
            progress=False,
        ),
        ConfigError,
        r"step-0000002\.pt is the checkpoint of step 2, past stop_after=1",
        r"Pass stop_after= a step after 2 \(or None, to train to the end\), or resume from a checkpoint of step 1",
    ),
    # --- training settings ---
    Case(
        "warmup-longer-than-the-run",
        lambda w: ScheduleConfig(max_steps=10, warmup_steps=20),
        ConfigError,
        r"got 20",
        r"warmup_steps must be an int in \[0, max_steps=10\]",
    ),
    Case(
        "negative-tvp-loss-weight",
        lambda w: TVPConfig(layer=0, lam=-1.0),
        ConfigError,
        r"lam \(λ\) must be >= 0, got -1\.0",
        r"use lam=0 to train without the TVP term",
    ),
    Case(
        "tvp-loss-with-one-prompt-per-task",
        lambda w: TrainConfig(data=DataConfig(n_per_task=1), tvp=TVPConfig(layer=0)),
        ConfigError,
        r"TVP-loss with source='other_prompt' .* every task needs 2 prompts or more; got n_per_task=1",
        r"Raise them to 2 or more, or use TVPConfig\(source='same_prompt'\)",
    ),
    Case(
        "train-config-as-a-dict",
        lambda w: train(w.model, POOL, {"lr": 1e-3}, progress=False),  # type: ignore[arg-type]
        ConfigError,
        r"config must be a TrainConfig, got dict",
        r"TrainConfig\.from_dict",
    ),
    Case(
        "train-config-dict-with-an-unknown-field",
        lambda w: TrainConfig.from_dict({"learning_rate": 1e-3}),
        ConfigError,
        r"Unknown TrainConfig field\(s\) \['learning_rate'\]",
        r"known: \['checkpoint_every', 'data'",
    ),
    Case(
        "train-config-dict-section-not-a-dict",
        lambda w: TrainConfig.from_dict({"schedule": 200}),
        ConfigError,
        r"TrainConfig\.schedule must be a dict of ScheduleConfig fields, got int 200",
        r"pass a dict of its fields, as TrainConfig\.to_dict\(\) writes it",
    ),
    Case(
        "train-config-dict-with-an-unknown-nested-field",
        lambda w: TrainConfig.from_dict({"schedule": {"learning_rate": 1e-3}}),
        ConfigError,
        r"Unknown TrainConfig\.schedule field\(s\) \['learning_rate'\]",
        r"known: \['lr', 'max_steps', 'min_lr', 'warmup_steps'\]",
    ),
    Case(
        "train-config-dict-number-as-a-string",
        lambda w: TrainConfig.from_dict({"schedule": {"lr": "1e-3"}}),
        ConfigError,
        r"got min_lr=0\.0001, lr='1e-3'",
        r"Need numbers 0 <= min_lr <= lr",
    ),
    Case(
        "train-config-dict-without-a-required-field",
        lambda w: TrainConfig.from_dict({"tvp": {"lam": 1.0}}),
        ConfigError,
        r"TrainConfig\.tvp lacks the required field\(s\) \['layer'\]",
        r"add them \(see TVPConfig\)",
    ),
    Case(
        "lora-unknown-target",
        lambda w: LoRAConfig(targets=("W_X",)),
        ConfigError,
        r"Unknown LoRA target\(s\) \['W_X'\]",
        r"choose among \['W_Q'",
    ),
    Case(
        "lora-target-twice",
        lambda w: LoRAConfig(targets=("W_Q", "W_V", "W_Q")),
        ConfigError,
        r"LoRA targets must be distinct \(one adapter per weight\), got \['W_Q', 'W_V', 'W_Q'\]",
        r"name each weight once",
    ),
    Case(
        "lora-gate-of-an-mlp-without-one",
        lambda w: apply_lora(copy.deepcopy(w.model), (0,), LoRAConfig(targets=("W_Q", "W_gate"))),
        ConfigError,
        r"Block 0 has no W_gate \(its MLP is not gated\)",
        r"LoRA targets of this model are among \['W_Q'",
    ),
    Case(
        "export-of-a-model-that-wraps-no-huggingface-model",
        lambda w: export_huggingface(w.model, w.files / "exported"),
        ModelNotSupportedError,
        r"Export writes the Hugging Face model a TransformerBridge wraps, and this \w+ wraps none",
        r"load the model with TransformerBridge.boot_transformers, finetune it, then export it",
    ),
    Case(
        "text-pool-of-another-tokenizer",
        lambda w: train(w.model, _text_pool(), tiny_train_config(), progress=False),
        TaskError,
        r"The pool's tokenizer has 32 token ids but the model has d_vocab=",
        r"build the TextPool with the model's own tokenizer",
    ),
    Case(
        "emergence-step-paired-with-neither-model-nor-loader",
        lambda w: Emergence().run([(2, "step2")], POOL),
        AnalysisError,
        r"The checkpoint of step 2 holds a str",
        r"pair each step with a model or with a function of no arguments that loads it",
    ),
    Case(
        "model-config-not-the-models",
        lambda w: train(w.model, POOL, tiny_train_config(), model_config=w.model_config, progress=False),
        ConfigError,
        r"The model does not match model_config: n_layers=3 \(config: 1\)",
        r"Pass the config the model was built from",
    ),
    Case(
        "every-parameter-frozen",
        lambda w: train(_frozen(w.model_config), POOL, tiny_train_config(), progress=False),
        ConfigError,
        r"Nothing to train: every parameter of the model is frozen",
        r"requires_grad_\(True\)",
    ),
    # --- dtypes, devices, grad modes, seeds and other inputs found by fuzzing (tests/fuzz) ---
    Case(
        "tokens-of-dtype-uint8",
        lambda w: collect(w.model, w.batch.inputs.to(torch.uint8), w.batch.answer_pos, progress=False),
        ShapeError,
        r"inputs of dtype torch\.uint8 are neither token ids nor a residual stream",
        r"torch\.long or torch\.int32 \(convert with tokens\.long\(\)\)",
    ),
    Case(
        "tokens-of-dtype-bool",
        lambda w: run_with_interventions(w.model, w.batch.inputs.bool(), w.batch.answer_pos, []),
        ShapeError,
        r"inputs of dtype torch\.bool are neither token ids nor a residual stream",
        r"convert with tokens\.long\(\)",
    ),
    Case(
        "tokens-on-the-meta-device",
        lambda w: collect(w.model, w.batch.inputs.to("meta"), w.batch.answer_pos, progress=False),
        ShapeError,
        r"inputs is a tensor on the meta device, which has a shape but no values",
        r"create it on a real device",
    ),
    Case(
        "prompts-of-no-tokens",
        lambda w: collect(w.model, torch.ones(2, 0, dtype=torch.long), 0, attention_mask=torch.ones(2, 0)),
        ShapeError,
        r"inputs hold prompts of no tokens \(shape \(2, 0\)\)",
        r"pass at least one token each",
    ),
    Case(
        "answer-position-none",
        lambda w: collect(w.model, w.batch.inputs, None, progress=False),  # type: ignore[arg-type]
        ShapeError,
        r"answer_pos must be an int or one int per prompt .*, got None",
        r"one int per prompt",
    ),
    Case(
        "answer-position-beyond-64-bits",
        lambda w: collect(w.model, w.batch.inputs, 2**70, progress=False),
        ShapeError,
        r"answer_pos must hold token positions \(64-bit ints\), got 1180591620717411303424",
        r"token positions \(64-bit ints\)",
    ),
    Case(
        "attention-mask-a-string",
        lambda w: collect(w.model, w.batch.inputs, w.batch.answer_pos, attention_mask="left", progress=False),
        ShapeError,
        r"attention_mask must be a \[batch, pos\] tensor of 0s and 1s, got 'left'",
        r"tensor of 0s and 1s",
    ),
    Case(
        "collect-per-head-site",
        lambda w: collect(w.model, w.batch.inputs, w.batch.answer_pos, site="attn.hook_z", progress=False),
        HookNotFoundError,
        r"Unknown site 'attn\.hook_z' for reading residual-stream rows\. It names the per-head attention output",
        r"ablated with ablate_head, not read as a residual row\. Use one of \['resid_pre'",
    ),
    Case(
        "task-vectors-of-no-task",
        lambda w: TaskVectors.from_model(w.model, w.batch, layers=(0,), tasks=[]),
        TaskError,
        r"tasks= names no task, so there is nothing to average",
        r"name at least one task of the batch .*or pass tasks=None",
    ),
    Case(
        "task-vectors-per-head-hook-name",
        lambda w: TaskVectors.from_model(w.model, POOL, layers=(0,), n_per_task=3, site="blocks.0.attn.hook_z"),
        HookNotFoundError,
        r"Unknown site 'blocks\.0\.attn\.hook_z' for reading residual-stream rows",
        r"ablated with ablate_head, not read as a residual row",
    ),
    Case(
        "head-index-a-float",
        lambda w: run_with_interventions(w.model, w.batch.inputs, w.batch.answer_pos, [ablate_head(0, 1.0)]),
        LayerOutOfRangeError,
        r"Head must be an int index, got 1\.0 \(float\)",
        r"use a head in \[0, 3\], e\.g\. ablate_head\(layer, 0\)",
    ),
    Case(
        "head-index-a-bool",
        lambda w: run_with_interventions(w.model, w.batch.inputs, w.batch.answer_pos, [ablate_head(0, True)]),
        LayerOutOfRangeError,
        r"Head must be an int index, got True \(bool\)",
        r"use a head in \[0, 3\]",
    ),
    Case(
        "steering-meta-vector",
        lambda w: steering(w.model, torch.zeros(32, device="meta"), layer=0).__enter__(),
        ShapeError,
        r"steering vector is a tensor on the meta device",
        r"create it on a real device",
    ),
    Case(
        "tv-lens-pass-inside-steering-at-one-position",
        lambda w: _inside_steering(w, lambda: collect(w.model, w.batch.inputs, w.batch.answer_pos, progress=False)),
        PositionError,
        r"steering block writes at one position of every pass .* not each prompt's own token",
        r"outside the block, or steer them with steering\(\.\.\., pos='all'\)",
    ),
    Case(
        "clean-residual-of-token-ids",
        lambda w: run_with_interventions(
            w.model,
            w.batch.inputs,
            w.batch.answer_pos,
            [add(1, torch.zeros(32))],
            attention_mask=w.batch.attention_mask,
            clean_residual=w.batch.inputs,
            clean_residual_layer=1,
        ),
        ShapeError,
        r"clean_residual must be the float residual stream entering block 1 .*got torch\.int64 values",
        r"model\(tokens, stop_at_layer=1\).*or leave clean_residual out",
    ),
    Case(
        "residual-layer-with-token-ids",
        lambda w: run_with_interventions(
            w.model, w.batch.inputs, w.batch.answer_pos, [], attention_mask=w.batch.attention_mask, residual_layer=1
        ),
        ShapeError,
        r"residual_layer=1 says the inputs are the residual stream entering block 1, but they are torch\.int64 token",
        r"pass that residual \(e\.g\. model\(tokens, stop_at_layer=1\)\), or leave residual_layer out",
    ),
    Case(
        "vector-a-string",
        lambda w: run_with_interventions(w.model, w.batch.inputs, w.batch.answer_pos, [add(0, "north")]),
        ShapeError,
        r"add's vector must be a vector of numbers",
        r"a float tensor \[d_model\]",
    ),
    Case(
        "vector-of-bools",
        lambda w: run_with_interventions(
            w.model, w.batch.inputs, w.batch.answer_pos, [add(0, torch.ones(32, dtype=torch.bool))]
        ),
        ShapeError,
        r"add got a torch\.bool vector",
        r"pass a float tensor",
    ),
    Case(
        "vector-on-the-meta-device",
        lambda w: run_with_interventions(
            w.model, w.batch.inputs, w.batch.answer_pos, [replace_at(0, torch.ones(32, device="meta"))]
        ),
        ShapeError,
        r"replace's vector is a tensor on the meta device",
        r"create it on a real device",
    ),
    Case(
        "vector-overflowing-a-float16-model",
        lambda w: run_with_interventions(
            small_model(dtype="float16"), w.batch.inputs, w.batch.answer_pos, [add(0, torch.full((32,), 1e5))]
        ),
        NonFiniteError,
        r"got values too large for the model's dtype torch\.float16",
        r"pass a vector within that range",
    ),
    Case(
        "attribution-of-a-model-made-in-inference-mode",
        lambda w: _in_inference_mode(
            lambda: HeadAblation(n_bootstrap=0, prune_steps=0).run(small_model(n_layers=1), POOL, n_per_task=2)
        ),
        AnalysisError,
        r"weights were created inside torch\.inference_mode\(\), so no gradient can flow",
        r"Build or load the model outside inference mode, or pass attribution=False",
    ),
    Case(
        "train-in-inference-mode",
        lambda w: _in_inference_mode(
            lambda: train(build_model(w.model_config), POOL, tiny_train_config(), progress=False)
        ),
        ConfigError,
        r"train\(\) was called inside torch\.inference_mode\(\)",
        r"Call train\(\) outside the inference_mode block",
    ),
    Case(
        "model-on-the-meta-device",
        lambda w: build_model(w.model_config, device="meta"),
        ConfigError,
        r"device='meta' holds no weights",
        r"use device='cpu' or an available accelerator",
    ),
    Case(
        "bootstrap-seed-beyond-64-bits",
        lambda w: HeadAblation(n_bootstrap=5, prune_steps=0, attribution=False).run_batch(w.model, w.batch, seed=2**64),
        TaskError,
        r"seed must be an int in \[0, 2\*\*64\), got 18446744073709551616",
        r"pass a non-negative int such as seed=0",
    ),
    Case(
        "bootstrap-seed-negative",
        lambda w: TaskDecodability(k=2, n_bootstrap=5).run_batch(w.model, w.batch, seed=-1),
        TaskError,
        r"seed must be an int in \[0, 2\*\*64\), got -1",
        r"pass a non-negative int such as seed=0",
    ),
    Case(
        "generation-seed-negative",
        lambda w: generate(w.model, w.batch, max_new_tokens=1, do_sample=True, seed=-1),
        TaskError,
        r"seed must be an int in \[0, 2\*\*64\), got -1",
        r"pass a non-negative int such as seed=0",
    ),
    Case(
        "permutation-pool-seed-negative",
        lambda w: permutation_pool(n_tasks=2, n_values=4, seed=-1),
        TaskError,
        r"seed must be an int in \[0, 2\*\*64\), got -1",
        r"pass a non-negative int such as seed=0",
    ),
    Case(
        "confidence-level-a-string",
        lambda w: TaskDecodability(ci="0.95"),  # type: ignore[arg-type]
        AnalysisError,
        r"got '0\.95'",
        r"confidence level in \(0, 1\), e\.g\. 0\.95",
    ),
    Case(
        "performance-shots-one-int",
        lambda w: ICLPerformance(shots=3),  # type: ignore[arg-type]
        AnalysisError,
        r"shots must be a non-empty tuple of ints >= 0, got 3",
        r"one-element tuple, e\.g\. shots=\(3,\)",
    ),
    Case(
        "run-file-nested-too-deeply",
        lambda w: read_pretrained_config(_copy_with(w, "run.json", b"[" * 10_000 + b"]" * 10_000).parent),
        ArtefactError,
        r"run\.json is not valid JSON \(maximum recursion depth exceeded",
        r"delete it and rerun the .* command that made this directory",
    ),
    Case(
        "run-file-not-an-object",
        lambda w: read_pretrained_config(_copy_with(w, "run.json", b"[1, 2]").parent),
        ArtefactError,
        r"the whole file should be a JSON object, but it is list",
        r"delete it and rerun the .* command that made this directory",
    ),
    Case(
        "run-file-cannot-be-written",
        lambda w: write_run_info(_copy_with(w, "a-file", b"x"), {"description": ["a run"]}),
        ResultWriteError,
        r"Cannot save .*a-file/run\.json: .*is a file, not a directory",
        r"choose a path whose parent folders are directories, or move that file away",
    ),
    Case(
        "function-vector-heads-not-pairs",
        lambda w: function_vector(w.model, _means(w), [(0,)]),
        AnalysisError,
        r"heads must be IndirectEffects or \(layer, head\) pairs of int indices.*got \(0,\) among them",
        r"e\.g\. \[\(0, 1\), \(2, 3\)\]",
    ),
    Case(
        "function-vector-pool-not-text",
        lambda w: function_vector(w.model, _means(w), [(0, 1)], pool=5),  # type: ignore[arg-type]
        AnalysisError,
        r"pool is recorded in the vector's provenance as text.*got 5",
        r"pass a string or None",
    ),
    Case(
        "task-names-one-string",
        lambda w: mean_head_activations(
            w.model, Prompts(w.batch.inputs, w.batch.answer_pos, None, w.batch.task_ids, "abc")
        ),
        TaskError,
        r"task_names must be a sequence of task names \(strings\).*got 'abc'",
        r"pass batch\.task_names",
    ),
    Case(
        "function-vector-head-a-float",
        lambda w: function_vector(w.model, _means(w), [(0, 1.0)]),
        AnalysisError,
        r"got \(0, 1\.0\) among them",
        r"pairs of int indices, e\.g\. \[\(0, 1\), \(2, 3\)\]",
    ),
    Case(
        "mean-head-activations-with-nan",
        lambda w: function_vector(w.model, _means(w, float("nan")), [(0, 1)]),
        NonFiniteError,
        r"The mean head activations hold NaN or infinite values",
        r"compute them again with mean_head_activations",
    ),
    Case(
        "mean-head-activations-on-the-meta-device",
        lambda w: function_vector(w.model, _means(w, device="meta"), [(0, 1)]),
        ShapeError,
        r"The mean head activations is a tensor on the meta device",
        r"create it on a real device",
    ),
    Case(
        "answers-none",
        lambda w: _indirect_effects(w, answers=None),
        ShapeError,
        r"answers must be integer token ids \[batch=16, n_answer\] \(batch\.answers; .*\), got None",
        r"\(batch\.answers",
    ),
    Case(
        "answers-on-the-meta-device",
        lambda w: _indirect_effects(w, answers=w.batch.answers.to("meta")),
        ShapeError,
        r"answers is a tensor on the meta device",
        r"create it on a real device",
    ),
    Case(
        "answers-complex",
        lambda w: _indirect_effects(w, answers=w.batch.answers.to(torch.complex64)),
        ShapeError,
        r"answers must be integer token ids \[batch=16, n_answer\] .*, got torch\.complex64",
        r"pass the answers of these prompts",
    ),
    Case(
        "task-ids-a-string",
        lambda w: _indirect_effects(w, task_ids="0"),
        ShapeError,
        r"task_ids must be one integer task id per prompt \(16,\) \(batch\.task_ids\), got '0'",
        r"\(batch\.task_ids\)",
    ),
    Case(
        "task-ids-on-the-meta-device",
        lambda w: _indirect_effects(w, task_ids=w.batch.task_ids.to("meta")),
        ShapeError,
        r"task_ids is a tensor on the meta device",
        r"create it on a real device",
    ),
    Case(
        "task-ids-of-floats",
        lambda w: _indirect_effects(w, task_ids=w.batch.task_ids.float() + 0.5),
        ShapeError,
        r"task_ids must be integer indices into task_names, got torch\.float32",
        r"pass batch\.task_ids",
    ),
    Case(
        "indirect-effects-label-noise-a-string",
        lambda w: _indirect_effects(w, label_noise="many"),
        AnalysisError,
        r"label_noise must be a number in \[0, 1\] .*got 'many'",
        r"e\.g\. 0\.99",
    ),
    Case(
        "applied-as-layer-a-float",
        lambda w: function_vector(w.model, _means(w), [(0, 1)]).applied_as(layers=(1.7,)),
        AnalysisError,
        r"layers must be a block index or a sequence of block indices \(ints\).*got \(1\.7,\)",
        r"e\.g\. 2 or \(1, 2\)",
    ),
    Case(
        "function-vectors-on-a-regression-pool",
        lambda w: FunctionVectors(k=2, n_bootstrap=0).run(w.model, regression_pool(("linear",), d=2), n_per_task=2),
        TaskError,
        r"Function vectors measure each head by the probability of the answer's token, and a RegressionPool's",
        r"use a TaskPool or a TextPool",
    ),
    Case(
        "function-vectors-corrupted-prompts-without-demonstrations",
        lambda w: FunctionVectors(k=2, n_bootstrap=0).run(w.model, POOL, n_per_task=2, n_shots=0),
        AnalysisError,
        r"None of the corrupted prompts' demonstrations has a wrong label .*so they are not corrupted",
        r"sample them with demonstrations \(n_shots >= 1 with label_noise, n_shots >= 2 with shuffle_labels\)",
    ),
    Case(
        "indirect-effects-top-heads-of-a-task-without-prompts",
        lambda w: causal_indirect_effects(
            w.model, w.batch.select(w.batch.task_ids == 0), _means(w), config=FunctionVectors(n_bootstrap=0)
        ).top_heads(2, task=w.batch.task_names[1]),
        TaskError,
        r"Task '.*' has no prompts in this result, so its CIE is NaN for every head",
        r"compute the result on prompts of that task too, or ask for the top heads of another task",
    ),
    Case(
        "compare-vectors-layers-an-int",
        lambda w: CompareVectors(layers=0),  # type: ignore[arg-type]
        LayerOutOfRangeError,
        r"layers must be a sequence of block indices such as \(0, 1\), got 0",
        r"pass a one-element tuple, e\.g\. \(0,\)",
    ),
    Case(
        "decode-meta-vector",
        lambda w: decode_vectors(w.model, torch.zeros(32, device="meta")),
        ShapeError,
        r"vectors is a tensor on the meta device",
        r"create it on a real device",
    ),
    Case(
        "decode-dict-of-different-widths",
        lambda w: decode_vectors(w.model, {"a": torch.zeros(32), "b": torch.zeros(33)}),
        ShapeError,
        r"A dict of vectors must hold \[d_model\] tensors of one width, got widths \[32, 33\]",
        r"pass vectors of the model's d_model",
    ),
    Case(
        "decode-dict-of-complex-vectors",
        lambda w: decode_vectors(w.model, {"a": torch.zeros(32, dtype=torch.complex64)}),
        ShapeError,
        r"Vector 'a' is torch\.complex64",
        r"a dict of vectors must hold float tensors",
    ),
    Case(
        "decode-k-above-the-tokenizers-ids",
        lambda w: decode_vectors(w.model, torch.ones(32), k=POOL.vocab_size, tokenizer=_word_tokenizer(5)),
        AnalysisError,
        r"k=11 is more tokens than the tokenizer has among the model's d_vocab=11 ids \(7",
        r"pass k <= 7",
    ),
    Case(
        "decode-tokenizer-without-decode",
        lambda w: decode_vectors(w.model, torch.ones(32), 2, tokenizer="gpt2"),
        TaskError,
        r"tokenizer must decode token ids .*an object with decode\(ids\)\), got str 'gpt2'",
        r"load the tokenizer itself .*or pass None to use model\.tokenizer",
    ),
    Case(
        "generate-tokenizer-without-decode",
        lambda w: generate(w.model, w.batch, [], 2, tokenizer="gpt2"),
        TaskError,
        r"tokenizer must decode token ids .*an object with decode\(ids\)\), got str 'gpt2'",
        r"load the tokenizer itself .*or pass None to use model\.tokenizer",
    ),
    Case(
        "scoring-tokenizer-without-decode",
        lambda w: task_vector_prompting(
            w.model,
            w.batch,
            w.batch.zero_shot(),
            tokenizer="gpt2",
            config=TaskVectorPrompting(scoring="exact_match", n_bootstrap=0),
        ),
        TaskError,
        r"tokenizer must decode token ids .*an object with decode\(ids\)\), got str 'gpt2'",
        r"load the tokenizer itself .*or pass None to use model\.tokenizer",
    ),
    Case(
        "intervention-rows-a-string",
        lambda w: run_with_interventions(
            w.model, w.batch.inputs, w.batch.answer_pos, [add(0, torch.zeros(32), rows="0")]
        ),
        ShapeError,
        r"rows= must be prompt indices or a boolean mask over prompts, got '0'",
        r"prompt indices or a boolean mask",
    ),
    Case(
        "performance-seed-none",
        lambda w: ICLPerformance(shots=(3,), n_bootstrap=0).run_batch(w.model, w.batch, seed=None),  # type: ignore[arg-type]
        TaskError,
        r"seed must be an int in \[0, 2\*\*64\), got None",
        r"pass a non-negative int such as seed=0",
    ),
    Case(
        "decodability-layers-not-ints",
        lambda w: task_decodability(*_separable(), layers=3, config=TaskDecodability(k=2, n_bootstrap=0)),
        ShapeError,
        r"layers must be a sequence of block indices such as \(0, 1\), got 3",
        r"pass a one-element tuple, e\.g\. \(3,\)",
    ),
    Case(
        "decodability-reps-on-meta",
        lambda w: task_decodability(
            _separable()[0].to("meta"), _separable()[1], config=TaskDecodability(k=2, n_bootstrap=0)
        ),
        ShapeError,
        r"reps is a tensor on the meta device",
        r"create it on a real device",
    ),
    Case(
        "decodability-labels-strings",
        lambda w: task_decodability(
            _separable()[0], [f"t{i}" for i in _separable()[1].tolist()], config=TaskDecodability(k=2, n_bootstrap=0)
        ),
        ShapeError,
        r"labels must be a 1-D integer tensor \(one task id per prompt\)",
        r"torch\.tensor\(\[0, 1, 1\]\)",
    ),
    Case(
        "decodability-labels-huge-without-names",
        lambda w: task_decodability(
            _separable()[0], _separable()[1] + 2**40, config=TaskDecodability(k=2, n_bootstrap=0)
        ),
        ShapeError,
        r"labels go up to 1099511627778: without task_names every id up to the largest names a task",
        r"Pass task_names, or number the tasks from 0",
    ),
    Case(
        "decodability-task-names-a-string",
        lambda w: task_decodability(*_separable(), task_names="abc", config=TaskDecodability(k=2, n_bootstrap=0)),
        ShapeError,
        r"task_names must be a sequence of task names \(strings\), one per task id, got 'abc'",
        r"pass e\.g\. \('task 0', 'task 1'\)",
    ),
    Case(
        "performance-higher-is-better-a-string",
        lambda w: icl_performance(
            [1.0, 0.0],
            [0, 1],
            [1, 1],
            config=ICLPerformance(higher_is_better="no", n_bootstrap=0),  # type: ignore[arg-type]
        ),
        TaskError,
        r"higher_is_better must be True or False",
        r"whether a larger score is better",
    ),
    Case(
        "performance-config-higher-is-better-a-string",
        lambda w: ICLPerformance(higher_is_better="no"),  # type: ignore[arg-type]
        TaskError,
        r"higher_is_better must be True or False",
        r"whether a larger score is better",
    ),
    Case(
        "head-ablation-config-attribution-a-string",
        lambda w: HeadAblation(attribution="yes"),  # type: ignore[arg-type]
        AnalysisError,
        r"attribution must be True or False",
        r"whether to add the gradient estimate",
    ),
    Case(
        "performance-complex-scores",
        lambda w: icl_performance(
            torch.ones(2, dtype=torch.complex64), [0, 1], [1, 1], config=ICLPerformance(n_bootstrap=0)
        ),
        ShapeError,
        r"scores must be real numbers \(one score per prompt\), got torch\.complex64",
        r"pass scores\.real",
    ),
    Case(
        "held-out-groups-out-of-range",
        lambda w: held_out_best(torch.rand(2, 4), torch.tensor([0, 1, 2, 1]), 2, (0, 1)),
        ShapeError,
        r"groups must lie in 0 \.\. n_groups - 1 = 1, got \[0, 1, 2\]",
        r"pass each prompt's task id",
    ),
    Case(
        "bootstrap-groups-out-of-range",
        lambda w: stratified_bootstrap_ci(torch.rand(6), torch.tensor([0, 0, 1, 1, 2, 2]), 2, n_bootstrap=50),
        ShapeError,
        r"groups must lie in 0 \.\. n_groups - 1 = 1, got \[0, 1, 2\]",
        r"pass each prompt's task id, with n_groups the number of tasks",
    ),
    Case(
        "seed-interval-of-one-number",
        lambda w: seed_interval(0.5),  # type: ignore[arg-type]
        ConfigError,
        r"Per-seed values must be a sequence of numbers, got 0\.5",
        r"pass one float per seed",
    ),
    Case(
        "seed-interval-value-a-tensor-of-several",
        lambda w: seed_interval([torch.ones(2), 0.5]),  # type: ignore[list-item]
        ConfigError,
        r"tensor\(\[1\., 1\.\]\) is a Tensor, not a real number",
        r"pass one float per seed",
    ),
    Case(
        "held-out-one-prompt",
        lambda w: held_out_best(torch.rand(2, 1), torch.tensor([0]), 1, (0, 1)),
        AnalysisError,
        r"held_out_best needs at least two prompts \(one half chooses, the other is scored\), got 1",
        r"pass more prompts",
    ),
    Case(
        "result-field-of-another-type",
        lambda w: replace(fit_td_accuracy([0.1, 0.5, 0.9], [0.2, 0.4, 0.9], task_ids=[0, 1, 1]), task_names=("a", 2)),
        ShapeError,
        r"A TdAccuracyFit whose field 'task_names' is \('a', 2\), not tuple\[str, \.\.\.\]",
        r"build results with their analyses or Result.load, or pass values of the declared types",
    ),
    Case(
        "result-task-ids-outside-task-names",
        lambda w: replace(
            fit_td_accuracy([0.1, 0.5, 0.9], [0.2, 0.4, 0.9], task_ids=[0, 1, 1]), task_ids=torch.tensor([0, 1, 5])
        ),
        ShapeError,
        r"TdAccuracyFit.task_ids holds task ids \[0, 1, 5\], but task_names has 2 names: each id must lie in 0 \.\. 1",
        r"Name every task in task_names, or re-run the analysis",
    ),
    Case(
        "ols-confidence-a-string",
        lambda w: ols([0.1, 0.5, 0.9], [0.2, 0.4, 0.9], "0.9"),  # type: ignore[arg-type]
        AnalysisError,
        r"ci is a confidence level in \(0, 1\), e\.g\. 0\.95; got '0\.9'",
        r"e\.g\. 0\.95",
    ),
    Case(
        "ols-values-too-large",
        lambda w: ols(torch.tensor([1e200, 2e200, 3e200], dtype=torch.float64), [0.2, 0.4, 0.9]),
        NonFiniteError,
        r"x and y must be below 1e\+100 in size, or the sums of squares of the fit overflow",
        r"rescale them",
    ),
    Case(
        "ols-on-meta",
        lambda w: ols(torch.zeros(3, device="meta"), [0.2, 0.4, 0.9]),
        ShapeError,
        r"x is a tensor on the meta device",
        r"create it on a real device",
    ),
    Case(
        "fit-task-ids-floats",
        lambda w: fit_td_accuracy([0.1, 0.5, 0.9], [0.2, 0.4, 0.9], task_ids=[0.5, 0.5, 1.5]),
        ShapeError,
        r"task_ids must be a 1-D integer tensor \(the task of each point\), got torch\.float32",
        r"pass integers",
    ),
    Case(
        "fit-negative-shots",
        lambda w: fit_td_accuracy([0.1, 0.5, 0.9], [0.2, 0.4, 0.9], shots=[1, -1, 2]),
        ShapeError,
        r"task ids >= 0 indexing task_names and shots >= 0",
        r"one entry per point \(3\)",
    ),
    Case(
        "patching-vectors-a-tensor",
        lambda w: patch_task_vectors(w.model, w.batch, w.vectors.vectors, config=TaskVectorPatching(n_bootstrap=0)),
        ShapeError,
        r"vectors must be TaskVectors, got a Tensor",
        r"build them with TaskVectors\.from_model",
    ),
    Case(
        "patching-targets-a-string",
        lambda w: patch_task_vectors(
            w.model, w.batch, w.vectors, targets="offset(1)", config=TaskVectorPatching(n_bootstrap=0)
        ),
        TaskError,
        r"targets must be a sequence of task names, got 'offset\(1\)'",
        r"targets=\('offset\(1\)',\)",
    ),
    Case(
        "patching-scale-beyond-float",
        lambda w: patch_task_vectors(
            w.model, w.batch, w.vectors, config=TaskVectorPatching(mode="add", scale=10**400, n_bootstrap=0)
        ),
        AnalysisError,
        r"scale must be a finite number",
        r"finite number",
    ),
    Case(
        "prompting-per-head-site",
        lambda w: task_vector_prompting(
            w.model,
            w.batch,
            w.batch.zero_shot(),
            vectors=w.vectors,
            config=TaskVectorPrompting(source="task_mean", layers=(0,), site="z", n_bootstrap=0),
        ),
        HookNotFoundError,
        r"Unknown site 'z' for reading residual-stream rows\. It names the per-head attention output",
        r"Use one of \[",
    ),
    Case(
        "prompting-inputs-none",
        lambda w: task_vector_prompting(
            w.model,
            Prompts(None, w.batch.answer_pos, w.batch.answers, w.batch.task_ids, w.batch.task_names),
            w.batch,
            config=TaskVectorPrompting(n_bootstrap=0),
        ),
        ShapeError,
        r"prompts\.inputs must be a torch\.Tensor of prompts, tokens \[batch, pos\]",
        r"pass batch\.inputs",
    ),
    Case(
        "prompting-answers-on-the-meta-device",
        lambda w: task_vector_prompting(
            w.model,
            Prompts(
                w.batch.inputs, w.batch.answer_pos, w.batch.answers.to("meta"), w.batch.task_ids, w.batch.task_names
            ),
            w.batch.zero_shot(),
            config=TaskVectorPrompting(n_bootstrap=0),
        ),
        ShapeError,
        r"answers is a tensor on the meta device, which has a shape but no values",
        r"create it on a real device",
    ),
    Case(
        "causal-function-prompts-a-tensor",
        lambda w: head_importance(w.model, w.batch.inputs, config=HeadAblation(n_bootstrap=0)),
        TaskError,
        r"prompts must be a batch of prompts or tv_lens\.Prompts, got a Tensor without \['inputs', 'attention_mask'",
        r"pass pool\.sample\(n_per_task, n_shots, seed\).*tv_lens\.Prompts\(inputs, answer_pos, answers, task_ids",
    ),
    Case(
        "prompting-zero-shot-a-tensor",
        lambda w: task_vector_prompting(w.model, w.batch, w.batch.zero_shot().inputs),
        TaskError,
        r"zero_shot must be a batch of prompts or tv_lens\.Prompts, got a Tensor without",
        r"tv_lens\.Prompts\(inputs, answer_pos, answers, task_ids, task_names\)",
    ),
    Case(
        "prompting-zero-shot-of-fewer-prompts",
        lambda w: task_vector_prompting(w.model, w.batch, w.batch.zero_shot().select(slice(3))),
        ShapeError,
        r"ICL prompts \(16\), zero-shot prompts \(3\) and task_ids \(\(16,\)\) must pair up",
        r"build the zero-shot prompts with batch\.zero_shot\(\)",
    ),
    Case(
        "head-importance-attribution-a-string",
        lambda w: head_importance(
            w.model,
            w.batch,
            config=HeadAblation(attribution="yes", n_bootstrap=0),  # type: ignore[arg-type]
        ),
        AnalysisError,
        r"attribution must be True or False",
        r"whether to add the gradient estimate",
    ),
    Case(
        "head-importance-batch-size-none",
        lambda w: head_importance(
            w.model,
            w.batch,
            config=HeadAblation(mode="mean", batch_size=None, n_bootstrap=0, prune_steps=0),  # type: ignore[arg-type]
        ),
        ShapeError,
        r"batch_size must be an int ≥ 1 \(prompts per pass\), got None",
        r"prompts per pass",
    ),
    Case(
        "pure-function-config-of-another-analysis",
        lambda w: head_importance(
            w.model,
            w.batch,
            config=TaskDecodability(),  # type: ignore[arg-type]
        ),
        ConfigError,
        r"config must be a HeadAblation, got a TaskDecodability",
        r"pass config=HeadAblation\(\.\.\.\)",
    ),
    Case(
        "config-batch-size-zero",
        lambda w: Emergence(batch_size=0),
        ShapeError,
        r"batch_size must be an int ≥ 1 \(prompts per pass\), got 0",
        r"prompts per pass",
    ),
    Case(
        "attribution-prompts-a-batch",
        lambda w: head_attribution(w.model, w.batch, _aligned(w)[1], torch.zeros(3, 4, 8), config=HeadAblation()),
        ShapeError,
        r"prompts must be AlignedPrompts, got a ICLBatch",
        r"make them with tv_lens\.interventions\.sweep\.align",
    ),
    Case(
        "attribution-nan-ablation-values",
        lambda w: head_attribution(w.model, *_aligned(w), torch.full((3, 4, 8), float("nan")), config=HeadAblation()),
        NonFiniteError,
        r"ablation_values hold NaN or infinite values",
        r"pass finite values",
    ),
    Case(
        "attribution-answers-of-another-batch",
        lambda w: head_attribution(
            w.model, _aligned(w)[0], _aligned(w)[1][:-1], torch.zeros(3, 4, 8), config=HeadAblation()
        ),
        ShapeError,
        r"answers must be the prompts' answer tokens \[prompt=\d+, n_answer=1\] or continuous answers "
        r"\[prompt=\d+, d_out\], got \(\d+, 1\)",
        r"pass answer_tokens\(batch\.answers, len\(batch\)\)",
    ),
    Case(
        "compare-models-batch-none",
        lambda w: compare_models({"base": w.model}, None, config=LayerFinetuning(n_bootstrap=0)),  # type: ignore[arg-type]
        TaskError,
        r"batch must be a batch of prompts, got a NoneType without",
        r"pass pool\.sample\(n_per_task, n_shots, seed\)",
    ),
    Case(
        "compare-models-blocks-of-no-model",
        lambda w: compare_models(
            {"base": w.model}, w.batch, blocks={"late": (2,)}, config=LayerFinetuning(n_bootstrap=0)
        ),
        AnalysisError,
        r"blocks\['late'\] names no model",
        r"blocks maps names of models \['base'\] to a tuple of block indices",
    ),
    Case(
        "compare-models-final-loss-a-string",
        lambda w: compare_models(
            {"base": w.model},
            w.batch,
            final_loss={"base": "low"},  # type: ignore[dict-item]
            config=LayerFinetuning(n_bootstrap=0),
        ),
        AnalysisError,
        r"final_loss\['base'\] holds 'low'",
        r"to a number, e\.g\. \{'late': 0\.41\}",
    ),
    Case(
        "compare-models-decodability-a-string",
        lambda w: compare_models(
            {"base": w.model},
            w.batch,
            config=LayerFinetuning(decodability="knn", n_bootstrap=0),  # type: ignore[arg-type]
        ),
        AnalysisError,
        r"decodability must be TaskDecodability settings, got 'knn'",
        r"pass e\.g\. TaskDecodability\(k=10\)",
    ),
    Case(
        "tvp-losses-config-an-int",
        lambda w: tvp_losses(w.model, w.batch, 1),  # type: ignore[arg-type]
        ConfigError,
        r"tvp must be a TVPConfig, got 1",
        r"TVPConfig\(layer=1, lam=1\.0\)",
    ),
    Case(
        "tvp-losses-tokens-outside-the-vocabulary",
        lambda w: tvp_losses(small_model(d_vocab=6), w.batch, TVPConfig(layer=0)),
        ShapeError,
        r"Token ids must lie in \[0, 6\)",
        r"Build the model with a vocabulary the task needs",
    ),
    Case(
        "finetune-config-none",
        lambda w: finetune(small_model(), POOL, None, (0,), progress=False),  # type: ignore[arg-type]
        ConfigError,
        r"config must be a TrainConfig, got NoneType",
        r"TrainConfig\.from_dict\(d\) for a dict",
    ),
    Case(
        "train-stop-after-not-a-count",
        lambda w: train(small_model(), POOL, tiny_train_config(), stop_after=1.5, progress=False),  # type: ignore[arg-type]
        ConfigError,
        r"stop_after must be None \(train to the end\) or a number of steps >= 0, got 1\.5",
        r"e\.g\. stop_after=100",
    ),
    Case(
        "select-blocks-no-selection",
        lambda w: select_blocks("middle:2", 4),
        ConfigError,
        r"must be block indices such as \(0, 1\), or 'first:k', 'last:k' or 'all'; got 'middle:2'",
        r"'first:k', 'last:k' or 'all'",
    ),
    Case(
        "train-path-not-a-path",
        lambda w: train(small_model(), POOL, tiny_train_config(), resume_from=2, progress=False),  # type: ignore[arg-type]
        ConfigError,
        r"resume_from must be a path \(a str or pathlib\.Path\) or None, got 2 \(int\)",
        r"e\.g\. resume_from='runs/default'",
    ),
    Case(
        "train-model-config-not-a-model-config",
        lambda w: train(
            build_model(w.model_config),
            POOL,
            tiny_train_config(),
            model_config=w.model_config.to_dict(),  # type: ignore[arg-type]
            progress=False,
        ),
        ConfigError,
        r"model_config must be the ModelConfig the model was built from \(or None\), got a dict",
        r"ModelConfig\(\*\*fields\) for a dict of fields",
    ),
    Case(
        "train-objective-without-its-methods",
        lambda w: train(small_model(), POOL, tiny_train_config(), objective="cross_entropy", progress=False),  # type: ignore[arg-type]
        ConfigError,
        r"objective must have the methods of tv_lens\.training\.Objective .*got 'cross_entropy'",
        r"pass None \(the pool's own, objective_for\(pool\)\)",
    ),
    Case(
        "checkpoint-nan-parameters",
        lambda w: load_checkpoint(_nan_checkpoint(w)),
        CheckpointError,
        r"holds NaN or infinite parameters",
        r"resume from an earlier checkpoint of the run",
    ),
    Case(
        "result-field-of-the-wrong-type",
        lambda w: Result.load(_retyped_result(w)),
        ResultFileError,
        r"holds a Decodability whose field 'method' is 3, not str; it was edited or crafted",
        r"Re-run the analysis",
    ),
    Case(
        "batch-select-float-indices",
        lambda w: w.batch.select([0.7, 1.2]),
        PositionError,
        r"ICLBatch\.select indices must be .* got torch\.float32",
        r"a sequence of prompt indices, a bool mask of \d+ prompts or a slice",
    ),
    Case(
        "token-accuracy-text-answers",
        lambda w: token_accuracy(torch.zeros(2, 1, 5), "cold"),
        ShapeError,
        r"answers must be integer token ids .* got 'cold'",
        r"batch\.answers",
    ),
    Case(
        "token-match-padding-only-answer",
        lambda w: token_match(
            Generation(
                torch.tensor([[3]]), torch.tensor([1]), torch.tensor([False]), None, torch.tensor([4]), (), True
            ),
            torch.tensor([[-1]]),
        ),
        ShapeError,
        r"answers must be token ids >= 0, at least one per prompt",
        r"pass batch\.answers",
    ),
    Case(
        "role-attention-prompts-without-roles",
        lambda w: role_attention(
            w.model, Prompts(w.batch.inputs, w.batch.answer_pos, None, w.batch.task_ids, w.batch.task_names)
        ),
        TaskError,
        r"Prompts prompts carry no demonstration spans to read roles from",
        r"pass roles \(a role id per position \[batch, pos\]\) and role_names",
    ),
    Case(
        "role-attention-role-outside-the-names",
        lambda w: role_attention(w.model, w.batch, torch.ones_like(w.batch.inputs), role_names=("answers",)),
        TaskError,
        r"roles\[0, 0\] is 1",
        r"needs a role id in 0 \.\. 0 \(role_names \('answers',\)\)",
    ),
    Case(
        "role-attention-roles-without-names",
        lambda w: role_attention(w.model, w.batch, torch.zeros_like(w.batch.inputs)),
        ConfigError,
        r"roles need role_names",
        r"the name of every role id",
    ),
    Case(
        "role-attention-by-demonstration-with-own-roles",
        lambda w: role_attention(
            w.model,
            w.batch,
            torch.zeros_like(w.batch.inputs),
            role_names=("all",),
            config=HeadAttention(by_demonstration=True),
        ),
        ConfigError,
        r"by_demonstration splits the roles of a batch, not roles of your own",
        r"give every demonstration its own role id in roles, or pass roles=None",
    ),
    Case(
        "head-attention-by-demonstration-not-a-bool",
        lambda w: HeadAttention(by_demonstration="yes"),
        AnalysisError,
        r"by_demonstration must be True or False",
        r"whether every demonstration is a role of its own",
    ),
    Case(
        "knockout-key-after-the-query",
        lambda w: run_with_interventions(
            w.model, w.batch.inputs, w.batch.answer_pos, [knockout(0, [int(w.batch.answer_pos[0]) + 1])]
        ),
        PositionError,
        r"blocks position \d+ of prompt 0, after its query",
        r"Block keys at or before the query",
    ),
    Case(
        "knockout-every-key",
        lambda w: run_with_interventions(
            w.model, w.batch.inputs, w.batch.answer_pos, [knockout(0, _up_to_the_answer(w.batch))]
        ),
        PositionError,
        r"blocks every position the query at \d+ of prompt 0 attends to",
        r"keep at least one",
    ),
    Case(
        "knockout-every-key-in-a-sliding-window",
        lambda w: run_with_interventions(
            _sliding_window_model(w.files / "mistral"), torch.arange(3, 23)[None], 19, [knockout(0, range(12, 20))]
        ),
        PositionError,
        r"blocks every key the query at position 19 of prompt 0 sees in block 0: the model masks the keys it leaves",
        r"keep at least one key within the window",
    ),
    Case(
        "knockout-float-keys",
        lambda w: knockout(0, torch.rand(5)),
        ShapeError,
        r"knockout keys must be a bool mask of key positions",
        r"or a list of positions",
    ),
    Case(
        "generate-with-a-knockout",
        lambda w: generate(w.model, w.batch, [knockout(0, [0])], max_new_tokens=1),
        ShapeError,
        r"not attention knockouts",
        r"run a knockout on the prompts with run_with_interventions",
    ),
    Case(
        "attention-knockout-window-longer-than-the-model",
        lambda w: AttentionKnockout(window=5, n_bootstrap=0).run_batch(w.model, w.batch),
        AnalysisError,
        r"window must be at most the model's 3 blocks",
        r"a shorter window",
    ),
    Case(
        "attention-knockout-unknown-role",
        lambda w: AttentionKnockout(roles=("label",)),
        AnalysisError,
        r"'label' is not a role",
        r"roles must be distinct names from \[",
    ),
    Case(
        "head-importance-unknown-task",
        lambda w: head_importance(w.model, w.batch, config=HeadAblation(n_bootstrap=0, prune_steps=0)).top_heads(
            task="copy"
        ),
        TaskError,
        r"Task 'copy' has no importance",
        r"these cover \[",
    ),
]


def _in_inference_mode(call: Callable[[], object]) -> object:
    with torch.inference_mode():
        return call()


def _frozen(config: ModelConfig) -> Any:
    model = build_model(config)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def test_float_values_and_residuals_follow_the_models_dtype(world: SimpleNamespace):
    """A float16 vector or residual given to a float32 model is cast to float32, as if the caller had cast it."""
    w, vector = world, torch.randn(32, generator=torch.Generator().manual_seed(1)).half()
    cast = run_with_interventions(w.model, w.batch.inputs, w.batch.answer_pos, [add(0, vector.float())])
    given = run_with_interventions(w.model, w.batch.inputs, w.batch.answer_pos, [add(0, vector)])
    assert torch.equal(given.logits, cast.logits) and given.logits.dtype == torch.float32
    residual = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2)).half()
    half = collect(w.model, residual, 4, layers=[0], progress=False).activations
    assert torch.equal(half, collect(w.model, residual.float(), 4, layers=[0], progress=False).activations)


def test_training_under_no_grad_trains_as_without_it(world: SimpleNamespace):
    """train() enables gradients itself: under torch.no_grad() it gives the same weights and history."""
    runs = []
    for context in (contextlib.nullcontext, torch.no_grad):
        model = build_model(world.model_config)
        with context():
            runs.append(train(model, POOL, tiny_train_config(), progress=False))
            assert torch.is_grad_enabled() == (context is contextlib.nullcontext)  # the caller's mode is kept
    plain, no_grad = runs
    assert plain.history.drop(columns="elapsed_s").equals(no_grad.history.drop(columns="elapsed_s"))
    for (name, a), (_, b) in zip(plain.model.named_parameters(), no_grad.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(next(plain.model.parameters()), next(build_model(world.model_config).parameters()))


def test_head_attribution_leaves_inference_mode_for_its_backward_pass(world: SimpleNamespace):
    """Inside torch.inference_mode() the attribution estimate is what it is outside, and the mode is kept."""
    analysis = HeadAblation(n_bootstrap=0, prune_steps=0)
    outside = analysis.run(world.model, POOL, n_per_task=2)
    with torch.inference_mode():
        inside = analysis.run(world.model, POOL, n_per_task=2)
        assert torch.is_inference_mode_enabled()
    assert torch.isfinite(inside.attribution).all() and inside == outside


def test_every_case_is_distinct():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 25


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_a_clear_error(case: Case, world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch):
    w = SimpleNamespace(**vars(world), monkeypatch=monkeypatch)
    with pytest.raises(case.error) as info:
        case.call(w)
    message = str(info.value)
    assert isinstance(info.value, TvLensError)
    assert re.search(case.problem, message), f"the message does not name the problem:\n{message}"
    assert re.search(case.fix, message), f"the message does not name the fix:\n{message}"


def test_no_checkpoint_was_spoiled_by_the_cases(world: SimpleNamespace):
    """The cases misuse copies; the run they read from still holds its one good checkpoint."""
    assert list_checkpoints(world.run_dir) == [world.checkpoint]
    assert load_checkpoint(world.checkpoint).step == 2


def test_the_reliability_page_lists_every_case():
    """docs/reliability.md tabulates the catalogue: one row per case, no row for a case that does not exist."""
    page = (ROOT / "docs" / "reliability.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9_-]+)` \|", page, flags=re.MULTILINE)
    assert sorted(rows) == sorted(case.id for case in CASES)
    assert f"The catalogue has {len(CASES)} cases" in page


# --- static checks over the library's source ---

LIBRARY = ROOT / "tv_lens"
ALLOWED_RAISES = {
    ("results/base.py", "NotImplementedError"),  # abstract methods a Result subclass must define
    ("results/shared.py", "NotImplementedError"),  # the choice of a best layer, defined by the results that have one
    ("models/__init__.py", "AttributeError"),  # module __getattr__: the protocol requires AttributeError
}


def _library_files() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def test_no_bare_assert_guards_anything_in_the_library():
    """``assert`` is stripped by ``python -O``: user input is checked with raised TvLensErrors instead."""
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _library_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert found == []


def test_every_exception_the_library_raises_is_a_tv_lens_error():
    """Each ``raise SomeError(...)`` in tv_lens names a TvLensError subclass (re-raises pass through)."""
    foreign = []
    for path in _library_files():
        relative = path.relative_to(LIBRARY)
        module = importlib.import_module(
            ".".join(("tv_lens", *relative.with_suffix("").parts)).removesuffix(".__init__")
        )
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = ast.unparse(node.exc.func)
                raised = _resolve(module, name)
                allowed = (str(relative), name) in ALLOWED_RAISES
                if not allowed and not (isinstance(raised, type) and issubclass(raised, TvLensError)):
                    foreign.append(f"{relative}:{node.lineno} raises {name}")
    assert foreign == []


def _resolve(module: Any, dotted: str) -> Any:
    value: Any = vars(module).get(dotted.split(".")[0], getattr(builtins, dotted.split(".")[0], None))
    for part in dotted.split(".")[1:]:
        value = getattr(value, part, None)
    return value
