"""Fuzzing what tv_lens reads from files and dicts: task files, saved results, checkpoints, run.json and configs.

Files are random bytes, random JSON documents (deeply nested ones too) and real files with bytes changed. Each
read returns what it should or raises a TvLensError; never another exception.
"""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from fuzz_helpers import fuzz_settings, mostly
from hypothesis import given
from hypothesis import strategies as st
from reliability_helpers import POOL, TINY_TRAINING, one_thread, tiny_model_config  # noqa: F401

from tv_lens import TvLensError
from tv_lens.analyses import TaskDecodability, task_decodability
from tv_lens.app.demo import read_run_config
from tv_lens.app.pretrained import read_pretrained_config
from tv_lens.errors import ArtefactError
from tv_lens.models import ModelConfig, build_model
from tv_lens.results import Result
from tv_lens.tasks import load_examples, load_task
from tv_lens.training import TrainConfig, load_checkpoint, train

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
TASK_JSON = st.one_of(
    st.dictionaries(st.text(max_size=6), st.text(max_size=6) | SCALARS, max_size=4),
    st.lists(
        st.fixed_dictionaries({"input": st.text(max_size=6) | SCALARS, "output": st.text(max_size=6)}), max_size=4
    ),
    JSON,
)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def file_bytes(documents: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON documents, mostly; else random bytes, Latin-1 text or nesting deeper than a parser's recursion limit."""
    return mostly(
        documents.map(lambda value: json.dumps(value).encode()),
        st.one_of(
            st.binary(max_size=64),
            st.text(max_size=16).map(lambda text: json.dumps({text: "é"}).encode("utf-8", "surrogatepass")),
            st.just('{"café": "coffee"}'.encode("latin-1")),
            st.sampled_from([nested(10_000), b'{"a":' * 5000 + b"1" + b"}" * 5000]),
        ),
    )


def written(content: bytes, name: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="tv-lens-fuzz-"))
    path = folder / name
    path.write_bytes(content)
    return path


def works_or_refuses(call: Any) -> Any:
    try:
        return call()
    except TvLensError:
        return None


@fuzz_settings(80)
@given(content=file_bytes(TASK_JSON), name=st.sampled_from(["task.json", "t"]))
def test_task_files(content: bytes, name: str) -> None:
    path = written(content, name)
    examples = works_or_refuses(lambda: load_examples(path))
    if examples is not None:
        assert examples and all(isinstance(x, str) and isinstance(y, str) for x, y in examples)
        assert works_or_refuses(lambda: load_task(path)) is not None


@cache
def saved_files() -> dict[str, bytes]:
    """A saved result and a checkpoint of a two-step run, as bytes."""
    folder = Path(tempfile.mkdtemp(prefix="tv-lens-fuzz-"))
    labels = torch.arange(3).repeat_interleave(4)
    reps = torch.randn(12, 4, generator=torch.Generator().manual_seed(0)) + 3 * labels[:, None]
    result = task_decodability(reps, labels, config=TaskDecodability(k=2, n_bootstrap=0)).save(
        folder / "td.safetensors"
    )
    config = tiny_model_config(n_layers=1)
    settings = TrainConfig.from_dict({**TINY_TRAINING.to_dict(), "checkpoint_every": 3})
    run = train(build_model(config), POOL, settings, model_config=config, checkpoint_dir=folder / "run", progress=False)
    return {"result": result.read_bytes(), "checkpoint": run.checkpoints[-1].read_bytes()}


@st.composite
def damaged(draw: Any, kind: str) -> bytes:
    """The real file with a run of bytes changed, cut short, or extended; or random bytes."""
    data = bytearray(saved_files()[kind])
    how = draw(st.sampled_from(["flip", "cut", "append", "random", "intact"]))
    if how == "flip":
        start = draw(st.integers(0, len(data) - 1))
        for i in range(start, min(start + draw(st.integers(1, 16)), len(data))):
            data[i] ^= draw(st.integers(1, 255))
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "append":
        data += draw(st.binary(min_size=1, max_size=16))
    elif how == "random":
        data = bytearray(draw(st.binary(max_size=256)))
    return bytes(data)


@fuzz_settings(60)
@given(content=damaged("result"))
def test_result_files(content: bytes) -> None:
    loaded = works_or_refuses(lambda: Result.load(written(content, "r.safetensors")))
    if loaded is not None:
        assert content == saved_files()["result"]  # only the intact file loads


@fuzz_settings(30)
@given(content=damaged("checkpoint"))
def test_checkpoint_files(content: bytes) -> None:
    loaded = works_or_refuses(lambda: load_checkpoint(written(content, "step-0000003.pt")))
    if loaded is not None:
        assert loaded.step == 3


@fuzz_settings(60)
@given(
    content=file_bytes(
        st.one_of(
            JSON,
            st.fixed_dictionaries({"config": JSON}),
            st.fixed_dictionaries({"pretrained": st.dictionaries(st.sampled_from(["model", "tasks", "n"]), JSON)}),
        )
    )
)
def test_run_files(content: bytes) -> None:
    folder = written(content, "run.json").parent
    works_or_refuses(lambda: read_pretrained_config(folder))
    if content.count(b"[") + content.count(b"{") < 1000:  # deeper nesting: checked for pretrained runs below
        works_or_refuses(lambda: read_run_config(folder))


def test_run_file_nested_too_deeply_for_pretrained_runs() -> None:
    folder = written(nested(10_000), "run.json").parent
    with pytest.raises(ArtefactError, match=r"run\.json is not valid JSON"):
        read_pretrained_config(folder)


MODEL_FIELDS = ["d_vocab", "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "act_fn", "dtype", "seed"]


@fuzz_settings(60)
@given(
    fields=st.dictionaries(
        st.sampled_from([*MODEL_FIELDS, "normalization_type"]),
        mostly(st.integers(1, 8), SCALARS | st.sampled_from(["float16", "relu", "LN", 2**64])),
        max_size=4,
    )
)
def test_model_configs(fields: dict[str, Any]) -> None:
    sizes = {"d_vocab": 8, "n_layers": 1, "d_model": 8, "n_heads": 2, "n_ctx": 8}
    config = works_or_refuses(lambda: ModelConfig(**{**sizes, **fields}))
    if config is not None:
        model = works_or_refuses(lambda: build_model(config))
        assert model is None or model.cfg.d_model == config.d_model


@fuzz_settings(80)
@given(
    data=st.recursive(
        st.dictionaries(st.sampled_from(list(TrainConfig().to_dict())), JSON, max_size=3),
        lambda inner: st.dictionaries(st.sampled_from(list(TrainConfig().to_dict())), inner, max_size=2),
        max_leaves=4,
    )
    | JSON
)
def test_train_config_dicts(data: Any) -> None:
    config = works_or_refuses(lambda: TrainConfig.from_dict(data))
    if config is not None:
        assert TrainConfig.from_dict(config.to_dict()) == config
