"""Result base: exact save/load round trips, atomic writes, clear errors on bad files, tidy frames, traces."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import pytest
import torch
from analyses_helpers import clusters
from jaxtyping import Float
from result_files import with_tensors_edited
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

import tv_lens.results.storage as storage
from tv_lens.analyses import (
    ICLPerformance,
    TaskDecodability,
    fit_td_accuracy,
    icl_performance,
    project,
    task_decodability,
)
from tv_lens.errors import LayerOutOfRangeError, ResultFileError, ShapeError, TvLensError
from tv_lens.results import (
    Decodability,
    HeadImportance,
    IndirectEffects,
    PatchingEffects,
    Performance,
    Projection,
    PromptingAccuracy,
    Result,
    SuiteResult,
    layer_axis,
)
from tv_lens.results.base import _tensor_axes
from tv_lens.results.encoding import field_types
from tv_lens.results.shared import real_prompts, real_tasks


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
    return task_decodability(
        torch.stack([points, points * 2]), labels, layers=(-1, 0), config=TaskDecodability(k=4, n_bootstrap=50)
    )


def all_results() -> list[Result]:
    points, labels = clusters(n_tasks=3, n_per_task=12, spread=2.0)
    perf = icl_performance(torch.rand(12), [0, 1] * 6, [0, 0, 0, 1, 1, 1] * 2, config=ICLPerformance(n_bootstrap=20))
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
    with_tensors_edited(path, lambda tensors: tensors.update(td=torch.zeros(5, dtype=torch.float64)))  # 5 layers
    with pytest.raises(ResultFileError, match="invalid Decodability"):
        Result.load(path)


def test_an_altered_file_is_named_altered_before_its_fields_are_checked(tmp_path):
    """A changed tensor without new digests is reported as such, not by the check it happens to break."""
    path = decodability().save(tmp_path / "r.safetensors")
    with safe_open(str(path), "pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    tensors["td"] = torch.zeros(5, dtype=torch.float64)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ResultFileError, match="its tensors do not match the digest"):
        Result.load(path)


@pytest.mark.parametrize(
    ("field", "value", "declared"),
    [
        ("layers", None, "tuple[int, ...]"),
        ("task_names", ("a", 2, "c"), "tuple[str, ...]"),
        ("site", 3, "str"),
        ("labels", torch.zeros(36), "Int[Tensor, 'prompt']"),
    ],
)
def test_a_result_built_with_a_field_of_another_type_is_refused(field, value, declared):
    """Built by hand as when loaded: the declared type of each field is checked (tables once failed deep inside)."""
    with pytest.raises(ShapeError, match=rf"A Decodability whose field '{field}' is .*, not {re.escape(declared)}"):
        replace(decodability(), **{field: value})


@pytest.mark.parametrize("ids", [[0, 9], [-1, 0], [0.0, 1.0]], ids=["too-large", "negative", "float"])
def test_task_ids_outside_the_task_names_are_refused(ids):
    """Ids are indices into task_names: a result holding others is refused when it is built (and so when loaded)."""
    fit = fit_td_accuracy([0.2, 0.5], [0.3, 0.4], task_ids=[0, 1], shots=[1, 1])
    with pytest.raises(ShapeError, match="task_ids"):
        replace(fit, task_ids=torch.tensor(ids))


def test_a_crafted_file_with_task_ids_outside_its_task_names_is_refused(tmp_path):
    path = decodability().save(tmp_path / "r.safetensors")

    def shift_labels(tensors):
        (key,) = [key for key in tensors if key.split(".")[-1] == "labels"]
        tensors[key] = tensors[key] + 100

    with_tensors_edited(path, shift_labels)
    with pytest.raises(ResultFileError, match="task ids"):
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


@dataclass(frozen=True, eq=False)
class Scores(Result):
    """A result whose tensors name an axis another field fixes (layer), a free one (head) and a number."""

    layers: tuple[int, ...]
    scores: Float[Tensor, "layer head"]
    bias: Float[Tensor, "head 2"]
    total: Float[Tensor, " layer"] | None = None

    def _axes(self) -> dict[str, int]:
        return {"layer": len(self.layers)}


def test_tensor_fields_are_checked_against_the_axes_their_annotations_name():
    good = {"layers": (0, 1), "scores": torch.zeros(2, 3), "bias": torch.zeros(3, 2)}
    Scores(**good)  # head is 3 in both tensors; the optional total is left out
    Scores(**good, total=torch.zeros(2))
    cases = {
        "scores must have shape (2, 3), got (3, 3)": {"scores": torch.zeros(3, 3)},  # layer is len(layers)
        "bias must have shape (3, 2), got (4, 2)": {"bias": torch.zeros(4, 2)},  # head keeps its first size
        "bias must have shape (3, 2), got (3, 3)": {"bias": torch.zeros(3, 3)},  # a number is that size
        "scores must have shape (2, head), got (2,)": {"scores": torch.zeros(2)},
        "total must have shape (2,), got (3,)": {"total": torch.zeros(3)},
    }
    for message, change in cases.items():
        with pytest.raises(ShapeError, match=re.escape(f"Scores.{message}")):
            Scores(**{**good, **change})


def test_every_tensor_field_of_every_result_type_is_shape_checked():
    """The check reads the annotations, so none may fail to resolve or name its axes in a way it skips."""
    library = [cls for cls in Result._registry.values() if cls.__module__.startswith("tv_lens.")]
    assert {PromptingAccuracy, PatchingEffects, HeadImportance, IndirectEffects, Performance} <= set(library)
    for cls in library:
        hints = field_types(cls)
        assert set(hints) >= {f.name for f in fields(cls)}, cls.__name__
        tensors = {f.name for f in fields(cls) if "Tensor" in str(hints[f.name])}
        assert set(_tensor_axes(cls)) == tensors, cls.__name__


@pytest.mark.parametrize("cls", [Decodability, PromptingAccuracy, PatchingEffects, HeadImportance, IndirectEffects])
def test_the_shared_settings_keep_their_names_and_defaults_and_follow_the_own_fields(cls):
    """Files name their fields: the settings declared once keep the names and defaults they were saved under."""
    shared = {"ci_level": 0.95, "n_bootstrap": 1000, "seed": 0}
    shared |= {} if cls is Decodability else {"rows_per_pass": None}
    settings = [f for f in fields(cls) if f.name in shared]
    assert {f.name: f.default for f in settings} == shared
    assert all(f.kw_only for f in settings) and not any(f.kw_only for f in fields(cls) if f.name not in shared)


def test_a_layer_off_the_axis_names_the_layers_on_it():
    result = decodability()
    assert result.at(0) == 1 and result.at(-1) == 0
    with pytest.raises(LayerOutOfRangeError, match=r"Layer 5 is not among the layers of .*, \(-1, 0\)"):
        result.at(5)
    with pytest.raises(LayerOutOfRangeError, match=r"Layer 1 is not among the layers of this projection, \(-1, 2\)"):
        all_results()[3].traces(1)


def test_only_the_null_tasks_prompts_and_tasks_are_left_out():
    ids = torch.tensor([2, 0, 1, 2, 1])
    names = ("a", "none", "b")
    assert real_tasks(names, "none") == [0, 2]
    assert real_prompts(ids, names, "none").tolist() == [name != "none" for name in (names[i] for i in ids)]
    assert real_prompts(ids, names).all() and real_tasks(names) == [0, 1, 2]  # no task called "null"


def random_fields(cls: type[Result], sizes: dict[str, int], **given: object) -> dict[str, object]:
    """Random float64 tensors (integer ones for ``writes``, ``vector_source``) of the shapes ``cls`` annotates."""
    generator = torch.Generator().manual_seed(0)
    tensors: dict[str, object] = {}
    for name, dims in _tensor_axes(cls).items():
        shape = tuple(dim if isinstance(dim, int) else sizes[dim] for dim in dims)
        integer = name in ("writes", "vector_source")
        tensors[name] = (
            torch.randint(0, 5, shape, generator=generator)
            if integer
            else torch.rand(shape, generator=generator, dtype=torch.float64)
        )
    return tensors | given


def test_the_prompting_table_averages_each_tasks_prompts_and_leaves_the_null_task_out_of_all():
    ids = torch.tensor([0, 2, 1, 1, 0, 2, 0])
    result = PromptingAccuracy(
        **random_fields(PromptingAccuracy, {"layer": 2, "task": 3, "prompt": 7}, task_ids=ids),
        layers=(0, 1),
        task_names=("a", "none", "b"),
        icl_accuracy=0.5,
        zero_shot_accuracy=0.25,
        null_task="none",
    )
    frame = result.to_frame().set_index(["layer", "task"])
    prompts = pd.DataFrame({"task": [result.task_names[t] for t in ids.tolist()]})
    for i, layer in enumerate(result.layers):
        prompts["loss"], prompts["icl"] = result.tvp_loss[i].numpy(), result.icl_correct.numpy()
        prompts["zero"] = result.zero_shot_correct.numpy()
        by_task = prompts.groupby("task").agg(["mean", "size"])
        for task in result.task_names:
            row = frame.loc[(layer, task)]
            assert row.tvp_loss == pytest.approx(by_task.loc[task, ("loss", "mean")], rel=1e-12)
            assert row.icl_accuracy == pytest.approx(by_task.loc[task, ("icl", "mean")], rel=1e-12)
            assert row.zero_shot_accuracy == pytest.approx(by_task.loc[task, ("zero", "mean")], rel=1e-12)
            assert row.n_prompts == by_task.loc[task, ("loss", "size")]
        overall = frame.loc[(layer, "all")]
        assert overall.tvp_loss == pytest.approx(prompts.loss[prompts.task != "none"].mean(), rel=1e-12)
        assert overall.n_prompts == 5 and overall.icl_accuracy == 0.5


def test_the_patching_tables_and_headline_read_the_fields():
    ids = torch.tensor([0, 1, 1, 0, 1])
    result = PatchingEffects(
        **random_fields(PatchingEffects, {"layer": 2, "source": 2, "target": 3, "prompt": 5}, task_ids=ids),
        clean_override_rate=0.1,
        layers=(1, 3),
        source_names=("a", "b"),
        target_names=("a", "b", "c"),
    )
    frame = result.to_frame().set_index(["layer", "source", "target"])
    for i, layer in enumerate(result.layers):
        for s, source in enumerate(result.source_names):
            for t, target in enumerate(result.target_names):
                row = frame.loc[(layer, source, target)]
                assert row.accuracy == pytest.approx(float(result.correct[i, t, ids == s].double().mean()), rel=1e-12)
                assert row.loss == pytest.approx(float(result.loss[i, t, ids == s].double().mean()), rel=1e-12)
    summary = result.summary_frame()
    assert list(zip(summary.layer, summary.comparison, strict=True)) == [
        (layer, comparison) for layer in (1, 3) for comparison in ("correct", "incorrect")
    ]
    for comparison in ("correct", "incorrect"):
        rows = summary[summary.comparison == comparison]
        np.testing.assert_array_equal(rows.accuracy_change, getattr(result, f"{comparison}_change").numpy())
        np.testing.assert_array_equal(
            rows[["loss_ci_low", "loss_ci_high"]], getattr(result, f"{comparison}_loss_change_ci")
        )
    assert (
        summary.override_rate.tolist()[1::2] == result.override_rate.tolist()
        and summary.override_rate[::2].isna().all()
    )
    headline, i = result.headline(), result.at(result.best_layer)
    assert list(headline) == ["mode", "layer"] + [
        f"{name}{ci}"
        for name in ("correct", "incorrect", "correct_loss", "incorrect_loss")
        for ci in ("_change", "_change_ci")
    ] + ["override_rate", "held_out_layers", "held_out_loss_gap", "held_out_loss_gap_ci"]
    assert headline["incorrect_loss_change_ci"] == result.incorrect_loss_change_ci[i].tolist()
    assert headline["correct_change"] == float(result.correct_change[i]) and headline["layer"] == result.layers[i]
