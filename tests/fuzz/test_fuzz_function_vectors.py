"""Fuzzing the function-vector steps called one by one, and the comparison of TD, task vectors and function vectors.

``FunctionVectors.run`` (fuzzed in test_fuzz_analyses.py) hands each step what the step before made; called
alone, :func:`mean_head_activations`, :func:`causal_indirect_effects` and :func:`function_vector` get whatever a
user passes: prompts of odd sizes or not prompts at all, task ids that do not index the task names, task names
repeated or missing, answers outside the vocabulary, mean activations of another shape, dtype or device or with
NaN, heads out of range, negative, twice or not ``(layer, head)`` pairs. :class:`CompareVectors` runs three
analyses with configurations in and out of range, on a pool and on batches of odd sizes. Each call returns a
result of the right shape with finite numbers, or raises a TvLensError; never another exception, and no hook
stays attached (:func:`fuzz_helpers.outcome`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
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
    SEEDS,
    SPECIAL,
    attention_masks,
    finite,
    fuzz_model,
    fuzz_settings,
    mostly,
    outcome,
    positions,
    token_tensors,
)
from hypothesis import given
from hypothesis import strategies as st
from reliability_helpers import POOL, left_pad, one_thread  # noqa: F401  (autouse: tiny models run on one thread)

from tv_lens.analyses import CompareVectors, FunctionVectors, Prompts, TaskDecodability, TaskVectorPrompting
from tv_lens.analyses.function_vectors import (
    IndirectEffects,
    MeanHeadActivations,
    causal_indirect_effects,
    function_vector,
    mean_head_activations,
)
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import ICLBatch

N_TASKS = len(POOL.task_names)
N_ALL_HEADS = N_LAYERS * N_HEADS
MODES = mostly(st.just("plain"), st.sampled_from(["no_grad", "inference_mode"]))
GRAD_MODES = {"plain": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@cache
def clean_batch() -> ICLBatch:
    return POOL.sample(3, 2, seed=0)


@cache
def clean_means(backend: str) -> MeanHeadActivations:
    """Every head's mean ``hook_z`` over clean prompts of every task of the pool (Null too)."""
    batch = clean_batch()
    model = fuzz_model(backend=backend)
    return mean_head_activations(model, batch)


@cache
def clean_effects(backend: str) -> IndirectEffects:
    """The CIE of every head with :func:`clean_means`, on corrupted prompts of every task."""
    batch = POOL.sample(2, 2, seed=1, label_noise=0.99)
    model = fuzz_model(backend=backend)
    return causal_indirect_effects(model, batch, clean_means(backend), config=FunctionVectors(n_bootstrap=0))


# --- strategies ---


@st.composite
def icl_batches(draw: Any, label_noise: float = 0.0) -> Callable[[], ICLBatch]:
    """A sampled batch of 1 to 4 prompts per task, sometimes only some of its prompts (none, or no real task).

    Returned as a thunk: a selection that refuses (no prompt left) does so inside the call.
    """
    n_per_task = draw(st.integers(1, 4))
    batch = POOL.sample(n_per_task, draw(st.sampled_from([0, 1, 2, (1, 3)])), draw(st.integers(0, 99)), label_noise)
    if draw(mostly(st.just(False), st.just(True))):
        keep = torch.tensor(draw(st.lists(st.booleans(), min_size=len(batch), max_size=len(batch))))
        return lambda: batch.select(keep)
    return lambda: batch


@st.composite
def task_ids_and_names(draw: Any, ids: torch.Tensor) -> tuple[Any, Any]:
    """``ids`` and the pool's task names, or ids outside the names, negative, of another length or dtype, and
    names too few, repeated, a string or with names of no prompt (which is right: those tasks are left out)."""
    names = POOL.task_names
    ids = draw(
        mostly(
            st.sampled_from([ids, ids.tolist()]),
            st.sampled_from(
                [ids + N_TASKS, -ids - 1, ids[:-1], ids.float() + 0.5, ids.to(torch.bool), ids.to("meta"), "0", None]
            ),
        )
    )
    names = draw(
        mostly(
            st.sampled_from([names, (*names, "unused")]),
            st.sampled_from([names[:1], (names[0],) * N_TASKS, "abc", (), (1, 2, 3)]),
        )
    )
    return ids, names


@st.composite
def head_prompts(draw: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(inputs, answer_pos, task_ids, task_names, attention_mask): a sampled batch, right or left padded, or fuzzed
    tokens, positions and masks with task ids drawn for them."""
    kind = draw(mostly(st.sampled_from(["batch", "left"]), st.just("tokens")))
    if kind == "tokens":
        tokens = draw(token_tensors())
        n_prompts = int(tokens.shape[0]) if tokens.ndim else 0
        width = int(tokens.shape[1]) if tokens.ndim >= 2 else int(tokens.shape[0]) if tokens.ndim else 0
        ids = torch.randint(0, N_TASKS, (n_prompts,), generator=torch.Generator().manual_seed(n_prompts))
        ids, names = draw(task_ids_and_names(ids))
        return tokens, draw(positions(n_prompts, width)), ids, names, draw(attention_masks(tokens))
    batch = POOL.sample(draw(st.integers(1, 4)), draw(st.sampled_from([0, 1, 2, (1, 3)])), draw(st.integers(0, 99)))
    if draw(mostly(st.just(False), st.just(True))):  # some prompts only, some tasks without any
        batch = batch.select(draw(st.lists(st.integers(0, len(batch) - 1), min_size=1, max_size=5, unique=True)))
    inputs, answer_pos, mask = batch.inputs, batch.answer_pos, batch.attention_mask
    if kind == "left":
        inputs, mask, answer_pos = left_pad(inputs, mask, answer_pos, pad_token=0)
    ids, names = draw(task_ids_and_names(batch.task_ids))
    return inputs, answer_pos, ids, names, mask


@st.composite
def means_variants(draw: Any) -> Callable[[str], Any]:
    """A thunk making mean activations from :func:`clean_means`: the same, of another float dtype, of some layers
    or tasks only (all right), or of an integer or complex dtype, with NaN or an infinity, with other head counts or
    widths, of a layer outside the model, on the meta device, a bare tensor or nothing (made inside the call, so
    that a refusal there counts as one)."""
    kind = draw(
        mostly(
            st.sampled_from(["same", "dtype", "one layer", "some tasks"]),
            st.sampled_from(["wrong dtype", "special", "heads", "d_head", "layer outside", "meta", "tensor", "none"]),
        )
    )
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
    wrong_dtype = draw(st.sampled_from([torch.complex64, torch.long, torch.bool]))
    special = draw(st.sampled_from(SPECIAL[:3]))

    def make(backend: str) -> Any:
        means = clean_means(backend)
        acts, names, layers, counts = means.activations, means.task_names, means.layers, means.n_prompts
        if kind == "same":
            return means
        if kind in ("dtype", "wrong dtype"):
            acts = acts.to(dtype if kind == "dtype" else wrong_dtype)
        elif kind == "one layer":
            acts, layers = acts[:, 1:], layers[1:]
        elif kind == "some tasks":
            acts, names, counts = acts[1:], names[1:], counts[1:]
        elif kind == "special":
            acts = acts.clone()
            acts[0, 0, 0, 0] = special
        elif kind == "heads":
            acts = acts[:, :, :1]
        elif kind == "d_head":
            acts = acts[..., : D_HEAD // 2]
        elif kind == "layer outside":
            layers = (0, N_LAYERS + 3)
        elif kind == "meta":
            acts = acts.to("meta")
        elif kind == "tensor":
            return acts
        else:
            return None
        return MeanHeadActivations(acts, names, layers, counts)

    return make


HEAD_PAIRS = st.one_of(
    st.lists(st.tuples(st.integers(0, N_LAYERS - 1), st.integers(0, N_HEADS - 1)), min_size=1, max_size=4, unique=True),
    st.one_of(
        st.lists(st.tuples(st.integers(-1, N_LAYERS), st.integers(-1, N_HEADS)), max_size=4),
        st.sampled_from(
            [
                [(0,)],
                [(0, 1, 1)],
                [(0.5, 1)],
                [(0, 1.0)],
                [(True, 0)],
                [("0", 1)],
                [[0, 1]],
                torch.tensor([[0, 1], [1, 0]]),
                torch.tensor([[0.0, 1.0]]),
                "01",
                5,
                None,
            ]
        ),
    ),
)
HEAD_COUNT = mostly(st.integers(1, N_ALL_HEADS), st.sampled_from([0, -1, N_ALL_HEADS + 1, 1.5, True, None]))
ANSWER_CHANGES = mostly(
    st.just("same"), st.sampled_from(["padded", "outside", "negative", "none", "empty", "rows", "float", "meta"])
)


def changed_answers(answers: torch.Tensor, change: str) -> Any:
    """The right answers, or with a column of padding only, outside the vocabulary, negative, of another shape or
    dtype, on the meta device, or nothing."""
    if change == "meta":
        return answers.to("meta")
    if change == "padded":
        return torch.cat([answers, torch.full_like(answers[:, :1], -1)], dim=1)
    if change == "outside":
        return answers + D_VOCAB
    if change == "negative":
        return torch.full_like(answers, -5)
    if change == "empty":
        return answers[:, :0]
    if change == "rows":
        return answers[1:]
    if change == "float":
        return answers.float()
    return None if change == "none" else answers


# --- tests ---


@fuzz_settings(40, backends=True)
@given(
    backend=BACKEND,
    prompts=head_prompts(),
    layers=LAYERS,
    batch_size=mostly(st.sampled_from([1, 2, 64]), st.sampled_from([0, -1, 2.5, True, None])),
    in_mode=MODES,
    bare=mostly(st.just(False), st.just(True)),
)
def test_mean_head_activations(
    backend: str, prompts: tuple[Any, ...], layers: Any, batch_size: Any, in_mode: str, bare: bool
):
    """``bare``: the tokens alone instead of prompts (not prompts at all)."""
    model = fuzz_model(backend=backend)
    inputs, answer_pos, task_ids, task_names, mask = prompts

    def call() -> MeanHeadActivations:
        given = inputs if bare else Prompts(inputs, answer_pos, None, task_ids, task_names, mask)
        with GRAD_MODES[in_mode]():
            return mean_head_activations(model, given, layers=layers, config=FunctionVectors(batch_size=batch_size))

    means = outcome(model, call)
    if means is not None:
        ids = torch.as_tensor(task_ids).long()
        present = tuple(task_names[t] for t in ids.unique().tolist())
        n_layers = N_LAYERS if layers is None else len(layers)
        assert means.activations.shape == (len(present), n_layers, N_HEADS, D_HEAD)
        assert means.task_names == present and int(means.n_prompts.sum()) == len(ids)
        assert finite(means.activations)


@fuzz_settings(40, backends=True)
@given(
    backend=BACKEND,
    make_means=means_variants(),
    make_batch=icl_batches(label_noise=0.99),
    answer_change=ANSWER_CHANGES,
    label_noise=mostly(st.sampled_from([0.0, 0.99]), st.sampled_from([float("nan"), -1.0, "0.5", "many", None])),
    n_bootstrap=mostly(st.sampled_from([0, 5]), st.sampled_from([-1, 1.5, None])),
    seed=SEEDS,
    rows_per_pass=mostly(st.sampled_from([2, 512]), st.sampled_from([0, -1, 2.5, None])),
    left=st.booleans(),
)
def test_causal_indirect_effects(
    backend: str,
    make_means: Callable[[str], Any],
    make_batch: Callable[[], ICLBatch],
    answer_change: str,
    label_noise: Any,
    n_bootstrap: Any,
    seed: Any,
    rows_per_pass: Any,
    left: bool,
) -> None:
    model = fuzz_model(backend=backend)
    used: dict[str, Any] = {}

    def call() -> IndirectEffects:
        batch = make_batch()
        used["means"], used["ids"] = make_means(backend), batch.task_ids
        inputs, mask, answer_pos = batch.inputs, batch.attention_mask, batch.answer_pos
        if left:
            inputs, mask, answer_pos = left_pad(inputs, mask, answer_pos, pad_token=0)
        answers = changed_answers(batch.answers, answer_change)
        return causal_indirect_effects(
            model,
            Prompts(inputs, answer_pos, answers, batch.task_ids, batch.task_names, mask),
            used["means"],
            label_noise=label_noise,
            seed=seed,
            config=FunctionVectors(n_bootstrap=n_bootstrap, rows_per_pass=rows_per_pass),
        )

    effects = outcome(model, call)
    if effects is not None:
        means, n_prompts = used["means"], len(used["ids"])
        n_layers, n_tasks = len(means.layers), len(means.task_names)
        assert effects.cie.shape == (n_layers, N_HEADS, n_tasks)
        assert effects.patched_prob.shape == (n_layers, N_HEADS, n_prompts)
        assert finite(effects.patched_prob) and finite(effects.corrupted_prob) and finite(effects.overall)
        assert bool(((effects.patched_prob >= 0) & (effects.patched_prob <= 1)).all())
        assert bool((effects.writes == n_prompts).all())
        # a task of the means without corrupted prompts has no mean CIE (NaN, as per_task TD of an absent task)
        has_prompts = torch.bincount(effects.task_ids, minlength=n_tasks) > 0
        assert finite(effects.cie[..., has_prompts]) and bool(effects.cie[..., ~has_prompts].isnan().all())


@fuzz_settings(80, backends=True)
@given(
    backend=BACKEND,
    make_means=means_variants(),
    heads=st.one_of(st.just("effects"), HEAD_PAIRS),
    k=HEAD_COUNT,
    model_name=mostly(st.sampled_from([None, "tiny"]), st.sampled_from([3, ["tiny"], ""])),
    pool=mostly(st.sampled_from([None, "offsets"]), st.sampled_from([5, b"offsets"])),
)
def test_function_vector(backend: str, make_means: Callable[[str], Any], heads: Any, k: Any, model_name, pool) -> None:
    model = fuzz_model(backend=backend)
    used: dict[str, Any] = {}

    def call() -> Any:
        used["means"] = make_means(backend)
        chosen = clean_effects(backend) if isinstance(heads, str) else heads
        return function_vector(
            model, used["means"], chosen, model_name=model_name, pool=pool, config=FunctionVectors(k=k)
        )

    vector = outcome(model, call)
    if vector is not None:
        means = used["means"]
        n_tasks = len(means.task_names)
        assert vector.vectors.shape == (n_tasks, D_MODEL) and vector.task_names == means.task_names
        assert vector.head_outputs.shape == (n_tasks, vector.k, D_MODEL)
        assert finite(vector.vectors) and torch.allclose(vector.vectors, vector.head_outputs.sum(1).to(vector.vectors))
        assert len(set(vector.heads)) == vector.k == (k if isinstance(heads, str) else len(heads))
        assert all(layer in means.layers and 0 <= head < N_HEADS for layer, head in vector.heads)
        assert all(type(layer) is int and type(head) is int for layer, head in vector.heads)


BREAKAGES = [
    ("td_k", 0),
    ("td_k", 50),
    ("td_method", "svm"),
    ("n_bootstrap", -1),
    ("source", "mean"),
    ("mode", "swap"),
    ("fv_k", N_ALL_HEADS + 1),
    ("label_noise", 1.0),
    ("scoring", "exact_match"),  # the tiny model has no tokenizer to decode its generations with
    ("scoring", "bleu"),
    ("kind", "decodability"),
    ("kind", "prompting"),
    ("kind", "function_vectors"),
]


@st.composite
def comparisons(draw: Any) -> Callable[[], CompareVectors]:
    """A thunk making a CompareVectors of small random configurations, sometimes one setting wrong or one of them
    an analysis of the wrong kind."""
    settings = {
        "td_k": draw(st.sampled_from([1, 2])),
        "td_method": draw(mostly(st.just("knn"), st.just("probe"))),
        "n_bootstrap": draw(st.sampled_from([0, 5])),
        "source": draw(st.sampled_from(["other_prompt", "same_prompt", "task_mean"])),
        "mode": draw(st.sampled_from(["replace", "add"])),
        "fv_k": draw(st.sampled_from([1, 2])),
        "label_noise": draw(st.sampled_from([0.5, 0.99])),
        "scoring": "teacher_forced",
        "kind": None,
    }
    settings.update([draw(mostly(st.just(("kind", None)), st.sampled_from(BREAKAGES)))])
    layers = draw(LAYERS)

    def make() -> CompareVectors:
        n_boot = settings["n_bootstrap"]
        configs = {
            "decodability": TaskDecodability(
                k=settings["td_k"], method=settings["td_method"], n_folds=2, n_bootstrap=n_boot
            ),
            "prompting": TaskVectorPrompting(source=settings["source"], mode=settings["mode"], n_bootstrap=n_boot),
            "function_vectors": FunctionVectors(
                k=settings["fv_k"], label_noise=settings["label_noise"], scoring=settings["scoring"], n_bootstrap=n_boot
            ),
        }
        if settings["kind"] is not None:  # another analysis in its place
            wrong = settings["kind"]
            configs[wrong] = configs["prompting" if wrong == "decodability" else "decodability"]
        return CompareVectors(**configs, layers=layers)

    return make


@fuzz_settings(25, backends=True)
@given(
    backend=BACKEND,
    make=comparisons(),
    on_batch=st.booleans(),
    batches=st.tuples(icl_batches(), icl_batches(label_noise=0.99), icl_batches()),
    vector_layers=mostly(st.sampled_from([None, (0, 1)]), st.sampled_from([(0,), (1, 0)])),
    n_per_task=mostly(st.sampled_from([2, 3]), st.sampled_from([0, 1, 2.0])),
    n_shots=mostly(st.sampled_from([1, 2, (1, 3)]), st.sampled_from([0, (3, 1), "2"])),
    seed=SEEDS,
    in_mode=MODES,
)
def test_compare_vectors(
    backend: str,
    make: Callable[[], CompareVectors],
    on_batch: bool,
    batches: tuple[Callable[[], ICLBatch], ...],
    vector_layers: Any,
    n_per_task: Any,
    n_shots: Any,
    seed: Any,
    in_mode: str,
) -> None:
    model = fuzz_model(backend=backend)

    def call() -> Any:
        comparison = make()
        with GRAD_MODES[in_mode]():
            if not on_batch:
                return comparison.run(model, POOL, n_per_task=n_per_task, n_shots=n_shots, seed=seed)
            batch, corrupted, evaluation = (make_batch() for make_batch in batches)
            vectors = None
            if vector_layers is not None:
                vectors = TaskVectors.from_model(model, POOL, layers=vector_layers, n_per_task=2)
            return comparison.run_batch(model, batch, corrupted, evaluation, vectors=vectors, seed=seed)

    result = outcome(model, call)
    if result is not None:
        best = result.best_layers()
        for name, (layers, values, interval) in result.curves().items():
            assert values.shape == (len(layers),) and interval.shape == (len(layers), 2), name
            assert finite(values) and best[name] in layers, name
        assert all(finite(torch.tensor(value)) for value in result.baselines().values())
        assert len(result.to_frame()) == sum(len(layers) for layers, _, _ in result.curves().values()) + 3
