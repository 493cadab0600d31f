"""The application on top of the library: the ``tv-lens`` command and the pipelines and report behind it.

- :mod:`~tv_lens.app.cli`: the ``tv-lens`` command line (``demo``, ``analyze``, ``report``, ...).
- :mod:`~tv_lens.app.demo`: ``tv-lens demo``: train (or load) a recipe's model, run every analysis, save every result.
- :mod:`~tv_lens.app.pretrained`: ``tv-lens analyze``: the analyses on a pretrained model with text tasks.
- :mod:`~tv_lens.app.pipeline`: what both pipelines share: run the analyses and save each result, then write
  ``summary.json`` and the report.
- :mod:`~tv_lens.app.report`: the self-contained HTML report of a run directory.

Nothing in the library imports from here.
"""

__all__: list[str] = []
