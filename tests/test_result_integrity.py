"""Saved results and checkpoints load only as they were saved, and a save that cannot happen says why.

Results (format 2) carry a SHA-256 digest of the canonical JSON of their whole document, which includes a
digest of every tensor. Each case edits a real result file of three types (task decodability, task-vector
patching, head importance, all from a tiny model) the way a person or a faulty tool could: one digit of a
header number, a reordered list of task names, the digest removed, one tensor byte flipped, the file
rewritten as the earlier format. Every edit must fail to load with a ``ResultFileError`` naming the problem
and the fix, and files of the earlier format (1) load only with ``allow_unverified=True``.

Checkpoints: a file that would run code when unpickled, a checkpoint without digest, and crafted checkpoints
whose digest was recomputed (negative step, garbage random state) are refused with a ``CheckpointError``.
Saving results or checkpoints to a read-only directory, a full disk or a path under a file raises a
``ResultWriteError`` / ``CheckpointWriteError`` (both also ``OSError``) that says why.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
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
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

import tv_lens.results.storage as storage
import tv_lens.training.checkpoints as checkpoints
import tv_lens.training.loop as loop
from tv_lens.analyses import HeadAblation, TaskDecodability, TaskVectorPatching
from tv_lens.app.run_files import load_results
from tv_lens.environment import software_environment
from tv_lens.errors import CheckpointError, MissingFileError, ResultFileError, TvLensError
from tv_lens.results import Decodability, HeadImportance, PatchingEffects, Result
from tv_lens.results.encoding import encode_value
from tv_lens.task_vectors import TaskVectors
from tv_lens.training import LoRAConfig, finetune, load_checkpoint, train

RERUN = r"Re-run the analysis and save it again"


# --- three real results from a tiny model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def results() -> dict[str, Result]:
    model = tiny_model()
    batch = POOL.sample(3, 3, seed=0)
    vectors = TaskVectors.from_model(model, POOL, layers=(0, 1), n_per_task=3)
    return {
        "decodability": TaskDecodability(k=2, n_bootstrap=10).run(model, POOL, 4, 3, 0),
        "patching": TaskVectorPatching(n_bootstrap=10).run_batch(model, batch, vectors, pool=POOL),
        "heads": HeadAblation(n_bootstrap=10, prune_steps=2).run_batch(model, batch),
    }


KINDS = {"decodability": Decodability, "patching": PatchingEffects, "heads": HeadImportance}


def saved(results: dict[str, Result], kind: str, directory: Path) -> Path:
    path = results[kind].save(directory / f"{kind}.safetensors")
    assert type(results[kind]) is KINDS[kind]
    return path


def document_and_tensors(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as file:
        document = json.loads(file.metadata()[storage.METADATA_KEY])
        tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    return document, tensors


def rewrite(path: Path, document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write a valid safetensors file again with the given header document (spelt as plain ``json.dumps``)."""
    path.write_bytes(save_safetensors(tensors, metadata={storage.METADATA_KEY: json.dumps(document)}))
    return path


def one_digit_off(value: float | int) -> float | int:
    """``value`` with one digit of its decimal spelling changed (the last digit that is not a leading zero)."""
    text = repr(value)
    index = max(i for i, c in enumerate(text) if c.isdigit())
    changed = text[:index] + str((int(text[index]) + 1) % 10) + text[index + 1 :]
    return type(value)(changed)


def edited_fields(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """The file with its header's result fields edited in place, the rest (digests included) unchanged."""
    document, tensors = document_and_tensors(path)
    edit(document["result"]["fields"])
    return rewrite(path, document, tensors)


def flip_tensor_byte(path: Path) -> Path:
    """Flip one byte in the middle of the tensor data (after the header), keeping the file readable."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[(start + len(data)) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def format_1_bytes(result: Result, digest: bool = True) -> bytes:
    """A file exactly as the earlier tv_lens wrote it: format 1, digest of the tensors only (or none)."""
    tensors: dict[str, torch.Tensor] = {}
    document: dict[str, Any] = {"format": 1, "result": encode_value(result, tensors, "")}
    if digest:
        hasher = hashlib.sha256()
        for key in sorted(tensors):
            flat = tensors[key].contiguous().reshape(-1)
            hasher.update(f"{key}|{flat.dtype}|{tuple(tensors[key].shape)}|".encode())
            hasher.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        document["digest"] = hasher.hexdigest()
    return save_safetensors(tensors, metadata={storage.METADATA_KEY: json.dumps(document, allow_nan=True)})


def refused(path: Path, problem: str, fix: str = RERUN, **load_kwargs: Any) -> ResultFileError:
    with pytest.raises(ResultFileError) as info:
        Result.load(path, **load_kwargs)
    message = str(info.value)
    assert isinstance(info.value, TvLensError)
    assert re.search(problem, message), message
    assert re.search(fix, message), message
    return info.value


FIELDS_ALTERED = r"is corrupt: its fields .* do not match the digest recorded when it was saved"

# One-digit edits of header numbers: what a report prints, or what decides which layer it calls best.
HEADER_NUMBERS: dict[str, list[tuple[str, Callable[[dict[str, Any]], None]]]] = {
    "decodability": [
        ("a layer index (moves best_layer)", lambda f: f["layers"]["__tuple__"].__setitem__(1, 3)),
        ("ci_level", lambda f: f.__setitem__("ci_level", one_digit_off(f["ci_level"]))),
        ("n_bootstrap", lambda f: f.__setitem__("n_bootstrap", one_digit_off(f["n_bootstrap"]))),
    ],
    "patching": [
        ("clean_override_rate", lambda f: f.__setitem__("clean_override_rate", 0.5 + f["clean_override_rate"] / 4)),
        ("scale", lambda f: f.__setitem__("scale", one_digit_off(f["scale"]))),
    ],
    "heads": [
        (
            "attribution_spearman",
            lambda f: f.__setitem__("attribution_spearman", one_digit_off(f["attribution_spearman"])),
        ),
        ("top_k", lambda f: f.__setitem__("top_k", one_digit_off(f["top_k"]))),
        ("a head of the nested pruning order", lambda f: f["pruning"]["fields"]["order"]["__tuple__"].reverse()),
    ],
}


def _reversed_tuple(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda fields: fields[name]["__tuple__"].reverse()


TASK_NAME_ORDERS: dict[str, list[str]] = {
    "decodability": ["task_names"],
    "patching": ["source_names", "target_names"],
    "heads": ["task_names"],
}


# --- results: every field and every tensor is checked ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_result_round_trips_in_the_current_format_with_a_digest_of_the_whole_document(results, kind, tmp_path):
    path = saved(results, kind, tmp_path)
    document, tensors = document_and_tensors(path)
    assert document["format"] == storage.FORMAT_VERSION == 2
    assert document["tensors"] == storage.tensor_digest(tensors)
    assert document["digest"] == storage.document_digest(document)
    assert KINDS[kind].load(path) == results[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_a_header_respelt_without_changing_a_value_still_loads(results, kind, tmp_path):
    """The digest is over the canonical JSON: key order and whitespace of the stored header do not matter."""
    path = saved(results, kind, tmp_path)
    document, tensors = document_and_tensors(path)
    reordered = dict(reversed(list(document.items())))
    path.write_bytes(
        save_safetensors(tensors, metadata={storage.METADATA_KEY: json.dumps(reordered, indent=2, allow_nan=True)})
    )
    assert Result.load(path) == results[kind]


@pytest.mark.parametrize(
    ("kind", "field"), [(kind, name) for kind, edits in HEADER_NUMBERS.items() for name, _ in edits]
)
def test_a_one_digit_edit_of_a_header_number_is_refused(results, kind, field, tmp_path):
    edit = dict(HEADER_NUMBERS[kind])[field]
    path = edited_fields(saved(results, kind, tmp_path), edit)
    document, _ = document_and_tensors(path)
    assert (
        document["result"]["fields"]
        != document_and_tensors(saved(results, kind, tmp_path / "clean"))[0]["result"]["fields"]
    )  # the edit took
    refused(path, FIELDS_ALTERED)


@pytest.mark.parametrize(
    ("kind", "field"), [(kind, name) for kind, names in TASK_NAME_ORDERS.items() for name in names]
)
def test_reordered_task_names_are_refused(results, kind, field, tmp_path):
    path = edited_fields(saved(results, kind, tmp_path), _reversed_tuple(field))
    refused(path, FIELDS_ALTERED)


def test_an_edited_header_never_reaches_the_report(results, tmp_path):
    """``tv-lens report`` reads results with ``load_results``: an edited Spearman stops it instead of printing."""
    directory = tmp_path / "results"
    path = saved(results, "heads", directory)
    assert set(load_results(directory)) == {"heads"}
    edited_fields(path, HEADER_NUMBERS["heads"][0][1])
    with pytest.raises(ResultFileError, match=FIELDS_ALTERED):
        load_results(directory)


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_whose_digest_was_removed_is_refused(results, kind, tmp_path):
    path = saved(results, kind, tmp_path)
    document, tensors = document_and_tensors(path)
    del document["digest"]
    refused(rewrite(path, document, tensors), r"has no digest, which every format-2 result file records")
    refused(path, r"has no digest", allow_unverified=True)  # opting in is for format 1 only


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_whose_digest_was_removed_and_tensors_altered_is_refused(results, kind, tmp_path):
    path = saved(results, kind, tmp_path)
    document, tensors = document_and_tensors(path)
    del document["digest"], document["tensors"]
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone().zero_() + 1
    refused(rewrite(path, document, tensors), r"has no digest")


@pytest.mark.parametrize("kind", KINDS)
def test_one_altered_tensor_byte_is_refused(results, kind, tmp_path):
    path = flip_tensor_byte(saved(results, kind, tmp_path))
    refused(path, r"is corrupt: its tensors do not match the digest recorded when it was saved")


@pytest.mark.parametrize("kind", KINDS)
def test_updating_the_tensor_digest_alone_does_not_hide_an_altered_tensor(results, kind, tmp_path):
    path = saved(results, kind, tmp_path)
    document, tensors = document_and_tensors(path)
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name].clone().zero_()
    document["tensors"] = storage.tensor_digest(tensors)
    refused(rewrite(path, document, tensors), FIELDS_ALTERED)


# --- results of the earlier format ------------------------------------------------------------------------


@pytest.mark.parametrize("digest", [True, False], ids=["tensor_digest", "no_digest"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_format_1_file_loads_only_when_allowed_and_saving_it_again_upgrades_it(results, kind, digest, tmp_path):
    old = tmp_path / "old.safetensors"
    old.write_bytes(format_1_bytes(results[kind], digest=digest))
    error = refused(old, r"saved by an earlier tv_lens \(result format 1\)", r"allow_unverified=True")
    assert ("tensors are checked" in str(error)) is digest
    loaded = KINDS[kind].load(old, allow_unverified=True)
    assert loaded == results[kind]  # nothing a user saved is lost
    upgraded = loaded.save(tmp_path / "upgraded.safetensors")
    assert document_and_tensors(upgraded)[0]["format"] == 2
    assert Result.load(upgraded) == results[kind]  # checked in full, no opt-in needed


@pytest.mark.parametrize("kind", KINDS)
def test_a_format_1_file_with_an_altered_tensor_is_refused_even_when_allowed(results, kind, tmp_path):
    old = tmp_path / "old.safetensors"
    old.write_bytes(format_1_bytes(results[kind]))
    refused(flip_tensor_byte(old), r"its tensors do not match the digest", allow_unverified=True)


@pytest.mark.parametrize("kind", KINDS)
def test_a_current_file_edited_and_relabelled_as_format_1_is_not_loaded_by_default(results, kind, tmp_path):
    """Downgrading the format to escape the digest only gets a file to where its owner must opt in."""
    path = saved(results, kind, tmp_path)
    document, tensors = document_and_tensors(path)
    HEADER_NUMBERS[kind][-1][1](document["result"]["fields"])
    document["format"] = 1
    document["digest"] = document.pop("tensors")
    refused(rewrite(path, document, tensors), r"earlier tv_lens", r"allow_unverified=True")


def test_an_unknown_format_names_the_formats_this_version_reads(results, tmp_path):
    path = saved(results, "decodability", tmp_path)
    document, tensors = document_and_tensors(path)
    document["format"] = True  # JSON true is not format 1
    refused(rewrite(path, document, tensors), r"has result format True, this tv_lens reads format 2", r"save it")


# --- the software a result was saved with ------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_a_result_records_the_software_and_threads_of_the_process_that_saved_it(results, threads, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        path = saved(results, "decodability", tmp_path)
        expected = software_environment()
    finally:
        torch.set_num_threads(before)
    assert expected["torch_threads"] == threads
    assert Result.saved_environment(path) == expected == document_and_tensors(path)[0]["environment"]
    assert Result.load(path) == results["decodability"]


def test_an_edited_environment_is_refused_like_any_field(results, tmp_path):
    path = saved(results, "patching", tmp_path)
    document, tensors = document_and_tensors(path)
    document["environment"]["torch_threads"] += 1  # claims other threads than it was computed on
    rewrite(path, document, tensors)
    refused(path, FIELDS_ALTERED)
    with pytest.raises(ResultFileError, match=FIELDS_ALTERED):
        Result.saved_environment(path)


def test_a_file_saved_before_environments_were_recorded_loads_and_records_none(results, tmp_path):
    path = saved(results, "heads", tmp_path)
    document, tensors = document_and_tensors(path)
    del document["environment"]
    document["digest"] = storage.document_digest(document)
    rewrite(path, document, tensors)
    assert Result.load(path) == results["heads"] and Result.saved_environment(path) is None
    old = tmp_path / "old.safetensors"
    old.write_bytes(format_1_bytes(results["heads"]))
    assert Result.saved_environment(old) is None


@pytest.mark.parametrize("environment", [["torch", "2.0"], {"torch": 2.0}, {"torch_threads": "2"}])
def test_a_malformed_environment_under_a_recomputed_digest_is_refused(results, environment, tmp_path):
    path = saved(results, "decodability", tmp_path)
    document, tensors = document_and_tensors(path)
    document["environment"] = environment
    document["digest"] = storage.document_digest(document)
    with pytest.raises(ResultFileError, match=r"malformed environment .* not written by Result.save"):
        Result.saved_environment(rewrite(path, document, tensors))


def test_the_saved_environment_of_no_file_or_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MissingFileError, match=r"No result file at .*check the path"):
        Result.saved_environment(tmp_path / "none.safetensors")
    with pytest.raises(ResultFileError, match=r"is a directory, not a result file"):
        Result.saved_environment(tmp_path)


# --- checkpoints ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Any]:
    """A tiny run with LoRA dropout (so its checkpoint holds a random state) and its checkpoint."""
    directory = tmp_path_factory.mktemp("run")
    config = replace(TINY_TRAINING, checkpoint_every=3)
    model_config = tiny_model_config()
    finetune(
        tiny_model(),
        POOL,
        config,
        "last:1",
        LoRAConfig(rank=2, dropout=0.2),
        model_config=model_config,
        checkpoint_dir=directory,
        progress=False,
    )
    return directory / "step-0000003.pt", config


def crafted(run: tuple[Path, Any], directory: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the run's checkpoint edited and given a fresh, matching digest (as a forger would)."""
    record = torch.load(run[0], map_location="cpu", weights_only=True)
    del record["digest"]
    edit(record)
    record["digest"] = checkpoints._digest(record)
    path = directory / "step-0000003.pt"
    torch.save(record, path)
    return path


def checkpoint_refused(path: Path, problem: str, fix: str = r"resume from an earlier checkpoint") -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert re.search(problem, message), message
    assert re.search(fix, message), message
    return message


class _OpensAFile:
    """Unpickling this opens (creates) a file: what a malicious checkpoint does with something worse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_a_checkpoint_that_would_run_code_is_not_loaded_and_the_error_never_suggests_loading_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "step-0000003.pt"
    torch.save({"format": checkpoints.FORMAT, "payload": _OpensAFile(marker)}, path)
    message = checkpoint_refused(path, r"is not a tv_lens checkpoint and must not be loaded", r"delete it")
    assert "weights_only" not in message and "will likely succeed" not in message
    assert not marker.exists()


def test_the_run_checkpoint_loads(run):
    checkpoint = load_checkpoint(run[0])
    assert checkpoint.step == 3 and checkpoint.rng  # the LoRA dropout generators


def test_a_checkpoint_whose_digest_was_removed_is_refused(run, tmp_path):
    record = torch.load(run[0], map_location="cpu", weights_only=True)
    del record["digest"]
    torch.save(record, tmp_path / "x.pt")
    checkpoint_refused(tmp_path / "x.pt", r"x\.pt has no digest")


@pytest.mark.parametrize(
    ("name", "edit", "problem"),
    [
        ("negative_step", lambda r: r.__setitem__("step", -1), r"records step -1"),
        ("step_past_the_schedule", lambda r: r.__setitem__("step", 10**6), r"records step 1000000, outside"),
        ("step_as_text", lambda r: r.__setitem__("step", "3"), r"records step '3'"),
        ("negative_time", lambda r: r.__setitem__("elapsed_s", -5.0), r"negative training time"),
        (
            "garbage_random_state",
            lambda r: r["rng"].update({k: torch.full_like(v, 255) for k, v in r["rng"].items()}),
            r"random state for module '.*' that no generator accepts",
        ),
        (
            "random_state_of_another_size",
            lambda r: r["rng"].update({k: v[:10] for k, v in r["rng"].items()}),
            r"random state for module '.*' that no generator accepts",
        ),
        ("parameters_as_a_list", lambda r: r.__setitem__("parameters", []), r"holds a list as its 'parameters'"),
    ],
)
def test_a_crafted_checkpoint_with_a_valid_digest_is_refused(run, tmp_path, name, edit, problem):
    path = crafted(run, tmp_path, edit)
    checkpoint_refused(path, problem + r".*which no tv_lens run writes: it is corrupt or crafted")


def test_resuming_from_a_crafted_checkpoint_is_a_clear_error(run, tmp_path):
    crafted(run, tmp_path, lambda r: r.__setitem__("step", -1))
    with pytest.raises(CheckpointError, match=r"records step -1"):
        finetune(
            tiny_model(),
            POOL,
            run[1],
            "last:1",
            LoRAConfig(rank=2, dropout=0.2),
            model_config=tiny_model_config(),
            resume_from=tmp_path,
            progress=False,
        )


# --- writes that cannot happen ----------------------------------------------------------------------------


def _fail_with(code: int) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


def _unwritable(directory: Path) -> Callable[..., Any]:
    """``tempfile.mkstemp`` as on a read-only directory (root ignores chmod, so the denial is simulated)."""
    real = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> Any:
        if Path(kwargs.get("dir", "")) == directory:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(*args, **kwargs)

    return mkstemp


def test_saving_a_result_under_a_file_says_which_file_is_in_the_way(results, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a directory")
    for target in (blocker / "r.safetensors", blocker / "deeper" / "r.safetensors"):
        with pytest.raises(storage.ResultWriteError, match=rf"{re.escape(str(blocker))} is a file, not a directory"):
            results["decodability"].save(target)
    assert blocker.read_text() == "not a directory"


def test_saving_a_result_to_a_read_only_directory_says_so(results, tmp_path, monkeypatch):
    monkeypatch.setattr(storage.tempfile, "mkstemp", _unwritable(tmp_path))
    with pytest.raises(
        storage.ResultWriteError, match=r"is not writable .*save to a directory you can write to"
    ) as info:
        results["decodability"].save(tmp_path / "r.safetensors")
    assert isinstance(info.value, OSError) and isinstance(info.value, ResultFileError)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only directories")
def test_saving_a_result_to_a_really_read_only_directory_says_so(results, tmp_path):
    directory = tmp_path / "locked"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        with pytest.raises(storage.ResultWriteError, match=r"is not writable"):
            results["decodability"].save(directory / "r.safetensors")
    finally:
        directory.chmod(0o755)


def test_saving_a_result_to_a_full_disk_says_so_and_keeps_the_previous_file(results, tmp_path, monkeypatch):
    path = results["decodability"].save(tmp_path / "r.safetensors")
    before = path.read_bytes()
    monkeypatch.setattr(storage.os, "fsync", _fail_with(errno.ENOSPC))
    with pytest.raises(storage.ResultWriteError, match=r"is full .*free some space.*previous file there is untouched"):
        results["heads"].save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["r.safetensors"]


def test_saving_a_checkpoint_to_a_full_disk_or_under_a_file_says_so(run, tmp_path, monkeypatch):
    payload = torch.load(run[0], map_location="cpu", weights_only=True)
    del payload["digest"], payload["format"]
    blocker = tmp_path / "run"
    blocker.write_text("a file")
    with pytest.raises(checkpoints.CheckpointWriteError, match=r"is a file, not a directory") as info:
        checkpoints.save_checkpoint(blocker / "step-0000003.pt", payload)
    assert isinstance(info.value, OSError) and isinstance(info.value, CheckpointError)
    monkeypatch.setattr(checkpoints.os, "fsync", _fail_with(errno.ENOSPC))
    with pytest.raises(checkpoints.CheckpointWriteError, match=r"is full .*Earlier checkpoints are untouched"):
        checkpoints.save_checkpoint(tmp_path / "ok" / "step-0000003.pt", payload)
    monkeypatch.undo()
    assert os.listdir(tmp_path / "ok") == []


def test_an_unwritable_checkpoint_directory_is_found_before_a_run(tmp_path, monkeypatch):
    good = checkpoints.check_checkpoint_directory(tmp_path / "new" / "run")
    assert good.is_dir() and os.listdir(good) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(checkpoints.CheckpointWriteError, match=r"is a file, not a directory"):
        checkpoints.check_checkpoint_directory(tmp_path / "file")
    with pytest.raises(checkpoints.CheckpointWriteError, match=r"is a file, not a directory"):
        checkpoints.check_checkpoint_directory(tmp_path / "file" / "run")
    monkeypatch.setattr(checkpoints.tempfile, "mkstemp", _unwritable(tmp_path / "locked"))
    with pytest.raises(checkpoints.CheckpointWriteError, match=r"is not writable.*checkpoint_every=0"):
        checkpoints.check_checkpoint_directory(tmp_path / "locked")


def test_a_run_with_an_unwritable_checkpoint_directory_fails_before_training(tmp_path, monkeypatch):
    directory = tmp_path / "locked"
    directory.mkdir()
    monkeypatch.setattr(checkpoints.tempfile, "mkstemp", _unwritable(directory))
    real_open = open

    def read_only_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | os.PathLike) and "w" in mode and Path(file).parent == directory:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only_open)
    steps = []
    real_batch = loop.training_batch
    monkeypatch.setattr(loop, "training_batch", lambda *a, **k: steps.append(1) or real_batch(*a, **k))
    with pytest.raises(checkpoints.CheckpointWriteError, match=r"not writable"):
        train(tiny_model(), POOL, replace(TINY_TRAINING, checkpoint_every=1), checkpoint_dir=directory, progress=False)
    assert steps == []  # not a single step was spent before the error
