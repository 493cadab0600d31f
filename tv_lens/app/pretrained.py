"""The pipeline behind ``tv-lens analyze --model``: a pretrained model, text tasks, every analysis, one report.

:func:`run_pretrained` boots a HuggingFace model through TransformerLens
(``TransformerBridge.boot_transformers(<id or folder>)``, :func:`boot_model`), builds a
:class:`~tv_lens.tasks.TextPool` of the requested text tasks with the model's own tokenizer (:func:`text_pool`),
runs the analyses that apply to a model that is not trained here (:data:`PRETRAINED_ANALYSES`: task
decodability, ICL performance, geometry, TD vs accuracy, task-vector patching, task-vector prompting, head
ablation), saves each result and writes the same HTML report and ``summary.json`` as the demo
(:func:`tv_lens.app.demo.write_outputs`). The output directory:

- ``run.json``: the :class:`PretrainedConfig` of the run (``tv-lens analyze --out DIR`` reruns it) and a
  description of the model and tasks (shown at the top of the report);
- ``results/<name>.safetensors``: one :class:`~tv_lens.results.Result` per analysis (``Result.load`` reads any);
- ``summary.json``: the headline numbers; ``report.html``: the report (:mod:`tv_lens.app.report`).

Tasks are named by :func:`text_tasks`: a built-in family (:data:`TEXT_FAMILIES`: ``bitwise``, ``pos``),
optionally restricted to some of its tasks (``bitwise:and,or,xor``), or a JSON task file in either layout of
:mod:`tv_lens.tasks.datasets` (one task per file, named after the file).

>>> [task.name for task in text_tasks(["bitwise:and,xor", "pos:noun"], n_examples=8)]
['and', 'xor', 'noun']
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tv_lens.analyses import (
    Geometry,
    HeadAblation,
    ICLPerformance,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TdAccuracy,
)
from tv_lens.analyses.patching import MODES as PATCHING_MODES
from tv_lens.app.run_files import RESULT_SUFFIX, RUN_FILE, read_run_info, result_path, write_run_info
from tv_lens.errors import (
    ArtefactError,
    ConfigError,
    MissingFileError,
    ModelNotSupportedError,
    TaskError,
    TvLensError,
)
from tv_lens.models import adapt
from tv_lens.results import Result
from tv_lens.tasks import POS_TAGS, TextPool, TextTask, bitwise_text_tasks, load_task, pos_tasks
from tv_lens.tasks.tokens import BITWISE_OPS

__all__ = [
    "ANALYSES",
    "DTYPES",
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

RESULTS = "results"
RUN_KEY = "pretrained"  # run.json of a pretrained run: {"pretrained": config, "model": ..., "description": [...]}

PRETRAINED_ANALYSES: tuple[str, ...] = (
    "decodability",
    "performance",
    "geometry",
    "td_accuracy",
    "patching",
    "prompting",
    "heads",
)
"""The analyses :func:`run_pretrained` runs (result file stems, the report's names), in order. The demo's other
two, emergence over training and layer finetuning, need training runs."""

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
"""Parameter dtypes a model can be booted in, by name."""


@dataclass(frozen=True)
class _Family:
    """A built-in text family: its task names and how to build its tasks."""

    names: tuple[str, ...]
    build: Callable[[tuple[str, ...], int, int], tuple[TextTask, ...]]
    description: str


TEXT_FAMILIES: dict[str, _Family] = {
    "bitwise": _Family(
        BITWISE_OPS,
        lambda names, n, seed: bitwise_text_tasks(ops=names, n_bits=5, n_examples=n, seed=seed),
        "two 5-digit binary numbers 'a b' -> op(a, b) as 5 digits, op in and, nand, or, nor, xor, xnor",
    ),
    "pos": _Family(
        POS_TAGS,
        lambda names, n, seed: pos_tasks(tags=names, n_sentences=n, seed=seed),
        "a sentence -> its first word with a part-of-speech tag: noun, adjective, verb, adverb, preposition, pronoun",
    ),
}
"""Built-in text families by name (:mod:`tv_lens.tasks.text_families`): ``FAMILY`` is every task of the family,
``FAMILY:a,b`` only tasks ``a`` and ``b``."""


class ModelLoadError(TvLensError, RuntimeError):
    """A model that TransformerLens could not boot (unknown name, missing weights, unsupported architecture)."""


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"model must be a HuggingFace model id or a local folder, got {self.model!r}.")
        if not self.tasks:
            raise ConfigError("tasks is empty; name a built-in family (e.g. 'bitwise') or a JSON task file.")
        for name in ("n_per_task", "n_shots", "n_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "n_per_task" else 1):
                low = 2 if name == "n_per_task" else 1
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}.")
        if isinstance(self.n_bootstrap, bool) or not isinstance(self.n_bootstrap, int) or self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be an int >= 0, got {self.n_bootstrap!r}.")
        if self.dtype not in DTYPES:
            raise ConfigError(f"Unknown dtype {self.dtype!r}; use one of {list(DTYPES)}.")
        if self.patching_mode not in PATCHING_MODES:
            raise ConfigError(f"patching_mode must be one of {list(PATCHING_MODES)}, got {self.patching_mode!r}.")

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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown PretrainedConfig settings {unknown}; known: {sorted(known)}.")
        return cls(**{**data, "tasks": tuple(data.get("tasks", ()))})

    def target(self) -> dict[str, Any]:
        """What is analysed (model, tasks, prompt format): an output directory holds the results of one target."""
        keys = ("model", "tasks", "template", "separator", "null", "n_examples", "compatibility_mode")
        return {key: getattr(self, key) for key in keys}


@dataclass(frozen=True, eq=False)
class PretrainedRun:
    """What :func:`run_pretrained` produced.

    Attributes:
        out: The output directory.
        report: The report's path.
        results: The results by analysis name.
        numbers: The headline numbers (``summary.json``).
        config: The settings of the run.
        model: The booted TransformerLens model.
        pool: The text pool of the run.
        seconds: Seconds each step took (``boot``, each analysis, ``total``).
    """

    out: Path
    report: Path
    results: dict[str, Result]
    numbers: dict[str, Any]
    config: PretrainedConfig
    model: Any
    pool: TextPool
    seconds: dict[str, float] = field(default_factory=dict)


# --- tasks -----------------------------------------------------------------------------------------------------


def text_tasks(specs: Sequence[str], n_examples: int = 256, seed: int = 0) -> tuple[TextTask, ...]:
    """The text tasks named by ``specs``, in order.

    Each spec is a built-in family of :data:`TEXT_FAMILIES` (``"bitwise"``: every op; ``"bitwise:and,xor"``:
    those ops; likewise ``"pos"`` and ``"pos:noun,verb"``) or a JSON task file (a path ending in ``.json``, or
    any existing file): ``{"input": "output", ...}`` or ``[{"input": ..., "output": ...}, ...]``, one task named
    after the file.

    Args:
        specs: Family names and task files.
        n_examples: Examples per task of a built-in family.
        seed: Seed of the built-in families' examples.

    Raises:
        TaskError: An unknown family or task name, or a task file that cannot be read.
        MissingFileError: A task file that does not exist.
    """
    specs = (specs,) if isinstance(specs, str) else tuple(specs)
    if not specs:
        raise TaskError(f"No tasks named; pass a built-in family ({', '.join(TEXT_FAMILIES)}) or a JSON task file.")
    tasks: list[TextTask] = []
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise TaskError(f"A task must be a family name or a JSON file path, got {spec!r}.")
        path = Path(spec).expanduser()
        if spec.lower().endswith(".json") or path.is_file():
            tasks.append(_task_file(path))
        else:
            tasks.extend(_family_tasks(spec, n_examples, seed))
    return tuple(tasks)


def _family_tasks(spec: str, n_examples: int, seed: int) -> tuple[TextTask, ...]:
    name, _, selection = spec.partition(":")
    family = TEXT_FAMILIES.get(name.strip().lower())
    if family is None:
        raise TaskError(
            f"Unknown task family {name.strip()!r}; built-in families are {list(TEXT_FAMILIES)} (e.g. 'bitwise' or "
            "'pos:noun,verb'), or pass a JSON task file ending in .json."
        )
    names = tuple(n.strip().lower() for n in selection.split(",") if n.strip()) if selection else family.names
    unknown = [n for n in names if n not in family.names]
    if unknown or not names:
        raise TaskError(
            f"Unknown task(s) {unknown or [selection]} in {spec!r}; the tasks of {name.strip()!r} are "
            f"{list(family.names)}."
        )
    return family.build(names, n_examples, seed)


def _task_file(path: Path) -> TextTask:
    if not path.exists():
        raise MissingFileError(
            f"No task file {path}; pass an existing JSON file, or a built-in family ({', '.join(TEXT_FAMILIES)})."
        )
    try:
        return load_task(path)
    except (OSError, UnicodeDecodeError) as error:
        raise TaskError(
            f"Cannot read task file {path} ({_one_line(error)}); pass a readable UTF-8 JSON file."
        ) from error


# --- model -----------------------------------------------------------------------------------------------------


def boot_model(
    model: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    compatibility_mode: bool = False,
    progress: bool = True,
) -> Any:
    """``TransformerBridge.boot_transformers(model, device=..., dtype=...)`` in eval mode, with errors that name a fix.

    ``model`` is a HuggingFace model id or a local folder that holds ``config.json``, the weights and the tokenizer
    files (``save_pretrained``). The bridge keeps HuggingFace's numerics; ``compatibility_mode=True`` processes the
    weights as ``HookedTransformer.from_pretrained`` does (LayerNorm folded, weights centred).

    Args:
        model: Model id or folder.
        device: Device (``None``: ``"cuda"`` when available, else ``"cpu"``).
        dtype: Parameter dtype (a ``torch.dtype`` or a key of :data:`DTYPES`).
        compatibility_mode: Call ``enable_compatibility_mode()`` after booting.
        progress: Show the weight-loading progress bar of ``transformers``.

    Raises:
        MissingFileError: ``model`` names a local path that does not exist.
        ArtefactError: A local folder without ``config.json``, or a file instead of a folder.
        ModelLoadError: TransformerLens could not boot the model (the underlying error is chained).
    """
    check_model_source(model)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"Unknown dtype {dtype!r}; use one of {list(DTYPES)}.")
        dtype = DTYPES[dtype]
    device = resolve_device(device)
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as error:
        raise ModelLoadError(
            "Booting a HuggingFace model needs TransformerLens >= 3.0 (TransformerBridge); upgrade transformer-lens."
        ) from error
    source = str(Path(model).expanduser()) if Path(model).expanduser().is_dir() else model
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    try:
        if not progress:
            hf_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # conversion notes of TransformerLens and transformers
            bridge = TransformerBridge.boot_transformers(source, device=device, dtype=dtype)  # type: ignore[attr-defined]
            if compatibility_mode:
                bridge.enable_compatibility_mode()
    except (KeyboardInterrupt, TvLensError):
        raise
    except Exception as error:  # any failure inside TransformerLens / transformers / the hub
        local = Path(model).expanduser().is_dir()
        hint = (
            "check that the folder holds a causal language model that TransformerLens supports, with its weights"
            if local
            else "check the name on the HuggingFace Hub (offline, the model must be in the local HF cache), or pass "
            "a local folder holding config.json, the weights and the tokenizer"
        )
        raise ModelLoadError(
            f"TransformerLens could not boot {model!r} ({type(error).__name__}: {_one_line(error)}); {hint}."
        ) from error
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return bridge.eval()


def check_model_source(model: str) -> None:
    """Raise a clear error for a local model path that cannot be booted, before importing TransformerLens.

    A string that exists on disk is a local folder; one that looks like a path (``./x``, ``/x``, ``~/x``,
    ``a/b/c``) but does not exist is a missing folder; anything else is taken as a HuggingFace model id.

    Raises:
        MissingFileError: A path that does not exist.
        ArtefactError: A file instead of a folder, or a folder without ``config.json``.
    """
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ArtefactError(
                f"{model} is a file; pass the folder that holds config.json, the weights and the tokenizer files."
            )
        if not (path / "config.json").is_file():
            raise ArtefactError(
                f"{model} holds no config.json; pass a folder written by save_pretrained (config.json, the weights "
                "and the tokenizer files), or a HuggingFace model id."
            )
        return
    looks_like_path = model.startswith((".", "/", "~")) or model.endswith("/") or model.count("/") > 1
    if looks_like_path:
        raise MissingFileError(
            f"No model folder {model}; pass an existing folder holding config.json, the weights and the tokenizer "
            "files, or a HuggingFace model id such as 'gpt2'."
        )


def resolve_device(device: str | torch.device | None) -> str | torch.device:
    """``device``, or ``"cuda"`` when it is ``None`` and a GPU is available, else ``"cpu"``."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def text_pool(
    model: Any,
    tasks: Sequence[TextTask],
    template: str = "{x}->{y}",
    separator: str = "\n",
    null: bool = True,
) -> TextPool:
    """A :class:`~tv_lens.tasks.TextPool` of ``tasks`` with ``model.tokenizer``, starting prompts as the model expects.

    Prompts start with the tokenizer's BOS token where TransformerLens prepends one for this model
    (``model.cfg.default_prepend_bos``) and the tokenizer has one.

    Raises:
        ModelNotSupportedError: The model has no tokenizer.
        TaskError: A tokenizer that cannot represent the tasks (see :class:`~tv_lens.tasks.TextPool`).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ModelNotSupportedError(
            f"{type(model).__name__} has no tokenizer (model.tokenizer is None); boot it with its tokenizer, e.g. "
            "TransformerBridge.boot_transformers(name_or_folder)."
        )
    prepend = bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", True))
    bos = prepend and getattr(tokenizer, "bos_token_id", None) is not None
    return TextPool(tuple(tasks), tokenizer, template=template, separator=separator, null=null, bos=bos)


# --- the pipeline ----------------------------------------------------------------------------------------------


def _decodability(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = TaskDecodability(k=config.k, n_bootstrap=config.n_bootstrap, progress=progress)
    return analysis.run(model, pool, config.n_per_task, config.n_shots, config.seed)


def _performance(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = ICLPerformance(shots=config.performance_shots, n_bootstrap=config.n_bootstrap)
    return analysis.run(model, pool, config.n_per_task, config.seed)


def _geometry(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = Geometry(method="pca", progress=progress)
    return analysis.run(model, pool, config.n_per_task, config.n_shots, config.seed)


def _td_accuracy(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = TdAccuracy(shots=config.td_accuracy_shots, decodability=TaskDecodability(k=config.k, n_bootstrap=0))
    return analysis.run(model, pool, config.n_per_task, config.seed)


def _patching(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = TaskVectorPatching(
        mode=config.patching_mode,  # type: ignore[arg-type]
        n_bootstrap=config.n_bootstrap,
        progress=progress,
    )
    return analysis.run(model, pool, config.n_per_task, config.n_shots, config.seed)


def _prompting(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = TaskVectorPrompting(n_bootstrap=config.n_bootstrap, progress=progress)
    return analysis.run(model, pool, config.n_per_task, config.n_shots, config.seed)


def _heads(model: Any, pool: TextPool, config: PretrainedConfig, progress: bool) -> Result:
    analysis = HeadAblation(n_bootstrap=config.n_bootstrap, progress=progress)
    return analysis.run(model, pool, config.n_per_task, config.n_shots, config.seed)


ANALYSES: dict[str, Callable[[Any, TextPool, PretrainedConfig, bool], Result]] = {
    "decodability": _decodability,
    "performance": _performance,
    "geometry": _geometry,
    "td_accuracy": _td_accuracy,
    "patching": _patching,
    "prompting": _prompting,
    "heads": _heads,
}
"""Name (also the result file's stem) → the step that runs that analysis; the same names as
:data:`PRETRAINED_ANALYSES`, in the same order."""


def check_names(only: Sequence[str] | None) -> tuple[str, ...]:
    """``only`` as a tuple of :data:`PRETRAINED_ANALYSES` names in pipeline order (all when ``None``).

    Raises:
        ConfigError: A name that is not an analysis of a pretrained model.
    """
    if only is None:
        return PRETRAINED_ANALYSES
    unknown = [name for name in only if name not in ANALYSES]
    if unknown or not only:
        training = [name for name in unknown if name in ("emergence", "finetuning")]
        why = f" ({', '.join(training)} needs a model trained by tv-lens demo)" if training else ""
        raise ConfigError(
            f"Analysis name(s) {unknown or list(only)} do not apply to a pretrained model{why}; choose from "
            f"{list(PRETRAINED_ANALYSES)}."
        )
    return tuple(name for name in PRETRAINED_ANALYSES if name in only)


def default_out(model: str) -> Path:
    """The default output directory of ``model``: ``tv-lens-<last part of the id or folder name>``."""
    stem = Path(model.rstrip("/")).name or "model"
    return Path("tv-lens-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"))


def read_pretrained_config(out: str | Path) -> PretrainedConfig | None:
    """The :class:`PretrainedConfig` stored in ``out/run.json`` (``None`` when it holds no pretrained run).

    Raises:
        ArtefactError: ``run.json`` is unreadable.
    """
    return _stored_config(_read_run_json(Path(out)), Path(out) / RUN_FILE)


def _read_run_json(out: Path) -> dict[str, Any]:
    """The checked contents of ``out/run.json``; empty when there is none (a file of another shape is an error)."""
    return read_run_info(out / RUN_FILE) or {}


def _stored_config(data: dict[str, Any], path: Path) -> PretrainedConfig | None:
    """The :class:`PretrainedConfig` in ``data``, the contents of the run file ``path`` (``None``: none there)."""
    stored = data.get(RUN_KEY)
    if stored is None:
        return None
    try:
        return PretrainedConfig.from_dict(stored)
    except (TypeError, TvLensError) as error:
        raise ArtefactError(f"{path} is unreadable ({error}); delete it, or use another output directory.") from error


def _check_same_target(out: Path, config: PretrainedConfig) -> None:
    """Refuse an output directory that holds the results of another model, other tasks or the demo."""
    data = _read_run_json(out)
    if not data:
        return
    if RUN_KEY not in data:
        raise ArtefactError(
            f"{out} holds the demo's trained model and its results; use another --out directory for a pretrained "
            f"model (default: {default_out(config.model)})."
        )
    stored = _stored_config(data, out / RUN_FILE)  # the contents read above: run.json is read once
    has_results = any((out / RESULTS).glob(f"*{RESULT_SUFFIX}"))
    if stored is not None and has_results and stored.target() != config.target():
        asked = config.target()
        differ = ", ".join(
            f"{key} {value!r} (asked: {asked[key]!r})" for key, value in stored.target().items() if asked[key] != value
        )
        raise ArtefactError(
            f"{out} holds results of another model or other tasks: {differ}; use another --out directory, or the "
            "same model, tasks and prompt format."
        )


def _absolute(spec: str, kind: str) -> str:
    """A local model folder (``kind="model"``) or task file as an absolute path, so a rerun from elsewhere finds it."""
    path = Path(spec).expanduser()
    local = path.is_dir() if kind == "model" else path.is_file()
    return str(path.resolve()) if local else spec


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        return "unknown"


def model_facts(model: Any) -> dict[str, Any]:
    """Class, sizes and TransformerLens version of a booted model (stored in ``run.json``)."""
    adapter = adapt(model)
    return {
        "class": type(model).__name__,
        "n_layers": adapter.n_layers,
        "n_heads": adapter.n_heads,
        "d_model": adapter.d_model,
        "d_vocab": int(model.cfg.d_vocab),
        "transformer_lens": _tl_version(),
    }


def _description(config: PretrainedConfig, facts: dict[str, Any], pool: TextPool, device: Any) -> list[str]:
    compat = ", compatibility mode" if config.compatibility_mode else ""
    kept = ", ".join(f"{task.name} {len(examples)}" for task, examples in zip(pool.tasks, pool.examples, strict=True))
    null = " plus the Null task (random outputs)" if pool.null else ""
    return [
        f"Model: {config.model} ({facts['class']} booted with boot_transformers{compat}; {facts['n_layers']} blocks, "
        f"d_model {facts['d_model']}, {facts['n_heads']} heads; {config.dtype} on {device}; TransformerLens "
        f"{facts['transformer_lens']}).",
        f"Tasks: {', '.join(config.tasks)}{null}; usable examples per task: {kept}"
        + (f" ({len(pool.dropped)} dropped: the tokenizer cannot split them cleanly)" if pool.dropped else "")
        + ".",
        f"Prompts: template {config.template!r}, separator {config.separator!r}, BOS {'yes' if pool.bos else 'no'}; "
        f"{config.n_shots} shots, {config.n_per_task} prompts per task, seed {config.seed}.",
    ]


def _write_run_file(out: Path, config: PretrainedConfig, facts: dict[str, Any], description: list[str]) -> None:
    info = {RUN_KEY: config.to_dict(), "model": facts, "description": description}
    write_run_info(out, info)


def run_pretrained(
    out: str | Path,
    config: PretrainedConfig,
    only: Sequence[str] | None = None,
    progress: bool = True,
) -> PretrainedRun:
    """Boot ``config.model``, build the text pool, run the analyses, save them, write the report and summary.

    Everything that can be checked without the model (analysis names, tasks, the output directory, a local
    folder) is checked before the model is booted.

    Args:
        out: Output directory (created).
        config: The run's settings.
        only: Analyses to run (default: all of :data:`PRETRAINED_ANALYSES`); other saved results stay in the report.
        progress: Show progress bars.

    Raises:
        ConfigError: An analysis name that does not apply to a pretrained model.
        TaskError: Unknown task families or unreadable task files; tasks the tokenizer cannot represent.
        ArtefactError: ``out`` holds the results of another model or tasks, or of the demo.
        ModelLoadError: TransformerLens could not boot the model.
    """
    from tv_lens.app.demo import write_outputs

    out = Path(out)
    names = check_names(only)
    config = replace(
        config, model=_absolute(config.model, "model"), tasks=tuple(_absolute(t, "task") for t in config.tasks)
    )
    tasks = text_tasks(config.tasks, config.n_examples, config.seed)
    _check_same_target(out, config)
    start = time.perf_counter()
    device = resolve_device(config.device)
    model = boot_model(config.model, device, config.dtype, config.compatibility_mode, progress)
    pool = text_pool(model, tasks, config.template, config.separator, config.null)
    pool.sample(1, config.n_shots, config.seed)  # too many shots for the tasks' examples fails here, before any work
    seconds = {"boot": time.perf_counter() - start}
    facts = model_facts(model)
    _write_run_file(out, config, facts, _description(config, facts, pool, device))
    results: dict[str, Result] = {}
    torch.manual_seed(config.seed)
    bar = tqdm(names, desc="analyses", disable=not progress, unit="analysis")
    for name in bar:
        bar.set_postfix_str(name)
        step = time.perf_counter()
        results[name] = ANALYSES[name](model, pool, config, progress)
        seconds[name] = time.perf_counter() - step
        results[name].save(result_path(out / RESULTS, name))
    bar.close()
    report, numbers = write_outputs(out)
    seconds["total"] = time.perf_counter() - start
    return PretrainedRun(out, report, results, numbers, config, model, pool, seconds)
