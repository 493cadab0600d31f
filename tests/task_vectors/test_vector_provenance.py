"""Saved vectors record their source model: other sizes are an error, other weights a warning, old files load."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch
from causal_helpers import POOL
from conftest import BACKENDS, tiny_config
from result_files import save_without_field

from tv_lens import steer
from tv_lens.analyses import FunctionVectors
from tv_lens.errors import AnalysisError, ShapeError
from tv_lens.models import build_model
from tv_lens.results import ModelSignature, OtherWeightsWarning, Result, VectorProvenance
from tv_lens.results.provenance import FINGERPRINT_ENTRIES
from tv_lens.task_vectors import TaskVectors


@pytest.fixture(scope="module", params=BACKENDS)
def saved(request, tmp_path_factory):
    model = build_model(tiny_config(request.param, dtype="float64"))
    tv = TaskVectors.from_model(model, POOL, layers=(0, 1), n_per_task=3, n_shots=2, model_name="tiny-a")
    path = tv.save(tmp_path_factory.mktemp("tv") / "tv.safetensors")
    return request.param, model, tv, path


def hand_fingerprint(model):
    """Reference: the documented recipe, written out: named tensors, float32, at most FINGERPRINT_ENTRIES entries."""
    last = model.cfg.n_layers - 1
    names = ["W_E", "W_U"] + [
        f"blocks.{layer}.{part}"
        for layer in (0, last)
        for part in ("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out")
    ]
    hasher = hashlib.sha256()
    for name in names:
        tensor = model
        for part in name.split("."):
            tensor = tensor[int(part)] if part.isdigit() else getattr(tensor, part)
        flat = tensor.detach().flatten()
        if flat.numel() > FINGERPRINT_ENTRIES:
            flat = flat[torch.linspace(0, flat.numel() - 1, FINGERPRINT_ENTRIES, dtype=torch.float64).long()]
        hasher.update(f"{name}|{tuple(tensor.shape)}|".encode())
        hasher.update(flat.float().numpy().tobytes())
    return hasher.hexdigest(), tuple(names)


def test_task_vectors_record_their_model_and_save_load_exactly(saved):
    _, model, tv, path = saved
    origin = tv.provenance
    assert origin.model.sizes == {"n_layers": 3, "d_model": 32, "n_heads": 4, "d_vocab": 24}
    assert (origin.model.weights_sha256, origin.model.fingerprinted) == hand_fingerprint(model)
    assert origin.model.name == "tiny-a" and origin.model.model_name == model.cfg.model_name
    assert (origin.site, origin.layers, origin.operation, origin.scale) == ("resid_post", (), "replace", 1.0)
    assert origin.pool == "ICLBatch(tasks=['offset(1)', 'offset(2)', 'offset(3)', 'null'], n_prompts=12)"
    loaded = TaskVectors.load(path)
    assert loaded == tv and Result.load(path) == tv
    applied = tv.applied_as(layers=(1,), operation="add", scale=2.0)
    assert TaskVectors.load(applied.save(path.with_name("applied.safetensors"))) == applied
    assert applied.select(layers=(0,)).provenance.layers == () and applied.select(layers=(1,)).provenance.layers == (1,)
    assert len(origin.to_frame()) == 1 and origin.figure().data[0].type == "table"


def test_a_file_saved_before_provenance_existed_still_loads(saved, tmp_path):
    _, _, tv, _ = saved
    old = replace(tv, provenance=None)
    assert TaskVectors.load(save_without_field(old, "provenance", tmp_path / "old.safetensors")) == old


def test_other_sizes_are_an_error_and_other_weights_a_warning(saved):
    backend, _, tv, _ = saved
    deeper = build_model(tiny_config(backend, dtype="float64", n_layers=4))
    with pytest.raises(ShapeError, match="n_layers 3 there, 4 here"):
        tv.check_model(deeper)
    batch = POOL.sample(1, 2, 3)
    with pytest.raises(ShapeError, match="other sizes"):
        steer(deeper, tv, batch, task="offset(1)", layer=1)
    with pytest.raises(ShapeError, match="other sizes"):
        tv.decode(deeper)
    relative = build_model(tiny_config(backend, dtype="float64", seed=1))
    assert ModelSignature.of(relative).weights_sha256 != tv.provenance.model.weights_sha256
    with pytest.warns(OtherWeightsWarning, match="fine-tuned relative"):
        logits = steer(relative, tv, batch, task="offset(1)", layer=1)
    assert logits.shape == (len(batch), 24)
    twin = build_model(tiny_config(backend, dtype="float64"))  # the same weights: no warning (warnings are errors)
    assert ModelSignature.of(twin) == replace(tv.provenance.model, name=None)
    tv.check_model(twin)
    unrecorded = replace(tv, provenance=None)
    unrecorded.check_model(deeper)  # without provenance only d_model and the layers are checked
    with pytest.raises(AnalysisError, match="record no source model"):
        unrecorded.applied_as(layers=(1,))
    with pytest.raises(AnalysisError, match="operation"):
        tv.applied_as(operation="multiply")
    with pytest.raises(ShapeError, match="provenance"):
        replace(tv, provenance=replace(tv.provenance, layers=(2,)))
    with pytest.raises(AnalysisError, match="scale"):
        VectorProvenance(tv.provenance.model, scale=float("inf"))


def test_function_vectors_record_the_best_layer_and_refuse_other_sizes(saved, tmp_path):
    backend, model, _, _ = saved
    result = FunctionVectors(k=2, n_bootstrap=0, layers=(1, 2)).run(model, POOL, n_per_task=2, n_shots=2, seed=0)
    origin = result.vector.provenance
    assert origin.layers == (result.prompting.best_layer,) and (origin.operation, origin.site) == ("add", "resid_post")
    assert origin.model == ModelSignature.of(model)
    assert Result.load(result.vector.save(tmp_path / "fv.safetensors")) == result.vector
    narrower = build_model(tiny_config(backend, dtype="float64", n_heads=2))
    with pytest.raises(ShapeError, match="n_heads 4 there, 2 here"):
        steer(narrower, result.vector, POOL.sample(1, 2, 0), task="offset(1)")
