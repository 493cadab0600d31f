"""Run the benchmarks and print a table of side-by-side ratios: ``python -m benchmarks [--quick] [--device cuda]``.

Every row checks that tv_lens and its baseline give equal numbers before it reports a ratio, so a run that
finishes is also a correctness check. ``--quick`` (smaller model, fewer prompts, the quick training recipe)
runs in under two minutes on two CPU cores, plus about a minute for the GPT-2-size rows; the full run uses
the realistic size (6 blocks, d_model 256, 8 heads, 400 prompts of about 100 tokens) and the default
training recipe, then the GPT-2-size rows (:mod:`benchmarks.pretrained`: 12 blocks, d_model 768, GPT-2's
vocabulary, about 200 prompts of 60 tokens). ``--dtype bfloat16`` loads the GPT-2-size model in bfloat16
(the other rows build or train float32 models).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks import (
    attention,
    bootstrap,
    finetuning,
    function_vectors,
    heads,
    knockout,
    patching,
    pretrained,
    regression_recipes,
    representations,
    shots_recipe,
    training,
)
from benchmarks.common import FULL, QUICK, machine_lines, print_table
from tv_lens.models import hooked_transformer_available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer prompts (under 2 minutes)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--dtype", default="float32", choices=sorted(pretrained.DTYPES), help="dtype of the GPT-2-size model"
    )
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device} was requested but torch sees no CUDA device (torch.cuda.is_available() is "
            "False: no GPU, or a CPU-only torch build). Run without --device to benchmark on the CPU."
        )
    if not args.device.startswith(("cpu", "cuda")):
        parser.error(f"--device must be cpu or cuda (optionally cuda:N), got {args.device!r}.")
    scale = QUICK if args.quick else FULL
    started = time.perf_counter()
    for line in machine_lines(args.device):
        print(line)
    print(f"models: {'HookedTransformer' if hooked_transformer_available() else 'TransformerBridge (native)'}")
    print(f"scale: {scale}")
    print("\nmemory of collected representations (CPU, fresh processes)", flush=True)
    for line in representations.memory_report(scale):
        print("  " + line)
    print("\nmemory of layer finetuning with LoRA, in place vs deep copies (CPU, fresh processes)", flush=True)
    for line in finetuning.memory_report():
        print("  " + line)
    print("\ntimings (each row checks equal numbers first)", flush=True)
    rows = []

    def gpt2_size(scale, device):
        return pretrained.pretrained_rows(scale, device, args.dtype, say=lambda line: print("    " + line, flush=True))

    stages = [
        ("representations", representations.timing_rows),
        ("patching sweep", patching.patching_rows),
        ("all-heads ablation", heads.heads_rows),
        ("causal indirect effects", function_vectors.cie_rows),
        ("head attention", attention.attention_rows),
        ("attention knockout", knockout.knockout_rows),
        ("bootstrap intervals", bootstrap.bootstrap_rows),
        ("training", training.training_rows),
        ("recipe where shots matter", shots_recipe.shots_rows),
        ("regression recipes", regression_recipes.regression_rows),
        ("GPT-2-size model", gpt2_size),
    ]
    for name, stage in stages:
        stage_start = time.perf_counter()
        rows += stage(scale, args.device)
        print(f"  {name}: done in {time.perf_counter() - stage_start:.0f} s", flush=True)
    print()
    print_table(rows)
    print(f"\nbenchmarks ran in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
