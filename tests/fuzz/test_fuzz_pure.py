"""Fuzzing the pure functions under the analyses, called on plain tensors as other lens tools call them.

The configs' ``run`` / ``run_batch`` (fuzzed in test_fuzz_analyses.py) hand each function what a sampled batch
holds; called alone, :func:`task_decodability`, :func:`project`, :func:`icl_performance`, :func:`ols`,
:func:`fit_td_accuracy`, :func:`patch_task_vectors`, :func:`task_vector_prompting`, :func:`head_importance`,
:func:`head_attribution` and :func:`compare_models` get whatever a user passes: representations of every shape and
dtype (empty, NaN, on ``meta``), labels that are floats, strings, negative or of another length, scores and TD
values with NaN or of another length, options out of range or of the wrong type, task ids and names that do not
fit, answers of another batch. Each call returns a result of the right shape with finite numbers where the input
was finite, or raises a TvLensError; never another exception, and no hook stays attached.

Next to the fuzzed calls, valid edge cases whose answer is known: well separated clusters are decodable at 1.0,
a perfect line has R² 1 and the slope it was drawn with, a mean of 0/1 scores per (task, shots) cell.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np
import torch
from fuzz_helpers import (
    BACKEND,
    D_HEAD,
    N_HEADS,
    N_LAYERS,
    SEEDS,
    SPECIAL,
    finite,
    fuzz_model,
    fuzz_settings,
    mostly,
    outcome,
)
from hypothesis import given
from hypothesis import strategies as st
from reliability_helpers import POOL, one_thread  # noqa: F401  (autouse: tiny models run on one thread)

from tv_lens import TvLensError
from tv_lens.analyses import (
    Geometry,
    HeadAblation,
    ICLPerformance,
    LayerFinetuning,
    Prompts,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    compare_models,
    fit_td_accuracy,
    head_attribution,
    head_importance,
    icl_performance,
    ols,
    patch_task_vectors,
    project,
    task_decodability,
    task_vector_prompting,
)
from tv_lens.analyses.answers import answer_counts, answer_tokens, prompt_count
from tv_lens.interventions.sweep import align
from tv_lens.results.shared import real_prompts
from tv_lens.stats import held_out_best
from tv_lens.task_vectors import TaskVectors

N_TASKS = len(POOL.task_names)
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ODD_DTYPES = (torch.long, torch.bool, torch.complex64, torch.uint8)
GRAD_MODES = {"plain": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def refused(call: Any) -> Any | None:
    """``call()``, or ``None`` if it raised a TvLensError (any other exception fails the test)."""
    try:
        return call()
    except TvLensError:
        return None


# --- representations: task_decodability and project ---


@st.composite
def representations(draw: Any) -> tuple[Any, Any]:
    """``(reps, labels)``: clustered ``[layer, prompt, d]`` or ``[prompt, d]`` tensors, mostly valid; sometimes of
    another dtype, empty, with NaN / inf, on ``meta``, or not a tensor; labels of the wrong kind or length."""
    n_tasks = draw(st.integers(1, 3))
    per_task = draw(st.integers(1, 5))
    n_layers = draw(st.integers(1, 3))
    d = draw(mostly(st.integers(2, 5), st.sampled_from([0, 1])))
    labels = torch.arange(n_tasks).repeat_interleave(per_task)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    reps = torch.randn(n_layers, len(labels), d, generator=generator) + 4 * labels[None, :, None]
    if draw(st.booleans()):
        reps = reps[0]
    if draw(mostly(st.just(False), st.just(True))) and reps.numel():
        reps.view(-1)[draw(st.integers(0, reps.numel() - 1))] = draw(st.sampled_from(SPECIAL))
    reps = reps.to(draw(mostly(st.sampled_from(FLOAT_DTYPES), st.sampled_from(ODD_DTYPES))))
    shape = draw(mostly(st.just("tensor"), st.sampled_from(["meta", "empty", "list", "string", "3d-empty"])))
    if shape == "meta":
        reps = reps.to("meta")
    elif shape == "empty":
        reps = reps[..., :0, :]
    elif shape == "list":
        reps = reps.tolist()
    elif shape == "string":
        reps = "reps"
    elif shape == "3d-empty":
        reps = torch.zeros(0, len(labels), 4)
    kind = draw(
        mostly(
            st.sampled_from(["tensor", "list", "numpy", "int32"]),
            st.sampled_from(["float", "bool", "negative", "short", "long", "strings", "meta", "2d", "none", "huge"]),
        )
    )
    if kind == "list":
        labels = labels.tolist()
    elif kind == "numpy":
        labels = labels.numpy()
    elif kind == "int32":
        labels = labels.int()
    elif kind == "float":
        labels = labels.float() + 0.5
    elif kind == "bool":
        labels = labels.bool()
    elif kind == "negative":
        labels = labels - 1
    elif kind == "short":
        labels = labels[:-1]
    elif kind == "long":
        labels = torch.cat([labels, labels[:1]])
    elif kind == "strings":
        labels = [f"t{i}" for i in labels.tolist()]
    elif kind == "meta":
        labels = labels.to("meta")
    elif kind == "2d":
        labels = labels[:, None]
    elif kind == "none":
        labels = None
    elif kind == "huge":
        labels = labels + 2**40
    return reps, labels


def task_names_for(n_tasks: int) -> st.SearchStrategy[Any]:
    return mostly(
        st.one_of(st.none(), st.just(tuple(f"task {i}" for i in range(n_tasks)))),
        st.sampled_from([("only",), "ab", (1, 2, 3, 4), ("a", "a", "a", "a"), ()]),
    )


def layers_for(reps: Any) -> st.SearchStrategy[Any]:
    n_layers = reps.shape[0] if isinstance(reps, torch.Tensor) and reps.ndim == 3 else 1
    return mostly(
        st.one_of(st.none(), st.just(tuple(range(-1, n_layers - 1)))),
        st.sampled_from([(0.5,) * n_layers, ("a",) * n_layers, (0,) * (n_layers + 1), 3, "0", (2**70,) * n_layers]),
    )


@fuzz_settings(40)
@given(data=st.data(), method=mostly(st.sampled_from(["knn", "probe"]), st.sampled_from(["svm", 3, None])))
def test_task_decodability(data: Any, method: Any) -> None:
    reps, labels = data.draw(representations())
    k = data.draw(mostly(st.sampled_from([1, 2]), st.sampled_from([0, -1, 1.5, True, "2", 10**6])))
    metric = data.draw(mostly(st.sampled_from(["euclidean", "cosine"]), st.sampled_from(["l7", 3, None])))
    n_folds = data.draw(mostly(st.sampled_from([2, 3]), st.sampled_from([1, 0, -2, 2.5, "2"])))
    probe_c = data.draw(mostly(st.sampled_from([1.0, 0.1]), st.sampled_from([0.0, -1.0, float("nan"), "1"])))
    n_bootstrap = data.draw(mostly(st.sampled_from([0, 5]), st.sampled_from([-1, 1.5, True])))
    ci = data.draw(mostly(st.just(0.9), st.sampled_from([0.0, 1.0, float("nan"), "0.9"])))
    seed = data.draw(SEEDS)
    task_names = data.draw(task_names_for(3))
    layers = data.draw(layers_for(reps))
    result = refused(
        lambda: task_decodability(
            reps,
            labels,
            seed=seed,
            task_names=task_names,
            layers=layers,
            config=TaskDecodability(
                k=k, metric=metric, method=method, n_folds=n_folds, probe_c=probe_c, n_bootstrap=n_bootstrap, ci=ci
            ),
        )
    )
    if result is not None:
        n_layers = reps.shape[0] if reps.ndim == 3 else 1
        assert result.td.shape == (n_layers,) and finite(result.td)
        assert bool(((result.td >= 0) & (result.td <= 1)).all())
        assert result.confusion.sum(dim=(1, 2)).eq(reps.shape[-2]).all()


@fuzz_settings(30)
@given(data=st.data(), method=mostly(st.just("pca"), st.sampled_from(["tsne", 3, None])))
def test_project(data: Any, method: Any) -> None:
    reps, labels = data.draw(representations())
    task_names = data.draw(task_names_for(3))
    layers = data.draw(layers_for(reps))
    seed = data.draw(SEEDS)
    result = refused(
        lambda: project(reps, labels, seed=seed, task_names=task_names, layers=layers, config=Geometry(method=method))
    )
    if result is not None:
        n_layers = reps.shape[0] if reps.ndim == 3 else 1
        assert result.coords.shape == (n_layers, reps.shape[-2], 2) and finite(result.coords)


def test_separated_clusters_are_decodable_and_projected_apart() -> None:
    """Three clusters 100 apart with unit noise: TD is 1.0 at every layer for k-NN and the probe; PCA keeps them
    apart (the first component explains most of the variance)."""
    labels = torch.arange(3).repeat_interleave(4)
    reps = torch.randn(2, 12, 5, generator=torch.Generator().manual_seed(0)) + 100 * labels[None, :, None]
    for method in ("knn", "probe"):
        result = task_decodability(
            reps, labels.tolist(), config=TaskDecodability(k=3, method=method, n_folds=2, n_bootstrap=0)
        )
        assert result.td.tolist() == [1.0, 1.0]
        assert torch.equal(result.confusion[0], torch.diag(torch.tensor([4, 4, 4])))
    projection = project(reps.double(), labels.numpy())
    assert bool((projection.explained_variance[:, 0] > 0.95).all())


# --- icl_performance ---


@st.composite
def per_prompt(draw: Any) -> tuple[Any, Any, Any]:
    """``(scores, task_ids, n_shots)`` of a few prompts, mostly valid; sometimes NaN, of another length or kind."""
    n = draw(st.integers(1, 8))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scores: Any = torch.randint(0, 2, (n,), generator=generator).double()
    tasks: Any = torch.randint(0, 3, (n,), generator=generator)
    shots: Any = torch.randint(0, 3, (n,), generator=generator)
    bad = draw(
        mostly(
            st.sampled_from(["none", "lists", "float32"]),
            st.sampled_from(
                [
                    "nan",
                    "inf",
                    "short",
                    "empty",
                    "meta",
                    "strings",
                    "float-tasks",
                    "negative-shots",
                    "2d",
                    "complex",
                    "bool-scores",
                    "huge-tasks",
                    "none-scores",
                ]
            ),
        )
    )
    if bad == "lists":
        scores, tasks, shots = scores.tolist(), tasks.tolist(), shots.tolist()
    elif bad == "float32":
        scores = scores.float()
    elif bad in ("nan", "inf"):
        scores[0] = float(bad)
    elif bad == "short":
        tasks = tasks[:-1]
    elif bad == "empty":
        scores, tasks, shots = scores[:0], tasks[:0], shots[:0]
    elif bad == "meta":
        scores = scores.to("meta")
    elif bad == "strings":
        scores = ["1"] * n
    elif bad == "float-tasks":
        tasks = tasks.double() + 0.5
    elif bad == "negative-shots":
        shots = shots - 1
    elif bad == "2d":
        scores = scores[:, None]
    elif bad == "complex":
        scores = scores.to(torch.complex64)
    elif bad == "bool-scores":
        scores = scores.bool()
    elif bad == "huge-tasks":
        tasks = tasks + 2**40
    elif bad == "none-scores":
        scores = None
    return scores, tasks, shots


@fuzz_settings(40)
@given(
    data=per_prompt(),
    task_names=task_names_for(3),
    n_bootstrap=mostly(st.sampled_from([0, 4]), st.sampled_from([-1, 2.5, True])),
    ci=mostly(st.just(0.9), st.sampled_from([1.0, float("nan"), "0.9"])),
    seed=SEEDS,
    higher=mostly(st.booleans(), st.sampled_from([None, "no"])),
)
def test_icl_performance(data: Any, task_names: Any, n_bootstrap: Any, ci: Any, seed: Any, higher: Any) -> None:
    scores, tasks, shots = data
    result = refused(
        lambda: icl_performance(
            scores,
            tasks,
            shots,
            task_names,
            seed=seed,
            config=ICLPerformance(higher_is_better=higher, n_bootstrap=n_bootstrap, ci=ci),
        )
    )
    if result is not None:
        scores = torch.as_tensor(scores, dtype=torch.float64)
        assert result.n_prompts.sum() == len(scores)
        assert finite(result.values[result.n_prompts > 0]) and finite(result.overall)
        assert math.isclose(float((result.overall * result.n_prompts.sum(0)).sum()), float(scores.sum()))


def test_icl_performance_means_each_cell() -> None:
    """Four prompts of task 0 at 1 shot (scores 1, 1, 0, 1) and two of task 1 at 3 shots (0, 1)."""
    result = icl_performance(
        [1.0, 1.0, 0.0, 1.0, 0.0, 1.0], [0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 3, 3], config=ICLPerformance(n_bootstrap=0)
    )
    assert result.shots == (1, 3)
    assert result.values[0, 0] == 0.75 and result.values[1, 1] == 0.5
    assert result.values[0, 1].isnan() and result.values[1, 0].isnan()
    assert result.overall.tolist() == [0.75, 0.5]


# --- ols and fit_td_accuracy ---


@st.composite
def points(draw: Any) -> tuple[Any, Any]:
    """``(td, score)`` of a few points, mostly valid; sometimes NaN, huge, constant, of another length or kind."""
    n = draw(st.integers(0, 6))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    td: Any = torch.rand(n, generator=generator, dtype=torch.float64)
    score: Any = 0.5 * td + 0.1 * torch.rand(n, generator=generator, dtype=torch.float64)
    bad = draw(
        mostly(
            st.sampled_from(["none", "lists", "float32"]),
            st.sampled_from(
                ["nan", "inf", "huge", "tiny", "short", "constant", "meta", "strings", "2d", "complex", "none-td"]
            ),
        )
    )
    if bad == "lists":
        td, score = td.tolist(), score.tolist()
    elif bad == "float32":
        td = td.float()
    elif bad in ("nan", "inf") and n:
        td[0] = float(bad)
    elif bad == "huge":
        td = td * 1e300
    elif bad == "tiny":
        td = td * 1e-300
    elif bad == "short":
        score = score[:-1]
    elif bad == "constant":
        td = torch.ones_like(td)
    elif bad == "meta":
        td = td.to("meta")
    elif bad == "strings":
        td = ["0.5"] * n
    elif bad == "2d":
        td = td[:, None]
    elif bad == "complex":
        score = score.to(torch.complex128)
    elif bad == "none-td":
        td = None
    return td, score


CI = mostly(st.sampled_from([0.9, 0.95]), st.sampled_from([0.0, 1.0, float("nan"), "0.9", None, True]))


@fuzz_settings(40)
@given(data=points(), ci=CI)
def test_ols(data: Any, ci: Any) -> None:
    x, y = data
    fit = refused(lambda: ols(x, y, ci))
    if fit is not None:
        assert math.isfinite(fit["slope"]) and math.isfinite(fit["intercept"])
        if len(x) > 2:
            assert all(math.isfinite(v) for v in (*fit["slope_ci"], *fit["intercept_ci"]))


@st.composite
def point_labels(draw: Any, n: int) -> tuple[Any, Any, Any]:
    """``(task_ids, shots, task_names)`` of ``n`` points: mostly valid or default; sometimes out of range or odd."""
    tasks = draw(
        mostly(
            st.one_of(st.none(), st.just(list(range(n))), st.just(torch.zeros(n, dtype=torch.long))),
            st.sampled_from(
                [[-1] * n, [0.5] * n, [0] * (n + 1), "ab", torch.zeros(n).to("meta"), [2**70] * n, [], [True] * n]
            ),
        )
    )
    shots = draw(
        mostly(
            st.one_of(st.none(), st.just([1] * n)),
            st.sampled_from([[-1] * n, [0.5] * n, [1] * (n + 1), "ab", [], [None] * n]),
        )
    )
    names = draw(
        mostly(
            st.one_of(st.none(), st.just(tuple(f"t{i}" for i in range(max(n, 1))))),
            st.sampled_from([(), "abcdefgh", (1,) * max(n, 1), ("a",)]),
        )
    )
    return tasks, shots, names


@fuzz_settings(40)
@given(data=st.data(), ci=CI, layer=mostly(st.sampled_from([None, 0, -1]), st.sampled_from([0.5, "0", True])))
def test_fit_td_accuracy(data: Any, ci: Any, layer: Any) -> None:
    td, score = data.draw(points())
    n = len(td) if td is not None else 0
    tasks, shots, names = data.draw(point_labels(n))
    metric = data.draw(mostly(st.just("accuracy"), st.sampled_from([None, 3, ""])))
    fit = refused(
        lambda: fit_td_accuracy(td, score, task_ids=tasks, shots=shots, task_names=names, ci=ci, metric=metric)
    )
    if fit is not None:
        assert finite(fit.td) and finite(fit.score) and math.isfinite(fit.slope)
        assert fit.td.shape == fit.score.shape == fit.task_ids.shape == fit.shots.shape == (n,)
        assert int(fit.task_ids.max()) < len(fit.task_names) and int(fit.task_ids.min()) >= 0


def test_ols_recovers_a_known_line() -> None:
    """y = 2x - 1 exactly: slope 2, intercept -1, R² 1, zero-width intervals; checked against numpy's polyfit."""
    x = torch.tensor([0.1, 0.4, 0.5, 0.9], dtype=torch.float64)
    fit = ols(x, 2 * x - 1)
    assert math.isclose(fit["slope"], 2.0) and math.isclose(fit["intercept"], -1.0, abs_tol=1e-12)
    assert math.isclose(fit["r2"], 1.0)
    assert math.isclose(fit["slope_ci"][0], 2.0) and math.isclose(fit["slope_ci"][1], 2.0)
    noisy = x.flip(0) + x**2
    slope, intercept = np.polyfit(x.numpy(), noisy.numpy(), 1)
    fit = ols(x, noisy)
    assert math.isclose(fit["slope"], slope) and math.isclose(fit["intercept"], intercept)


# --- held_out_best: the best option chosen on half the prompts ---


@st.composite
def option_values(draw: Any) -> tuple[Any, Any, Any]:
    """``(values [option, prompt], groups, n_groups)``, mostly valid; sometimes special values, ids out of range,
    another length or dtype."""
    n_options, n_prompts, n_groups = draw(st.integers(1, 4)), draw(st.integers(0, 9)), draw(st.integers(1, 3))
    values = torch.tensor(
        draw(
            st.lists(
                mostly(st.floats(0, 1), st.sampled_from(SPECIAL)),
                min_size=n_options * n_prompts,
                max_size=n_options * n_prompts,
            )
        ),
        dtype=torch.float64,
    ).reshape(n_options, n_prompts)
    groups = torch.tensor(draw(st.lists(st.integers(0, n_groups - 1), min_size=n_prompts, max_size=n_prompts)))
    kind = draw(st.integers(0, 9))
    if kind == 3:
        groups = groups.double()
    elif kind == 5:
        groups = groups + n_groups
    elif kind == 7:
        values = values[0]
    return values, groups.long() if kind != 3 else groups, draw(mostly(st.just(n_groups), st.sampled_from([0, 1.5])))


@fuzz_settings(60)
@given(data=option_values(), higher=mostly(st.booleans(), st.just(1)), seed=SEEDS, eligible=st.integers(0, 4))
def test_held_out_best(data: Any, higher: Any, seed: Any, eligible: Any) -> None:
    values, groups, n_groups = data
    n_options = values.shape[0] if values.ndim == 2 else 0
    flags = [i != eligible for i in range(n_options)] if eligible < 4 else None
    options = tuple(range(n_options))
    best = refused(lambda: held_out_best(values, groups, n_groups, options, higher, flags, 4, 0.9, seed))
    if best is not None:
        assert values.ndim == 2 and values.shape[1] >= 2 and set(best.half.tolist()) == {0, 1}
        assert all(flags is None or flags[c] for c in best.chosen)
        expected = values[torch.tensor(best.chosen)[1 - best.half], torch.arange(values.shape[1])]
        torch.testing.assert_close(best.scores, expected, rtol=0, atol=0, equal_nan=True)
        if finite(values):  # a mean of equal values may differ from them in the last bit
            slack = 1e-12 * (1 + float(values.abs().max()))
            assert float(values.min()) - slack <= best.value <= float(values.max()) + slack


# --- the causal functions on a tiny model: patch_task_vectors, task_vector_prompting, head_importance ---


@cache
def pool_vectors(backend: str) -> TaskVectors:
    """Task vectors of every task of the pool (Null too) at the embedding output and both blocks."""
    return TaskVectors.from_model(fuzz_model(backend=backend), POOL, layers=(-1, 0, 1), n_per_task=3)


@st.composite
def prompt_args(draw: Any) -> dict[str, Any]:
    """The prompts of a causal function from a sampled batch (some prompts only): ``prompts``, the batch itself or
    :class:`Prompts` of its ``inputs``, ``answer_pos``, ``answers``, ``task_ids``, ``task_names``, ``attention_mask``
    (also in the dict); mostly valid, sometimes one of them fuzzed (another length, dtype or device, NaN-free but
    meaningless values, not a tensor), or ``prompts`` not prompts at all."""
    batch = POOL.sample(draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, (1, 3)])), draw(st.integers(0, 99)))
    if draw(mostly(st.just(False), st.just(True))):
        batch = batch.select(draw(st.lists(st.integers(0, len(batch) - 1), min_size=1, max_size=5, unique=True)))
    args: dict[str, Any] = {
        "batch": batch,
        "inputs": batch.inputs,
        "answer_pos": batch.answer_pos,
        "answers": batch.answers,
        "task_ids": batch.task_ids,
        "task_names": batch.task_names,
        "attention_mask": batch.attention_mask,
    }
    field = draw(mostly(st.just("none"), st.sampled_from(["answers", "task_ids", "task_names", "inputs", "prompts"])))
    if field == "answers":
        answers = batch.answers
        args["answers"] = draw(
            st.sampled_from(
                [answers[:-1], answers.float(), answers + 100, answers.to("meta"), answers[:, :0], "a", None, -answers]
            )
        )
    elif field == "task_ids":
        ids = batch.task_ids
        args["task_ids"] = draw(st.sampled_from([ids + N_TASKS, -ids - 1, ids[:-1], ids.float(), ids.to("meta"), "0"]))
    elif field == "task_names":
        args["task_names"] = draw(st.sampled_from([batch.task_names[:1], "abcd", (), (1, 2, 3, 4)]))
    elif field == "inputs":
        args["inputs"] = draw(st.sampled_from([batch.inputs[:-1], batch.inputs[0], batch.inputs.float(), None]))
    elif field == "prompts":
        args["prompts"] = draw(st.sampled_from([batch.inputs, (batch.inputs, batch.answer_pos), None]))
    fields = (args[name] for name in ("inputs", "answer_pos", "answers", "task_ids", "task_names", "attention_mask"))
    args.setdefault("prompts", batch if field == "none" and draw(st.booleans()) else Prompts(*fields))
    return args


BOOT = mostly(st.sampled_from([0, 3]), st.sampled_from([-1, 1.5, "3"]))
ROWS_PER_PASS = mostly(st.sampled_from([512, 3]), st.sampled_from([0, -1, 1.5, "8", None]))
FUZZ_LAYERS = mostly(
    st.one_of(st.none(), st.sampled_from([(0,), (-1, 1), (1, 0)])),
    st.sampled_from([(), (2,), (0.5,), 0, "0", (0, 0), (True,)]),
)


@fuzz_settings(20, backends=True)
@given(
    backend=BACKEND,
    args=prompt_args(),
    mode=mostly(st.sampled_from(["replace", "add", "add_difference"]), st.sampled_from(["swap", None])),
    layers=FUZZ_LAYERS,
    targets=mostly(st.one_of(st.none(), st.just(POOL.task_names[:1])), st.sampled_from(["offset(1)", ("x",), 3])),
    scale=mostly(st.sampled_from([1.0, 0.5]), st.sampled_from([float("nan"), float("inf"), "1", True, 10**400])),
    n_bootstrap=BOOT,
    rows_per_pass=ROWS_PER_PASS,
    null_task=mostly(st.just("null"), st.sampled_from(["", 3, None])),
    vectors=mostly(st.just("pool"), st.sampled_from(["none", "tensor", "one layer"])),
)
def test_patch_task_vectors(
    backend: str,
    args: dict[str, Any],
    mode: Any,
    layers: Any,
    targets: Any,
    scale: Any,
    n_bootstrap: Any,
    rows_per_pass: Any,
    null_task: Any,
    vectors: Any,
) -> None:
    model = fuzz_model(backend=backend)
    chosen = {
        "pool": pool_vectors(backend),
        "none": None,
        "tensor": pool_vectors(backend).vectors,
        "one layer": pool_vectors(backend).select(layers=(1,)),
    }[vectors]
    result = outcome(
        model,
        lambda: patch_task_vectors(
            model,
            args["prompts"],
            chosen,
            targets=targets,
            null_task=null_task,
            config=TaskVectorPatching(
                mode=mode, layers=layers, scale=scale, n_bootstrap=n_bootstrap, rows_per_pass=rows_per_pass
            ),
        ),
    )
    if result is not None:
        assert finite(result.correct) and finite(result.loss)
        assert result.correct.shape[0] == len(result.layers)


@fuzz_settings(20, backends=True)
@given(
    backend=BACKEND,
    args=prompt_args(),
    layers=FUZZ_LAYERS,
    source=mostly(st.sampled_from(["other_prompt", "same_prompt", "task_mean"]), st.sampled_from(["x", None])),
    mode=mostly(st.sampled_from(["replace", "add"]), st.just("swap")),
    site=mostly(st.just("resid_post"), st.sampled_from(["resid_pre", "z", 3])),
    zero_shot=mostly(st.just("twin"), st.sampled_from(["fewer", "icl", "float"])),
    n_bootstrap=BOOT,
    rows_per_pass=ROWS_PER_PASS,
    batch_size=mostly(st.sampled_from([64, 2]), st.sampled_from([0, -1, 1.5, None])),
    use_vectors=st.booleans(),
)
def test_task_vector_prompting(
    backend: str,
    args: dict[str, Any],
    layers: Any,
    source: Any,
    mode: Any,
    site: Any,
    zero_shot: str,
    n_bootstrap: Any,
    rows_per_pass: Any,
    batch_size: Any,
    use_vectors: bool,
) -> None:
    model = fuzz_model(backend=backend)
    twin = args["batch"].zero_shot()
    zs_inputs, zs_pos, zs_mask = twin.inputs, twin.answer_pos, twin.attention_mask
    if zero_shot == "fewer":
        zs_inputs, zs_pos, zs_mask = zs_inputs[:-1], zs_pos[:-1], zs_mask[:-1]
    elif zero_shot == "float":
        zs_inputs = zs_inputs.float()
    labels = (args["answers"], args["task_ids"], args["task_names"])
    zero = args["prompts"] if zero_shot == "icl" else Prompts(zs_inputs, zs_pos, *labels, zs_mask)
    result = outcome(
        model,
        lambda: task_vector_prompting(
            model,
            args["prompts"],
            zero,
            vectors=pool_vectors(backend) if use_vectors else None,
            config=TaskVectorPrompting(
                layers=layers,
                source=source,
                mode=mode,
                site=site,
                n_bootstrap=n_bootstrap,
                rows_per_pass=rows_per_pass,
                batch_size=batch_size,
            ),
        ),
    )
    if result is not None:
        assert finite(result.tvp_correct) and finite(result.tvp_loss)
        real = real_prompts(result.task_ids, result.task_names, result.null_task)
        if bool(real.any()):  # overall accuracies leave the Null task out: NaN where it has every prompt
            assert finite(result.accuracy)


@fuzz_settings(20, backends=True)
@given(
    backend=BACKEND,
    args=prompt_args(),
    mode=mostly(st.sampled_from(["zero", "mean"]), st.sampled_from(["random", None])),
    metric=mostly(st.sampled_from(["cross_entropy", "accuracy"]), st.sampled_from(["mse", 3])),
    top_k=mostly(st.sampled_from([None, 1, 2]), st.sampled_from([0, -1, 100, 1.5, "2"])),
    prune_steps=mostly(st.sampled_from([None, 0, 2]), st.sampled_from([-1, 100, 1.5])),
    attribution=mostly(st.booleans(), st.sampled_from([None, "yes"])),
    attribution_method=mostly(st.sampled_from(["log_odds", "loss"]), st.just("grad")),
    n_bootstrap=BOOT,
    rows_per_pass=ROWS_PER_PASS,
    batch_size=mostly(st.sampled_from([64, 2]), st.sampled_from([0, -1, 1.5, None])),
)
def test_head_importance(
    backend: str,
    args: dict[str, Any],
    mode: Any,
    metric: Any,
    top_k: Any,
    prune_steps: Any,
    attribution: Any,
    attribution_method: Any,
    n_bootstrap: Any,
    rows_per_pass: Any,
    batch_size: Any,
) -> None:
    model = fuzz_model(backend=backend)
    result = outcome(
        model,
        lambda: head_importance(
            model,
            args["prompts"],
            config=HeadAblation(
                mode=mode,
                metric=metric,
                top_k=top_k,
                prune_steps=prune_steps,
                attribution=attribution,
                attribution_method=attribution_method,
                n_bootstrap=n_bootstrap,
                rows_per_pass=rows_per_pass,
                batch_size=batch_size,
            ),
        ),
    )
    if result is not None:
        present = torch.bincount(result.task_ids, minlength=len(result.task_names)) > 0  # NaN for tasks without any
        assert result.importance.shape == (N_LAYERS, N_HEADS, len(result.task_names))
        assert finite(result.importance[..., present]) and bool(result.importance[..., ~present].isnan().all())


@st.composite
def ablation_values(draw: Any) -> Any:
    """Zeros or random ``[layer, head, d_head]`` values, or another shape, dtype or device, NaN, not a tensor."""
    values = torch.randn(N_LAYERS, N_HEADS, D_HEAD, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    kind = draw(
        mostly(
            st.sampled_from(["random", "zeros", "float64"]),
            st.sampled_from(["nan", "inf", "heads", "d_head", "long", "complex", "meta", "list", "none"]),
        )
    )
    if kind == "zeros":
        return torch.zeros_like(values)
    if kind == "float64":
        return values.double()
    if kind in ("nan", "inf"):
        values[0, 0, 0] = float(kind)
    elif kind == "heads":
        values = values[:, :1]
    elif kind == "d_head":
        values = values[..., :1]
    elif kind == "long":
        values = values.long()
    elif kind == "complex":
        values = values.to(torch.complex64)
    elif kind == "meta":
        values = values.to("meta")
    elif kind == "list":
        return values.tolist()
    elif kind == "none":
        return None
    return values


@fuzz_settings(20, backends=True)
@given(
    backend=BACKEND,
    args=prompt_args(),
    values=ablation_values(),
    batch_size=mostly(st.sampled_from([64, 2, 1]), st.sampled_from([0, -1, 1.5, None, True])),
    method=mostly(st.sampled_from(["log_odds", "loss"]), st.sampled_from(["grad", None])),
    prompts_kind=mostly(st.just("aligned"), st.sampled_from(["batch", "tensor"])),
    in_mode=mostly(st.just("plain"), st.sampled_from(["no_grad", "inference_mode"])),
)
def test_head_attribution(
    backend: str, args: dict[str, Any], values: Any, batch_size: Any, method: Any, prompts_kind: str, in_mode: str
) -> None:
    model = fuzz_model(backend=backend)
    batch = args["batch"]

    def call() -> Any:
        answers = answer_tokens(args["answers"], prompt_count(args["inputs"]))
        aligned = align(model, args["inputs"], args["answer_pos"], args["attention_mask"], answer_counts(answers))
        prompts = {"aligned": aligned, "batch": batch, "tensor": batch.inputs}[prompts_kind]
        with GRAD_MODES[in_mode]():
            return head_attribution(
                model, prompts, answers, values, config=HeadAblation(batch_size=batch_size, attribution_method=method)
            )

    result = outcome(model, call)
    if result is not None:
        assert result.shape == (N_LAYERS, N_HEADS, len(batch)) and finite(result)


def test_head_attribution_is_linear_in_the_ablation_values() -> None:
    """The ``loss`` estimate is the gradient dotted with (ablation value - activation), summed over positions, so
    ablation values 0, 1 and 2 give estimates e0, e1, e2 with e2 - e1 = e1 - e0 (an analytic identity)."""
    model = fuzz_model()
    batch = POOL.sample(2, 2, seed=0)
    answers = answer_tokens(batch.answers, len(batch))
    prompts = align(model, batch.inputs, batch.answer_pos, batch.attention_mask, answer_counts(answers))
    zero, one, two = (
        head_attribution(
            model,
            prompts,
            answers,
            torch.full((N_LAYERS, N_HEADS, D_HEAD), value),
            config=HeadAblation(attribution_method="loss"),
        )
        for value in (0.0, 1.0, 2.0)
    )
    assert torch.allclose(two - one, one - zero, atol=1e-5) and not torch.allclose(one, zero)


# --- compare_models ---


@st.composite
def comparisons(draw: Any) -> dict[str, Any]:
    """Arguments of :func:`compare_models` and the TD settings of its config: models, a batch, blocks, final losses,
    TD settings; one sometimes wrong."""
    field = draw(
        mostly(
            st.just("none"),
            st.sampled_from(
                ["models", "batch", "blocks", "final_loss", "decodability", "null_task", "settings", "only null"]
            ),
        )
    )
    batch: Any = POOL.sample(3, 2, seed=draw(st.integers(0, 9)))
    models: Any = {"base": "model", "other": "model"}
    blocks: Any = draw(st.sampled_from([None, {"other": (1,)}]))
    final_loss: Any = draw(st.sampled_from([None, {"base": 1.0, "other": 0.5}]))
    decodability: Any = TaskDecodability(k=2, n_bootstrap=0)
    null_task: Any = "null"
    settings: Any = None
    if field == "models":
        models = draw(st.sampled_from([{}, [1], {"base": None}, {"base": "tensor"}, {3: "model"}]))
    elif field == "batch":
        batch = draw(st.sampled_from([None, "batch", batch.inputs, batch.select(torch.tensor([0]))]))
    elif field == "blocks":
        blocks = draw(st.sampled_from([{"other": 1}, {"other": ("a",)}, [1], {"other": (0.5,)}, {"missing": (0,)}]))
    elif field == "final_loss":
        final_loss = draw(st.sampled_from([{"base": "low"}, {"base": None}, [1.0], {"base": float("nan")}]))
    elif field == "decodability":
        decodability = draw(st.sampled_from(["knn", TaskDecodability(k=50, n_bootstrap=0), 3]))
    elif field == "null_task":
        null_task = draw(st.sampled_from([None, 3, "offset(1)"]))
    elif field == "settings":
        settings = draw(st.sampled_from(["x", [1], {"a": object()}]))
    elif field == "only null":
        batch = batch.select(batch.task_ids == POOL.task_names.index("null"))
    return {
        "models": models,
        "batch": batch,
        "blocks": blocks,
        "final_loss": final_loss,
        "decodability": decodability,
        "null_task": null_task,
        "settings": settings,
    }


@fuzz_settings(15, backends=True)
@given(backend=BACKEND, args=comparisons(), n_bootstrap=BOOT, seed=SEEDS)
def test_compare_models(backend: str, args: dict[str, Any], n_bootstrap: Any, seed: Any) -> None:
    model = fuzz_model(backend=backend)
    lookup = {"model": model, "tensor": torch.zeros(2)}
    models = args["models"]
    if isinstance(models, dict):
        models = {name: lookup.get(value, value) if isinstance(value, str) else value for name, value in models.items()}
    call_args = {**args, "models": models}
    options = {"decodability": call_args.pop("decodability"), "n_bootstrap": n_bootstrap}
    result = outcome(model, lambda: compare_models(**call_args, seed=seed, config=LayerFinetuning(**options)))
    if result is not None:
        assert result.td.shape[0] == len(models) and finite(result.td)
        assert finite(result.overall) and result.accuracy.shape == (len(models), N_TASKS)
