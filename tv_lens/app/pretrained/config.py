"""The settings of an analysis run on a pretrained model (:class:`PretrainedConfig`), as stored in ``run.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tv_lens.analyses.patching import MODES as PATCHING_MODES
from tv_lens.app.run_files import RUN_FILE, check_settings, read_run_info
from tv_lens.checks import is_int
from tv_lens.errors import ArtefactError, ConfigError, TvLensError

__all__ = ["DTYPES", "RUN_KEY", "PretrainedConfig", "read_pretrained_config", "stored_config"]

RUN_KEY = "pretrained"  # run.json of a pretrained run: {"pretrained": config, "model": ..., "description": [...]}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
"""Parameter dtypes a model can be booted in, by name."""


@dataclass(frozen=True)
class PretrainedConfig:
    """Every setting of an analysis run on a pretrained model.

    Attributes:
        model: A HuggingFace model id (``"gpt2"``, ``"EleutherAI/pythia-70m"``) or a local folder holding
            ``config.json``, the weights and the tokenizer files (as ``save_pretrained`` writes them).
        tasks: Task names for :func:`text_tasks`: built-in families (``"bitwise"``, ``"pos:noun,verb"``) or JSON
            task files.
        n_per_task: Prompts per task (Null included) of every analysis.
        n_shots: Demonstrations per prompt (ICL performance sweeps 0 up to it; TD vs accuracy uses three counts
            up to it).
        seed: Seed of the prompts, the task vectors' prompts and the bootstrap.
        n_bootstrap: Bootstrap resamples of every confidence interval.
        template: One demonstration, ``{x}`` before ``{y}`` (Hendel et al.'s ``"{x}->{y}"`` by default).
        separator: Text between demonstrations.
        null: Add the Null task (demonstrations with random outputs).
        n_examples: Examples per task of a built-in family (distinct inputs shared by its tasks).
        patching_mode: ``"replace"``, ``"add"`` or ``"add_difference"`` (:class:`~tv_lens.analyses.TaskVectorPatching`).
        device: Device to boot the model on (``None``: ``"cuda"`` when available, else ``"cpu"``).
        dtype: Parameter dtype, a key of :data:`DTYPES`.
        compatibility_mode: Call ``enable_compatibility_mode()`` on the bridge (HookedTransformer numerics).
        adapter: A PEFT LoRA adapter folder of the model, put on it before the analyses
            (:func:`~tv_lens.training.load_lora_adapter`): the finetuned model is analysed.
        finetune_steps: Training steps of each variant of layer finetuning (run on request; warm-up a tenth of them).
    """

    model: str
    tasks: tuple[str, ...]
    n_per_task: int = 24
    n_shots: int = 5
    seed: int = 0
    n_bootstrap: int = 1000
    template: str = "{x}->{y}"
    separator: str = "\n"
    null: bool = True
    n_examples: int = 256
    patching_mode: str = "replace"
    device: str | None = None
    dtype: str = "float32"
    compatibility_mode: bool = False
    adapter: str | None = None
    finetune_steps: int = 200

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"model must be a HuggingFace model id or a local folder, got {self.model!r}.")
        if self.adapter is not None and (not isinstance(self.adapter, str) or not self.adapter.strip()):
            raise ConfigError(f"adapter must be the folder of a PEFT LoRA adapter, got {self.adapter!r}.")
        if not self.tasks:
            raise ConfigError("tasks is empty; name a built-in family (e.g. 'bitwise') or a JSON task file.")
        for name in ("n_per_task", "n_shots", "n_examples", "finetune_steps"):
            value = getattr(self, name)
            if not is_int(value) or value < (2 if name == "n_per_task" else 1):
                low = 2 if name == "n_per_task" else 1
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}.")
        if not is_int(self.n_bootstrap) or self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be an int >= 0, got {self.n_bootstrap!r}.")
        if self.dtype not in DTYPES:
            raise ConfigError(f"Unknown dtype {self.dtype!r}; use one of {list(DTYPES)}.")
        if self.patching_mode not in PATCHING_MODES:
            raise ConfigError(f"patching_mode must be one of {list(PATCHING_MODES)}, got {self.patching_mode!r}.")
        for name in ("template", "separator"):
            text = getattr(self, name)
            escape = next((code for code in ("\\n", "\\t", "\\r") if isinstance(text, str) and code in text), None)
            if escape is not None:
                raise ConfigError(
                    f"{name} {text!r} holds {escape!r}: a backslash and a letter, not the character they stand for (a "
                    "shell passes the backslash as it is). Write the character itself, e.g. in bash --template "
                    "$'Q: {x}\\nA: {y}'."
                )

    @property
    def k(self) -> int:
        """Neighbours of the k-NN task decodability: 10 (Han et al.), fewer when a task has fewer other prompts."""
        return min(10, self.n_per_task - 1)

    @property
    def performance_shots(self) -> tuple[int, ...]:
        """Shot counts of the ICL-performance sweep: 0, 1, half of ``n_shots`` and ``n_shots``."""
        return tuple(sorted({0, 1, self.n_shots // 2, self.n_shots}))

    @property
    def td_accuracy_shots(self) -> tuple[int, ...]:
        """Shot counts of the TD-vs-accuracy fit: 1, half of ``n_shots`` and ``n_shots``."""
        return tuple(sorted({1, max(1, self.n_shots // 2), self.n_shots}))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (stored in ``run.json``)."""
        data = asdict(self)
        data["tasks"] = list(self.tasks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainedConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        check_settings(cls, data)
        return cls(**{**data, "tasks": tuple(data.get("tasks", ()))})

    def target(self) -> dict[str, Any]:
        """What is analysed (model, tasks, prompt format): an output directory holds the results of one target."""
        keys = ("model", "adapter", "tasks", "template", "separator", "null", "n_examples", "compatibility_mode")
        return {key: getattr(self, key) for key in keys}

    def stated(self) -> dict[str, Any]:
        """The settings the report states once for all of a directory's results: shots, prompts, seed, dtype."""
        return {key: getattr(self, key) for key in ("n_shots", "n_per_task", "seed", "dtype")}


def read_pretrained_config(out: str | Path) -> PretrainedConfig | None:
    """The :class:`PretrainedConfig` stored in ``out/run.json`` (``None`` when it holds no pretrained run).

    Raises:
        ArtefactError: ``run.json`` is unreadable.
    """
    path = Path(out) / RUN_FILE
    return stored_config(read_run_info(path) or {}, path)


def stored_config(data: dict[str, Any], path: Path) -> PretrainedConfig | None:
    """The :class:`PretrainedConfig` in ``data``, the contents of the run file ``path`` (``None``: none there)."""
    stored = data.get(RUN_KEY)
    if stored is None:
        return None
    try:
        return PretrainedConfig.from_dict(stored)
    except (TypeError, TvLensError) as error:
        raise ArtefactError(f"{path} is unreadable ({error}); delete it, or use another output directory.") from error
