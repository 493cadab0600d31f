"""Result base: exact save/load round trips, atomic writes, clear errors on bad files, tidy frames, traces."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import pandas as pd
import pytest
import torch
from analyses_helpers import clusters
from safetensors import safe_open
from safetensors.torch import save_file

import tv_lens.results.storage as storage
from tv_lens.analyses import fit_td_accuracy, icl_performance, project, task_decodability
from tv_lens.errors import ResultFileError, TvLensError
from tv_lens.results import Decodability, Performance, Projection, Result, SuiteResult, layer_axis


@dataclass(frozen=True, eq=False)
class Everything(Result):
    """A result using every kind of field the storage supports."""

    floats: torch.Tensor
    ints: torch.Tensor
    flags: torch.Tensor
    empty: torch.Tensor
    nested: dict
    pair: tuple
    items: list
    maybe: torch.Tensor | None = None
    name: str = "ü ★"
    value: float = float("nan")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"x": self.floats.tolist()})

    def traces(self) -> list:
        import plotly.graph_objects as go

        return [go.Scatter(y=self.floats.tolist())]


def everything() -> Everything:
    generator = torch.Generator().manual_seed(0)
    return Everything(
        floats=torch.randn(3, generator=generator, dtype=torch.float64),
        ints=torch.arange(6).view(2, 3),
        flags=torch.tensor([True, False]),
        empty=torch.zeros(0, 4, dtype=torch.float32),
        nested={1: (2, 3.5), "a": [torch.ones(2, dtype=torch.float16), None], (0, "t"): {"deep": torch.tensor(7)}},
        pair=(1, (2, "three"), float("inf")),
        items=[0.1, -0.0, 2**70, True],
    )


def decodability() -> Decodability:
    points, labels = clusters(n_tasks=3, n_per_task=12, spread=2.0)
    return task_decodability(torch.stack([points, points * 2]), labels, k=4, layers=(-1, 0), n_bootstrap=50)


def all_results() -> list[Result]:
    points, labels = clusters(n_tasks=3, n_per_task=12, spread=2.0)
    perf = icl_performance(torch.rand(12), [0, 1] * 6, [0, 0, 0, 1, 1, 1] * 2, n_bootstrap=20)
    proj = project(torch.stack([points, points]), labels, layers=(-1, 2))
    fit = fit_td_accuracy(torch.tensor([0.1, 0.5, 0.7, 0.9]), torch.tensor([0.2, 0.3, 0.9, 0.8]), shots=[1, 1, 4, 4])
    suite = SuiteResult({"decodability": decodability(), "performance": perf}, 12, (1, 4), 3, 1)
    return [everything(), decodability(), perf, proj, fit, suite]


@pytest.mark.parametrize("index", range(6))
def test_every_result_round_trips_exactly(tmp_path, index):
    result = all_results()[index]
    path = result.save(tmp_path / "sub" / "result.safetensors")
    for loaded in (Result.load(path), type(result).load(path)):
        assert type(loaded) is type(result)
        assert loaded == result
        for f in fields(result):
            original, back = getattr(result, f.name), getattr(loaded, f.name)
            if isinstance(original, torch.Tensor):
                assert back.dtype == original.dtype and torch.equal(back, original)
            elif not isinstance(original, (Result, dict, float)):
                assert back == original and type(back) is type(original)


def test_nested_containers_keep_their_types(tmp_path):
    loaded = Result.load(everything().save(tmp_path / "e.safetensors"))
    assert isinstance(loaded.pair, tuple) and isinstance(loaded.pair[1], tuple) and isinstance(loaded.items, list)
    assert set(loaded.nested) == {1, "a", (0, "t")}
    assert loaded.nested[1] == (2, 3.5) and loaded.nested["a"][0].dtype == torch.float16
    assert loaded.items[2] == 2**70 and loaded.items[3] is True and str(loaded.items[1]) == "-0.0"
    assert loaded.value != loaded.value and loaded.name == "ü ★"


def test_equality_is_exact_and_type_aware():
    a = everything()
    assert a == everything()
    changed = Everything(**{**a.__dict__, "floats": a.floats.clone().index_fill_(0, torch.tensor([1]), 0.0)})
    assert a != changed
    assert a != Everything(**{**a.__dict__, "ints": a.ints.double()})  # same values, other dtype
    assert decodability() != a


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "result.safetensors"
    decodability().save(path)
    before = path.read_bytes()
    for step in ("replace", "fsync"):

        def fail(*args, step=step, **kwargs):
            raise OSError(f"disk gone during {step}")

        monkeypatch.setattr(storage.os, step, fail)
        with pytest.raises(OSError, match="disk gone"):
            everything().save(path)
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert os.listdir(tmp_path) == ["result.safetensors"]  # no temporary file left behind
    assert Result.load(path) == decodability()


def test_an_unsaveable_field_fails_before_touching_the_file(tmp_path):
    path = tmp_path / "r.safetensors"
    decodability().save(path)
    bad = Everything(**{**everything().__dict__, "items": [{1, 2}]})
    with pytest.raises(ResultFileError, match=r"'items.0' holds set"):
        bad.save(path)
    assert Result.load(path) == decodability()


def test_corrupt_truncated_foreign_and_wrong_type_files_raise_clear_errors(tmp_path):
    good = decodability().save(tmp_path / "good.safetensors")
    data = good.read_bytes()
    cases = {
        "garbage": b"not a safetensors file at all",
        "truncated": data[: len(data) // 2],
        "header_only": data[:8],
        "empty": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ResultFileError, match="corrupt or truncated") as info:
            Result.load(tmp_path / name)
        assert isinstance(info.value, TvLensError)
    save_file({"weight": torch.ones(2)}, str(tmp_path / "checkpoint.safetensors"))
    with pytest.raises(ResultFileError, match="not a tv_lens result"):
        Result.load(tmp_path / "checkpoint.safetensors")
    with pytest.raises(ResultFileError, match="holds a Decodability, not a Performance"):
        Performance.load(good)
    with pytest.raises(FileNotFoundError):
        Result.load(tmp_path / "missing.safetensors")


def test_a_file_from_another_version_is_rejected(tmp_path):
    path = tmp_path / "r.safetensors"
    tensors = {"td": torch.zeros(1)}
    tag = Decodability.type_tag()
    metadata = {storage.METADATA_KEY: '{"format": 1, "result": {"__result__": "' + tag + '", "fields": {"td": 1}}}'}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ResultFileError, match="another tv_lens version"):
        Result.load(path)
    metadata = {storage.METADATA_KEY: '{"format": 99, "result": null}'}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ResultFileError, match="format 99"):
        Result.load(path)
    metadata = {storage.METADATA_KEY: '{"format": 1, "result": {"__result__": "elsewhere:Thing", "fields": {}}}'}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ResultFileError, match="import the module"):
        Result.load(path)


def test_a_saved_file_whose_fields_fail_validation_is_reported_as_corrupt(tmp_path):
    path = decodability().save(tmp_path / "r.safetensors")
    with safe_open(str(path), "pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    tensors["td"] = torch.zeros(5, dtype=torch.float64)  # wrong number of layers
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ResultFileError, match="invalid Decodability"):
        Result.load(path)


def test_results_are_frozen():
    result = decodability()
    with pytest.raises(AttributeError):
        result.td = torch.zeros(2)  # type: ignore[misc]


def test_every_registered_result_keeps_the_exact_equality():
    for cls in Result._registry.values():
        assert cls.__eq__ is Result.__eq__, f"{cls.__name__} must be declared with @dataclass(eq=False)"


def test_layer_axis_labels_block_indices():
    axis = layer_axis((-1, 0, 3), "resid_post")
    assert axis["tickvals"] == [-1, 0, 3]
    assert axis["ticktext"] == ["embed", "L0 resid_post", "L3 resid_post"]
    assert "-1 = embedding output" in axis["title"]["text"]


def test_projection_and_decodability_are_the_types_returned():
    assert isinstance(decodability(), Decodability)
    assert isinstance(all_results()[3], Projection)
