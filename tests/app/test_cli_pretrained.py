"""`tv-lens analyze --model FOLDER --tasks ...` end to end, on small random HuggingFace models of real architectures.

The models are written with ``save_pretrained`` (config.json, weights, tokenizer files) by
:func:`tv_lens.models.local_hf.build_local_model` and booted by the command exactly as a user's folder would be
(``TransformerBridge.boot_transformers(folder)``). Every saved result must equal a direct call of its analysis on
a model booted independently and a pool built independently, with the settings the docs state.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli
from lora_helpers import peft_adapter
from plotly.offline import get_plotlyjs

import tv_lens.app.pretrained as pretrained_module
from tv_lens.analyses import (
    AttentionKnockout,
    ICLPerformance,
    LayerFinetuning,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
)
from tv_lens.app.pretrained import ANALYSES, ON_REQUEST, PRETRAINED_ANALYSES
from tv_lens.app.pretrained.analyses import applicable
from tv_lens.app.run_files import load_results
from tv_lens.app.sections import ANALYSIS_NAMES, headline_numbers
from tv_lens.environment import package_version, software_environment
from tv_lens.models.local_hf import build_local_model, load_local_model
from tv_lens.results import (
    Decodability,
    HeadImportance,
    KnockoutEffects,
    PatchingEffects,
    Performance,
    Projection,
    PromptingAccuracy,
    Result,
    RoleAttention,
    TdAccuracyFit,
)
from tv_lens.tasks import TextPool, bitwise_text_tasks, load_tasks, pos_tasks
from tv_lens.training import LoRAConfig, load_lora_adapter

RESULT_TYPES = {
    "decodability": Decodability,
    "performance": Performance,
    "geometry": Projection,
    "td_accuracy": TdAccuracyFit,
    "patching": PatchingEffects,
    "prompting": PromptingAccuracy,
    "heads": HeadImportance,
    "attention": RoleAttention,
    "knockout": KnockoutEffects,
}
# The same sizes as tests/pretrained, under the same session folder: a model built there is reused here.
SIZES = {"n_layers": 2, "d_model": 64, "n_heads": 4}
N, SHOTS, SEED = 12, 3, 0  # prompts per task, demonstrations, seed of every run here
TAGS = ("noun", "verb", "adjective")  # answers of 1 to 3 tokens with the fixture tokenizer
OPS = ("and", "or", "xor")


def one_line_error(status: int, stderr: str) -> str:
    assert status == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    return stderr


@pytest.fixture(scope="module", autouse=True)
def offline_one_thread():
    """No hub access, and one torch thread (tiny models gain nothing from more); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp() / "pretrained-models"
    return {arch: build_local_model(arch, root / arch, **SIZES) for arch in ("gpt2", "llama", "mixtral")}


def boot(folder: Path):
    """The model as a user boots it: ``TransformerBridge.boot_transformers(folder)``, independently of tv_lens."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(folder), device="cpu").eval()


@pytest.fixture(scope="module")
def gpt2_run(folders, tmp_path_factory):
    """One real `tv-lens analyze --model <gpt2 folder> --tasks pos:...` run; its PretrainedRun kept through a spy."""
    out = tmp_path_factory.mktemp("analyze") / "gpt2"
    runs = []
    original = pretrained_module.run_pretrained

    def spy(*args, **kwargs):
        runs.append(original(*args, **kwargs))
        return runs[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pretrained_module, "run_pretrained", spy)
        status, stdout, stderr = run_cli(
            "analyze", "--model", folders["gpt2"], "--tasks", f"pos:{','.join(TAGS)}", "--out", out,
            "--n-per-task", N, "--shots", SHOTS, "--no-progress",
        )  # fmt: skip
    assert status == 0, stderr
    (run,) = runs
    return {"out": out, "run": run, "stdout": stdout, "report": (out / "report.html").read_text()}


@pytest.fixture(scope="module")
def gpt2_direct(folders):
    """The gpt2 fixture booted and its pool built without tv_lens's pipeline, as the docs describe."""
    model = boot(folders["gpt2"])
    pool = TextPool(pos_tasks(tags=TAGS, n_sentences=256, seed=SEED), model.tokenizer, null=True, bos=True)
    return model, pool


def test_every_result_is_saved_with_the_report_and_summary(gpt2_run):
    out, run = gpt2_run["out"], gpt2_run["run"]
    assert sorted(p.name for p in (out / "results").iterdir()) == sorted(f"{n}.safetensors" for n in RESULT_TYPES)
    for name, kind in RESULT_TYPES.items():
        loaded = Result.load(out / "results" / f"{name}.safetensors")
        assert type(loaded) is kind and loaded == run.results[name], name
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(
        json.dumps(headline_numbers(load_results(out / "results"))), parse_constant=lambda constant: None
    )  # NaN and infinities: null
    assert set(summary) == set(PRETRAINED_ANALYSES)
    assert run.pool.task_names == (*TAGS, "null")
    stored = json.loads((out / "run.json").read_text())
    assert Path(stored["pretrained"]["model"]).is_absolute() and stored["model"]["n_layers"] == 2
    environment = software_environment()  # the software the numbers were computed with
    assert set(stored["environment"]) == set(environment)
    assert [stored["environment"][k] for k in ("torch", "transformer_lens")] == [
        str(torch.__version__),
        package_version("transformer-lens"),
    ]
    assert gpt2_run["stdout"].startswith("tv-lens analyze: done") and str(out / "report.html") in gpt2_run["stdout"]


def test_report_is_self_contained_with_a_section_per_analysis_and_the_model(gpt2_run):
    report = gpt2_run["report"]
    assert report.count(get_plotlyjs()) == 1
    rest = report.replace(get_plotlyjs(), "")
    assert not re.search(r"https?://", rest) and "<script src" not in rest
    assert re.findall(r'<section id="(\w+)"', rest) == list(PRETRAINED_ANALYSES)
    assert "Model: " in rest and "TransformerBridge booted with boot_transformers" in rest
    assert "Tasks: pos:noun,verb,adjective plus the Null task" in rest


def test_prompts_have_answers_of_different_token_lengths(gpt2_run):
    batch = gpt2_run["run"].pool.sample(N, SHOTS, SEED)
    assert len(set(batch.answer_lengths.tolist())) > 1  # the analyses below score multi-token answers


def test_saved_results_equal_direct_calls_on_an_independently_booted_model(gpt2_run, gpt2_direct):
    model, pool = gpt2_direct
    results = gpt2_run["run"].results
    assert pool.sample(N, SHOTS, SEED).inputs.equal(gpt2_run["run"].pool.sample(N, SHOTS, SEED).inputs)
    direct = {
        "decodability": TaskDecodability(k=10, n_bootstrap=1000).run(model, pool, N, SHOTS, SEED),
        "performance": ICLPerformance(shots=(0, 1, SHOTS), n_bootstrap=1000).run(model, pool, N, SEED),
        "patching": TaskVectorPatching(n_bootstrap=1000).run(model, pool, N, SHOTS, SEED),
        "prompting": TaskVectorPrompting(n_bootstrap=1000).run(model, pool, N, SHOTS, SEED),
        "knockout": AttentionKnockout(n_bootstrap=1000).run(model, pool, N, SHOTS, SEED),
    }
    for name, result in direct.items():
        assert results[name] == result, name
    assert bool(torch.isfinite(results["patching"].correct_loss_change).all())
    assert float(results["patching"].correct_loss_change.abs().sum()) > 0  # real numbers, not a run that did nothing
    assert bool((results["patching"].writes > 0).all())


def test_a_default_run_leaves_out_the_knockout_of_a_model_whose_attention_the_hooks_cannot_block(tmp_path):
    """Llama 4's attention runs in the Hugging Face module, past the hooks; naming the knockout fails instead."""
    model = load_local_model(build_local_model("llama4_text", tmp_path / "llama4", **SIZES), "bridge")
    names, lines = applicable(PRETRAINED_ANALYSES, None, model)
    assert names == tuple(name for name in PRETRAINED_ANALYSES if name != "knockout")
    assert len(lines) == 1 and "runs past TransformerLens's attention hooks" in lines[0]
    assert applicable(("knockout",), ("knockout",), model) == (("knockout",), [])


def test_analyze_without_model_reruns_the_stored_pretrained_run(gpt2_run):
    out = gpt2_run["out"]
    before = (out / "run.json").read_text()
    status, stdout, stderr = run_cli("analyze", "--out", out, "--only", "decodability", "--no-progress")
    assert status == 0, stderr
    assert Result.load(out / "results" / "decodability.safetensors") == gpt2_run["run"].results["decodability"]
    assert (out / "run.json").read_text() == before and "Task decodability across layers" in stdout


def test_a_llama_folder(folders, tmp_path):
    """A Llama folder (RoPE, RMSNorm, grouped-query attention) with bitwise tasks (answers of 1 or 2 tokens)."""
    out = tmp_path / "llama"
    status, _, stderr = run_cli(
        "analyze", "--model", folders["llama"], "--tasks", f"bitwise:{','.join(OPS)}", "--only", "decodability",
        "patching", "--n-per-task", N, "--shots", SHOTS, "--out", out, "--no-progress",
    )  # fmt: skip
    assert status == 0, stderr
    assert sorted(p.name for p in (out / "results").iterdir()) == ["decodability.safetensors", "patching.safetensors"]
    model = boot(folders["llama"])
    pool = TextPool(
        bitwise_text_tasks(ops=OPS, n_bits=5, n_examples=256, seed=SEED), model.tokenizer, null=True, bos=True
    )
    assert len(set(pool.sample(N, SHOTS, SEED).answer_lengths.tolist())) > 1
    decodability = TaskDecodability(k=10, n_bootstrap=1000).run(model, pool, N, SHOTS, SEED)
    patching = TaskVectorPatching(n_bootstrap=1000).run(model, pool, N, SHOTS, SEED)
    assert Result.load(out / "results" / "decodability.safetensors") == decodability
    assert Result.load(out / "results" / "patching.safetensors") == patching
    assert re.findall(r'<section id="(\w+)"', (out / "report.html").read_text()) == ["decodability", "patching"]


def test_a_peft_adapter_is_put_on_the_model_before_the_analyses(folders, tmp_path):
    """--adapter: the finetuned model is analysed; the reference puts the adapter on by hand."""
    peft_adapter("llama", folders["llama"], tmp_path / "adapter")  # made and saved by PEFT itself
    out = tmp_path / "llama-adapted"
    status, _, stderr = run_cli(
        "analyze", "--model", folders["llama"], "--adapter", tmp_path / "adapter", "--tasks",
        f"bitwise:{','.join(OPS)}", "--only", "decodability", "--n-per-task", N, "--shots", SHOTS, "--out", out,
        "--no-progress",
    )  # fmt: skip
    assert status == 0, stderr
    model = boot(folders["llama"])
    pool = TextPool(
        bitwise_text_tasks(ops=OPS, n_bits=5, n_examples=256, seed=SEED), model.tokenizer, null=True, bos=True
    )
    base = TaskDecodability(k=10, n_bootstrap=1000).run(model, pool, N, SHOTS, SEED)
    load_lora_adapter(model, tmp_path / "adapter")
    adapted = TaskDecodability(k=10, n_bootstrap=1000).run(model, pool, N, SHOTS, SEED)
    assert Result.load(out / "results" / "decodability.safetensors") == adapted
    assert not torch.allclose(adapted.td, base.td)
    assert f"with the PEFT LoRA adapter {tmp_path / 'adapter'}" in (out / "report.html").read_text()
    missing = run_cli("analyze", "--model", folders["llama"], "--adapter", tmp_path / "none", "--tasks", "bitwise",
                      "--out", tmp_path / "never")  # fmt: skip
    assert "adapter_config.json does not exist" in one_line_error(*missing[::2])
    finetuning = run_cli("analyze", "--model", folders["llama"], "--adapter", tmp_path / "adapter", "--tasks",
                         "bitwise", "--only", "finetuning", "--out", tmp_path / "never")  # fmt: skip
    assert "Layer finetuning trains LoRA adapters of its own" in one_line_error(*finetuning[::2])
    alone = run_cli("analyze", "--adapter", tmp_path / "adapter", "--out", tmp_path / "never")
    assert "--adapter applies to a pretrained model" in one_line_error(*alone[::2])
    assert not (tmp_path / "never").exists()


def test_one_analysis_at_other_shots_than_the_saved_others_ran_at_is_refused(folders, gpt2_run, tmp_path):
    """The report states the shots, prompts, seed and dtype once for all results: a run of some at others is refused."""
    out = tmp_path / "gpt2"
    shutil.copytree(gpt2_run["out"], out)
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.rglob("*") if path.is_file()}
    common = ("analyze", "--model", folders["gpt2"], "--tasks", f"pos:{','.join(TAGS)}", "--out", out, "--no-progress")
    status, _, stderr = run_cli(*common, "--n-per-task", N, "--shots", SHOTS + 1, "--only", "decodability")
    error = one_line_error(status, stderr)
    assert "holds results of performance, geometry, td_accuracy" in error and f"n_shots {SHOTS} (asked: 4)" in error
    assert f"Run them too (--only {' '.join(PRETRAINED_ANALYSES)})" in error
    after = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.rglob("*") if path.is_file()}
    assert after == before  # refused before anything is written
    seed = run_cli(*common, "--n-per-task", N, "--shots", SHOTS, "--seed", 1, "--only", "geometry", "heads")
    assert "seed 0 (asked: 1)" in one_line_error(*seed[::2])


@pytest.mark.parametrize(
    ("arch", "targets"),
    [("llama", ["W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"]), ("mixtral", ["W_Q", "W_K", "W_V", "W_O"])],
)
def test_layer_finetuning_runs_when_named(folders, tmp_path, arch, targets):
    """`--only finetuning` equals LayerFinetuning with the documented settings, run directly; on a mixture of
    experts (Mixtral), LoRA adapts the attention only."""
    out, steps = tmp_path / "finetuning", 6
    status, _, stderr = run_cli(
        "analyze", "--model", folders[arch], "--tasks", f"bitwise:{','.join(OPS)}", "--only", "finetuning",
        "--n-per-task", N, "--shots", SHOTS, "--finetune-steps", steps, "--out", out, "--no-progress",
    )  # fmt: skip
    assert status == 0, stderr
    saved = Result.load(out / "results" / "finetuning.safetensors")
    model = boot(folders[arch])
    pool = TextPool(
        bitwise_text_tasks(ops=OPS, n_bits=5, n_examples=256, seed=SEED), model.tokenizer, null=True, bos=True
    )
    defaults = LayerFinetuning().train  # 16 prompts per task, lr 1e-3
    train = replace(
        defaults,
        data=replace(defaults.data, n_shots=SHOTS),
        schedule=replace(defaults.schedule, max_steps=steps, warmup_steps=steps // 10),
        eval_every=steps,
    )
    direct = LayerFinetuning(
        lora=LoRAConfig(rank=16, alpha=16.0, dropout=0.1, targets=tuple(targets)),
        train=train,
        decodability=TaskDecodability(k=10, n_bootstrap=1000),
        n_per_task=N,
        n_shots=SHOTS,
    ).run(model, pool, SEED)
    assert saved == direct and saved.variants == ("base", "first:1", "last:1") and saved.settings["steps"] == steps
    assert saved.final_loss[1:].isfinite().all() and saved.settings["lora"]["rank"] == 16
    assert saved.settings["lora"]["targets"] == targets
    assert re.findall(r'<section id="(\w+)"', (out / "report.html").read_text()) == ["finetuning"]
    stored = json.loads((out / "run.json").read_text())["pretrained"]
    assert stored["finetune_steps"] == steps


def test_json_task_files_in_the_records_format(folders, tmp_path):
    countries = {
        "France": ("Paris", "French"), "Germany": ("Berlin", "German"), "Italy": ("Rome", "Italian"),
        "Spain": ("Madrid", "Spanish"), "Japan": ("Tokyo", "Japanese"), "China": ("Beijing", "Chinese"),
        "Russia": ("Moscow", "Russian"), "Greece": ("Athens", "Greek"), "Norway": ("Oslo", "Norwegian"),
        "Poland": ("Warsaw", "Polish"), "Sweden": ("Stockholm", "Swedish"), "Ireland": ("Dublin", "Irish"),
    }  # fmt: skip
    files = [tmp_path / "capital.json", tmp_path / "language.json"]
    for i, path in enumerate(files):  # outputs of several words, other keys ignored
        records = [{"input": x, "output": f"{v[i]} in {x}", "id": n} for n, (x, v) in enumerate(countries.items())]
        path.write_text(json.dumps(records))
    out = tmp_path / "out"
    status, _, stderr = run_cli(
        "analyze", "--model", folders["gpt2"], "--tasks", *files, "--only", "decodability", "performance",
        "--n-per-task", N, "--shots", SHOTS, "--out", out, "--no-progress",
    )  # fmt: skip
    assert status == 0, stderr
    model = boot(folders["gpt2"])
    pool = TextPool(load_tasks(files), model.tokenizer, null=True, bos=True)
    assert pool.task_names == ("capital", "language", "null")
    assert Result.load(out / "results" / "decodability.safetensors") == TaskDecodability(k=10, n_bootstrap=1000).run(
        model, pool, N, SHOTS, SEED
    )
    performance = Result.load(out / "results" / "performance.safetensors")
    assert performance == ICLPerformance(shots=(0, 1, SHOTS), n_bootstrap=1000).run(model, pool, N, SEED)


def test_bad_inputs_end_with_one_line_errors(folders, gpt2_run, tmp_path):
    gpt2, out = folders["gpt2"], tmp_path / "never"
    unknown = run_cli("analyze", "--model", gpt2, "--tasks", "nope", "--out", out)
    assert "Unknown task family 'nope'" in one_line_error(*unknown[::2])
    missing = run_cli("analyze", "--model", tmp_path / "missing", "--tasks", "bitwise", "--out", out)
    assert "No model folder" in one_line_error(*missing[::2])
    (tmp_path / "broken.json").write_text("{not json")
    broken = run_cli("analyze", "--model", gpt2, "--tasks", tmp_path / "broken.json", "--out", out)
    assert "broken.json is not valid JSON" in one_line_error(*broken[::2])
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    binary = run_cli("analyze", "--model", gpt2, "--tasks", tmp_path / "binary.json", "--out", out)
    assert "binary.json" in one_line_error(*binary[::2])  # not UTF-8: named, one line
    no_file = run_cli("analyze", "--model", gpt2, "--tasks", tmp_path / "absent.json", "--out", out)
    assert "No task file" in one_line_error(*no_file[::2])
    (tmp_path / "unknown-arch").mkdir()
    (tmp_path / "unknown-arch" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    unbootable = run_cli("analyze", "--model", tmp_path / "unknown-arch", "--tasks", "bitwise", "--out", out)
    assert "TransformerLens could not boot" in one_line_error(*unbootable[::2])
    training = run_cli("analyze", "--model", gpt2, "--tasks", "bitwise", "--only", "emergence", "--out", out)
    assert "do not apply to a pretrained model" in one_line_error(*training[::2])
    assert "--model needs --tasks" in one_line_error(*run_cli("analyze", "--model", gpt2, "--out", out)[::2])
    escaped = run_cli("analyze", "--model", gpt2, "--tasks", "bitwise", "--template", r"Q: {x}\nA: {y}", "--out", out)
    assert "a backslash and a letter, not the character they stand for" in one_line_error(*escaped[::2])
    assert "add --model" in one_line_error(*run_cli("analyze", "--tasks", "bitwise", "--out", out)[::2])
    alone = run_cli("analyze", "--model", tmp_path / "missing", "--tasks", "bitwise:and", "--no-null", "--out", out)
    message = one_line_error(*alone[::2])  # refused before the model boots (that folder does not exist)
    assert "decodability, td_accuracy decode which task a prompt is of (TD)" in message and "drop --no-null" in message
    other = run_cli("analyze", "--model", gpt2, "--tasks", "bitwise", "--out", gpt2_run["out"])
    assert "holds results of another model or other tasks" in one_line_error(*other[::2])
    assert not out.exists()  # nothing was written


def test_help_lists_the_pretrained_options():
    status, stdout, _ = run_cli("analyze", "--help")
    assert status == 0
    options = ("--model", "--adapter", "--tasks", "--n-per-task", "--shots", "--device", "--dtype", "--only")
    for option in (*options, "--finetune-steps", "--no-progress"):
        assert option in stdout


def test_pretrained_analyses_are_the_demos_but_emergence_in_the_demos_order():
    assert tuple(ANALYSES) == tuple(name for name in ANALYSIS_NAMES if name != "emergence")
    assert tuple(name for name in ANALYSES if name not in ON_REQUEST) == PRETRAINED_ANALYSES and ON_REQUEST == (
        "finetuning",
    )
