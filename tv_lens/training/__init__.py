"""Train small TransformerLens models on ICL task pools, from scratch, on CPU.

- :func:`train`: the loop (fresh batches per step, loss at every answer, AdamW, warmup + cosine
  :func:`get_lr`, held-out evaluation per task, atomic checkpoints with bit-exact resume). Token pools
  train on cross-entropy, regression pools (a continuous-input model) on squared error
  (:class:`RegressionObjective`).
- Configs: :class:`TrainConfig` composed of :class:`DataConfig`, :class:`OptimConfig`,
  :class:`ScheduleConfig`, and optionally :class:`TVPConfig` (TVP-loss) and :class:`FinetuneConfig`
  (layer-restricted finetuning, full or :class:`LoRAConfig`).
- :data:`recipes`: named, known-good runs (``"default"``, ``"quick"``, ``"shots"``, where shots matter, and
  ``"linear_regression"`` and ``"sparse_linear"``, in-context linear and sparse linear regression).
- Checkpoints: :func:`load_checkpoint`, :func:`list_checkpoints`, :func:`latest_checkpoint`.
- :func:`tvp_losses` / :func:`tvp_accuracy`; :func:`finetune`, :func:`apply_lora`, :func:`attach_lora`,
  :func:`merge_lora`, :func:`remove_lora`; :func:`export_huggingface` writes a finetuned bridge back as
  Hugging Face files, :func:`export_lora_adapter` its LoRA adapters as a PEFT adapter, which
  :func:`load_lora_adapter` puts on a bridge.

Train the default model (a few minutes of CPU) and keep a checkpoint every 50 steps::

    result = recipes["default"].run(checkpoint_dir="runs/default", checkpoint_every=50)
    result.accuracy()          # held-out ICL accuracy per task
    result.checkpoints         # step-0000050.pt, ... for analyses over training
"""

from tv_lens.training.checkpoints import (
    Checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_parameters,
)
from tv_lens.training.config import (
    DataConfig,
    FinetuneConfig,
    LoRAConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    TVPConfig,
)
from tv_lens.training.export import export_huggingface
from tv_lens.training.finetune import attach_lora, prepare_model, select_blocks
from tv_lens.training.loop import finetune, train
from tv_lens.training.lora import apply_lora, lora_parameters, merge_lora, remove_lora
from tv_lens.training.lora_export import export_lora_adapter
from tv_lens.training.lora_import import load_lora_adapter
from tv_lens.training.objectives import Objective, RegressionObjective, TextObjective, TokenObjective, objective_for
from tv_lens.training.recipe import Recipe, RecipeRegistry, recipes
from tv_lens.training.result import TrainResult
from tv_lens.training.schedule import get_lr
from tv_lens.training.tvp_loss import Losses, tvp_accuracy, tvp_losses

__all__ = [
    "Checkpoint",
    "DataConfig",
    "FinetuneConfig",
    "LoRAConfig",
    "Losses",
    "Objective",
    "OptimConfig",
    "Recipe",
    "RecipeRegistry",
    "RegressionObjective",
    "ScheduleConfig",
    "TVPConfig",
    "TextObjective",
    "TokenObjective",
    "TrainConfig",
    "TrainResult",
    "apply_lora",
    "attach_lora",
    "export_huggingface",
    "export_lora_adapter",
    "finetune",
    "get_lr",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_lora_adapter",
    "load_parameters",
    "lora_parameters",
    "merge_lora",
    "objective_for",
    "prepare_model",
    "recipes",
    "remove_lora",
    "select_blocks",
    "train",
    "tvp_accuracy",
    "tvp_losses",
]
