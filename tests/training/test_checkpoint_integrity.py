"""Checkpoints that are foreign, from a newer tv_lens, from another TransformerLens, or with a mismatched optimiser.

A file that is not a tv_lens checkpoint (a pickle of any other object, in torch's format or plain) is refused
as one that must not be loaded, without torch's advice to unpickle it another way. A checkpoint that records
settings this version does not know names them. A checkpoint records the TransformerLens version it was
written under; when the model this version builds does not take its weights, the error says the checkpoint
comes from that other version (simulated here by editing the recorded version and renaming a parameter, as
TransformerLens 4 and 3 name a bridge's parameters differently). An optimiser state whose tensors do not fit
the parameters is refused on resume, before any step.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import (
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    tiny_config,
    tiny_model,
    tiny_model_config,
    tiny_pool,
)

import tv_lens.training.checkpoints as checkpoints
from tv_lens.environment import OtherEnvironmentWarning, software_environment
from tv_lens.errors import CheckpointError
from tv_lens.training import load_checkpoint, train
from tv_lens.training.checkpoints import load_optimizer_state
from tv_lens.training.loop import make_optimizer

BACKEND = "auto"
INSTALLED = version("transformer-lens")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 2-step run of a tiny model with its model config; its checkpoint (copy before editing)."""
    directory = tmp_path_factory.mktemp("run")
    tiny_run(checkpoint_dir=directory)
    return directory / "step-0000002.pt"


def tiny_run(**where: Path) -> Any:
    """The 2-step run of ``run`` on a fresh tiny model, into ``checkpoint_dir=`` or resumed ``resume_from=``."""
    config = tiny_config(max_steps=2, checkpoint_every=2)
    return train(
        tiny_model(BACKEND), tiny_pool(), config, model_config=tiny_model_config(BACKEND), progress=False, **where
    )


def resume_run(directory: Path) -> Any:
    """Resume the 2-step run of ``run`` from the checkpoints in ``directory``."""
    return tiny_run(resume_from=directory)


def crafted(source: Path, directory: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``source`` edited and given a fresh, matching digest (as a newer tv_lens would write it)."""
    record = torch.load(source, map_location="cpu", weights_only=True)
    del record["digest"]
    edit(record)
    record["digest"] = checkpoints._digest(record)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / source.name
    torch.save(record, path)
    return path


def renamed_parameter(record: dict[str, Any]) -> None:
    """Rename the record's first parameter, as another TransformerLens version names it."""
    name = sorted(record["parameters"])[0]
    record["parameters"][f"{name}_of_another_version"] = record["parameters"].pop(name)


def message_of(path: Path, action: Callable[[Path], Any] = load_checkpoint) -> str:
    with pytest.raises(CheckpointError) as info:
        action(path)
    return str(info.value)


# --- files that are not tv_lens checkpoints ---------------------------------------------------------------


class _OpensAFile:
    """Unpickling this opens (creates) a file: what a malicious file does with something worse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _plain_pickle(protocol: int) -> Callable[[Path, Path], None]:
    def write(path: Path, marker: Path) -> None:
        path.write_bytes(pickle.dumps({"format": checkpoints.FORMAT, "x": _OpensAFile(marker)}, protocol=protocol))

    return write


FOREIGN = {
    "torch_file_with_code": lambda path, marker: torch.save({"step": 1, "x": _OpensAFile(marker)}, path),
    "torch_file_of_a_module": lambda path, marker: torch.save(torch.nn.Linear(2, 2), path),
    "plain_pickle_protocol_2": _plain_pickle(2),
    "plain_pickle_protocol_5": _plain_pickle(5),
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_foreign_pickle_is_not_a_tv_lens_checkpoint_and_is_never_loaded(kind, tmp_path):
    path, marker = tmp_path / "step-0000002.pt", tmp_path / "ran"
    FOREIGN[kind](path, marker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = message_of(path)
    assert re.search(r"not a tv_lens checkpoint.* must not be loaded", message), message
    assert "delete it" in message and "It was not loaded" in message
    for advice in ("weights_only", "will likely succeed", "trusted source"):
        assert advice not in message, message
    assert not marker.exists()  # no code ran
    assert not caught, [str(w.message) for w in caught]  # torch's warnings about the pickle are not passed on


# --- settings of a newer tv_lens ------------------------------------------------------------------------------


def test_settings_this_version_does_not_know_are_named(run, tmp_path):
    def newer(record: dict[str, Any]) -> None:
        record["model_config"]["rotary_dim"] = 8
        record["config"]["schedule"]["cooldown_steps"] = 2
        record["config"]["label_smoothing"] = 0.1

    message = message_of(crafted(run, tmp_path, newer))
    names = "['config.label_smoothing', 'config.schedule.cooldown_steps', 'model_config.rotary_dim']"
    assert f"records settings this tv_lens does not know: {names}" in message
    assert "written by a newer tv_lens" in message and "or retrain" in message
    assert "TypeError" not in message and "unexpected keyword" not in message


def test_a_config_value_this_version_refuses_is_a_crafted_checkpoint(run, tmp_path):
    path = crafted(run, tmp_path, lambda r: r["model_config"].__setitem__("n_layers", 0))
    message = message_of(path)
    assert "holds a config this tv_lens refuses (ModelConfig.n_layers must be a positive int, got 0.)" in message
    assert "corrupt or crafted" in message


# --- TransformerLens versions ------------------------------------------------------------------------------


def test_a_checkpoint_records_the_transformer_lens_version_and_loads_under_it(run):
    record = torch.load(run, map_location="cpu", weights_only=True)
    assert record["transformer_lens"] == INSTALLED
    checkpoint = load_checkpoint(run)
    assert checkpoint.transformer_lens == INSTALLED
    tokens = tiny_pool().sample(2, 3, seed=1).inputs
    assert torch.isfinite(checkpoint.load_model()(tokens)).all()


def test_weights_of_another_transformer_lens_version_blame_the_version_not_the_config(run, tmp_path):
    def other_version(record: dict[str, Any]) -> None:
        record["transformer_lens"] = "0.9.9"
        renamed_parameter(record)

    path = crafted(run, tmp_path, other_version)
    checkpoint = load_checkpoint(path)  # the file itself is sound
    message = message_of(path, lambda _: checkpoint.load_model())
    assert f"was written under TransformerLens 0.9.9, but TransformerLens {INSTALLED} is installed" in message
    assert "Load the checkpoint where TransformerLens 0.9.9 is installed, or retrain" in message
    assert "_of_another_version" in message  # the parameter that does not fit
    assert "Load it into a model built from the same ModelConfig" not in message


def test_resuming_from_another_transformer_lens_version_names_the_version(run, tmp_path):
    def other_version(record: dict[str, Any]) -> None:
        record["transformer_lens"] = "0.9.9"
        renamed_parameter(record)

    crafted(run, tmp_path, other_version)
    message = message_of(tmp_path, resume_run)
    assert "model parameters differ" in message
    assert f"written under TransformerLens 0.9.9, not the installed {INSTALLED}" in message


def test_a_checkpoint_without_a_recorded_version_still_loads_and_says_so_when_weights_do_not_fit(run, tmp_path):
    old = crafted(run, tmp_path / "old", lambda r: r.pop("transformer_lens"))
    assert load_checkpoint(old).transformer_lens is None and load_checkpoint(old).load_model() is not None

    def old_and_renamed(record: dict[str, Any]) -> None:
        record.pop("transformer_lens")
        renamed_parameter(record)

    checkpoint = load_checkpoint(crafted(run, tmp_path / "renamed", old_and_renamed))
    message = message_of(checkpoint.path, lambda _: checkpoint.load_model())
    assert "does not record the TransformerLens version it was written under" in message
    assert f"if that was not the installed {INSTALLED}, load it where that version is installed" in message


def test_weights_that_do_not_fit_under_the_same_version_are_not_blamed_on_the_version(run, tmp_path):
    checkpoint = load_checkpoint(crafted(run, tmp_path, renamed_parameter))
    message = message_of(checkpoint.path, lambda _: checkpoint.load_model())
    assert "do not match the model's (missing:" in message and "TransformerLens" not in message


def test_a_recorded_version_that_is_not_text_is_refused(run, tmp_path):
    message = message_of(crafted(run, tmp_path, lambda r: r.__setitem__("transformer_lens", 4)))
    assert "records TransformerLens version 4, not a version string" in message


# --- the software environment ------------------------------------------------------------------------------


def test_a_checkpoint_records_the_software_environment_it_was_written_in(run):
    assert load_checkpoint(run).environment == software_environment()
    assert load_checkpoint(run).environment["torch_threads"] == 1  # the tests' runs train on one thread


def test_resuming_under_other_torch_threads_warns_that_the_run_is_not_continued_bit_for_bit(run, tmp_path):
    crafted(run, tmp_path, lambda r: r["environment"].__setitem__("torch_threads", 7))
    with pytest.warns(OtherEnvironmentWarning, match=r"torch_threads 7 there, 1 here.*not be bit-identical"):
        resume_run(tmp_path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["environment"].__setitem__("python", "3.0.0"),  # what ran, not what changes numbers
        lambda r: r.pop("environment"),  # a checkpoint of a tv_lens that did not record it
    ],
    ids=["another-python", "not-recorded"],
)
def test_resuming_where_the_numeric_environment_matches_or_is_unknown_does_not_warn(run, tmp_path, edit):
    crafted(run, tmp_path, edit)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OtherEnvironmentWarning)
        resume_run(tmp_path)
    assert load_checkpoint(next(tmp_path.glob("step-*.pt"))).environment != software_environment()


@pytest.mark.parametrize("environment", [["torch", "2.0"], {"torch": 2.0}, {3: "x"}])
def test_a_recorded_environment_that_is_not_versions_and_counts_is_refused(run, tmp_path, environment):
    message = message_of(crafted(run, tmp_path, lambda r: r.__setitem__("environment", environment)))
    assert "records a software environment that is not versions and counts by name" in message


@pytest.mark.parametrize(
    ("digest", "saved_too", "problem"),
    [
        ("ab" * 31, False, "frozen-parameter digests that are not 64-digit hex strings by name"),
        ("zz" * 32, False, "frozen-parameter digests that are not 64-digit hex strings by name"),
        ("ab" * 32, True, "names parameters both as saved and as frozen (['"),
    ],
    ids=["too_short", "not_hex", "also_saved"],
)
def test_frozen_digests_no_run_writes_are_refused_by_what_is_wrong(run, tmp_path, digest, saved_too, problem):
    def frozen(record: dict[str, Any]) -> None:
        saved = sorted(record["parameters"])[0]
        record["frozen"] = {saved if saved_too else "not_saved.weight": digest}

    message = message_of(crafted(run, tmp_path, frozen))
    assert problem in message and "corrupt or crafted" in message, message


# --- optimiser state --------------------------------------------------------------------------------------


def _shrink_first_moment(record: dict[str, Any]) -> None:
    """Cut the first parameter's Adam moment to half its length (shapes that fit no parameter)."""
    state = record["optimizer"]["state"]
    index = min(state)
    state[index]["exp_avg"] = state[index]["exp_avg"].reshape(-1)[:3].clone()


def test_an_optimiser_state_of_other_shapes_is_refused_on_resume_before_any_step(run, tmp_path):
    crafted(run, tmp_path, lambda r: (_shrink_first_moment(r), r.__setitem__("step", 1)))
    message = message_of(tmp_path, resume_run)
    assert re.search(r"The optimiser state in .*step-0000002\.pt does not fit this run's parameters", message)
    assert re.search(r"its 'exp_avg' of parameter \S+ has shape \(3,\), the parameter \(\d+(, \d+)*\)", message)
    assert "resume with the model and optimiser settings the run was started with" in message
    assert sorted(os.listdir(tmp_path)) == ["step-0000002.pt"]  # nothing trained, nothing written


def _random_state_of_a_module_the_model_lacks(record: dict[str, Any]) -> None:
    record["rng"]["blocks.9.dropout"] = torch.Generator().manual_seed(3).get_state()


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (_shrink_first_moment, r"The optimiser state in .* does not fit this run's parameters"),
        (_random_state_of_a_module_the_model_lacks, r"random state of module 'blocks\.9\.dropout', which this model"),
    ],
    ids=["optimiser-state", "random-state"],
)
def test_a_refused_resume_leaves_the_model_as_it_was(run, tmp_path, edit, problem):
    """The weights were loaded before the optimiser and random states were checked: a refused resume left the model
    with the checkpoint's weights."""
    crafted(run, tmp_path, edit)
    model = tiny_model(BACKEND)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError, match=problem):
        train(
            model,
            tiny_pool(),
            tiny_config(max_steps=2, checkpoint_every=2),
            model_config=tiny_model_config(BACKEND),
            resume_from=tmp_path,
            progress=False,
        )
    assert all(torch.equal(p, old) for p, old in zip(model.parameters(), before, strict=True))


def test_load_optimizer_state_refuses_other_groups_and_loads_a_state_that_fits(run):
    model, config = tiny_model(BACKEND), tiny_config(max_steps=2, checkpoint_every=2)
    saved = load_checkpoint(run).optimizer
    one_group = torch.optim.AdamW(model.parameters())  # the run's has two: weights that decay, and the others
    with pytest.raises(CheckpointError, match=r"x\.pt does not fit this run's parameters \(.*parameter groups"):
        load_optimizer_state(one_group, saved, model, source="x.pt")
    optimizer = make_optimizer(list(model.named_parameters()), config.optim, config.schedule)
    load_optimizer_state(optimizer, saved, model, source="x.pt")
    restored = optimizer.state_dict()["state"]
    assert restored.keys() == saved["state"].keys()
    for index, entries in saved["state"].items():
        assert all(torch.equal(restored[index][key], value) for key, value in entries.items())
