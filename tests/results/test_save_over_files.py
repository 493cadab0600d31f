"""Saving a result never overwrites a file that is not a tv_lens result; results, even altered ones, are saved over."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tv_lens.analyses import TaskDecodability, task_decodability
from tv_lens.errors import ResultFileError, TvLensError
from tv_lens.results import Result


def result():
    labels = torch.arange(2).repeat_interleave(6)
    points = torch.randn(12, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return task_decodability(points, labels, config=TaskDecodability(k=2, n_bootstrap=0))


@pytest.mark.parametrize("kind", ["checkpoint", "safetensors", "text"])
def test_a_file_that_is_not_a_result_is_not_overwritten(tmp_path, kind):
    path = tmp_path / "file"
    if kind == "checkpoint":
        torch.save({"step": 200, "parameters": {"w": torch.ones(3)}}, path)
    elif kind == "safetensors":
        save_file({"w": torch.ones(3)}, str(path), metadata={"format": "pt"})
    else:
        path.write_text("notes I keep\n")
    before = path.read_bytes()
    with pytest.raises(ResultFileError, match="is an existing file that is not a tv_lens result") as info:
        result().save(path)
    assert isinstance(info.value, TvLensError) and "move that file away" in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no temporary file left


def test_results_altered_results_and_empty_files_are_saved_over(tmp_path):
    saved = result()
    path = saved.save(tmp_path / "td.safetensors")
    saved.save(path)  # a result over itself
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a tensor byte altered after saving: still a result file, which a new save mends
    path.write_bytes(bytes(data))
    with pytest.raises(ResultFileError, match="altered"):
        Result.load(path)
    saved.save(path)
    assert Result.load(path) == saved
    empty = tmp_path / "empty.safetensors"
    empty.touch()
    assert Result.load(saved.save(empty)) == saved
