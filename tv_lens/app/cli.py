"""The ``tv-lens`` command line: the end-to-end demo, and each of its steps on saved artefacts.

- ``tv-lens demo``: train (or load) a model, run every analysis, save the results, write the HTML report.
- ``tv-lens train``: only train (or finish training) the model of a demo directory.
- ``tv-lens analyze``: run the analyses on the model already trained in a demo directory, or, with
  ``--model ID_OR_FOLDER --tasks ...``, on a pretrained HuggingFace model booted through TransformerLens
  with text tasks (:mod:`tv_lens.app.pretrained`).
- ``tv-lens report``: rebuild the report from the saved results, recomputing nothing.

Bad input ends the command with exit status 2 and one line on stderr naming the problem and the fix, never a
traceback: bad arguments (argparse), and every error the library raises for bad input
(:class:`~tv_lens.errors.TvLensError`: a corrupt or wrongly typed run.json or result file, an output path that
is a file or cannot be written, a ``--set`` value of the wrong type, ``--threads`` outside 1 .. the CPU count).
Output paths are checked before any work starts. Exit status 1 is left to unexpected failures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from tv_lens.app.pretrained import DTYPES, PRETRAINED_ANALYSES, TEXT_FAMILIES, PretrainedConfig
from tv_lens.app.sections import ANALYSIS_NAMES
from tv_lens.errors import ArtefactError, ConfigError, TvLensError

__all__ = ["build_parser", "main"]

DEFAULT_OUT = "tv-lens-demo"
BAD_INPUT = 2  # exit status of bad input, as argparse uses for bad arguments
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
        f"run the analyses that apply to a pretrained model ({', '.join(PRETRAINED_ANALYSES)}), save each result "
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
        choices=("auto", "hooked", "bridge"),
        default="auto",
        help="TransformerLens model class: HookedTransformer ('hooked'), TransformerBridge ('bridge'), or "
        "'auto' (HookedTransformer where the installed TransformerLens has it) (default: auto)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the model, training and analysis prompts (default: 0)"
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tv-lens`` with ``argv`` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        _set_threads(args)
        if args.command == "demo":
            _demo(args)
        elif args.command == "train":
            _train(args)
        elif args.command == "analyze":
            _analyze(args)
        else:
            _report(args)
    except TvLensError as error:
        print(f"tv-lens {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return BAD_INPUT
    except BrokenPipeError:  # output piped into a reader that stopped early (e.g. `| head`)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # keeps Python's exit-time flush quiet
        return 1
    except KeyboardInterrupt:
        print(f"tv-lens {args.command}: interrupted; run the same command again to continue.", file=sys.stderr)
        return 130
    return 0


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a message never spans lines on the terminal)."""
    return " ".join(str(error).split())


def _set_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    cpus = os.cpu_count() or 1
    if not 1 <= threads <= cpus:
        raise ConfigError(
            f"--threads must be between 1 and {cpus} (the CPUs of this machine), got {threads}; e.g. --threads 1 "
            "(the demo's small models gain little from more)."
        )
    import torch

    torch.set_num_threads(threads)


def _check_out(out: Path) -> None:
    """Fail before any work if ``--out`` cannot be an output directory: a file, a path under a file, not writable.

    Nothing is created: the write check makes and removes a temporary file in the nearest existing folder.
    """
    if out.exists() and not out.is_dir():
        raise ArtefactError(
            f"--out {out} is a file, not a directory; pass a directory (it is created if missing), e.g. "
            f"--out {out.with_name(out.name + '-run')}."
        )
    folder = _nearest_existing(out)
    if not folder.is_dir():
        raise ArtefactError(
            f"--out {out} lies under {folder}, which is a file, not a directory; pass a directory whose parent "
            "folders are directories."
        )
    problem = _unwritable(folder)
    if problem is not None:
        raise ArtefactError(
            f"--out {out} cannot be written to: {folder} is not writable ({problem}); pass a directory you can "
            "write to, or make that one writable."
        )


def _check_output(path: Path) -> None:
    """Fail before any work if the report cannot be written to ``--output``."""
    from tv_lens.app.report import check_report_target

    check_report_target(path)  # a directory, or a file that is not a report
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise ArtefactError(
            f"--output {path} lies under {folder}, which is a file, not a directory; pass a report path whose "
            "folders are directories."
        )
    problem = _unwritable(folder)
    if problem is not None:
        raise ArtefactError(
            f"--output {path} cannot be written: {folder} is not writable ({problem}); pass a path in a directory "
            "you can write to."
        )


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (the working directory for a relative path)."""
    return next((folder for folder in (path, *path.parents) if folder.exists()), Path.cwd())


def _unwritable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (``None`` if one can); the probe file is removed again."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".tv-lens-write-check.", suffix=".tmp")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        return f"{type(error).__name__}: {error.strerror or error}"
    return None


def _config(args: argparse.Namespace) -> Any:
    from tv_lens.app.demo import DemoConfig

    overrides: dict[str, Any] = {"backend": args.backend, "seed": args.seed}
    if args.recipe is not None:
        overrides["recipe"] = args.recipe
    overrides.update(_parse_settings(args.set))
    known = [field.name for field in fields(DemoConfig)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(f"Unknown setting(s) {unknown} for --set; the settings of DemoConfig are {known}.")
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig.full(**overrides)
    config.get_recipe()  # unknown recipe names fail here, before any work
    return config


def _parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got {pair!r}; e.g. --set n_per_task=50.")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        settings[key.strip()] = tuple(value) if isinstance(value, list) else value
    return settings


def _demo(args: argparse.Namespace) -> None:
    from tv_lens.app.demo import run_demo

    config = _config(args)
    _check_out(args.out)
    run = run_demo(args.out, config, only=args.only, progress=not args.no_progress)
    how = "trained" if run.trained.trained_now else "loaded (already trained, not retrained)"
    print(f"tv-lens demo: done in {run.seconds['total']:.0f} s; model {how}, {run.trained.steps} steps")
    _print_outputs(args.out, run.report)
    steps = ", ".join(f"{name} {seconds:.0f}" for name, seconds in run.seconds.items() if name != "total")
    print(f"  seconds: {steps}")
    _print_numbers(run.numbers)


def _train(args: argparse.Namespace) -> None:
    from tv_lens.app.demo import train_or_load

    start = time.perf_counter()
    config = _config(args)
    _check_out(args.out)
    trained = train_or_load(args.out, config, progress=not args.no_progress)
    how = "trained" if trained.trained_now else "already trained (loaded, not retrained)"
    accuracy = ", ".join(f"{task} {value:.3f}" for task, value in trained.training["accuracy"].items())
    print(f"tv-lens train: model {how} in {time.perf_counter() - start:.0f} s, {trained.steps} steps")
    print(f"  checkpoints: {args.out / 'checkpoints'} ({len(trained.checkpoints)} files)")
    print(f"  held-out accuracy: {accuracy}")


def _analyze(args: argparse.Namespace) -> None:
    from tv_lens.app.pretrained import default_out, read_pretrained_config

    given = [f"--{name.replace('_', '-')}" for name in _PRETRAINED_OPTIONS if getattr(args, name) not in (None, False)]
    if args.model is None:
        if given:
            raise ConfigError(
                f"{', '.join(given)} applies to a pretrained model: add --model ID_OR_FOLDER and --tasks; an "
                "analysis of a directory without --model uses the settings stored in its run.json."
            )
        args.out = Path(DEFAULT_OUT) if args.out is None else args.out
        _check_out(args.out)
        stored = read_pretrained_config(args.out)
        if stored is None:
            _analyze_demo(args)
        else:
            _analyze_pretrained(args, stored)
        return
    if not args.tasks:
        raise ConfigError(
            "--model needs --tasks: built-in text families (bitwise, pos; e.g. --tasks bitwise:and,or,xor) or JSON "
            "task files."
        )
    settings = {
        "n_per_task": args.n_per_task,
        "n_shots": args.shots,
        "seed": args.seed,
        "template": args.template,
        "device": args.device,
        "dtype": args.dtype,
    }
    config = PretrainedConfig(
        model=args.model,
        tasks=tuple(args.tasks),
        null=not args.no_null,
        compatibility_mode=args.compatibility_mode,
        **{key: value for key, value in settings.items() if value is not None},
    )
    args.out = default_out(args.model) if args.out is None else args.out
    _check_out(args.out)
    _analyze_pretrained(args, config)


# Options of `tv-lens analyze` that describe a pretrained-model run (their attribute names).
_PRETRAINED_OPTIONS = (
    "tasks",
    "n_per_task",
    "shots",
    "seed",
    "template",
    "no_null",
    "device",
    "dtype",
    "compatibility_mode",
)


def _analyze_pretrained(args: argparse.Namespace, config: PretrainedConfig) -> None:
    from tv_lens.app.pretrained import run_pretrained

    run = run_pretrained(args.out, config, only=args.only, progress=not args.no_progress)
    seconds = ", ".join(f"{name} {value:.0f}" for name, value in run.seconds.items() if name != "total")
    print(f"tv-lens analyze: done in {run.seconds['total']:.0f} s; model {config.model}, tasks {run.pool.task_names}")
    _print_outputs(args.out, run.report)
    print(f"  seconds: {seconds}")
    _print_numbers(run.numbers)


def _analyze_demo(args: argparse.Namespace) -> None:
    from tv_lens.app.demo import load_trained, run_analyses, write_outputs

    if args.threads is None:  # the demo's models are small: one thread (see --threads)
        import torch

        torch.set_num_threads(1)
    start = time.perf_counter()
    config, trained = load_trained(args.out, progress=not args.no_progress)
    run_analyses(args.out, trained, config, only=args.only, progress=not args.no_progress)
    report, numbers = write_outputs(args.out)
    print(f"tv-lens analyze: done in {time.perf_counter() - start:.0f} s")
    _print_outputs(args.out, report)
    _print_numbers(numbers)


def _report(args: argparse.Namespace) -> None:
    from tv_lens.app.demo import write_outputs

    _check_out(args.out)
    if args.output is not None:
        _check_output(args.output)
    report, numbers = write_outputs(args.out, args.output)
    print("tv-lens report: rebuilt from the saved results (nothing recomputed)")
    _print_outputs(args.out, report)
    _print_numbers(numbers)


def _print_outputs(out: Path, report: Path) -> None:
    print(f"  report:  {report}")
    print(f"  results: {out / 'results'}/ (headline numbers in {out / 'summary.json'})")


def _print_numbers(numbers: dict[str, Any]) -> None:
    from tv_lens.app.sections import summary_lines

    rows = summary_lines(numbers)
    width = max((len(title) for _, title, _ in rows), default=0)
    for _, title, line in rows:
        print(f"  {title:<{width}}  {line}")
