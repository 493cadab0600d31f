"""The pipeline behind ``tv-lens analyze --model``: a pretrained model, text tasks, every analysis, one report.

:func:`run_pretrained` boots a HuggingFace model through TransformerLens
(``TransformerBridge.boot_transformers(<id or folder>)``, :func:`boot_model`), builds a
:class:`~tv_lens.tasks.TextPool` of the requested text tasks with the model's own tokenizer (:func:`text_pool`),
runs the analyses that apply to a model that is not trained here (:data:`PRETRAINED_ANALYSES`: task
decodability, ICL performance, geometry, TD vs accuracy, task-vector patching, task-vector prompting, head
ablation; layer finetuning on request, :data:`ON_REQUEST`), saves each result and writes the same HTML report
and ``summary.json`` as the demo (:func:`tv_lens.app.pipeline.write_outputs`). The output directory:

- ``run.json``: the :class:`PretrainedConfig` of the run (``tv-lens analyze --out DIR`` reruns it) and a
  description of the model and tasks (shown at the top of the report);
- ``results/<name>.safetensors``: one :class:`~tv_lens.results.Result` per analysis (``Result.load`` reads any);
- ``summary.json``: the headline numbers; ``report.html``: the report (:mod:`tv_lens.app.report`).

Tasks are named by :func:`text_tasks`: a built-in family (:data:`TEXT_FAMILIES`: ``bitwise``, ``pos``),
optionally restricted to some of its tasks (``bitwise:and,or,xor``), or a JSON task file in either layout of
:mod:`tv_lens.tasks.datasets` (one task per file, named after the file).

The parts: the settings (:mod:`tv_lens.app.pretrained.config`), the tasks and their pool
(:mod:`tv_lens.app.pretrained.tasks`), booting the model (:mod:`tv_lens.app.pretrained.model`), the analyses
(:mod:`tv_lens.app.pretrained.analyses`) and the whole run (:mod:`tv_lens.app.pretrained.run`).

>>> [task.name for task in text_tasks(["bitwise:and,xor", "pos:noun"], n_examples=8)]
['and', 'xor', 'noun']
"""

from tv_lens.app.pretrained.analyses import ANALYSES, ON_REQUEST, PRETRAINED_ANALYSES, check_names
from tv_lens.app.pretrained.config import DTYPES, PretrainedConfig, read_pretrained_config
from tv_lens.app.pretrained.model import ModelLoadError, boot_model, check_model_source, model_facts, resolve_device
from tv_lens.app.pretrained.run import PretrainedRun, default_out, run_pretrained
from tv_lens.app.pretrained.tasks import TEXT_FAMILIES, text_pool, text_tasks

__all__ = [
    "ANALYSES",
    "DTYPES",
    "ON_REQUEST",
    "PRETRAINED_ANALYSES",
    "TEXT_FAMILIES",
    "ModelLoadError",
    "PretrainedConfig",
    "PretrainedRun",
    "boot_model",
    "check_model_source",
    "check_names",
    "default_out",
    "model_facts",
    "read_pretrained_config",
    "resolve_device",
    "run_pretrained",
    "text_pool",
    "text_tasks",
]
