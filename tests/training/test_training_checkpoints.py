"""Checkpoints: bit-exact resume, atomic writes, corrupt files, runs with another config."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import BACKENDS
from training_helpers import (
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    parameters_of,
    tiny_config,
    tiny_model,
    tiny_model_config,
    tiny_pool,
)

from tv_lens.errors import CheckpointError, ConfigError
from tv_lens.tasks import offset_pool
from tv_lens.training import latest_checkpoint, list_checkpoints, load_checkpoint, train


def assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        for key, value in a["state"][index].items():
            assert torch.equal(value, b["state"][index][key]), (index, key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_equals_uninterrupted_training(backend: str, tmp_path: Path) -> None:
    config = tiny_config(max_steps=8, checkpoint_every=4, eval_every=3)
    model_config = tiny_model_config(backend)
    full = train(
        tiny_model(backend),
        tiny_pool(),
        config,
        model_config=model_config,
        checkpoint_dir=tmp_path / "a",
        progress=False,
    )
    # Killed after step 6: the last checkpoint is step 4, steps 5-6 are lost and redone on resume.
    killed = train(
        tiny_model(backend),
        tiny_pool(),
        config,
        model_config=model_config,
        checkpoint_dir=tmp_path / "b",
        stop_after=6,
        progress=False,
    )
    assert killed.steps == 6 and [p.name for p in killed.checkpoints] == ["step-0000004.pt"]
    fresh = tiny_model(backend)  # as in a new process
    resumed = train(fresh, tiny_pool(), config, model_config=model_config, resume_from=tmp_path / "b", progress=False)

    assert resumed.steps == 8
    final_full, final_resumed = parameters_of(full.model), parameters_of(resumed.model)
    assert final_full.keys() == final_resumed.keys()
    for name in final_full:
        assert torch.equal(final_full[name], final_resumed[name]), name
    a, b = load_checkpoint(tmp_path / "a" / "step-0000008.pt"), load_checkpoint(tmp_path / "b" / "step-0000008.pt")
    assert_same_optimizer_state(a.optimizer, b.optimizer)
    for name in a.parameters:
        assert torch.equal(a.parameters[name], b.parameters[name])
    columns = ["step", "lr", "loss", "loss_icl", "grad_norm"]
    assert full.history[columns].equals(resumed.history[columns])
    assert full.evals.equals(resumed.evals)
    assert [p.name for p in resumed.checkpoints] == ["step-0000004.pt", "step-0000008.pt"]


def test_resuming_from_an_earlier_checkpoint_never_writes_over_the_later_ones(tmp_path: Path) -> None:
    """Resumed from step 2 of a run that wrote steps 2, 4 and 6, a run writing to that directory would replace
    steps 4 and 6 (under other software or threads, with other weights): it is refused before the model is touched,
    every file kept byte for byte. Written elsewhere, it continues as the run did."""
    config = tiny_config(6, checkpoint_every=2)
    full = train(tiny_model(BACKENDS[0]), tiny_pool(), config, checkpoint_dir=tmp_path / "run", progress=False)
    saved = {path: path.read_bytes() for path in list_checkpoints(tmp_path / "run")}
    model = tiny_model(BACKENDS[0])
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError, match=r"later than step 2.*step-0000004\.pt, step-0000006\.pt.*new directory"):
        train(model, tiny_pool(), config, resume_from=full.checkpoints[0], progress=False)
    assert {path: path.read_bytes() for path in list_checkpoints(tmp_path / "run")} == saved
    assert all(torch.equal(p, old) for p, old in zip(model.parameters(), before, strict=True))
    elsewhere = train(
        model, tiny_pool(), config, resume_from=full.checkpoints[0], checkpoint_dir=tmp_path / "b", progress=False
    )
    assert all(torch.equal(p, q) for p, q in zip(elsewhere.model.parameters(), full.model.parameters(), strict=True))


def test_checkpoint_rebuilds_the_model(tmp_path: Path) -> None:
    model_config = tiny_model_config(BACKENDS[0])
    result = train(
        tiny_model(BACKENDS[0]),
        tiny_pool(),
        tiny_config(max_steps=4, checkpoint_every=2),
        model_config=model_config,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    checkpoint = load_checkpoint(result.checkpoints[-1])
    assert checkpoint.step == 4 and checkpoint.config == result.config and checkpoint.model_config == model_config
    tokens = tiny_pool().sample(2, 3, seed=1).inputs
    with torch.no_grad():
        torch.testing.assert_close(checkpoint.load_model()(tokens), result.model(tokens), rtol=0, atol=0)


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs TransformerLens 3, where backend='auto' means HookedTransformer")
def test_auto_backend_checkpoint_rebuilds_the_class_it_was_saved_from(tmp_path: Path) -> None:
    """A run saved with backend='auto' from a bridge (as under TransformerLens 4) loads as a bridge under 3."""
    result = train(
        tiny_model("bridge"),
        tiny_pool(),
        tiny_config(max_steps=2, checkpoint_every=2),
        model_config=tiny_model_config("auto"),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    loaded = load_checkpoint(result.checkpoints[-1]).load_model()
    assert type(loaded) is type(result.model)
    tokens = tiny_pool().sample(2, 3, seed=1).inputs
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), result.model(tokens), rtol=0, atol=0)


def test_checkpoint_from_a_different_config(tmp_path: Path) -> None:
    config = tiny_config(max_steps=4, checkpoint_every=2)
    train(tiny_model(BACKENDS[0]), tiny_pool(), config, checkpoint_dir=tmp_path, progress=False)
    other = replace(config, schedule=replace(config.schedule, lr=1e-2))
    with pytest.raises(CheckpointError, match=r"different config: config\.schedule\.lr = 0\.003 in the checkpoint"):
        train(tiny_model(BACKENDS[0]), tiny_pool(), other, resume_from=tmp_path, progress=False)
    other_pool = offset_pool(offsets=(1, 3), n_values=8)
    with pytest.raises(CheckpointError, match=r"pool\.task_names"):
        train(tiny_model(BACKENDS[0]), other_pool, config, resume_from=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="model parameters differ"):
        train(tiny_model(BACKENDS[0], d_mlp=64), tiny_pool(), config, resume_from=tmp_path, progress=False)
    # Bookkeeping fields may change.
    train(tiny_model(BACKENDS[0]), tiny_pool(), replace(config, eval_every=1), resume_from=tmp_path, progress=False)


def test_truncated_or_corrupt_checkpoint(tmp_path: Path) -> None:
    result = train(
        tiny_model(BACKENDS[0]),
        tiny_pool(),
        tiny_config(max_steps=2, checkpoint_every=2),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    good = result.checkpoints[-1].read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="No checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_interrupted_write_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save
    calls = []

    def failing_second_save(obj, file, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            file.write(b"PK\x03\x04 half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_second_save)
    config = tiny_config(max_steps=4, checkpoint_every=2)
    with pytest.raises(OSError, match="disk full"):
        train(tiny_model(BACKENDS[0]), tiny_pool(), config, checkpoint_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000002.pt"]  # no partial file left behind
    assert load_checkpoint(tmp_path / "step-0000002.pt").step == 2
    # A crash that leaves a temporary file does not hide or spoil the good checkpoint either.
    (tmp_path / ".step-0000004.pt.123.tmp").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-0000002.pt"
    monkeypatch.setattr(torch, "save", real_save)
    resumed = train(tiny_model(BACKENDS[0]), tiny_pool(), config, resume_from=tmp_path, progress=False)
    assert resumed.steps == 4 and [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002.pt", "step-0000004.pt"]


def test_directory_with_another_runs_checkpoints(tmp_path: Path) -> None:
    config = tiny_config(max_steps=2, checkpoint_every=2)
    train(tiny_model(BACKENDS[0]), tiny_pool(), config, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(tiny_model(BACKENDS[0]), tiny_pool(), config, checkpoint_dir=tmp_path, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="No checkpoints in"):
        train(tiny_model(BACKENDS[0]), tiny_pool(), config, resume_from=tmp_path / "empty", progress=False)


def test_resume_past_the_end_trains_nothing(tmp_path: Path) -> None:
    config = tiny_config(max_steps=2, checkpoint_every=2)
    done = train(tiny_model(BACKENDS[0]), tiny_pool(), config, checkpoint_dir=tmp_path, progress=False)
    again = train(tiny_model(BACKENDS[0]), tiny_pool(), config, resume_from=tmp_path, progress=False)
    assert again.steps == 2 and len(again.history) == 2
    for name, value in parameters_of(done.model).items():
        assert torch.equal(value, parameters_of(again.model)[name])


def test_resuming_past_stop_after_is_refused_and_at_it_says_so(tmp_path: Path) -> None:
    """A checkpoint past stop_after cannot be trained back to it: refused before the model or the directory is
    touched. One at stop_after (short of the schedule's end) comes back as it is, with a warning that nothing
    trained."""
    config = tiny_config(max_steps=6, checkpoint_every=2)
    cut = train(tiny_model(BACKENDS[0]), tiny_pool(), config, checkpoint_dir=tmp_path, stop_after=4, progress=False)
    saved = {path: path.read_bytes() for path in list_checkpoints(tmp_path)}
    model = tiny_model(BACKENDS[0])
    before = parameters_of(model)
    with pytest.raises(
        ConfigError,
        match=r"step-0000004\.pt is the checkpoint of step 4, past stop_after=2.*"
        r"Pass stop_after= a step after 4 \(or None",
    ):
        train(model, tiny_pool(), config, resume_from=tmp_path, stop_after=2, progress=False)
    assert all(torch.equal(value, parameters_of(model)[name]) for name, value in before.items())
    assert {path: path.read_bytes() for path in list_checkpoints(tmp_path)} == saved
    with pytest.warns(UserWarning, match=r"checkpoint of step 4, with stop_after=4: no step was trained") as caught:
        at = train(model, tiny_pool(), config, resume_from=tmp_path, stop_after=4, progress=False)
    assert len(caught) == 1 and caught[0].filename == __file__  # points at the call
    assert at.steps == 4 and at.history.equals(cut.history)
    assert all(torch.equal(value, parameters_of(at.model)[name]) for name, value in parameters_of(cut.model).items())
    assert {path: path.read_bytes() for path in list_checkpoints(tmp_path)} == saved


def test_resuming_into_a_directory_of_another_runs_checkpoints_is_refused(tmp_path: Path) -> None:
    """A resumed run wrote its checkpoints beside another run's, and listed them as its own; it is refused before the
    model or a file is touched. Earlier checkpoints of the same run there are no obstacle."""
    config = tiny_config(max_steps=6, checkpoint_every=2)
    ours = train(
        tiny_model(BACKENDS[0]), tiny_pool(), config, checkpoint_dir=tmp_path / "ours", stop_after=4, progress=False
    )
    other = replace(config, data=replace(config.data, seed=1))
    train(tiny_model(BACKENDS[0]), tiny_pool(), other, checkpoint_dir=tmp_path / "other", stop_after=2, progress=False)
    saved = {path: path.read_bytes() for path in list_checkpoints(tmp_path / "other")}
    model = tiny_model(BACKENDS[0])
    before = parameters_of(model)
    with pytest.raises(
        CheckpointError,
        match=r"other holds checkpoints of another run \(step-0000002\.pt differs from \S+step-0000004\.pt in "
        r"config\.data\.seed\).*checkpoint_dir= a new directory",
    ):
        train(
            model,
            tiny_pool(),
            config,
            resume_from=ours.checkpoints[-1],
            checkpoint_dir=tmp_path / "other",
            progress=False,
        )
    assert all(torch.equal(value, parameters_of(model)[name]) for name, value in before.items())
    assert {path: path.read_bytes() for path in list_checkpoints(tmp_path / "other")} == saved
    (tmp_path / "copy").mkdir()
    shutil.copy(ours.checkpoints[0], tmp_path / "copy")
    resumed = train(
        model, tiny_pool(), config, resume_from=ours.checkpoints[-1], checkpoint_dir=tmp_path / "copy", progress=False
    )
    assert resumed.steps == 6 and [path.name for path in resumed.checkpoints] == ["step-0000002.pt", "step-0000006.pt"]
