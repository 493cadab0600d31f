"""The whole pretrained-model run, :func:`run_pretrained`: check, boot, build the pool, analyse, report."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tv_lens.app.pipeline import run_and_save, write_outputs
from tv_lens.app.pretrained.analyses import ANALYSES, applicable, check_names, check_task_count
from tv_lens.app.pretrained.config import RUN_KEY, PretrainedConfig, stored_config
from tv_lens.app.pretrained.model import boot_model, model_facts, resolve_device
from tv_lens.app.pretrained.tasks import text_pool, text_tasks
from tv_lens.app.run_files import RESULT_SUFFIX, RESULTS, RUN_FILE, read_run_info, result_path, write_run_info
from tv_lens.environment import software_environment
from tv_lens.errors import ArtefactError, ConfigError
from tv_lens.results import Result
from tv_lens.tasks import TextPool
from tv_lens.training.lora_import import adapter_files, load_lora_adapter

__all__ = ["PretrainedRun", "default_out", "run_pretrained"]


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


def default_out(model: str) -> Path:
    """The default output directory of ``model``: ``tv-lens-<last part of the id or folder name>``."""
    stem = Path(model.rstrip("/")).name or "model"
    return Path("tv-lens-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"))


def _check_same_target(out: Path, config: PretrainedConfig, names: Sequence[str]) -> None:
    """Refuse a directory of another model's, other tasks' or the demo's results, or of results run otherwise.

    Saved results not re-run now (not in ``names``) must share ``config``'s shots, prompts, seed and dtype.
    """
    data = read_run_info(out / RUN_FILE) or {}
    if not data:
        return
    if RUN_KEY not in data:
        raise ArtefactError(
            f"{out} holds the demo's trained model and its results; use another --out directory for a pretrained "
            f"model (default: {default_out(config.model)})."
        )
    stored = stored_config(data, out / RUN_FILE)  # the contents read above: run.json is read once
    has_results = any((out / RESULTS).glob(f"*{RESULT_SUFFIX}"))
    if stored is None or not has_results:
        return
    differ = _differences(stored.target(), config.target())
    if differ:
        raise ArtefactError(
            f"{out} holds results of another model or other tasks: {differ}; use another --out directory, or the "
            "same model, tasks and prompt format."
        )
    kept = [name for name in ANALYSES if name not in names and result_path(out / RESULTS, name).exists()]
    differ = _differences(stored.stated(), config.stated())
    if kept and differ:
        both = " ".join(name for name in ANALYSES if name in names or name in kept)
        raise ArtefactError(
            f"{out} holds results of {', '.join(kept)} that ran with other settings: {differ}; its report states "
            f"one setting for all its results. Run them too (--only {both}), use another --out directory, or the "
            "settings of its run.json."
        )


def _differences(stored: dict[str, Any], asked: dict[str, Any]) -> str:
    """The settings of ``stored`` that ``asked`` changes, as ``key stored (asked: new)``, comma-separated."""
    return ", ".join(f"{key} {value!r} (asked: {asked[key]!r})" for key, value in stored.items() if asked[key] != value)


def _absolute(spec: str, kind: str) -> str:
    """A local model or adapter folder (``kind="model"``) or task file as an absolute path, for reruns elsewhere."""
    path = Path(spec).expanduser()
    local = path.is_dir() if kind == "model" else path.is_file()
    return str(path.resolve()) if local else spec


def _description(config: PretrainedConfig, facts: dict[str, Any], pool: TextPool, device: Any) -> list[str]:
    compat = ", compatibility mode" if config.compatibility_mode else ""
    compat += f", with the PEFT LoRA adapter {config.adapter}" if config.adapter is not None else ""
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
    info = {
        RUN_KEY: config.to_dict(),
        "model": facts,
        "description": description,
        "environment": software_environment(),
    }
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
        only: Analyses to run (default: all of :data:`PRETRAINED_ANALYSES`; layer finetuning, ``"finetuning"``,
            runs only when named); other saved results stay in the report.
        progress: Show progress bars.

    Raises:
        ConfigError: An analysis name that does not apply to a pretrained model; layer finetuning with an adapter;
            an analysis that decodes the task (TD) with one task and no Null task.
        MissingFileError: The adapter folder lacks its files.
        TaskError: Unknown task families or unreadable task files; tasks the tokenizer cannot represent.
        ArtefactError: ``out`` holds the results of another model or tasks, or of the demo, or results not re-run
            now of other shots, prompts per task, seed or dtype.
        ModelLoadError: TransformerLens could not boot the model.
    """
    out = Path(out)
    names = check_names(only)
    config = replace(
        config,
        model=_absolute(config.model, "model"),
        tasks=tuple(_absolute(t, "task") for t in config.tasks),
        adapter=None if config.adapter is None else _absolute(config.adapter, "model"),
    )
    tasks = text_tasks(config.tasks, config.n_examples, config.seed)
    check_task_count(names, len(tasks) + config.null)
    if config.adapter is not None:
        adapter_files(config.adapter)  # a missing adapter fails here, before the model boots
        if "finetuning" in names:
            raise ConfigError(
                "Layer finetuning trains LoRA adapters of its own and cannot start from a model that has one; run "
                "it without --adapter, or write the adapted model out (export_huggingface) and analyse that."
            )
    _check_same_target(out, config, names)
    start = time.perf_counter()
    device = resolve_device(config.device)
    model = boot_model(config.model, device, config.dtype, config.compatibility_mode, progress)
    if config.adapter is not None:
        load_lora_adapter(model, config.adapter)
    pool = text_pool(model, tasks, config.template, config.separator, config.null)
    pool.sample(1, config.n_shots, config.seed)  # too many shots for the tasks' examples fails here, before any work
    seconds = {"boot": time.perf_counter() - start}
    names, skipped = applicable(names, only, model)
    facts = model_facts(model)
    _write_run_file(out, config, facts, _description(config, facts, pool, device) + skipped)
    results, analysis_seconds = run_and_save(
        out, names, lambda name: ANALYSES[name](model, pool, config, progress), config.seed, progress
    )
    seconds.update(analysis_seconds)
    report, numbers = write_outputs(out)
    seconds["total"] = time.perf_counter() - start
    return PretrainedRun(out, report, results, numbers, config, model, pool, seconds)
