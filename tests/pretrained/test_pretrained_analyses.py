"""Every analysis on every architecture × loader, with text tasks whose answers have different token lengths.

Each analysis's numbers are checked against an independent computation on the same model: representation
analyses against ``run_with_cache`` rows, scored analyses against each prompt run alone (unpadded) through
``model.run_with_hooks`` with a hand-written TransformerLens hook and scored over its own answer tokens.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from pretrained_helpers import HOOKED_ARCHITECTURES, loaded, one_thread, pretrained_fixture  # noqa: F401

from tv_lens import (
    Geometry,
    ICLPerformance,
    Suite,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TaskVectors,
)
from tv_lens.analyses import HeadAblation, HeadAttention
from tv_lens.generation import answer_texts, exact_match, first_word_match, generate
from tv_lens.interventions import replace
from tv_lens.probes import Representations, collect
from tv_lens.results.provenance import OtherWeightsWarning
from tv_lens.tasks import NULL_TASK, PROMPT_ROLES, TextPool, TextTask, position_roles

PAIRS = (
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("good", "bad"),
    ("old", "new"),
    ("light", "dark"),
    ("happy", "sad"),
)
TASKS = (
    TextTask("antonym", PAIRS),
    TextTask("same", tuple((x, x) for x, _ in PAIRS)),
    TextTask("twice", tuple((x, f"{x} {x}") for x, _ in PAIRS)),
)
ANALYSES = (
    "decodability",
    "performance",
    "geometry",
    "patching",
    "prompting",
    "heads",
    "attention",
    "suite",
    "task_vectors",
)
TOLERANCE = {"atol": 2e-4, "rtol": 1e-4}  # float32, batched vs one prompt at a time


@pytest.fixture(scope="module")
def case(pretrained):
    pool = TextPool(TASKS, pretrained.tokenizer, template="{x} -> {y}", null=True, bos=True)
    batch = pool.sample(n_per_task=3, n_shots=(1, 2), seed=0)
    assert len(set(batch.answer_lengths.tolist())) > 1
    return pretrained.model, pool, batch


def alone(model, batch, i: int, hooks=()) -> torch.Tensor:
    """Logits of prompt ``i`` run alone at its own answer positions ``[n_answer_i, d_vocab]``."""
    length, ap, n = int(batch.lengths[i]), int(batch.answer_pos[i]), int(batch.answer_lengths[i])
    with torch.no_grad():
        logits = model.run_with_hooks(batch.inputs[i : i + 1, :length], fwd_hooks=list(hooks))
    return logits[0, ap : ap + n].double()


def loss_alone(model, batch, i: int, hooks=()) -> torch.Tensor:
    logits = alone(model, batch, i, hooks)
    return F.cross_entropy(logits, batch.answers[i, : len(logits)])


def cached_reps(model, batch) -> Representations:
    """Rows at the answer positions from ``run_with_cache``, every block plus the embedding output."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.inputs, names_filter=lambda name: name in names)
    return Representations.from_cache(cache, batch.answer_pos, task_ids=batch.task_ids)


def writer(position: int, vector: torch.Tensor, mode: str = "replace"):
    def write(resid, hook):
        resid = resid.clone()
        value = vector.to(resid.dtype)
        resid[:, position] = value if mode == "replace" else resid[:, position] + value
        return resid

    return write


@pytest.mark.parametrize("analysis", ANALYSES)
def test_analysis_equals_an_independent_computation(case, analysis: str) -> None:
    model, pool, batch = case
    CHECKS[analysis](model, pool, batch)


def _decodability(model, pool, batch) -> None:
    td = TaskDecodability(k=2, n_bootstrap=0, progress=False)
    result = td.run_batch(model, batch)
    reference = td.compute(cached_reps(model, batch), task_names=batch.task_names)
    torch.testing.assert_close(result.td, reference.td)


def _geometry(model, pool, batch) -> None:
    geometry = Geometry(progress=False)
    result = geometry.run_batch(model, batch)
    reference = geometry.compute(cached_reps(model, batch), task_names=batch.task_names)
    # principal axes are defined up to sign
    torch.testing.assert_close(result.coords.abs(), reference.coords.abs(), equal_nan=True, **TOLERANCE)
    # (NaN where every row is the same, e.g. the embedding of the same token before every answer)
    torch.testing.assert_close(result.explained_variance, reference.explained_variance, equal_nan=True, **TOLERANCE)


def _performance(model, pool, batch) -> None:
    result = ICLPerformance(metric="cross_entropy", n_bootstrap=0).run_batch(model, batch)
    losses = torch.stack([loss_alone(model, batch, i) for i in range(len(batch))])
    for t in range(len(pool)):
        for j, shots in enumerate(result.shots):
            cell = (batch.task_ids == t) & (batch.n_shots == shots)
            if cell.any():
                torch.testing.assert_close(result.values[t, j], losses[cell].mean(), **TOLERANCE)


def _task_vectors(model, pool, batch) -> None:
    vectors = TaskVectors.from_model(model, batch, progress=False)
    reps = cached_reps(model, batch)
    for t, name in enumerate(vectors.task_names):
        rows = batch.task_ids == batch.task_names.index(name)
        for li, layer in enumerate(vectors.layers):
            expected = reps.at(layer)[rows].double().mean(0)
            torch.testing.assert_close(vectors.vectors[t, li].double(), expected, **TOLERANCE)


def _patching(model, pool, batch) -> None:
    vectors = TaskVectors.from_model(model, pool.sample(3, (1, 2), seed=1), layers=(0,), progress=False)
    effects = TaskVectorPatching(layers=(0,), n_bootstrap=0).run_batch(model, batch, vectors, pool=pool)
    targets = pool.target_answers(batch, vectors.task_names)
    antonym = vectors.task_names.index("antonym")
    for i in range(len(batch)):
        hook = ("blocks.0.hook_resid_post", writer(int(batch.answer_pos[i]), vectors.vectors[antonym, 0]))
        logits = alone(model, batch, i, [hook])
        loss = F.cross_entropy(logits, batch.answers[i, : len(logits)])
        torch.testing.assert_close(effects.loss[0, antonym, i], loss, **TOLERANCE)
        target = int(targets[antonym, i, 0])
        if 0 <= target != int(batch.answers[i, 0]):
            assert float(effects.follows[0, antonym, i]) == float(int(logits[0].argmax()) == target)
        else:
            assert torch.isnan(effects.follows[0, antonym, i])
    own = [i for i in range(len(batch)) if batch.task_names[int(batch.task_ids[i])] == "antonym"]
    assert all(int(targets[antonym, i, 0]) == int(batch.answers[i, 0]) for i in own)


def _prompting(model, pool, batch) -> None:
    last = model.cfg.n_layers - 1
    result = TaskVectorPrompting(layers=(last,), source="same_prompt", n_bootstrap=0).run_batch(model, batch)
    zero = batch.zero_shot()
    rows = cached_reps(model, batch).at(last)
    for i in range(len(batch)):
        torch.testing.assert_close(result.icl_loss[i], loss_alone(model, batch, i), **TOLERANCE)
        torch.testing.assert_close(result.zero_shot_loss[i], loss_alone(model, zero, i), **TOLERANCE)
        hook = (f"blocks.{last}.hook_resid_post", writer(int(zero.answer_pos[i]), rows[i]))
        torch.testing.assert_close(result.tvp_loss[0, i], loss_alone(model, zero, i, [hook]), **TOLERANCE)


def _heads(model, pool, batch) -> None:
    result = HeadAblation(n_bootstrap=0, prune_steps=0, attribution=False).run_batch(model, batch)
    layer, head = model.cfg.n_layers - 1, 1

    def ablate(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    for i in range(len(batch)):
        expected = loss_alone(model, batch, i, [(f"blocks.{layer}.attn.hook_z", ablate)])
        torch.testing.assert_close(result.ablated_loss[layer, head, i], expected, **TOLERANCE)
        torch.testing.assert_close(result.clean_loss[i], loss_alone(model, batch, i), **TOLERANCE)


def _attention(model, pool, batch) -> None:
    result = HeadAttention(n_bootstrap=0).run_batch(model, batch)
    roles = position_roles(batch)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    for i in range(len(batch)):
        length, ap = int(batch.lengths[i]), int(batch.answer_pos[i])
        with torch.no_grad():
            _, cache = model.run_with_cache(batch.inputs[i : i + 1, :length], names_filter=lambda name: name in names)
        for layer, name in enumerate(names):
            row = cache[name][0, :, ap, : ap + 1].double()  # [head, key]
            by_role = torch.stack([row[:, roles[i, : ap + 1] == r].sum(-1) for r in range(len(PROMPT_ROLES))], dim=-1)
            torch.testing.assert_close(result.attention[layer, :, :, i], by_role, **TOLERANCE)
    sums = result.attention.sum(2)  # one, less what an attention sink takes (GPT-OSS)
    assert bool((sums <= 1 + 1e-5).all()) and bool((sums > 0).all())


def _suite(model, pool, batch) -> None:
    td = TaskDecodability(k=2, n_bootstrap=0, progress=False)
    suite = Suite(analyses=(td, Geometry(progress=False)), names=("td", "geometry"), progress=False)
    results = suite.run_batch(model, batch)
    standalone = td.compute(cached_reps(model, batch), task_names=batch.task_names)
    torch.testing.assert_close(results["td"].td, standalone.td)
    assert results.collect_calls == 1 and NULL_TASK in results["td"].task_names


CHECKS = {
    "decodability": _decodability,
    "performance": _performance,
    "geometry": _geometry,
    "patching": _patching,
    "prompting": _prompting,
    "heads": _heads,
    "attention": _attention,
    "suite": _suite,
    "task_vectors": _task_vectors,
}


@pytest.mark.parametrize("arch", HOOKED_ARCHITECTURES)
def test_hooked_and_bridge_in_compatibility_mode_give_the_same_results(tmp_path_factory, arch: str) -> None:
    """The same weights through HookedTransformer and the compatibility-mode bridge: equal TD and patching."""
    hooked, bridge = (loaded(tmp_path_factory, arch, loader).model for loader in ("hooked", "bridge-compat"))
    pool = TextPool(TASKS, hooked.tokenizer, template="{x} -> {y}", null=True, bos=True)
    batch = pool.sample(n_per_task=4, n_shots=(1, 2), seed=0)
    td = TaskDecodability(k=3, n_bootstrap=0, progress=False)
    rows = [collect(model, batch.inputs, batch.answer_pos, progress=False).activations for model in (hooked, bridge)]
    torch.testing.assert_close(rows[0], rows[1], atol=1e-4, rtol=1e-4)
    assert torch.equal(td.run_batch(hooked, batch).td, td.run_batch(bridge, batch).td)
    vectors = TaskVectors.from_model(hooked, pool.sample(4, (1, 2), seed=1), progress=False)
    patching = TaskVectorPatching(n_bootstrap=0)
    with warnings.catch_warnings():
        # the loaders keep a GQA model's key/value weights in different forms, so the weight fingerprint of the same
        # model differs between them (Llama, Qwen2) and applying the hooked model's vectors to the bridge warns
        warnings.simplefilter("ignore", OtherWeightsWarning)
        effects = [patching.run_batch(model, batch, vectors, pool=pool) for model in (hooked, bridge)]
    torch.testing.assert_close(effects[0].loss, effects[1].loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(effects[0].correct, effects[1].correct)


@pytest.mark.parametrize("scoring", ["exact_match", "first_word"])
def test_prompting_scored_by_generation(tmp_path_factory, scoring: str) -> None:
    """TVP scored by greedy generation equals generating with the same vectors and matching the answers' text."""
    model = loaded(tmp_path_factory, "llama", "bridge").model
    pool = TextPool(TASKS, model.tokenizer, template="{x} -> {y}", null=True, bos=True)
    batch = pool.sample(n_per_task=2, n_shots=(1, 2), seed=0)
    result = TaskVectorPrompting(layers=(0, 1), source="same_prompt", scoring=scoring, n_bootstrap=0).run_batch(
        model, batch
    )
    zero = batch.zero_shot()
    answers = answer_texts(batch, model.tokenizer)
    match = exact_match if scoring == "exact_match" else first_word_match
    rows = collect(model, batch.inputs, batch.answer_pos, layers=(0, 1), progress=False).activations
    new = int(batch.answer_lengths.max()) + 1
    for li in range(2):
        written = [replace(li + 1, rows[li], pos="answer", site="resid_pre")] if li == 0 else [replace(1, rows[li])]
        generation = generate(model, zero, written, new, stop_tokens=None)
        assert torch.equal(result.tvp_correct[li], match(generation, answers).double())
    icl = generate(model, batch, [], new, stop_tokens=None)
    assert torch.equal(result.icl_correct, match(icl, answers).double())
    assert result.scoring == scoring
