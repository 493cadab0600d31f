"""Fuzzing the vector tools: steering with a vector, decoding vectors through the logit lens, vector algebra."""

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
from tv_lens.task_vectors import TaskVectors

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


TASKS = ("a", "b", "c")
WEIGHT = mostly(
    st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from([float("nan"), float("inf"), 1e308, "1", True, None])
)


@fuzz_settings(60)
@given(
    weights=mostly(
        st.dictionaries(st.sampled_from(TASKS), WEIGHT, min_size=1, max_size=3),
        st.one_of(st.dictionaries(st.text(max_size=2), WEIGHT, max_size=2), st.lists(st.integers()), st.none()),
    ),
    name=mostly(st.text(min_size=1, max_size=4), st.sampled_from(["", None, 3])),
)
def test_combine(weights: Any, name: Any) -> None:
    vectors = torch.randn(3, 2, D_MODEL, generator=torch.Generator().manual_seed(0))
    tv = TaskVectors(vectors, (0, 1), TASKS, torch.tensor([4, 5, 6]), torch.tensor([4, 5, 6]))
    combined = outcome(fuzz_model(), lambda: tv.combine(weights, name))  # no model involved: none to hook
    if combined is not None:
        expected = sum(w * vectors[TASKS.index(t)].double() for t, w in weights.items())
        torch.testing.assert_close(combined.vectors[0].double(), expected, atol=1e-4, rtol=1e-5)
        assert combined.task_names == (name,) and int(combined.n_prompts) == sum(4 + TASKS.index(t) for t in weights)
