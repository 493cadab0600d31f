"""Strategies and the one property of the fuzz suite: any input works or raises a TvLensError, and no hook stays.

Not a conftest.py: tests/conftest.py owns the module name ``conftest`` that test files import.

The strategies draw what a user may pass by mistake as well as what is right: token tensors of every dtype and
shape (empty ones, ids outside the vocabulary, negative ids), attention masks (right, left and mixed padding,
values other than 0 and 1, wrong shapes), positions (ints, tensors, out of range, negative), layers, row
selections and vectors (wrong shapes, dtypes, NaN and infinities). :func:`outcome` runs one call and checks the
property; a test then checks the shape and finiteness of what a call returned.

Backends: the model-based tests draw the model's backend with :data:`BACKEND`. Where the installed TransformerLens
has two (HookedTransformer and TransformerBridge, TL <= 3), the one ``backend="auto"`` builds keeps the test's
examples and the other gets a third as many on top (:func:`fuzz_settings` with ``backends=True``), so the suite
grows by a third there, not twice; with one backend nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from conftest import BACKENDS, D_VOCAB, hook_snapshot, tiny_config
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

from tv_lens import TvLensError
from tv_lens.models import build_model, hooked_transformer_available

N_LAYERS, D_MODEL, N_HEADS, N_CTX = 2, 16, 2, 24
D_HEAD = D_MODEL // N_HEADS


DEFAULT_BACKEND = "hooked" if hooked_transformer_available() else "bridge"
"""The backend ``build_model`` picks for ``backend="auto"``: the one users get, fuzzed with every example."""
OTHER_BACKENDS = tuple(backend for backend in BACKENDS if backend != DEFAULT_BACKEND)
OTHER_SHARE = 3
"""The other backend gets ``max_examples // OTHER_SHARE`` examples on top of the default's ``max_examples``."""


def fuzz_settings(max_examples: int, *, backends: bool = False) -> settings:
    """Few examples, no deadline (the first call of a model is slow), the same examples on every run.

    ``backends``: the test draws :data:`BACKEND`; where there is another backend, it gets a third as many examples
    again (about a quarter of the total), so the default backend keeps about ``max_examples``.
    """
    if backends and OTHER_BACKENDS:
        max_examples += max_examples // OTHER_SHARE
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@cache
def fuzz_model(dtype: str = "float32", backend: str = DEFAULT_BACKEND) -> Any:
    """A 2-block model of width 16 and 2 heads over the test vocabulary (built once per dtype and backend, run once)."""
    config = tiny_config(backend, n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, n_ctx=N_CTX, dtype=dtype)
    model = build_model(config)
    with torch.no_grad():  # TransformerBridge wires its own permanent capture hooks on the first forward pass
        model(torch.zeros(1, 2, dtype=torch.long))
    return model


def outcome(model: Any, call: Callable[[], Any]) -> Any | None:
    """Run ``call``: return its result, or ``None`` if it raised a TvLensError. Any other exception fails the test,
    and so does a hook left attached on ``model`` (either way)."""
    before = hook_snapshot(model)
    try:
        result = call()
        event("returned a result")
    except TvLensError as error:
        event(f"raised {type(error).__name__}")
        result = None
    assert hook_snapshot(model) == before, "a hook stayed attached to the model"
    return result


def finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


# --- strategies ---

BACKEND = (
    st.integers(0, 7).map(lambda i: OTHER_BACKENDS[0] if i in (2, 5) else DEFAULT_BACKEND)
    if OTHER_BACKENDS
    else st.just(DEFAULT_BACKEND)
)
"""The model's backend: the default one, or the other one (where installed) in about a quarter of the examples,
which :func:`fuzz_settings` adds with ``backends=True`` (middle values: hypothesis draws a range's bounds more).
With one backend it draws nothing, so the examples are those of a test without it."""


def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` about four times in five, else ``invalid``: most examples then get deep enough to find a fault.

    The invalid branch is a middle value, since hypothesis draws the bounds of a range more often.
    """
    return st.integers(0, 5).flatmap(lambda i: invalid if i == 3 else valid)


TOKEN_DTYPES = (torch.long, torch.int32, torch.int16, torch.uint8, torch.bool, torch.float32, torch.float16)
VECTOR_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.long, torch.bool, torch.complex64)
SPECIAL = (float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 0.0)


@st.composite
def token_tensors(draw: Any, max_batch: int = 4, max_width: int = 12) -> torch.Tensor:
    """Tokens mostly right, sometimes not: any dtype, 0-length rows or batches, ids outside [0, D_VOCAB), 1-D or 3-D."""
    batch = draw(mostly(st.integers(1, max_batch), st.just(0)))
    width = draw(mostly(st.integers(1, max_width), st.just(0)))
    low, high = draw(mostly(st.just((0, D_VOCAB)), st.sampled_from([(-3, D_VOCAB), (0, D_VOCAB + 5)])))
    seed = draw(st.integers(0, 2**16))
    tokens = torch.randint(low, high, (batch, width), generator=torch.Generator().manual_seed(seed))
    dtype = draw(mostly(st.sampled_from([torch.long, torch.int32]), st.sampled_from(TOKEN_DTYPES)))
    tokens = tokens.clamp(min=0) if dtype in (torch.uint8, torch.bool) else tokens
    tokens = tokens.to(dtype)
    shape = draw(mostly(st.just("2d"), st.sampled_from(["1d", "3d", "meta"])))
    if shape == "1d":
        tokens = tokens.flatten()
    elif shape == "3d":
        tokens = tokens[..., None]
    elif shape == "meta":
        tokens = tokens.to("meta")
    return tokens


@st.composite
def attention_masks(draw: Any, tokens: torch.Tensor) -> torch.Tensor | None:
    """None, or a mask over ``tokens``: right, left or mixed padding; sometimes wrong values or shape."""
    kind = draw(
        mostly(
            st.sampled_from(["none", "right", "left", "mixed"]), st.sampled_from(["hole", "values", "shape", "empty"])
        )
    )
    if kind == "none" or tokens.ndim < 2:
        return None
    batch, width = int(tokens.shape[0]), int(tokens.shape[1])
    if kind == "shape":
        return torch.ones(batch + 1, max(width, 1), dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for row in range(batch):
        length = draw(st.integers(1 if width else 0, width))
        left = kind == "left" or (kind == "mixed" and draw(st.booleans()))
        if left:
            mask[row, width - length :] = 1
        else:
            mask[row, :length] = 1
    if kind == "hole" and width >= 3 and batch:
        mask[0] = 1
        mask[0, width // 2] = 0
    if kind == "values" and batch and width:
        mask = mask * draw(st.sampled_from([2, -1]))
    if kind == "empty" and batch:
        mask[0] = 0
    return mask.to(draw(mostly(st.sampled_from([torch.long, torch.bool]), st.sampled_from([torch.float32, "meta"]))))


def positions(n_prompts: int, width: int) -> st.SearchStrategy[Any]:
    """An answer position: an int (in range, past the end, negative), a tensor or list per prompt, or nonsense."""
    inside = st.integers(0, max(width - 1, 0))
    valid = st.one_of(
        st.just(max(width - 1, 0)), inside, st.lists(inside, min_size=n_prompts, max_size=n_prompts).map(torch.tensor)
    )
    invalid = st.one_of(
        st.integers(-3, width + 3),
        st.lists(st.integers(-2, width + 2), min_size=max(n_prompts - 1, 0), max_size=n_prompts + 1),
        st.sampled_from([2**63 - 1, -(2**63), 2**70, 1.0, None, "last", True]),
        st.just(torch.full((max(n_prompts, 1),), max(width - 1, 0), dtype=torch.float32)),
    )
    return mostly(valid, invalid)


LAYERS = mostly(
    st.one_of(st.none(), st.lists(st.integers(-1, N_LAYERS - 1), min_size=1, max_size=3, unique=True).map(tuple)),
    st.one_of(st.lists(st.integers(-2, N_LAYERS + 1), max_size=3).map(tuple), st.sampled_from([0, (0.5,), ("0",)])),
)


def vectors(width: int = D_MODEL, n_rows: int | None = None) -> st.SearchStrategy[Any]:
    """A vector to write: ``[width]`` (or ``[n_rows, width]``) of any dtype with special values, or a wrong shape
    or type (a string, a list, nothing)."""

    @st.composite
    def tensor(draw: Any) -> torch.Tensor:
        shape = draw(mostly(st.just((width,)), st.sampled_from([(n_rows or 1, width), (width + 1,), (1, width), ()])))
        values = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
        if draw(mostly(st.just(False), st.just(True))) and values.numel():
            values.view(-1)[0] = draw(st.sampled_from(SPECIAL))
        values = values.to(draw(mostly(st.just(torch.float32), st.sampled_from(VECTOR_DTYPES))))
        return values.to("meta") if draw(mostly(st.just(False), st.booleans())) else values

    return mostly(
        tensor(),
        st.one_of(
            st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=width, max_size=width),
            st.sampled_from(["abc", None, [[1.0], [1.0, 2.0]], 3.0]),
        ),
    )


ROWS = mostly(
    st.one_of(st.none(), st.just([0])),
    st.one_of(
        st.lists(st.integers(-5, 5), max_size=4),
        st.lists(st.booleans(), min_size=1, max_size=5).map(torch.tensor),
        st.sampled_from([[0.5], "0", 1]),
    ),
)

SEEDS = mostly(st.sampled_from([0, 1, 2**40, 2**64 - 1]), st.sampled_from([-1, 2**64, 1.5, None, True]))
