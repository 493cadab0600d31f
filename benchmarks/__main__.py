"""Run the benchmarks and print a table of side-by-side ratios: ``python -m benchmarks [--quick] [--device cuda]``."""

from __future__ import annotations

import argparse
import platform

import torch

from benchmarks import heads, patching, representations
from benchmarks.common import FULL, QUICK, print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer prompts (under 2 minutes)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    torch.set_grad_enabled(False)
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"scale: {scale}")
    print("\nmemory of collected representations")
    for line in representations.memory_report(scale):
        print("  " + line)
    rows = representations.timing_rows(scale, args.device)
    rows += patching.patching_rows(scale, args.device)
    rows += heads.heads_rows(scale, args.device)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
