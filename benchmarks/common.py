"""Shared pieces of the benchmarks: the benchmark model and prompts, timing, the machine, and the result table."""

from __future__ import annotations

import gc
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tv_lens.models import ModelConfig, build_model


@dataclass(frozen=True)
class Scale:
    """Model and prompt sizes of one benchmark run.

    Each timing is the best of ``rounds`` interleaved rounds; the first round's outputs are the ones
    checked for equality.
    """

    n_layers: int
    d_model: int
    n_heads: int
    n_prompts: int
    prompt_len: int
    d_vocab: int = 64
    rounds: int = 3
    recipe: str = "default"


FULL = Scale(n_layers=6, d_model=256, n_heads=8, n_prompts=400, prompt_len=100, rounds=2)
QUICK = Scale(n_layers=4, d_model=128, n_heads=4, n_prompts=96, prompt_len=48, rounds=3, recipe="quick")


@dataclass(frozen=True)
class Row:
    """One line of the table: tv_lens against a baseline (``None``: an absolute number), with the target."""

    name: str
    ours_s: float
    baseline_s: float | None
    baseline: str
    target: str
    passed: bool
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if self.baseline_s is None else self.ours_s / self.baseline_s


def pass_rows(device: str, prompt_len: int) -> int:
    """Prompts per forward pass, for tv_lens (``rows_per_pass``) and for the baselines alike.

    On a CPU, small passes are the fastest per token: once a pass's activations outgrow the caches
    (beyond a few thousand tokens at d_model 128-256) every operation slows down, up to 3-4x per element
    on the machine of docs/performance.md. So both sides run passes of about 2,000 tokens, rather than
    the baselines running all prompts at once. A GPU is fastest with large passes.
    """
    return 4096 if device.startswith("cuda") else max(1, 2048 // prompt_len)


def bench_model(scale: Scale, device: str):
    config = ModelConfig(
        d_vocab=scale.d_vocab,
        n_layers=scale.n_layers,
        d_model=scale.d_model,
        n_heads=scale.n_heads,
        n_ctx=max(512, scale.prompt_len),
        seed=0,
    )
    return build_model(config, device=device)


def bench_prompts(scale: Scale, n_prompts: int | None = None, prompt_len: int | None = None, seed: int = 0):
    """Right-padded prompts whose lengths vary between half and all of ``prompt_len``: (tokens, answer_pos)."""
    n_prompts = n_prompts or scale.n_prompts
    prompt_len = prompt_len or scale.prompt_len
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, scale.d_vocab, (n_prompts, prompt_len), generator=generator)
    answer_pos = torch.randint(prompt_len // 2, prompt_len, (n_prompts,), generator=generator)
    return tokens, answer_pos


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(*fns: Callable[[], Any], rounds: int) -> tuple[list[float], list[Any]]:
    """Best wall time of each of ``fns`` over ``rounds`` rounds, and the outputs of their first call.

    Calls are interleaved round by round, so that a change of machine load hits every function alike,
    and the best (least disturbed) round counts: on a shared machine other jobs only ever add time.
    """
    times: list[list[float]] = [[] for _ in fns]
    outputs: list[Any] = []
    for round_ in range(rounds):
        for i, fn in enumerate(fns):
            _sync()
            start = time.perf_counter()
            output = fn()
            _sync()
            times[i].append(time.perf_counter() - start)
            if round_ == 0:
                outputs.append(output)
    return [min(samples) for samples in times], outputs


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (with its family, model and cache size), or what platform knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            fields = dict(line.split(":", 1) for line in cpuinfo.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    details = [f"{key} {fields[key]}" for key in ("cpu family", "model", "cache size") if key in fields]
    return f"{fields.get('model name', platform.machine())} ({', '.join(details)})"


def machine_lines(device: str) -> list[str]:
    """The hardware and software the numbers were measured on."""
    lines = [
        f"CPU: {_cpu_name()}, {os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} threads",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformer-lens {importlib.metadata.version('transformer-lens')}",
        f"device: {device}" + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""),
    ]
    return lines


def print_table(rows: list[Row]) -> None:
    header = f"{'benchmark':<48} {'tv_lens s':>10} {'baseline s':>11} {'ratio':>7}  {'target':<11} {'pass':<5} baseline"
    print(header)
    print("-" * len(header))
    for row in rows:
        baseline = "-" if row.baseline_s is None else f"{row.baseline_s:.3f}"
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        print(
            f"{row.name:<48} {row.ours_s:>10.3f} {baseline:>11} {ratio:>7}  {row.target:<11} "
            f"{'yes' if row.passed else 'NO':<5} {row.baseline}"
        )
        if row.note:
            print(f"{'':<48} note: {row.note}")


def timed_training(recipe: Any, backend: str | None, device: str) -> tuple[Any, float, float]:
    """Train ``recipe`` once; return its ``TrainResult``, the wall seconds and the CPU seconds it took."""
    start, cpu = time.perf_counter(), time.process_time()
    with torch.enable_grad():
        result = recipe.run(backend=backend, device=device, progress=False)
    return result, time.perf_counter() - start, time.process_time() - cpu


def target_lines(targets: list[tuple[str, bool]], quick: bool) -> list[str]:
    """One line per target: PASS or FAIL, or ``-`` in quick mode, where the short run is not held to them."""
    suffix = "  (not a target in quick mode)" if quick else ""
    return [
        f"{'-' if quick else ('PASS' if passed else 'FAIL'):<4}  {description}{suffix}"
        for description, passed in targets
    ]


def in_fresh_processes(code: str, runs: dict[Any, list[str]], what: str, env: dict[str, str] | None = None) -> dict:
    """``python -c code *args`` for every run, side by side, each in a fresh process (peak memory is per process).

    Each process prints a JSON value on its last line of output; returns them by run key. ``env`` adds to the
    environment; the processes run in the repository root.

    Raises:
        RuntimeError: A process failed (its error went to stderr); ``what`` names the measurement.
    """
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, **(env or {})}
    processes = {
        key: subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=environment, cwd=root
        )
        for key, args in runs.items()
    }
    results = {}
    for key, process in processes.items():
        out, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"measuring {what} ({key}) failed; see the error above")
        results[key] = json.loads(out.strip().splitlines()[-1])
    return results


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise OSError(f"/proc/self/status has no {field}")
    return int(match.group(1)) / 1024


def peak_mb(fn: Callable[[], Any], device: str) -> float | None:
    """Peak memory growth of ``fn()`` in MB (CUDA: allocated; CPU: resident set), or None where unmeasurable."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the peak resident set (VmHWM) to the current one
        before = _proc_status_mb("VmRSS")
    except OSError:
        return None
    fn()
    return _proc_status_mb("VmHWM") - before
