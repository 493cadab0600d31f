"""Shared pieces of the benchmarks: the benchmark model and prompts, timing, and the result table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tv_lens.models import ModelConfig, build_model


@dataclass(frozen=True)
class Scale:
    """Model and prompt sizes of one benchmark run."""

    n_layers: int
    d_model: int
    n_heads: int
    n_prompts: int
    prompt_len: int
    d_vocab: int = 64
    repeats: int = 3


FULL = Scale(n_layers=6, d_model=256, n_heads=8, n_prompts=400, prompt_len=100)
QUICK = Scale(n_layers=4, d_model=128, n_heads=4, n_prompts=96, prompt_len=48, repeats=2)


@dataclass(frozen=True)
class Row:
    """One line of the table: tv_lens against a baseline, with the target ratio."""

    name: str
    ours_s: float
    baseline_s: float
    baseline: str
    target: str
    passed: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours_s / self.baseline_s


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


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_table(rows: list[Row]) -> None:
    header = f"{'benchmark':<44} {'tv_lens s':>10} {'baseline s':>11} {'ratio':>7}  {'target':<10} {'pass':<5} baseline"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.name:<44} {row.ours_s:>10.3f} {row.baseline_s:>11.3f} {row.ratio:>7.2f}  {row.target:<10} "
            f"{'yes' if row.passed else 'NO':<5} {row.baseline}"
        )
        if row.note:
            print(f"{'':<44} note: {row.note}")
