"""Saved data survives a killed process: a write killed part-way never replaces or spoils the last good file.

A forked child process starts writing a result or a checkpoint and is killed with SIGKILL (no cleanup, no
``finally``), either half-way through writing the bytes or after writing them but before the file is moved
into place. The parent then finds the previous file intact and loadable, no partial file under the target
name, and the next write or resume working normally despite the temporary file the killed one left behind.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_helpers import (
    POOL,
    TINY_TRAINING,
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    tiny_model,
    tiny_model_config,
)

import tv_lens.results.storage as storage
import tv_lens.training.checkpoints as checkpoints
from tv_lens.analyses import TaskDecodability, task_decodability
from tv_lens.errors import MissingFileError
from tv_lens.results import Result
from tv_lens.training import latest_checkpoint, list_checkpoints, load_checkpoint, train

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to kill a writer mid-write")

KILL_POINTS = ("half_written", "written_not_moved")


def die(*args: Any, **kwargs: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def killed_in_child(write: Callable[[], object], timeout_s: float = 60.0) -> None:
    """Run ``write`` in a forked child that must die by SIGKILL; fail (never hang) if it does not."""
    pid = os.fork()
    if pid == 0:  # the child: it never returns into pytest
        try:
            torch.set_num_threads(1)
            write()
        finally:
            os._exit(0)  # reached only if the kill did not happen
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the writer did not reach the point where it is killed")
        time.sleep(0.01)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


class _HalfThenDie(io.RawIOBase):
    """A file that writes the first half of what it is given, flushes, and then the process dies."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        die()
        return len(data)

    def __enter__(self) -> _HalfThenDie:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.file.close()


def results(seed: int) -> Result:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(5)
    return task_decodability(
        torch.randn(2, 15, 6, generator=generator), labels, config=TaskDecodability(k=2, n_bootstrap=10)
    )


@pytest.mark.parametrize("previous", [True, False], ids=["over_a_good_file", "first_write"])
@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_killed_result_write_never_spoils_the_file(tmp_path: Path, kill_at: str, previous: bool):
    path = tmp_path / "result.safetensors"
    good, newer = results(0), results(1)
    if previous:
        good.save(path)
    before = path.read_bytes() if previous else None

    def write() -> None:
        if kill_at == "half_written":
            real_fdopen = storage.os.fdopen
            storage.os.fdopen = lambda *a, **k: _HalfThenDie(real_fdopen(*a, **k))  # type: ignore[assignment]
        else:
            storage.os.replace = die  # type: ignore[assignment]
        newer.save(path)

    killed_in_child(write)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "result.safetensors"]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # the killed write's temporary file
    if previous:
        assert path.read_bytes() == before and Result.load(path) == good
    else:
        assert not path.exists()
        with pytest.raises(MissingFileError):
            Result.load(path)
    newer.save(path)  # the next save works, the leftover notwithstanding
    assert Result.load(path) == newer


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_killed_checkpoint_write_keeps_the_last_good_checkpoint_and_the_run_resumes(tmp_path: Path, kill_at: str):
    config = replace(TINY_TRAINING, checkpoint_every=1)
    model_config = tiny_model_config()
    first = train(
        tiny_model(), POOL, config, model_config=model_config, checkpoint_dir=tmp_path, stop_after=2, progress=False
    )
    assert [p.name for p in first.checkpoints] == ["step-0000001.pt", "step-0000002.pt"]
    good = tmp_path / "step-0000002.pt"
    before = good.read_bytes()

    def write() -> None:
        # Continue the run in the child; it dies while writing the checkpoint of step 3.
        if kill_at == "half_written":
            real_save = torch.save

            def half_save(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                _HalfThenDie(file).write(buffer.getvalue())

            checkpoints.torch.save = half_save  # type: ignore[assignment]
        else:
            checkpoints.os.replace = die  # type: ignore[assignment]
        train(tiny_model(), POOL, config, model_config=model_config, resume_from=tmp_path, progress=False)

    killed_in_child(write)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001.pt", "step-0000002.pt"]
    assert latest_checkpoint(tmp_path) == good and good.read_bytes() == before
    assert load_checkpoint(good).step == 2
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # what the killed write left
    resumed = train(tiny_model(), POOL, config, model_config=model_config, resume_from=tmp_path, progress=False)
    straight = train(tiny_model(), POOL, TINY_TRAINING, progress=False)  # no checkpoints, same weights
    assert resumed.steps == 3 and load_checkpoint(tmp_path / "step-0000003.pt").step == 3
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # rewriting step 3 cleared the leftover
    for (name, value), (_, expected) in zip(
        resumed.model.named_parameters(), straight.model.named_parameters(), strict=True
    ):
        assert torch.equal(value, expected), name  # the resumed run is the uninterrupted one, bit for bit
