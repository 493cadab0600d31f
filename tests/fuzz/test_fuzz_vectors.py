"""Fuzzing the vector tools: steering with a vector and decoding vectors through the logit lens."""

from __future__ import annotations

from typing import Any

import torch
from conftest import D_VOCAB
from fuzz_helpers import (
    BACKEND,
    D_MODEL,
    N_LAYERS,
    finite,
    fuzz_model,
    fuzz_settings,
    mostly,
    outcome,
    positions,
    vectors,
)
from hypothesis import given
from hypothesis import strategies as st

from tv_lens.analyses import decode_vectors
from tv_lens.steering import steer, steering

LAYER = mostly(st.integers(-1, N_LAYERS - 1), st.sampled_from([N_LAYERS, -2, 0.5, "0", None, True]))
OPERATION = mostly(st.sampled_from(["replace", "add"]), st.sampled_from(["ablate", "", None, 1]))
SCALE = mostly(st.sampled_from([1.0, 0.5, -2, 0]), st.sampled_from([float("nan"), float("inf"), "1", True]))


@fuzz_settings(60, backends=True)
@given(
    backend=BACKEND,
    data=st.data(),
    vector=vectors(),
    layer=LAYER,
    operation=OPERATION,
    scale=SCALE,
    n_prompts=st.integers(1, 3),
    width=st.integers(1, 8),
)
def test_steer(
    backend: str, data: st.DataObject, vector: Any, layer: Any, operation: Any, scale: Any, n_prompts, width
) -> None:
    model = fuzz_model(backend=backend)
    tokens = torch.randint(0, D_VOCAB, (n_prompts, width), generator=torch.Generator().manual_seed(width))
    answer_pos = data.draw(positions(n_prompts, width))
    logits = outcome(
        model,
        lambda: steer(model, vector, tokens, layer=layer, operation=operation, scale=scale, answer_pos=answer_pos),
    )
    if logits is not None:
        assert logits.shape == (n_prompts, D_VOCAB)
        assert finite(logits)


@fuzz_settings(40, backends=True)
@given(
    backend=BACKEND,
    vector=vectors(),
    layer=LAYER,
    pos=mostly(st.sampled_from([-1, 0, "all"]), st.sampled_from([99, "last", 1.5])),
)
def test_steering_context(backend: str, vector: Any, layer: Any, pos: Any) -> None:
    model = fuzz_model(backend=backend)
    tokens = torch.randint(0, D_VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))

    def call() -> Any:
        with steering(model, vector, layer=layer, pos=pos), torch.no_grad():
            return model(tokens)

    logits = outcome(model, call)
    if logits is not None:
        assert logits.shape == (2, 5, D_VOCAB)


@fuzz_settings(40, backends=True)
@given(
    backend=BACKEND,
    vector=mostly(vectors(), st.dictionaries(st.text(max_size=3), vectors(), max_size=2)),
    k=mostly(st.integers(1, D_VOCAB), st.sampled_from([0, -1, D_VOCAB + 1, 2.0, None])),
)
def test_decode_vectors(backend: str, vector: Any, k: Any) -> None:
    model = fuzz_model(backend=backend)
    decoding = outcome(model, lambda: decode_vectors(model, vector, k))
    if decoding is not None:
        frame = decoding.to_frame()
        assert len(frame) > 0 and len(frame) % k == 0
        assert D_MODEL > 0
