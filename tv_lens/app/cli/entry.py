"""``main``: parse the arguments, run the subcommand, and turn bad input into one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from tv_lens.app.cli.commands import analyze, demo, report, train
from tv_lens.app.cli.parser import build_parser
from tv_lens.app.messages import one_line
from tv_lens.errors import ConfigError, TvLensError

__all__ = ["main"]

BAD_INPUT = 2  # exit status of bad input, as argparse uses for bad arguments

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "demo": demo,
    "train": train,
    "analyze": analyze,
    "report": report,
}
"""Subcommand name → its body (:mod:`tv_lens.app.cli.commands`)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tv-lens`` with ``argv`` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        _set_threads(args)
        COMMANDS[args.command](args)
    except TvLensError as error:
        print(f"tv-lens {args.command}: error: {one_line(error)}", file=sys.stderr)
        return BAD_INPUT
    except BrokenPipeError:  # output piped into a reader that stopped early (e.g. `| head`)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # keeps Python's exit-time flush quiet
        return 1
    except KeyboardInterrupt:
        print(f"tv-lens {args.command}: interrupted; run the same command again to continue.", file=sys.stderr)
        return 130
    return 0


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
