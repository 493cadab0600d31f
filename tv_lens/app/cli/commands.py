"""The bodies of the ``tv-lens`` subcommands: ``demo``, ``train``, ``analyze`` and ``report``.

Each takes the parsed arguments, checks the output paths before any work, runs its step and prints what it wrote.
The pipelines are imported when a command runs, from :mod:`tv_lens.app.demo` and :mod:`tv_lens.app.pretrained`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from tv_lens.app.cli.parser import DEFAULT_OUT
from tv_lens.app.cli.paths import check_out, check_output
from tv_lens.app.pretrained import PretrainedConfig
from tv_lens.errors import ConfigError

__all__ = ["analyze", "demo", "report", "train"]


def _config(args: argparse.Namespace) -> Any:
    from tv_lens.app.demo import DemoConfig

    options = {name: getattr(args, name) for name in ("recipe", "backend", "seed") if getattr(args, name) is not None}
    settings = _parse_settings(args.set)
    both = sorted(set(options) & set(settings))
    if both:
        name = both[0]
        raise ConfigError(
            f"--{name} {options[name]} and --set {name}={settings[name]!r} both set {name}; give it once."
        )
    overrides: dict[str, Any] = {**options, **settings}
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
        if key.strip() in settings:
            raise ConfigError(f"--set {key.strip()} is given twice ({pair!r} the second time); give each setting once.")
        settings[key.strip()] = tuple(value) if isinstance(value, list) else value
    return settings


def demo(args: argparse.Namespace) -> None:
    """``tv-lens demo``: train or load, run the analyses, write the report; print where everything is."""
    from tv_lens.app.demo import run_demo

    config = _config(args)
    check_out(args.out)
    run = run_demo(args.out, config, only=args.only, progress=not args.no_progress)
    how = "trained" if run.trained.trained_now else "loaded (already trained, not retrained)"
    print(f"tv-lens demo: done in {run.seconds['total']:.0f} s; model {how}, {run.trained.steps} steps")
    _print_outputs(args.out, run.report)
    steps = ", ".join(f"{name} {seconds:.0f}" for name, seconds in run.seconds.items() if name != "total")
    print(f"  seconds: {steps}")
    _print_numbers(run.numbers)


def train(args: argparse.Namespace) -> None:
    """``tv-lens train``: train (or finish training) the model of a demo directory."""
    from tv_lens.app.demo import train_or_load

    start = time.perf_counter()
    config = _config(args)
    check_out(args.out)
    trained = train_or_load(args.out, config, progress=not args.no_progress)
    how = "trained" if trained.trained_now else "already trained (loaded, not retrained)"
    accuracy = ", ".join(f"{task} {value:.3f}" for task, value in trained.training["accuracy"].items())
    print(f"tv-lens train: model {how} in {time.perf_counter() - start:.0f} s, {trained.steps} steps")
    print(f"  checkpoints: {args.out / 'checkpoints'} ({len(trained.checkpoints)} files)")
    print(f"  held-out accuracy: {accuracy}")


def analyze(args: argparse.Namespace) -> None:
    """``tv-lens analyze``: the analyses of a pretrained model (``--model``), or of the model in a directory."""
    from tv_lens.app.pretrained import default_out, read_pretrained_config

    given = [f"--{name.replace('_', '-')}" for name in _PRETRAINED_OPTIONS if getattr(args, name) not in (None, False)]
    if args.model is None:
        if given:
            raise ConfigError(
                f"{', '.join(given)} applies to a pretrained model: add --model ID_OR_FOLDER and --tasks; an "
                "analysis of a directory without --model uses the settings stored in its run.json."
            )
        args.out = Path(DEFAULT_OUT) if args.out is None else args.out
        check_out(args.out)
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
        "finetune_steps": args.finetune_steps,
        "template": args.template,
        "device": args.device,
        "dtype": args.dtype,
    }
    config = PretrainedConfig(
        model=args.model,
        tasks=tuple(args.tasks),
        null=not args.no_null,
        compatibility_mode=args.compatibility_mode,
        adapter=args.adapter,
        **{key: value for key, value in settings.items() if value is not None},
    )
    args.out = default_out(args.model) if args.out is None else args.out
    check_out(args.out)
    _analyze_pretrained(args, config)


# Options of `tv-lens analyze` that describe a pretrained-model run (their attribute names).
_PRETRAINED_OPTIONS = (
    "tasks",
    "n_per_task",
    "shots",
    "seed",
    "finetune_steps",
    "template",
    "no_null",
    "device",
    "dtype",
    "compatibility_mode",
    "adapter",
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
    from tv_lens.app.demo import load_trained, run_analyses
    from tv_lens.app.pipeline import write_outputs

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


def report(args: argparse.Namespace) -> None:
    """``tv-lens report``: rebuild the report from the saved results."""
    from tv_lens.app.pipeline import write_outputs

    check_out(args.out)
    if args.output is not None:
        check_output(args.output)
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
