"""Inputs are never silently read as something else: what is not understood is refused with a TvLensError.

The catalogue (tests/test_errors.py) holds one row per refused input. This file checks the other side of each
refusal (the ways of writing the same thing that still work) and, property-based, that the entry points reading
user data never let another exception type through: any input either works or raises a ``TvLensError``.
"""

from __future__ import annotations

import contextlib
import json
import string
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import one_thread  # noqa: F401  (autouse: tiny models run on one thread)

from tv_lens import TvLensError
from tv_lens.errors import ConfigError, TaskError
from tv_lens.models import ModelConfig, build_model
from tv_lens.tasks import (
    TextPool,
    TextTask,
    load_examples,
    load_task,
    offset_pool,
    sparse_linear_pool,
)
from tv_lens.training import FinetuneConfig, LoRAConfig, OptimConfig, TrainConfig, TVPConfig

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
POOL = offset_pool(offsets=(1, 2), n_values=8)


@cache
def word_tokenizer() -> Any:
    """Whole words ``w0`` .. ``w9``, ``->`` and ``[UNK]`` for everything else."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "->": 1, **{f"w{i}": i + 2 for i in range(10)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


@cache
def byte_tokenizer() -> Any:
    """A small byte-level BPE: any text has tokens, merges make token boundaries differ from characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(["hot -> cold", "big -> small", "w1 w2 w3 -> w4"], trainer)
    return tokenizer


# --- the ways of writing the same thing that still work, next to each refusal ---


def test_a_dicts_items_and_lists_are_pairs_but_the_dict_itself_is_refused() -> None:
    mapping = {"up": "down", "in": "out"}
    expected = (("up", "down"), ("in", "out"))
    assert TextTask("t", tuple(mapping.items())).examples == expected
    assert TextTask("t", [["up", "down"], ["in", "out"]]).examples == expected  # type: ignore[list-item]
    assert TextTask("t", (pair for pair in expected)).examples == expected  # type: ignore[arg-type]
    with pytest.raises(TaskError, match=r"examples is a dict"):
        TextTask("t", mapping)  # type: ignore[arg-type]
    with pytest.raises(TaskError, match=r"got 'up'"):
        TextTask("t", ["up", "in"])  # type: ignore[list-item]


def test_text_with_a_lone_surrogate_is_refused_before_tokenizing() -> None:
    with pytest.raises(TaskError, match=r"lone surrogate"):
        TextTask("t", [("hot\ud800", "cold")])
    with pytest.raises(TaskError, match=r"lone surrogate"):
        TextPool((TextTask("t", [("w1", "w2")]),), word_tokenizer(), separator="\udfff")


def test_text_pool_flags_are_bools() -> None:
    task = TextTask("t", [("w1", "w2"), ("w3", "w4")])
    assert TextPool((task,), word_tokenizer(), null=True).task_names == ("t", "null")
    for flag in ("null", "bos", "filter_examples"):
        with pytest.raises(TaskError, match=rf"{flag} must be True or False .*got 'no'"):
            TextPool((task,), word_tokenizer(), **{flag: "no"})  # "no" would count as true
    with pytest.raises(TaskError, match=r"separator must be a string"):
        TextPool((task,), word_tokenizer(), separator=5)  # type: ignore[arg-type]
    with pytest.raises(TaskError, match=r"wrap it: tasks=\(task,\)"):
        TextPool(task, word_tokenizer())  # type: ignore[arg-type]


def test_records_may_list_an_input_twice_and_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"input": "hot", "output": "cold"}, {"input": "hot", "output": "icy"}]))
    assert load_examples(records) == (("hot", "cold"), ("hot", "icy"))
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"café": "coffee"}).encode())
    assert load_examples(bom) == (("café", "coffee"),)
    repeated = tmp_path / "repeated.json"
    repeated.write_text('[{"input": "hot", "output": "cold", "input": "big"}]')
    with pytest.raises(TaskError, match=r"the key 'input' appears more than once"):
        load_examples(repeated)


def test_an_empty_task_name_is_not_replaced_by_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "antonyms.json"
    path.write_text('{"hot": "cold"}')
    assert load_task(path).name == "antonyms"
    with pytest.raises(TaskError, match=r"name must be a non-empty string, got ''"):
        load_task(path, name="")


def test_explicit_model_widths_and_normalisations_are_built_as_given() -> None:
    sizes = dict(d_vocab=8, n_layers=1, d_model=16, n_heads=2, n_ctx=8)
    assert build_model(ModelConfig(**sizes)).cfg.d_head == 8  # None: d_model // n_heads
    assert build_model(ModelConfig(**sizes, d_head=4, d_mlp=8)).cfg.d_head == 4
    plain = build_model(ModelConfig(**sizes, normalization_type=None))
    assert not any("norm" in type(m).__name__.lower() for m in plain.modules())
    with pytest.raises(ConfigError, match=r"Unknown normalization_type 'ln'"):
        ModelConfig(**sizes, normalization_type="ln")  # names are exact: 'ln' is not read as 'LN'
    with pytest.raises(ConfigError, match=r"Unknown act_fn 'GELU'"):
        ModelConfig(**sizes, act_fn="GELU")


def test_shot_specs_are_read_exactly() -> None:
    shots = POOL.sample(30, n_shots=range(1, 8, 3), seed=0).n_shots
    assert set(shots.tolist()) == {1, 4, 7}
    assert set(POOL.sample(30, n_shots=range(7, 0, -3), seed=0).n_shots.tolist()) == {1, 4, 7}
    with pytest.raises(TaskError, match=r"n_shots must be an int >= 0"):
        POOL.sample(2, n_shots=(True, 3), seed=0)  # type: ignore[arg-type]
    with pytest.raises(TaskError, match=r"label_noise must lie in \[0, 1\), got '0\.1'"):
        POOL.sample(2, n_shots=1, seed=0, label_noise="0.1")  # type: ignore[arg-type]


def test_training_configs_take_numbers_and_flags_of_their_types() -> None:
    assert OptimConfig(betas=[0.9, 0.95]) == OptimConfig(betas=(0.9, 0.95))  # type: ignore[arg-type]
    assert LoRAConfig(targets=["W_Q"]) == LoRAConfig(targets=("W_Q",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"detach must be True or False"):
        TVPConfig(layer=0, detach="no")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"wrap a single one: \('W_Q',\)"):
        LoRAConfig(targets="W_Q")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"lora must be a LoRAConfig or None"):
        FinetuneConfig(blocks="all", lora=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"TrainConfig\.data must be a DataConfig"):
        TrainConfig(data={"n_per_task": 2})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Need numbers 0 <= min_lr <= lr"):
        TrainConfig.from_dict({"schedule": {"lr": float("inf")}})
    config = TrainConfig(tvp=TVPConfig(layer=1), finetune=FinetuneConfig(blocks=(0,), lora=LoRAConfig(rank=2)))
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# --- property-based: any input works or raises a TvLensError ---

_text = st.lists(st.sampled_from([*"ab w01->\n {}", "é", "\x00", "\ud800", "w1", "w2 "]), max_size=5).map("".join)
_json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.tuples(inner, inner, inner)
        | st.dictionaries(_text, inner, max_size=2)
    ),
    max_leaves=6,
)


def _works_or_tv_lens_error(call: Any) -> None:
    with contextlib.suppress(TvLensError):
        call()


@FAST
@given(
    examples=st.lists(st.tuples(_text, _text), max_size=6) | _anything,
    tokenizer=st.sampled_from([word_tokenizer, byte_tokenizer]),
    template=st.sampled_from(["{x}->{y}", "{x} -> {y}", "{x}{y}", " {x}\n{y} ", "{y}{x}", 3]),
    separator=st.sampled_from(["\n", " ", ""]),
    shots=st.integers(-1, 3),
    seed=st.integers(-2, 2**65),
)
def test_text_tasks_from_any_examples(examples, tokenizer, template, separator, shots, seed) -> None:
    def build_and_sample() -> None:
        tasks = (TextTask("t", examples), TextTask("u", (("w1", "w2"), ("w3", "w4"), ("w5", "w6"))))
        pool = TextPool(tasks, tokenizer(), template=template, separator=separator, null=True)
        pool.sample(2, shots, seed=seed)

    _works_or_tv_lens_error(build_and_sample)


_model_values = st.one_of(
    st.integers(-2, 40),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.sampled_from(["gelu", "relu", "LN", "RMS", "LNPre", "float32", "int64", "float16", "bridge", "", "solu"]),
)
_model_fields = ["d_head", "d_mlp", "act_fn", "normalization_type", "seed", "dtype", "backend", "n_heads", "d_model"]


@FAST
@given(st.dictionaries(st.sampled_from(_model_fields), _model_values, max_size=4))
def test_model_configs_of_any_field_values(overrides: dict[str, Any]) -> None:
    """A config is refused with a ConfigError, or holds only values the builder reads as written."""
    try:
        config = ModelConfig(d_vocab=8, **overrides)
    except TvLensError:
        return
    for width in (config.d_head, config.d_mlp):
        assert width is None or (type(width) is int and width >= 1)
    assert config.act_fn in ("gelu", "relu", "solu")  # the activations the strategy draws that TransformerLens has
    assert config.normalization_type in ("LN", "LNPre", "RMS", "RMSPre", None)
    assert config.dtype in ("float32", "float16")  # the floating-point dtypes the strategy draws
    assert type(config.seed) is int and 0 <= config.seed < 2**64


@settings(max_examples=12, deadline=None)
@given(
    d_head=st.one_of(st.none(), st.integers(1, 8)),
    act_fn=st.sampled_from(["gelu", "gelu_new", "relu", "silu", "swish", "solu", "gelu_fast", "xielu"]),
    normalization_type=st.sampled_from(["LN", "LNPre", "RMS", "RMSPre", None]),
)
def test_models_of_valid_configs_build_or_refuse_cleanly(d_head, act_fn, normalization_type) -> None:
    """Which activations build depends on the backend and TransformerLens version: a ConfigError says which."""

    def build_and_run() -> None:
        config = ModelConfig(
            d_vocab=8, n_layers=1, d_model=16, n_heads=2, n_ctx=8, d_head=d_head, act_fn=act_fn,
            normalization_type=normalization_type,
        )  # fmt: skip
        assert torch.isfinite(build_model(config)(torch.zeros(1, 3, dtype=torch.long))).all()

    _works_or_tv_lens_error(build_and_run)


_config_sections = {
    "data": ["n_per_task", "n_shots", "label_noise", "seed", "eval_n_per_task", "eval_n_shots", "eval_batch_size"],
    "optim": ["weight_decay", "betas", "eps", "grad_clip"],
    "schedule": ["max_steps", "lr", "min_lr", "warmup_steps"],
    "tvp": ["layer", "lam", "mode", "detach", "source"],
    "finetune": ["blocks", "lora"],
}


@st.composite
def _train_dicts(draw: Any) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(_json_like)
    out: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from([*_config_sections, "eval_every", "extra"]), max_size=3)):
        if section in _config_sections:
            keys = st.sampled_from([*_config_sections[section], "other"])
            out[section] = draw(st.dictionaries(keys, _json_like, max_size=3) | _json_like)
        else:
            out[section] = draw(_json_like)
    return out


@FAST
@given(_train_dicts())
def test_train_configs_from_any_dict(data: Any) -> None:
    _works_or_tv_lens_error(lambda: TrainConfig.from_dict(data))


@FAST
@given(st.binary(max_size=40) | _json_like.map(lambda value: json.dumps(value).encode()))
def test_task_files_of_any_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "task.json"
    path.write_bytes(content)
    try:
        pairs = load_examples(path)
    except TvLensError:
        return
    assert pairs and all(isinstance(v, str) and v == v.strip() and v for pair in pairs for v in pair)


_counts = st.one_of(st.integers(-2, 4), st.just(10**13), st.floats(), st.none(), st.booleans(), st.text(max_size=2))
_shot_specs = st.one_of(
    _counts,
    st.tuples(_counts, _counts),
    st.builds(range, st.integers(-3, 4), st.integers(-3, 6), st.sampled_from([1, 2, -1])),
    st.just((0, 10**15)),
)


@FAST
@given(
    pool=st.sampled_from(["tokens", "regression", "text"]),
    n_per_task=_counts,
    n_shots=_shot_specs,
    seed=st.one_of(st.integers(-(2**65), 2**65), st.floats(), st.text(max_size=2)),
    label_noise=st.one_of(st.floats(), st.text(alphabet=string.digits + ".", max_size=3), st.none()),
)
def test_sampling_with_any_arguments(pool, n_per_task, n_shots, seed, label_noise) -> None:
    pools = {
        "tokens": lambda: POOL,
        "regression": lambda: sparse_linear_pool(d=4, n_bases=2),
        "text": lambda: TextPool(
            (TextTask("t", tuple((f"w{i}", f"w{i + 1}") for i in range(0, 8, 2))),), word_tokenizer(), null=True
        ),
    }
    _works_or_tv_lens_error(lambda: pools[pool]().sample(n_per_task, n_shots, seed=seed, label_noise=label_noise))


def test_probe_folds_take_every_64_bit_seed() -> None:
    from tv_lens.errors import AnalysisError
    from tv_lens.stats.classifiers import sklearn_seed

    assert sklearn_seed(7) == 7 and sklearn_seed(2**32 - 1) == 2**32 - 1
    big = [sklearn_seed(2**40), sklearn_seed(2**40 + 1), sklearn_seed(2**64 - 1)]
    assert all(0 <= s < 2**32 for s in big) and len(set(big)) == 3 and sklearn_seed(2**40) == big[0]
    reps = torch.randn(2, 40, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4).repeat(10)
    from tv_lens.analyses.decodability import TaskDecodability, task_decodability

    result = task_decodability(reps, labels, seed=2**40, config=TaskDecodability(method="probe", n_bootstrap=0))
    assert result.td.shape == (2,)
    with pytest.raises(AnalysisError, match="seed must be an int"):
        sklearn_seed(-1)
