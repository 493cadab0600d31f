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

The parts: the argument parser (:mod:`tv_lens.app.cli.parser`), the subcommands (:mod:`tv_lens.app.cli.commands`),
the output-path checks (:mod:`tv_lens.app.cli.paths`) and :func:`main`, which prints bad input as one line
(:mod:`tv_lens.app.cli.entry`).
"""

from tv_lens.app.cli.entry import main
from tv_lens.app.cli.parser import build_parser

__all__ = ["build_parser", "main"]
