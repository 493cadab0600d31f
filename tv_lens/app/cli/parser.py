"""The ``tv-lens`` argument parser: the four subcommands, their options and their help texts."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args

from tv_lens.app.pretrained import DTYPES, ON_REQUEST, PRETRAINED_ANALYSES, TEXT_FAMILIES, PretrainedConfig
from tv_lens.app.sections import ANALYSIS_NAMES
from tv_lens.models.builders import Backend

__all__ = ["DEFAULT_OUT", "build_parser"]

DEFAULT_OUT = "tv-lens-demo"
_PRETRAINED_DEFAULTS = {f.name: f.default for f in fields(PretrainedConfig)}
_DESCRIPTION = """\
Task vectors in in-context learning, measured on TransformerLens models.

`tv-lens demo` trains a small model on synthetic ICL tasks (or loads the one already trained in --out),
runs every analysis (task decodability, ICL performance, geometry, TD vs accuracy, task-vector patching,
task-vector prompting, head ablation, emergence over training, early- vs late-layer finetuning), saves
each result and writes one self-contained HTML report. The other commands run one step on the saved
artefacts; `tv-lens analyze --model gpt2 --tasks bitwise` runs the analyses on a pretrained model instead.
Layers are TransformerLens block indices throughout (-1 = embedding output).
"""
_LAYOUT = """\
output directory layout:
  DIR/checkpoints/step-*.pt       training checkpoints (a finished run is loaded, never retrained)
  DIR/run.json                    the run's settings, training summary and the shots TD vs accuracy
                                  and patching ran at (where ICL accuracy is below its ceiling)
  DIR/results/NAME.safetensors    one result per analysis (tv_lens.Result.load reads any)
  DIR/summary.json                the headline numbers
  DIR/report.html                 the report (opens offline)
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``tv-lens`` argument parser with its four subcommands."""
    parser = argparse.ArgumentParser(
        prog="tv-lens",
        description=_DESCRIPTION,
        epilog=_LAYOUT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = _command(
        commands,
        "demo",
        "train or load the model, run every analysis, write the results and the HTML report",
        "Train the recipe's model into DIR/checkpoints (or load it, if DIR already holds the finished run), run "
        "every analysis, save each result to DIR/results/, and write DIR/report.html and DIR/summary.json. "
        "On 2 CPU cores --quick takes under a minute, the full demo a few minutes.",
    )
    _training_options(demo)
    _only_option(demo)
    _set_option(demo)

    train = _command(
        commands,
        "train",
        "only train (or finish training) the model of a demo directory",
        "Train the recipe's model into DIR/checkpoints with a checkpoint every few steps (the emergence "
        "analysis reads them). A finished run in DIR is left as it is; an interrupted one resumes.",
    )
    _training_options(train)
    _set_option(train)

    analyze = _command(
        commands,
        "analyze",
        "run the analyses on a pretrained model (--model), or on the model trained in a demo directory",
        "With --model and --tasks: boot a HuggingFace model (an id such as gpt2, or a local folder holding "
        "config.json, the weights and the tokenizer files) through TransformerLens "
        "(TransformerBridge.boot_transformers), build text ICL prompts of the tasks with the model's tokenizer, "
        f"run the analyses that apply to a pretrained model ({', '.join(PRETRAINED_ANALYSES)}; with --only "
        f"{' '.join(ON_REQUEST)}, layer finetuning too), save each result "
        "to DIR/results/ and write DIR/report.html and DIR/summary.json. Without --model: run the analyses on the "
        "model in DIR with the settings stored in DIR/run.json (the demo's trained model, or the pretrained model "
        "of an earlier `analyze --model` run).",
    )
    _analyze_options(analyze)

    report = _command(
        commands,
        "report",
        "rebuild the HTML report from the saved results (nothing is recomputed)",
        "Read every result in DIR/results/ and write one self-contained HTML report (plotly embedded, no "
        "network needed to view it); print the headline numbers.",
    )
    _out_option(report)
    report.add_argument(
        "--output", type=Path, default=None, metavar="FILE", help="where to write the report (default: DIR/report.html)"
    )
    return parser


def _command(commands: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 100),
        epilog=_LAYOUT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _out_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path(DEFAULT_OUT), metavar="DIR", help=f"demo directory (default: {DEFAULT_OUT})"
    )


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="CPU threads torch may use (default: 1; the demo's models are small, and more threads mostly add "
        "overhead, much of it when other processes share the cores)",
    )


def _analyze_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"output directory (default: {DEFAULT_OUT}; with --model: tv-lens-<model name>, e.g. tv-lens-gpt2)",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="ID_OR_FOLDER",
        help="a HuggingFace model id (gpt2, EleutherAI/pythia-70m, ...) or a local folder holding config.json, the "
        "weights and the tokenizer files, booted with TransformerBridge.boot_transformers",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        metavar="TASK",
        help=f"with --model: built-in text families ({', '.join(TEXT_FAMILIES)}; FAMILY:a,b for some of their "
        'tasks, e.g. bitwise:and,or,xor or pos:noun,verb) and/or JSON task files ({"input": "output", ...} or '
        '[{"input": ..., "output": ...}, ...], one task per file, named after it)',
    )
    parser.add_argument(
        "--n-per-task",
        type=int,
        default=None,
        metavar="N",
        help=f"with --model: prompts per task, Null task included (default: {_PRETRAINED_DEFAULTS['n_per_task']})",
    )
    parser.add_argument(
        "--shots",
        type=int,
        default=None,
        metavar="K",
        help=f"with --model: demonstrations per prompt (default: {_PRETRAINED_DEFAULTS['n_shots']})",
    )
    parser.add_argument(
        "--seed", type=int, default=None, metavar="N", help="with --model: seed of the prompts (default: 0)"
    )
    parser.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        metavar="N",
        help="with --model and --only finetuning: LoRA training steps of each variant (default: "
        f"{_PRETRAINED_DEFAULTS['finetune_steps']})",
    )
    parser.add_argument(
        "--template",
        default=None,
        metavar="TEXT",
        help="with --model: one demonstration, {x} before {y} (default: '{x}->{y}'; lines joined by newlines)",
    )
    parser.add_argument("--no-null", action="store_true", help="with --model: leave out the Null task (random outputs)")
    parser.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="with --model: cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default=None,
        help="with --model: parameter dtype (default: float32)",
    )
    parser.add_argument(
        "--compatibility-mode",
        action="store_true",
        help="with --model: call enable_compatibility_mode() on the bridge (LayerNorm folded, weights centred: "
        "HookedTransformer's numerics; logits unchanged, residual-stream rows change)",
    )
    parser.add_argument(
        "--adapter",
        default=None,
        metavar="FOLDER",
        help="with --model: put this PEFT LoRA adapter of the model on it first, and analyse the finetuned model",
    )
    _only_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads torch may use (default: 1 for the demo's small model; with --model, torch's default)",
    )


def _training_options(parser: argparse.ArgumentParser) -> None:
    _out_option(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the quick preset: recipe 'quick' (2 blocks, about 15 s of training) and fewer prompts per analysis",
    )
    parser.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="training recipe (default: 'shots', or 'quick' with --quick); see tv_lens.training.recipes",
    )
    parser.add_argument(
        "--backend",
        choices=get_args(Backend),
        default=None,
        help="TransformerLens model class: HookedTransformer ('hooked'), TransformerBridge ('bridge'), or "
        "'auto' (HookedTransformer where the installed TransformerLens has it) (default: auto)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the model, training and analysis prompts (default: 0)",
    )
    _progress_option(parser)


def _only_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        nargs="+",
        choices=ANALYSIS_NAMES,
        metavar="NAME",
        help=f"run only these analyses (choices: {', '.join(ANALYSIS_NAMES)}); other saved results stay in the report",
    )


def _set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of tv_lens.app.demo.DemoConfig, e.g. --set n_per_task=50 or "
        "--set performance_shots=[0,2,4] (repeatable)",
    )
