"""The pure pieces of demos/replication.py: claims over seeds, tables, seeding, per-seed cache."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tv_lens.errors import ConfigError
from tv_lens.training import TVPConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def replication():
    spec = importlib.util.spec_from_file_location("replication_demo", ROOT / "demos" / "replication.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["replication_demo"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["replication_demo"]


def test_summarise_reports_mean_interval_and_count(replication):
    claim = replication.Claim("k", "a claim", "how", "a difference", 0.0, "greater")
    numbers = [replication.SeedNumber(v, h, "") for v, h in [(0.28, True), (0.30, True), (0.32, False)]]
    row = replication.summarise(claim, numbers)
    assert row["mean"] == pytest.approx(0.30)
    assert row["interval"] == pytest.approx(list(replication.seed_interval([0.28, 0.30, 0.32])[1:]))
    assert (row["seeds_holding"], row["n_seeds"], row["verdict"]) == (2, 3, "mixed")
    assert row["recipe"] == "default"


def test_tables_are_the_documents_markdown(replication, capsys):
    claim = replication.CLAIMS[0]
    numbers = [replication.SeedNumber(v, True, f"n{i}") for i, v in enumerate([0.5, 0.6, 0.7])]
    replication.print_tables([replication.summarise(claim, numbers)], {s: {claim.key: numbers[s]} for s in range(3)})
    lines = capsys.readouterr().out.splitlines()
    low, high = replication.seed_interval([0.5, 0.6, 0.7])[1:]
    assert (
        f"| {claim.name} | default | {claim.measured} | {claim.statistic} > 0.1 | +0.600 [{low:+.3f}, {high:+.3f}] | "
        "3/3 | holds |"
    ) in lines
    assert f"| {claim.name} | **+0.500** (holds); n0 | **+0.600** (holds); n1 | **+0.700** (holds); n2 |" in lines


def test_claim_keys_are_unique(replication):
    keys = [claim.key for claim in replication.CLAIMS]
    assert len(keys) == len(set(keys))


def test_a_seed_changes_the_init_and_the_data_of_every_run(replication):
    a, b = replication.run_specs(0), replication.run_specs(1)
    assert set(a) == {"shots", "default", "default-marker", "default-1200", "default-tvp-loss-1200"}
    for name in a:
        assert (a[name].recipe.model.seed, a[name].recipe.train.data.seed) == (0, 0)
        assert (b[name].recipe.model.seed, b[name].recipe.train.data.seed) == (1, 1)
        # nothing else of the recipe moves with the seed
        assert a[name].recipe.train.schedule == b[name].recipe.train.schedule
    assert a["default-tvp-loss-1200"].overrides == {"tvp": TVPConfig(layer=2, lam=0.5)}
    assert a["default-1200"].overrides == {} and a["default-1200"].steps == 1200
    assert a["shots"].recipe.model.d_model == 64


def test_seed_numbers_keeps_each_analysis_and_skips_runs(replication, monkeypatch, tmp_path):
    calls = []

    def fake_steps(root, seed):
        def step(name, value):
            def run():
                calls.append(name)
                return {name: replication.SeedNumber(value + seed, True, f"{name} at {root.name}")}

            return run

        return {"first": (("shots",), step("first", 0.5)), "second": (("default-marker",), step("second", 1.0))}

    monkeypatch.setattr(replication, "seed_steps", fake_steps)
    numbers = replication.seed_numbers(tmp_path, 2, skip=("default-marker",))
    assert calls == ["first"] and set(numbers) == {"first"}
    assert numbers["first"] == replication.SeedNumber(2.5, True, "first at seed-2")
    assert set(json.loads((tmp_path / "seed-2" / "claims.json").read_text())) == {"first"}
    # a later call reuses what is kept and computes only what is missing
    numbers = replication.seed_numbers(tmp_path, 2)
    assert calls == ["first", "second"] and numbers["second"].value == 3.0
    replication.seed_numbers(tmp_path, 2, fresh=True)
    assert calls == ["first", "second", "first", "second"]


def test_numbers_kept_under_other_threads_are_not_added_to(replication, monkeypatch, tmp_path):
    import torch

    def fake_steps(root, seed):
        return {
            name: (("shots",), lambda name=name: {name: replication.SeedNumber(1.0, True, name)})
            for name in ("first", "second")
        }

    monkeypatch.setattr(replication, "seed_steps", fake_steps)
    replication.seed_numbers(tmp_path, 0, skip=())
    kept = tmp_path / "seed-0" / "environment.json"
    recorded = json.loads(kept.read_text())
    assert recorded["torch_threads"] == torch.get_num_threads() and recorded["torch"] == str(torch.__version__)
    claims = tmp_path / "seed-0" / "claims.json"
    claims.write_text(json.dumps({"first": json.loads(claims.read_text())["first"]}))  # "second" still to compute
    kept.write_text(json.dumps({**recorded, "torch_threads": recorded["torch_threads"] + 1}))
    with pytest.raises(ConfigError, match=r"torch_threads \d+ there, \d+ here.*--threads.*--fresh"):
        replication.seed_numbers(tmp_path, 0)
    kept.unlink()
    with pytest.raises(ConfigError, match=r"environment\.json is missing"):
        replication.seed_numbers(tmp_path, 0)
    assert set(replication.seed_numbers(tmp_path, 0, fresh=True)) == {"first", "second"}
    assert json.loads(kept.read_text()) == recorded


def test_trained_reuses_a_finished_run_and_resumes_a_stopped_one(replication, tmp_path):
    import torch

    from tv_lens.training import list_checkpoints, load_checkpoint, recipes

    torch.set_num_threads(1)
    spec = replication.RunSpec("quick-tvp", recipes["quick"].with_seed(3), 12, 6, {"tvp": TVPConfig(layer=1, lam=0.5)})
    first = replication.trained(tmp_path / "a", spec)
    last = load_checkpoint(tmp_path / "a" / "step-0000012.pt")
    assert (last.config.tvp, last.config.data.seed, last.model_config.seed) == (TVPConfig(layer=1, lam=0.5), 3, 3)
    written = {p.name: p.stat().st_mtime_ns for p in list_checkpoints(tmp_path / "a")}
    replication.trained(tmp_path / "a", spec)  # finished: nothing is trained again
    assert {p.name: p.stat().st_mtime_ns for p in list_checkpoints(tmp_path / "a")} == written
    (tmp_path / "a" / "step-0000012.pt").unlink()  # stopped after step 6: resumes, and ends where the run did
    resumed = replication.trained(tmp_path / "a", spec)
    for (name, a), (_, b) in zip(first.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_fv_heads_attention_compares_the_chosen_heads_with_the_others(replication, monkeypatch):
    from tv_lens import ModelConfig, build_model, offset_pool
    from tv_lens.analyses import HeadAttention

    monkeypatch.setattr(replication, "N_PER_TASK", 6)
    monkeypatch.setattr(replication, "N_SHOTS", 3)
    pool = offset_pool(offsets=(1, 2), n_values=8)
    model = build_model(ModelConfig(d_vocab=pool.vocab_size, n_layers=2, d_model=16, n_heads=2, n_ctx=32))
    heads = [(1, 0), (0, 1)]
    number = replication.fv_heads_attention(model, pool, 5, heads)["fv_heads_attention"]
    result = HeadAttention().run(model, pool, n_per_task=6, n_shots=3, seed=5)
    answers = result.attention[:, :, 2]  # [layer, head, prompt]: the demonstrations' answers
    real = [i for i, t in enumerate(result.task_ids.tolist()) if result.task_names[t] != "null"]
    per_prompt = [(answers[1, 0, i] + answers[0, 1, i]) / 2 - (answers[0, 0, i] + answers[1, 1, i]) / 2 for i in real]
    assert number.value == pytest.approx(float(sum(per_prompt) / len(per_prompt)), abs=1e-12)
    assert "L1H0, L0H1" in number.numbers


def test_label_words_compare_the_first_and_last_windows_of_each_knockout(replication, monkeypatch):
    from tv_lens import ModelConfig, build_model, offset_pool
    from tv_lens.analyses import AttentionKnockout
    from tv_lens.interventions import knockout_strategy
    from tv_lens.models import adapt

    monkeypatch.setattr(replication, "N_PER_TASK", 4)
    monkeypatch.setattr(replication, "N_SHOTS", 3)
    pool = offset_pool(offsets=(1, 2), n_values=8)
    model = build_model(ModelConfig(d_vocab=pool.vocab_size, n_layers=3, d_model=16, n_heads=2, n_ctx=32))
    if knockout_strategy(adapt(model)) is None:
        pytest.skip("this model's attention runs past the hooks here")
    numbers = replication.label_words(model, pool, 5)
    gather = AttentionKnockout(window=2, roles=("demo_input",), query="demo_answer").run(model, pool, 4, 3, 5)
    read = AttentionKnockout(window=2, roles=("demo_answer",)).run(model, pool, 4, 3, 5)
    assert gather.windows == ((0, 1), (1, 2))
    first_minus_last = float(gather.overall[0, 0] - gather.overall[1, 0])
    assert numbers["labels_gather"].value == pytest.approx(first_minus_last, abs=1e-12)
    last_minus_first = float(read.overall[1, 0] - read.overall[0, 0])
    assert numbers["answer_reads_labels"].value == pytest.approx(last_minus_first, abs=1e-12)
    holds = float(read.overall_ci[1, 0, 0]) > float(read.overall_ci[0, 0, 1])
    assert numbers["answer_reads_labels"].holds == holds
