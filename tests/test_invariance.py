"""Property-based checks: padding side, prompt order and batch size never change what tv_lens computes.

Probe rows and patched outputs of the engine first; then the analyses built on them (task decodability,
task-vector patching effects, task-vector prompting, head importance) on random tiny models (both backends,
1-2 blocks, 1-2 heads) and random pools (offsets, modular arithmetic, bitwise ops answered in two bit tokens,
permutations): left- vs right-padded prompts, shuffled prompt order and other batch sizes / rows per pass
give the same numbers to 1e-5 (per-prompt numbers follow the prompts).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from conftest import BACKENDS, D_VOCAB, left_padded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import (
    left_pad,
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    tiny_model,
)

from tv_lens.analyses import (
    HeadAblation,
    Prompts,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    head_importance,
    patch_task_vectors,
    task_vector_prompting,
)
from tv_lens.interventions import ablate_head, add, run_with_interventions
from tv_lens.probes import collect
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import ICLBatch, bitwise_pool, modular_pool, offset_pool, permutation_pool

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def ragged_batches(draw):
    n_prompts = draw(st.integers(1, 6))
    lengths = torch.tensor(draw(st.lists(st.integers(2, 12), min_size=n_prompts, max_size=n_prompts)))
    seed = draw(st.integers(0, 2**16))
    width = int(lengths.max())
    tokens = torch.randint(1, D_VOCAB, (n_prompts, width), generator=torch.Generator().manual_seed(seed))
    for row, length in enumerate(lengths.tolist()):
        tokens[row, length:] = 0
    perm = torch.tensor(draw(st.permutations(range(n_prompts))))
    batch_size = draw(st.integers(1, n_prompts))
    return tokens, lengths, perm, batch_size


@SETTINGS
@given(batch=ragged_batches())
def test_probe_rows_ignore_padding_order_and_batch_size(model, batch):
    tokens, lengths, perm, batch_size = batch
    answer_pos = lengths - 1
    reference = collect(model, tokens, answer_pos, progress=False).activations
    left_tokens, mask, left_pos = left_padded(tokens, lengths)
    variants = [
        collect(model, left_tokens, left_pos, attention_mask=mask, batch_size=batch_size, progress=False).activations,
        collect(model, tokens[perm], answer_pos[perm], batch_size=batch_size, progress=False).activations[
            :, torch.argsort(perm)
        ],
    ]
    for variant in variants:
        torch.testing.assert_close(variant, reference, atol=1e-5, rtol=0)


@SETTINGS
@given(batch=ragged_batches(), layer=st.integers(0, 2), head=st.integers(0, 3))
def test_patched_outputs_ignore_padding_order_and_batch_size(model, batch, layer, head):
    tokens, lengths, perm, batch_size = batch
    answer_pos = lengths - 1
    vectors = torch.randn(len(tokens), 32, generator=torch.Generator().manual_seed(layer), dtype=torch.float64)

    def run(tokens, answer_pos, vectors, **kwargs):
        interventions = [add(layer, vectors), ablate_head(2 - layer, head)]
        return run_with_interventions(model, tokens, answer_pos, interventions, **kwargs).logits

    reference = run(tokens, answer_pos, vectors)
    left_tokens, mask, left_pos = left_padded(tokens, lengths)
    left = run(left_tokens, left_pos, vectors, attention_mask=mask, batch_size=batch_size)
    shuffled = run(tokens[perm], answer_pos[perm], vectors[perm], batch_size=batch_size)[torch.argsort(perm)]
    torch.testing.assert_close(left, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(shuffled, reference, atol=1e-5, rtol=0)


# --- the analyses, on random tiny models and pools ---

ANALYSIS_SETTINGS = settings(max_examples=6, deadline=None)
POOLS = (
    offset_pool(offsets=(1, 2), n_values=6),
    modular_pool(ops=("add", "mul"), p=5, fmt="marker"),
    bitwise_pool(ops=("and", "xor"), n_bits=2, answer="bits"),
    permutation_pool(n_tasks=2, n_values=4),
)


@cache
def model_of(backend: str, n_layers: int, n_heads: int, seed: int) -> Any:
    """float64, so that reordered sums agree far below the 1e-5 tolerance."""
    return tiny_model(backend, d_vocab=D_VOCAB, n_layers=n_layers, n_heads=n_heads, seed=seed, dtype="float64")


@dataclass(frozen=True)
class Setup:
    model: Any
    batch: ICLBatch
    perm: torch.Tensor  # a shuffled prompt order
    size: int  # prompts per pass (or rows per pass) of the variants

    def left(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.batch
        return left_pad(batch.inputs, batch.attention_mask, batch.answer_pos, batch.pad_token)

    def left_zero_shot(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zero = self.batch.zero_shot()
        return left_pad(zero.inputs, zero.attention_mask, zero.answer_pos, zero.pad_token)


@st.composite
def setups(draw) -> Setup:
    model = model_of(
        draw(st.sampled_from(BACKENDS)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2])), draw(st.integers(0, 1))
    )
    low = draw(st.integers(0, 2))
    batch = draw(st.sampled_from(POOLS)).sample(
        draw(st.integers(2, 3)), (low, draw(st.integers(low, 3))), draw(st.integers(0, 999))
    )
    perm = torch.tensor(draw(st.permutations(range(len(batch)))))
    return Setup(model, batch, perm, draw(st.integers(1, 2 * len(batch))))


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0, equal_nan=True)


@ANALYSIS_SETTINGS
@given(setup=setups())
def test_task_decodability_ignores_padding_order_and_batch_size(setup: Setup):
    batch, perm = setup.batch, setup.perm
    config = TaskDecodability(k=1, n_bootstrap=0)
    reference = config.run_batch(setup.model, batch)
    tokens, mask, answer_pos = setup.left()
    reps = collect(
        setup.model,
        tokens,
        answer_pos,
        attention_mask=mask,
        task_ids=batch.task_ids,
        batch_size=setup.size,
        progress=False,
    )
    left = config.compute(reps, task_names=batch.task_names)
    shuffled = TaskDecodability(k=1, n_bootstrap=0, batch_size=setup.size).run_batch(setup.model, batch.select(perm))
    for variant, order in ((left, torch.arange(len(batch))), (shuffled, perm)):
        assert_same(variant.td, reference.td)
        assert_same(variant.per_task, reference.per_task)
        assert torch.equal(variant.predictions, reference.predictions[:, order])
    # Identical prompts share one row and the batches do not depend on prompt order: reordering is exact.
    reordered = config.run_batch(setup.model, batch.select(perm))
    assert torch.equal(reordered.td, reference.td) and torch.equal(reordered.confusion, reference.confusion)


@ANALYSIS_SETTINGS
@given(setup=setups(), mode=st.sampled_from(["replace", "add", "add_difference"]))
def test_patching_effects_ignore_padding_order_and_batch_size(setup: Setup, mode: str):
    batch, perm = setup.batch, setup.perm
    vectors = TaskVectors.from_model(setup.model, batch)

    def run(inputs, answer_pos, chosen, attention_mask=None, **options):
        prompts = Prompts(inputs, answer_pos, chosen.answers, chosen.task_ids, chosen.task_names, attention_mask)
        return patch_task_vectors(
            setup.model, prompts, vectors, config=TaskVectorPatching(mode=mode, n_bootstrap=0, **options)
        )

    reference = run(batch.inputs, batch.answer_pos, batch)
    tokens, mask, answer_pos = setup.left()
    left = run(tokens, answer_pos, batch, attention_mask=mask, rows_per_pass=setup.size)
    chosen = batch.select(perm)
    shuffled = run(
        chosen.inputs, chosen.answer_pos, chosen, attention_mask=chosen.attention_mask, rows_per_pass=setup.size
    )
    for variant, order in ((left, torch.arange(len(batch))), (shuffled, perm)):
        for name in ("loss", "correct"):
            assert_same(getattr(variant, name), getattr(reference, name)[..., order])
        assert_same(variant.clean_loss, reference.clean_loss[order])
        for name in ("accuracy_change", "loss_change", "correct_change", "incorrect_change", "correct_loss_change"):
            assert_same(getattr(variant, name), getattr(reference, name))
        assert torch.equal(variant.writes, reference.writes)


@ANALYSIS_SETTINGS
@given(setup=setups(), source=st.sampled_from(["same_prompt", "task_mean"]), mode=st.sampled_from(["replace", "add"]))
def test_task_vector_prompting_ignores_padding_order_and_batch_size(setup: Setup, source: str, mode: str):
    batch, perm = setup.batch, setup.perm

    def run(chosen: ICLBatch, icl, zero, **options):
        labels = (chosen.answers, chosen.task_ids, chosen.task_names)
        return task_vector_prompting(
            setup.model,
            Prompts(icl[0], icl[2], *labels, icl[1]),
            Prompts(zero[0], zero[2], *labels, zero[1]),
            config=TaskVectorPrompting(source=source, mode=mode, n_bootstrap=0, **options),
        )

    def right(chosen: ICLBatch):
        zero = chosen.zero_shot()
        return (chosen.inputs, chosen.attention_mask, chosen.answer_pos), (
            zero.inputs,
            zero.attention_mask,
            zero.answer_pos,
        )

    reference = run(batch, *right(batch))
    left = run(batch, setup.left(), setup.left_zero_shot(), rows_per_pass=setup.size, batch_size=setup.size)
    chosen = batch.select(perm)
    shuffled = run(chosen, *right(chosen), rows_per_pass=setup.size, batch_size=setup.size)
    for variant, order in ((left, torch.arange(len(batch))), (shuffled, perm)):
        for name in ("tvp_loss", "tvp_correct"):
            assert_same(getattr(variant, name), getattr(reference, name)[:, order])
        for name in ("icl_loss", "zero_shot_loss"):
            assert_same(getattr(variant, name), getattr(reference, name)[order])
        for name in ("accuracy", "per_task"):
            assert_same(getattr(variant, name), getattr(reference, name))
        assert torch.equal(variant.writes, reference.writes)


@ANALYSIS_SETTINGS
@given(setup=setups(), mode=st.sampled_from(["zero", "mean"]))
def test_head_importance_ignores_padding_order_and_batch_size(setup: Setup, mode: str):
    batch, perm = setup.batch, setup.perm

    def run(chosen: ICLBatch, inputs, answer_pos, attention_mask=None, **options):
        prompts = Prompts(inputs, answer_pos, chosen.answers, chosen.task_ids, chosen.task_names, attention_mask)
        return head_importance(
            setup.model, prompts, config=HeadAblation(mode=mode, prune_steps=0, n_bootstrap=0, **options)
        )

    reference = run(batch, batch.inputs, batch.answer_pos)
    tokens, mask, answer_pos = setup.left()
    left = run(batch, tokens, answer_pos, attention_mask=mask, rows_per_pass=setup.size, batch_size=setup.size)
    chosen = batch.select(perm)
    shuffled = run(chosen, chosen.inputs, chosen.answer_pos, rows_per_pass=setup.size, batch_size=setup.size)
    for variant, order in ((left, torch.arange(len(batch))), (shuffled, perm)):
        for name in ("ablated_loss", "ablated_correct", "attribution"):
            assert_same(getattr(variant, name), getattr(reference, name)[..., order])
        for name in ("importance", "overall", "ablation_values"):
            assert_same(getattr(variant, name), getattr(reference, name))
        assert torch.equal(variant.writes, reference.writes)
