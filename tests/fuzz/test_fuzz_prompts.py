"""Fuzzing the entry points that take prompts: collect, run_with_interventions, TaskVectors and generate.

Each test draws prompts (tokens, attention mask, answer positions) and the entry point's other inputs, some
right and many wrong, and checks the property of :func:`fuzz_helpers.outcome`: the call returns a result of the
right shape with finite values, or raises a TvLensError; never another exception, and no hook stays attached.
"""

from __future__ import annotations

from typing import Any

import torch
from conftest import D_VOCAB
from fuzz_helpers import (
    BACKEND,
    D_HEAD,
    D_MODEL,
    LAYERS,
    N_HEADS,
    N_LAYERS,
    ROWS,
    SEEDS,
    attention_masks,
    finite,
    fuzz_model,
    fuzz_settings,
    mostly,
    outcome,
    positions,
    token_tensors,
    vectors,
)
from hypothesis import given
from hypothesis import strategies as st
from reliability_helpers import one_thread  # noqa: F401  (autouse: tiny models run on one thread)

from tv_lens.generation import generate
from tv_lens.interventions import ablate_head, add, replace, run_with_interventions
from tv_lens.probes import collect
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import ICLBatch

SITES = mostly(
    st.sampled_from(["resid_post", "resid_pre", "resid_mid", "attn_out", "mlp_out"]),
    st.sampled_from(["attn.hook_z", "blocks.0.attn.hook_z", "z", "resid", 3]),
)


@st.composite
def prompts(draw: Any) -> tuple[Any, Any, Any]:
    """(tokens, answer_pos, attention_mask), or a residual stream of some dtype in place of the tokens."""
    if draw(st.integers(0, 7)) == 0:
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.sampled_from([D_MODEL, D_MODEL + 1])))
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.float64]))
        tokens = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))).to(dtype)
        return tokens, shape[1] - 1, None
    tokens = draw(token_tensors())
    n_prompts = int(tokens.shape[0]) if tokens.ndim else 0
    width = int(tokens.shape[1]) if tokens.ndim >= 2 else int(tokens.shape[0]) if tokens.ndim else 0
    return tokens, draw(positions(n_prompts, width)), draw(attention_masks(tokens))


@fuzz_settings(120, backends=True)
@given(
    backend=BACKEND,
    prompt=prompts(),
    layers=LAYERS,
    site=SITES,
    batch_size=mostly(st.sampled_from([1, 2, 64]), st.sampled_from([0, 2.5])),
)
def test_collect(backend: str, prompt: tuple[Any, Any, Any], layers: Any, site: Any, batch_size: Any) -> None:
    model = fuzz_model(backend=backend)
    tokens, answer_pos, mask = prompt
    reps = outcome(
        model,
        lambda: collect(
            model, tokens, answer_pos, layers, site, attention_mask=mask, batch_size=batch_size, progress=False
        ),
    )
    if reps is not None:
        n_layers = len(layers) if layers is not None else N_LAYERS + (site == "resid_post")
        assert reps.activations.shape == (n_layers, tokens.shape[0], D_MODEL)
        assert finite(reps.activations)


@st.composite
def interventions(draw: Any, n_prompts: int) -> Any:
    """A list of interventions (or something that is not one), each with a random layer, position and values."""
    made = []
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["add", "replace", "ablate_head", "ablate_mean"]))
        layer = draw(mostly(st.sampled_from([0, N_LAYERS - 1]), st.sampled_from([-1, N_LAYERS, 0.0])))
        pos = draw(mostly(st.sampled_from(["answer", "all", 0]), st.one_of(st.just("first"), st.integers(-1, 8))))
        rows = draw(ROWS)
        if kind in ("add", "replace"):
            factory = add if kind == "add" else replace
            values = draw(vectors(D_MODEL, n_prompts))
            made.append(lambda f=factory, a=(layer, values), k={"pos": pos, "rows": rows}: f(*a, **k))
        else:
            head = draw(mostly(st.sampled_from([0, N_HEADS - 1]), st.sampled_from([N_HEADS, -1, 1.0, True])))
            mean = draw(vectors(D_HEAD)) if kind == "ablate_mean" else None
            mode = "mean" if kind == "ablate_mean" else "zero"
            made.append(lambda a=(layer, head, mode), k={"mean": mean, "pos": pos, "rows": rows}: ablate_head(*a, **k))
    return made


@fuzz_settings(120, backends=True)
@given(
    backend=BACKEND,
    data=st.data(),
    prompt=prompts(),
    n_answer=mostly(st.sampled_from([1, 2]), st.sampled_from([0, 30, True])),
)
def test_run_with_interventions(backend: str, data: st.DataObject, prompt: tuple[Any, Any, Any], n_answer: Any) -> None:
    model = fuzz_model(data.draw(mostly(st.just("float32"), st.sampled_from(["float16", "float64"]))), backend)
    tokens, answer_pos, mask = prompt
    n_prompts = int(tokens.shape[0]) if tokens.ndim else 0
    makers = data.draw(interventions(n_prompts))

    def call() -> Any:
        return run_with_interventions(
            model, tokens, answer_pos, [make() for make in makers], attention_mask=mask, n_answer_tokens=n_answer
        )

    run = outcome(model, call)
    if run is not None:
        assert run.logits.shape == (n_prompts, n_answer, D_VOCAB)
        assert finite(run.logits)
        assert len(run.writes) == len(makers) and all(count > 0 for count in run.writes)


@fuzz_settings(40, backends=True)
@given(
    backend=BACKEND,
    n_per_task=mostly(st.sampled_from([1, 2, 3]), st.sampled_from([0, -1, 10**12, 2.0])),
    n_shots=mostly(st.sampled_from([0, 1, 2, (0, 2)]), st.sampled_from([-1, (2, 1), 1000])),
    layers=LAYERS,
    reduce=mostly(st.sampled_from(["mean_over_prompts", "mean_over_demo_positions"]), st.just("mean")),
    site=SITES,
    seed=SEEDS,
)
def test_task_vectors(
    backend: str, n_per_task: Any, n_shots: Any, layers: Any, reduce: Any, site: Any, seed: Any
) -> None:
    from reliability_helpers import POOL

    model = fuzz_model(backend=backend)
    tv = outcome(
        model,
        lambda: TaskVectors.from_model(
            model, POOL, layers, reduce, site=site, n_per_task=n_per_task, n_shots=n_shots, seed=seed
        ),
    )
    if tv is not None:
        n_layers = N_LAYERS if layers is None else len(layers)
        assert tv.vectors.shape[1:] == (n_layers, D_MODEL)
        assert finite(tv.vectors)


@fuzz_settings(60, backends=True)
@given(
    backend=BACKEND,
    data=st.data(),
    prompt=prompts(),
    max_new=mostly(st.sampled_from([1, 3]), st.sampled_from([0, 100, 2.0])),
    sampling=mostly(
        st.sampled_from([{}, {"do_sample": True, "temperature": 0.7, "top_k": 3}]),
        st.sampled_from([{"temperature": 0.0}, {"do_sample": True, "top_k": 0}]),
    ),
    seed=SEEDS,
    batch=st.booleans(),
)
def test_generate(
    backend: str,
    data: st.DataObject,
    prompt: tuple[Any, Any, Any],
    max_new: Any,
    sampling: dict,
    seed: Any,
    batch: bool,
) -> None:
    from reliability_helpers import POOL

    model = fuzz_model(backend=backend)
    tokens, answer_pos, mask = prompt
    n_prompts = int(tokens.shape[0]) if tokens.ndim else 0
    makers = data.draw(interventions(n_prompts))
    if batch:
        icl = POOL.sample(1, 1, seed=0)
        tokens, answer_pos, mask = icl, None, None
        n_prompts = len(icl)

    def call() -> Any:
        return generate(
            model,
            tokens,
            [make() for make in makers],
            max_new,
            answer_pos=answer_pos,
            attention_mask=mask,
            seed=seed,
            stop_tokens=None,
            **sampling,
        )

    out = outcome(model, call)
    if out is not None:
        assert out.tokens.shape == (n_prompts, max_new)
        assert bool(((out.tokens >= 0) & (out.tokens < D_VOCAB)).all())
        assert isinstance(tokens, (torch.Tensor, ICLBatch))
