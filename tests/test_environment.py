"""The facts of the machine and software that checkpoints and run.json record, against what they read."""

from __future__ import annotations

import pathlib
import platform
from importlib.metadata import version

import torch

import tv_lens
from tv_lens.environment import (
    NUMERIC_ENVIRONMENT,
    available_memory,
    cpu_kind,
    environment_differences,
    gpu_kind,
    is_environment,
    package_version,
    software_environment,
)


def test_the_environment_names_the_installed_versions_and_the_threads_torch_uses_now():
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            environment = software_environment()
            assert environment["torch_threads"] == threads
    finally:
        torch.set_num_threads(before)
    assert environment["torch"] == torch.__version__ and environment["python"] == platform.python_version()
    assert environment["transformer_lens"] == version("transformer-lens")
    assert environment["transformers"] == version("transformers")
    assert environment["tv_lens"] == tv_lens.__version__
    assert environment["cpu"] == cpu_kind() and cpu_kind().endswith(f", {torch.backends.cpu.get_cpu_capability()}")
    assert set(NUMERIC_ENVIRONMENT) < set(environment)


def test_the_gpus_are_named_only_when_this_process_has_used_cuda(monkeypatch):
    if not torch.cuda.is_initialized():
        assert gpu_kind() == "none" and software_environment()["gpu"] == "none"
        assert not torch.cuda.is_initialized()  # asking did not create a CUDA context
    names = ["NVIDIA H200", "NVIDIA A100", "NVIDIA H200"]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(names))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: names[index])
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert gpu_kind() == "NVIDIA A100 x1, NVIDIA H200 x2, CUDA 12.8"
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert software_environment()["gpu"] == "NVIDIA A100 x1, NVIDIA H200 x2, ROCm 6.2"
    assert "gpu" not in NUMERIC_ENVIRONMENT  # said, not compared


def test_a_package_that_is_not_installed_has_an_unknown_version():
    assert package_version("no-such-distribution-tv-lens") == "unknown"


def test_differences_name_only_the_entries_that_change_numbers_and_that_both_record():
    here = {"python": "3.11.0", "torch": "2.13.0", "torch_threads": 2, "transformers": "5.0.0"}
    there = {"python": "3.12.0", "torch": "2.12.0", "torch_threads": 2, "transformer_lens": "4.3.0"}
    assert environment_differences(there, here) == ["torch 2.12.0 there, 2.13.0 here"]
    assert environment_differences({}, here) == [] and environment_differences(here, here) == []


def test_available_memory_is_at_most_the_machines_memory():
    meminfo = pathlib.Path("/proc/meminfo").read_text(encoding="ascii")
    total = dict(line.split(":", 1) for line in meminfo.splitlines())["MemTotal"].split()[0]
    available = available_memory()
    assert available is not None and 0 < available <= int(total) * 1024


def test_a_recorded_environment_is_versions_by_name_with_an_integer_thread_count():
    assert is_environment(software_environment()) and is_environment({})
    for value in ([("torch", "2.0")], {"torch": 2.0}, {3: "x"}, {"torch": True}, {"torch_threads": "1"}):
        assert not is_environment(value), value
