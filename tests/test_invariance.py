"""Property-based checks: padding side, prompt order and batch size never change probe rows or patched outputs."""

from __future__ import annotations

import torch
from conftest import D_VOCAB, left_padded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tv_lens.interventions import ablate_head, add, run_with_interventions
from tv_lens.probes import collect

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
