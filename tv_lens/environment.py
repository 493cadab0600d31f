"""Facts of the machine and software a run happens on: memory left to allocate, and what numbers depend on.

:func:`available_memory` is what sampling and :func:`~tv_lens.models.build_model` check a request against before
allocating. :func:`software_environment` is what checkpoints, result files and the application's ``run.json``
record: on a CPU, numbers are bit-identical for one torch version, one number of torch threads and one kind of CPU
only. A matrix product split over another number of threads sums in another order, and another CPU kind (another
vendor's math library paths, or other vector instructions: AVX2, AVX-512) rounds differently; training amplifies
the last-bit differences (one recipe and seed trained on one and on two threads ends with weights that differ in
the second decimal; the quick recipe trained with torch's AVX2 and with its AVX-512 kernels, in the third). The
GPUs a process used (:func:`gpu_kind`) are recorded to say what ran, not compared: whether a GPU computed a number
depends on where its model was, which the environment does not know.

>>> sorted(software_environment())
['cpu', 'gpu', 'python', 'torch', 'torch_threads', 'transformer_lens', 'transformers', 'tv_lens']
>>> environment_differences({"torch": "2.0.0", "torch_threads": 1}, {"torch": "2.0.0", "torch_threads": 2})
['torch_threads 1 there, 2 here']
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections import Counter
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from tv_lens.checks import is_int

__all__ = [
    "NUMERIC_ENVIRONMENT",
    "OtherEnvironmentWarning",
    "available_memory",
    "cpu_kind",
    "environment_differences",
    "gpu_kind",
    "is_environment",
    "package_version",
    "software_environment",
]

#: The entries of :func:`software_environment` that change computed numbers (the others say what ran).
NUMERIC_ENVIRONMENT = ("torch", "torch_threads", "cpu", "transformer_lens", "transformers")


class OtherEnvironmentWarning(UserWarning):
    """A run resumes under other software or torch threads than it was checkpointed under (not bit for bit)."""


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate (``MemAvailable``), or ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def package_version(name: str) -> str:
    """The installed version of the distribution ``name`` (``"unknown"`` when its metadata is missing)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


@functools.cache
def cpu_kind() -> str:
    """The CPU's model name and the vector instructions torch's kernels use on it, e.g. ``"AMD EPYC, AVX512"``.

    Read once per process (both are fixed once torch is loaded): every result saved records it.
    """
    name = platform.processor() or platform.machine() or "unknown CPU"
    with contextlib.suppress(OSError, UnicodeDecodeError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        name = names[0] if names else name
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def gpu_kind() -> str:
    """The GPUs this process has used, by name and count, and torch's CUDA (or ROCm) version; ``"none"`` if none.

    E.g. ``"NVIDIA H200 x1, CUDA 12.8"``. Only a process that has initialised CUDA is asked: asking would otherwise
    create a CUDA context (memory on every GPU) in a run that computes on the CPU.
    """
    if not torch.cuda.is_initialized():
        return "none"
    names = Counter(torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count()))
    toolkit = f"CUDA {torch.version.cuda}" if torch.version.cuda else f"ROCm {torch.version.hip}"
    return ", ".join([*(f"{name} x{count}" for name, count in sorted(names.items())), toolkit])


def software_environment() -> dict[str, str | int]:
    """Python, torch, TransformerLens, transformers and tv_lens versions, torch's CPU threads now, CPU and GPUs."""
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that checkpoints (weights_only) cannot hold
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_kind(),
        "gpu": gpu_kind(),
        "transformer_lens": package_version("transformer-lens"),
        "transformers": package_version("transformers"),
        "tv_lens": package_version("tv_lens"),
    }


def is_environment(value: Any) -> bool:
    """Whether ``value`` has the shape of a recorded environment: versions (str) by name, ``torch_threads`` an int."""
    return (
        isinstance(value, dict)
        and all(isinstance(k, str) and (isinstance(v, str) or is_int(v)) for k, v in value.items())
        and is_int(value.get("torch_threads", 0))
    )


def environment_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The entries of :data:`NUMERIC_ENVIRONMENT` that both record and that differ, as ``"name A there, B here"``."""
    return [
        f"{name} {recorded[name]} there, {current[name]} here"
        for name in NUMERIC_ENVIRONMENT
        if name in recorded and name in current and recorded[name] != current[name]
    ]
