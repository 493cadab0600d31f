"""The pipeline behind ``tv-lens demo``: train (or load) a recipe's model, run every analysis, save every result.

A demo directory holds everything a run produced, so each step can be repeated on its own:

- ``checkpoints/step-*.pt``: the training run (the emergence analysis reads every checkpoint);
- ``run.json``: the :class:`DemoConfig` of the run, its training summary and the shots chosen for TD→accuracy
  and patching (``analysis_shots``);
- ``results/<name>.safetensors``: one :class:`~tv_lens.results.Result` per analysis (``Result.load`` reads any);
- ``summary.json``: the headline numbers; ``report.html``: the report (:mod:`tv_lens.app.report`).

A directory that already holds the finished run is reused: the model is loaded, not retrained; an
interrupted run resumes from its last checkpoint. Settings live in :class:`DemoConfig`
(:meth:`DemoConfig.full` and :meth:`DemoConfig.quick` are the two presets of the command line).

TD → accuracy and correct-vs-incorrect patching only say something where accuracy can move: at shot counts
where the model is at its ceiling there is no variation for TD to predict, and a correct task vector cannot
help. So both run at shot counts chosen from the model's ICL accuracy curve (:func:`choose_analysis_shots`):
those of ``td_accuracy_shots`` whose accuracy on the non-Null tasks is below ``DemoConfig.ceiling``. The
choice is saved in ``run.json`` (``analysis_shots``) and stated in the report.

The parts: the settings (:mod:`tv_lens.app.demo.config`), the trained model (:mod:`tv_lens.app.demo.training`),
the shot counts chosen from the accuracy curve (:mod:`tv_lens.app.demo.shots`), the analyses
(:mod:`tv_lens.app.demo.analyses`) and the whole run (:mod:`tv_lens.app.demo.run`).

>>> DemoConfig.quick().recipe, DemoConfig.full().recipe
('quick', 'shots')
"""

from tv_lens.app.demo.analyses import ANALYSES, finetuning_pool, run_analyses
from tv_lens.app.demo.config import DemoConfig
from tv_lens.app.demo.run import DemoRun, run_demo
from tv_lens.app.demo.shots import AnalysisShots, analysis_shots, choose_analysis_shots, shots_below_ceiling
from tv_lens.app.demo.training import TrainedModel, load_trained, read_run_config, train_or_load

__all__ = [
    "ANALYSES",
    "AnalysisShots",
    "DemoConfig",
    "DemoRun",
    "TrainedModel",
    "analysis_shots",
    "choose_analysis_shots",
    "finetuning_pool",
    "load_trained",
    "read_run_config",
    "run_analyses",
    "run_demo",
    "shots_below_ceiling",
    "train_or_load",
]
