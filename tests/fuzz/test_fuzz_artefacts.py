"""Fuzzing saved artefacts that are well formed but hold the wrong contents: results and checkpoints.

test_fuzz_files.py changes bytes, which the digests catch. Here the digest is recomputed after the change, as a
hand-edited or crafted file would carry: a result whose fields were dropped, added, retyped or pointed at another
tensor, whose tensors have another shape or dtype or hold NaN, or whose type tag names another class; a checkpoint
whose config disagrees with its tensors, whose fields were dropped, added or retyped, or whose parameters have
other shapes. Each load returns a result that works (its table, its figure, a save that loads back equal) or a
checkpoint whose model loads, or raises a TvLensError; never another exception.
"""

from __future__ import annotations

import copy
import json
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import torch
from fuzz_helpers import fuzz_settings, mostly
from hypothesis import given
from hypothesis import strategies as st
from reliability_helpers import POOL, TINY_TRAINING, one_thread, tiny_model_config  # noqa: F401

from tv_lens import TvLensError
from tv_lens.analyses import (
    ICLPerformance,
    TaskDecodability,
    fit_td_accuracy,
    icl_performance,
    project,
    task_decodability,
)
from tv_lens.models import build_model
from tv_lens.results import Result
from tv_lens.results.storage import METADATA_KEY, canonical_json, document_digest, result_to_bytes, tensor_digest
from tv_lens.training import TrainConfig, load_checkpoint, train
from tv_lens.training.checkpoints import _digest as checkpoint_digest


def refused(call: Any) -> Any | None:
    """``call()``, or ``None`` if it raised a TvLensError (any other exception fails the test)."""
    try:
        return call()
    except TvLensError:
        return None


# --- results ---


@cache
def results() -> dict[str, Result]:
    """One result of each kind made without a model: decodability, performance, projection, TD → accuracy fit."""
    labels = torch.arange(3).repeat_interleave(4)
    reps = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(0)) + 3 * labels[None, :, None]
    return {
        "decodability": task_decodability(reps, labels, config=TaskDecodability(k=2, n_bootstrap=4)),
        "performance": icl_performance(
            [1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1], [1, 2, 1, 2], config=ICLPerformance(n_bootstrap=4)
        ),
        "projection": project(reps, labels),
        "fit": fit_td_accuracy([0.2, 0.5, 0.9], [0.3, 0.4, 0.8], task_ids=[0, 1, 2], shots=[1, 1, 1]),
    }


def split(data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON document and the tensors of a result file."""
    from safetensors.torch import load

    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return json.loads(header["__metadata__"][METADATA_KEY]), load(data)


def joined(document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """A result file of ``document`` and ``tensors``, with both digests recomputed (as a crafted file has them)."""
    from safetensors.torch import save

    document = {**document, "tensors": tensor_digest(tensors)}
    document["digest"] = document_digest(document)
    return save(tensors, metadata={METADATA_KEY: canonical_json(document)})


ODD_VALUES = st.sampled_from(
    [
        None,
        3,
        -1,
        0.5,
        "x",
        True,
        [],
        [1, 2],
        {"__tuple__": []},
        {"__tuple__": ["a", "b"]},
        {"__tuple__": [2**70]},
        {"__dict__": [["k", 1]]},
        {"__tensor__": "missing"},
        {"__tensor__": 3},
        {"__result__": "os:system", "fields": {}},
        {"__unknown__": 1},
        {},
    ]
)


@st.composite
def edited_results(draw: Any) -> Any:
    """A saved result with one edit and both digests recomputed (a thunk making its bytes: a short repr)."""
    kind = draw(st.sampled_from(sorted(results())))
    document, tensors = split(result_to_bytes(results()[kind]))
    document, tensors = copy.deepcopy(document), dict(tensors)
    fields = document["result"]["fields"]
    names = sorted(fields)
    edit = draw(
        mostly(
            st.sampled_from(["retype", "tensor", "drop", "pointer"]),
            st.sampled_from(["extra", "tag", "format", "none", "no fields", "tensor gone", "tensor extra"]),
        )
    )
    name = draw(st.sampled_from(names))
    tensor_names = sorted(tensors)
    if edit == "retype":
        fields[name] = draw(ODD_VALUES)
    elif edit == "tensor":
        target = draw(st.sampled_from(tensor_names))
        value = tensors[target]
        how = draw(st.sampled_from(["shorter", "longer", "float32", "long", "bool", "scalar", "nan", "extra dim"]))
        if how == "shorter" and value.ndim:
            value = value[..., :-1].contiguous()
        elif how == "longer" and value.ndim:
            value = torch.cat([value, value[..., :1]], dim=-1)
        elif how in ("float32", "long", "bool"):
            value = value.to(getattr(torch, how))
        elif how == "scalar":
            value = value.flatten()[:1].reshape(())
        elif how == "nan" and value.is_floating_point() and value.numel():
            value = value.clone()
            value.view(-1)[0] = float("nan")
        elif how == "extra dim":
            value = value[None]
        tensors[target] = value
    elif edit == "drop":
        del fields[name]
    elif edit == "pointer":  # a field pointing at another field's tensor
        pointers = [n for n in names if isinstance(fields[n], dict) and "__tensor__" in fields[n]]
        if pointers:
            fields[draw(st.sampled_from(pointers))] = {"__tensor__": draw(st.sampled_from(tensor_names))}
    elif edit == "extra":
        fields["unknown_field"] = draw(ODD_VALUES)
    elif edit == "tag":
        document["result"]["__result__"] = draw(
            st.sampled_from(
                [
                    "tv_lens.results.performance:Performance",
                    "tv_lens.results.geometry:Projection",
                    "tv_lens.results.decodability:Decodability",
                    "tv_lens.results.prediction:TdAccuracyFit",
                    "os:system",
                    "tv_lens.results:Result",
                    "",
                    3,
                ]
            )
        )
    elif edit == "format":
        document["format"] = draw(st.sampled_from([1, 3, "2", None, 2.0]))
    elif edit == "no fields":
        document["result"]["fields"] = draw(st.sampled_from([None, [], "x", {}]))
    elif edit == "tensor gone":
        del tensors[draw(st.sampled_from(tensor_names))]
    elif edit == "tensor extra":
        tensors["extra"] = torch.zeros(2)
    return lambda: joined(document, tensors)


def written(data: bytes, name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="tv-lens-fuzz-")) / name
    path.write_bytes(data)
    return path


@fuzz_settings(40)
@given(data=edited_results(), unverified=st.booleans())
def test_results_with_wrong_contents(data: Any, unverified: bool) -> None:
    path = written(data(), "r.safetensors")
    loaded = refused(lambda: Result.load(path, allow_unverified=unverified))
    if loaded is None:
        return
    # A result that loads is whole: its table and figure are drawn, and saving it again loads back equal.
    assert len(loaded.to_frame()) > 0
    loaded.figure()
    again = Result.load(loaded.save(path.with_name("again.safetensors")))
    assert type(again) is type(loaded) and again == loaded


def test_a_crafted_result_with_the_fields_of_another_is_refused() -> None:
    """A Performance's fields under the Decodability tag, digests recomputed: the type's own checks refuse it."""
    document, tensors = split(result_to_bytes(results()["performance"]))
    document["result"]["__result__"] = "tv_lens.results.decodability:Decodability"
    try:
        Result.load(written(joined(document, tensors), "r.safetensors"))
    except TvLensError as error:
        assert "Decodability" in str(error) or "field" in str(error)
    else:
        raise AssertionError("a result with another type's fields loaded")


def test_an_untouched_result_round_trips_through_the_helpers() -> None:
    """The helpers of this file rebuild a result byte for byte, so an edit is the only change in every example."""
    for result in results().values():
        original = result_to_bytes(result)
        assert Result.load(written(joined(*split(original)), "r.safetensors")) == result


# --- checkpoints ---


@cache
def checkpoint_record() -> dict[str, Any]:
    """The verified record of a three-step run's checkpoint (without its digest)."""
    folder = Path(tempfile.mkdtemp(prefix="tv-lens-fuzz-"))
    config = tiny_model_config(n_layers=1)
    settings = TrainConfig.from_dict({**TINY_TRAINING.to_dict(), "checkpoint_every": 3})
    run = train(build_model(config), POOL, settings, model_config=config, checkpoint_dir=folder / "run", progress=False)
    record = torch.load(run.checkpoints[-1], map_location="cpu", weights_only=True)
    record.pop("digest")
    return record


def crafted_checkpoint(record: dict[str, Any]) -> Path:
    """A checkpoint file of ``record`` with its digest recomputed."""
    record = {**record, "digest": checkpoint_digest(record)}
    folder = Path(tempfile.mkdtemp(prefix="tv-lens-fuzz-"))
    torch.save(record, folder / "step-0000003.pt")
    return folder / "step-0000003.pt"


@st.composite
def edited_records(draw: Any) -> Any:
    """The checkpoint's record with one edit: a config that disagrees with the tensors, a field dropped, added or
    retyped, parameters of other shapes, dtypes or names, a step outside the run (a thunk: a short repr)."""
    record = copy.deepcopy(checkpoint_record())
    edit = draw(
        mostly(
            st.sampled_from(["model_config", "parameters", "config"]),
            st.sampled_from(["drop", "extra", "retype", "step", "history", "none"]),
        )
    )
    keys = sorted(record)
    if edit == "model_config":
        field = draw(st.sampled_from(["d_model", "n_layers", "n_heads", "d_vocab", "n_ctx", "d_mlp", "act_fn"]))
        value = draw(st.sampled_from([1, 2, 4, 32, 0, -1, "gelu", None, 2.5]))
        record["model_config"] = {**record["model_config"], field: value}
    elif edit == "parameters":
        parameters = dict(record["parameters"])
        name = draw(st.sampled_from(sorted(parameters)))
        how = draw(st.sampled_from(["shorter", "float64", "long", "nan", "drop", "rename", "extra"]))
        value = parameters[name]
        if how == "shorter":
            parameters[name] = value[..., :-1].clone() if value.ndim else value[None]
        elif how in ("float64", "long"):
            parameters[name] = value.to(getattr(torch, how))
        elif how == "nan":
            parameters[name] = torch.full_like(value, float("nan"))
        elif how == "drop":
            del parameters[name]
        elif how == "rename":
            parameters[name + ".x"] = parameters.pop(name)
        else:
            parameters["blocks.9.attn.W_Q"] = torch.zeros(2, 2)
        record["parameters"] = parameters
    elif edit == "config":
        data = record["config"]
        section = draw(st.sampled_from(["schedule", "data", "optim"]))
        field = draw(st.sampled_from(sorted(data[section])))
        record["config"] = {**data, section: {**data[section], field: draw(st.sampled_from([0, -1, "x", None, 1e9]))}}
    elif edit == "drop":
        del record[draw(st.sampled_from(keys))]
    elif edit == "extra":
        record["unknown"] = 1
    elif edit == "retype":
        record[draw(st.sampled_from(keys))] = draw(st.sampled_from([None, 3, "x", [], {}, torch.zeros(2)]))
    elif edit == "step":
        record["step"] = draw(st.sampled_from([-1, 4, 10**6, 2.0, True, "3"]))
    elif edit == "history":
        record["history"] = draw(st.sampled_from([[{"step": "x"}], [{}], [1], [{"loss": float("nan")}]]))
    return lambda: record


@fuzz_settings(25)
@given(record=edited_records())
def test_checkpoints_with_wrong_contents(record: Any) -> None:
    path = crafted_checkpoint(record())
    checkpoint = refused(lambda: load_checkpoint(path))
    model = None if checkpoint is None else refused(checkpoint.load_model)
    if checkpoint is None or model is None:
        return
    loaded = dict(model.named_parameters())
    for name, value in checkpoint.parameters.items():
        if name in loaded:
            assert torch.equal(loaded[name].detach(), value.to(loaded[name].dtype)), name
    assert checkpoint.step == 3


def test_a_checkpoint_whose_config_disagrees_with_its_tensors_is_refused() -> None:
    """d_model 32 recorded for 16-wide tensors, digest recomputed: the model cannot be rebuilt from it."""
    record = copy.deepcopy(checkpoint_record())
    record["model_config"] = {**record["model_config"], "d_model": 32}
    try:
        load_checkpoint(crafted_checkpoint(record)).load_model()
    except TvLensError as error:
        assert "shape" in str(error) or "d_model" in str(error)
    else:
        raise AssertionError("a checkpoint whose config disagrees with its tensors loaded")
