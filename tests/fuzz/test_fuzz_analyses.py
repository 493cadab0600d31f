"""Fuzzing every analysis's ``run`` and ``run_batch`` on a tiny model.

Each example draws an analysis with random settings (some out of range), a prompt count, shots, a seed and
whether to run on a pool or on a sampled batch. The call returns a result whose main numbers have the right
shape and are finite, or raises a TvLensError; never another exception, and no hook stays attached.
"""

from __future__ import annotations

from typing import Any

import torch
from fuzz_helpers import BACKEND, LAYERS, N_HEADS, N_LAYERS, SEEDS, finite, fuzz_model, fuzz_settings, mostly, outcome
from hypothesis import given
from hypothesis import strategies as st
from reliability_helpers import POOL, one_thread  # noqa: F401  (autouse: tiny models run on one thread)

from tv_lens.analyses import (
    AttentionKnockout,
    FunctionVectors,
    Geometry,
    HeadAblation,
    HeadAttention,
    ICLPerformance,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TdAccuracy,
)
from tv_lens.analyses.attention import role_attention
from tv_lens.task_vectors import TaskVectors
from tv_lens.tasks import PROMPT_ROLES, position_roles

N_TASKS = len(POOL.task_names)
N_PER_TASK = mostly(st.sampled_from([2, 3, 4]), st.sampled_from([0, 1, -1, 10**12, 2.0, None]))
N_SHOTS = mostly(st.sampled_from([1, 2, (1, 3)]), st.sampled_from([0, -1, (3, 1), 10**6, "4"]))
N_BOOTSTRAP = mostly(st.sampled_from([0, 5]), st.sampled_from([-1, 1.5]))
CI = mostly(st.just(0.9), st.sampled_from([0.0, 1.0, float("nan"), "0.9"]))


def analyses() -> st.SearchStrategy[Any]:
    """An analysis config with random settings, or the ValueError-free refusal of a bad one (made inside the call)."""
    return st.one_of(
        st.builds(
            lambda k, method, layers, n_boot, ci: (
                lambda: TaskDecodability(k=k, method=method, layers=layers, n_bootstrap=n_boot, ci=ci, n_folds=2)
            ),
            mostly(st.sampled_from([1, 2]), st.sampled_from([0, 50, 1.0])),
            mostly(st.sampled_from(["knn", "probe"]), st.just("svm")),
            LAYERS,
            N_BOOTSTRAP,
            CI,
        ),
        st.builds(
            lambda shots, n_boot: lambda: ICLPerformance(shots=shots, n_bootstrap=n_boot),
            mostly(st.sampled_from([(0, 1), (2,)]), st.sampled_from([(), (-1,), 3, (1.5,)])),
            N_BOOTSTRAP,
        ),
        st.builds(
            lambda method, layers: lambda: Geometry(method=method, layers=layers),
            mostly(st.just("pca"), st.sampled_from(["tsne", 3])),
            LAYERS,
        ),
        st.builds(
            lambda mode, layers, n_boot: lambda: TaskVectorPatching(mode=mode, layers=layers, n_bootstrap=n_boot),
            mostly(st.sampled_from(["replace", "add", "add_difference"]), st.just("swap")),
            LAYERS,
            N_BOOTSTRAP,
        ),
        st.builds(
            lambda layers, n_boot: lambda: TaskVectorPrompting(layers=layers, n_bootstrap=n_boot),
            LAYERS,
            N_BOOTSTRAP,
        ),
        st.builds(
            lambda mode, top_k, prune, attribution: (
                lambda: HeadAblation(mode=mode, top_k=top_k, prune_steps=prune, attribution=attribution, n_bootstrap=0)
            ),
            mostly(st.sampled_from(["zero", "mean"]), st.just("random")),
            mostly(st.sampled_from([None, 1]), st.sampled_from([0, 100])),
            mostly(st.sampled_from([0, 2]), st.sampled_from([-1, 100])),
            st.booleans(),
        ),
        st.builds(
            lambda k, noise, layers, n_boot: (
                lambda: FunctionVectors(k=k, label_noise=noise, layers=layers, n_bootstrap=n_boot, progress=False)
            ),
            mostly(st.sampled_from([1, 2]), st.sampled_from([0, N_LAYERS * N_HEADS + 1, 1.5])),
            mostly(st.sampled_from([0.5, 0.99]), st.sampled_from([1.0, -0.1, float("nan")])),
            LAYERS,
            N_BOOTSTRAP,
        ),
        st.builds(
            lambda layers, n_boot, ci, batch_size, split: (
                lambda: HeadAttention(
                    layers=layers, n_bootstrap=n_boot, ci=ci, batch_size=batch_size, by_demonstration=split
                )
            ),
            LAYERS,
            N_BOOTSTRAP,
            CI,
            mostly(st.sampled_from([1, 3, 64]), st.sampled_from([0, -2, 1.5, None])),
            mostly(st.booleans(), st.sampled_from([0, 1, "yes", None])),
        ),
        st.builds(
            lambda window, roles, metric, split: (
                lambda: AttentionKnockout(
                    window=window, roles=roles, metric=metric, by_demonstration=split, n_bootstrap=0
                )
            ),
            mostly(st.sampled_from([1, 2]), st.sampled_from([0, N_LAYERS + 1, 1.5, None])),
            mostly(
                st.sampled_from([("demo_answer",), ("demo_input", "separator", "query"), ("prefix", "answer_pos")]),
                st.sampled_from([(), "demo_answer", ("label",), ("query", "query"), None]),
            ),
            mostly(st.sampled_from(["cross_entropy", "accuracy"]), st.sampled_from(["kl", None])),
            mostly(st.booleans(), st.sampled_from([0, "yes"])),
        ),
        st.builds(
            lambda shots: lambda: TdAccuracy(shots=shots),
            mostly(st.sampled_from([(1, 2), (1, 3)]), st.sampled_from([(), (1,), (-1, 2)])),
        ),
    )


def check_result(result: Any) -> None:
    """The main numbers of each result: shaped by the model and the pool, and finite."""
    name = type(result).__name__
    if name == "Decodability":
        assert result.per_task.shape[-1] == N_TASKS and finite(result.td)
    elif name == "Performance":  # NaN where a (task, shots) cell has no prompts (e.g. run_batch, other shots)
        has_prompts = result.n_prompts > 0
        assert result.values.shape == has_prompts.shape and result.values.shape[0] == N_TASKS
        assert finite(result.values[has_prompts]) and bool(result.values[~has_prompts].isnan().all())
    elif name == "Projection":
        assert result.coords.shape[-1] == 2 and finite(result.coords)
    elif name == "PatchingEffects":
        assert finite(result.correct) and finite(result.loss)
    elif name == "PromptingAccuracy":
        assert finite(result.accuracy) and finite(result.tvp_loss)
    elif name == "HeadImportance":
        assert result.importance.shape[:2] == (N_LAYERS, N_HEADS) and finite(result.importance)
    elif name == "FunctionVectorResult":
        assert result.effects.cie.shape[:2] == (N_LAYERS, N_HEADS) and finite(result.effects.cie)
        assert finite(result.vector.vectors) and finite(result.prompting.prompting.accuracy)
    elif name == "RoleAttention":
        sums = result.attention.sum(2)
        names = result.role_names  # PROMPT_ROLES, or each demonstration apart between the prefix and the query
        assert (names[0], *names[-2:]) == (PROMPT_ROLES[0], *PROMPT_ROLES[-2:]) and len(names) % 3 == 0
        assert result.attention.shape[1:3] == (N_HEADS, len(names)) and finite(result.attention)
        assert bool(((sums - 1).abs() < 1e-5).all())
    elif name == "KnockoutEffects":
        assert result.knocked_loss.shape[:2] == (len(result.windows), len(result.role_names))
        real = torch.tensor([result.task_names[i] != result.null_task for i in result.task_ids.tolist()])
        measured = (result.present & real).any(-1)  # a role some real prompt has: the others have no mean
        assert finite(result.knocked_loss) and finite(result.overall[:, measured])
        assert bool(result.overall[:, ~measured].isnan().all())
        assert all(len(window) == len(result.windows[0]) for window in result.windows)
    elif name == "TdAccuracyFit":
        assert finite(result.td) and finite(result.score)
    else:
        raise AssertionError(f"unexpected result {name}")


@fuzz_settings(100, backends=True)
@given(
    backend=BACKEND,
    make=analyses(),
    n_per_task=N_PER_TASK,
    n_shots=N_SHOTS,
    seed=SEEDS,
    on_batch=st.booleans(),
    in_mode=mostly(st.just("plain"), st.sampled_from(["no_grad", "inference_mode"])),
)
def test_analysis_run(
    backend: str, make: Any, n_per_task: Any, n_shots: Any, seed: Any, on_batch: bool, in_mode: str
) -> None:
    model = fuzz_model(backend=backend)

    def call() -> Any:
        analysis = make()
        with {"plain": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[in_mode]():
            needs_vectors = isinstance(analysis, TaskVectorPatching)
            vectors = TaskVectors.from_model(model, POOL, n_per_task=3) if needs_vectors else None
            extra = {"vectors": vectors} if needs_vectors else {}
            # FunctionVectors.run_batch takes three batches (clean, corrupted, evaluation): its run is fuzzed
            if on_batch and hasattr(analysis, "run_batch") and not isinstance(analysis, FunctionVectors):
                batch = POOL.sample(n_per_task, n_shots, seed=0)
                return analysis.run_batch(model, batch, seed=seed, **extra)
            takes_shots = not isinstance(analysis, (ICLPerformance, TdAccuracy))
            shots = {"n_shots": n_shots} if takes_shots else {}
            return analysis.run(model, POOL, n_per_task=n_per_task, seed=seed, **shots, **extra)

    result = outcome(model, call)
    if result is not None:
        check_result(result)


def own_roles() -> st.SearchStrategy[Any]:
    """Roles of one's own for the batch of ``test_role_attention_with_roles_of_ones_own``: the batch's roles merged
    into ``k`` ids, or spoilt (an id outside the names or ``-1`` where the answer position attends, another dtype or
    shape, a list, a string)."""

    @st.composite
    def draw_roles(draw: Any) -> tuple[Any, Any]:
        batch = POOL.sample(2, (1, 3), seed=0)
        k = draw(st.integers(1, len(PROMPT_ROLES)))
        roles = torch.where(position_roles(batch) >= 0, position_roles(batch) % k, -1)
        names: Any = tuple(f"role{i}" for i in range(k))
        spoil = draw(mostly(st.just("none"), st.sampled_from(["outside", "minus", "float", "short", "list", "text"])))
        row, column = draw(st.integers(0, len(batch) - 1)), draw(st.integers(0, 3))  # every prompt has 4 positions
        if spoil in ("outside", "minus"):
            roles[row, column] = k if spoil == "outside" else -1
        converted = {"float": lambda r: r.double(), "short": lambda r: r[:, :-1], "list": lambda r: r.tolist()}
        given: Any = converted.get(spoil, lambda r: r)(roles)
        if spoil == "text":
            given, names = "demo_answer", "demo_answer"
        return given, draw(mostly(st.just(names), st.sampled_from([None, (), ("a", "a"), (1, 2)])))

    return draw_roles()


@fuzz_settings(40, backends=True)
@given(backend=BACKEND, roles_and_names=own_roles(), layers=LAYERS)
def test_role_attention_with_roles_of_ones_own(backend: str, roles_and_names: Any, layers: Any) -> None:
    model = fuzz_model(backend=backend)
    roles, names = roles_and_names
    batch = POOL.sample(2, (1, 3), seed=0)

    def call() -> Any:
        config = HeadAttention(layers=layers, n_bootstrap=0)
        return role_attention(model, batch, roles, role_names=names, config=config)

    result = outcome(model, call)
    if result is not None:
        sums = result.attention.sum(2)
        assert result.attention.shape[2] == len(names) and bool(((sums - 1).abs() < 1e-5).all())
