"""Hook hygiene under fault injection: whatever fails inside a forward pass, the model is left as it was.

For every public entry point that runs a model, a fault injector hooks every HookPoint of a fresh model and
counts the calls of a clean run; the next run then raises at one of those calls, drawn at random (seeded per
entry point and backend). Afterwards every hook tv_lens attached is gone, the hooks the user attached before
(the injector's, and a user hook that records calls) are still there and the user hook still fires, and the
weights, gradients, train/eval mode and grad mode are those of before the failing run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from conftest import BACKENDS, hook_snapshot
from reliability_helpers import (
    POOL,
    TINY_TRAINING,
    one_thread,  # noqa: F401  (autouse: tiny models run on one thread)
    tiny_model,
)

from tv_lens.analyses import (
    Emergence,
    Geometry,
    HeadAblation,
    HeadAttention,
    ICLPerformance,
    LayerFinetuning,
    Suite,
    TaskDecodability,
    TaskVectorPatching,
    TaskVectorPrompting,
    TdAccuracy,
    compare_models,
    score_batch,
)
from tv_lens.interventions import ablate_head, add, run_with_interventions
from tv_lens.models import adapt
from tv_lens.probes import collect
from tv_lens.task_vectors import TaskVectors
from tv_lens.training import LoRAConfig, TVPConfig, train, tvp_accuracy

BATCH = POOL.sample(4, (1, 3), seed=0)
TD = TaskDecodability(k=2, n_bootstrap=0, batch_size=5)


class InjectedFault(Exception):
    """Raised by the injector; deliberately not a TvLensError or RuntimeError, so nothing may swallow it."""


class FaultInjector:
    """A forward hook on every HookPoint that counts calls and raises at call number ``fail_at``."""

    def __init__(self, model: Any) -> None:
        self.hook_points = list({id(hp): hp for hp in model.hook_dict.values()}.values())  # aliases once
        self.calls = 0
        self.fail_at: int | None = None
        self.handles: list[tuple[Any, Any]] = []

    def hook(self, activation: Any, hook: Any) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise InjectedFault(f"injected fault at hook call {self.calls} ({hook.name})")

    def __enter__(self) -> FaultInjector:
        for hook_point in self.hook_points:
            before = list(hook_point.fwd_hooks)
            hook_point.add_hook(self.hook)
            self.handles += [(hook_point, h) for h in hook_point.fwd_hooks if not any(h is b for b in before)]
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for hook_point, handle in self.handles:
            handle.hook.remove()
            hook_point.fwd_hooks.remove(handle)


@dataclass(frozen=True)
class Entry:
    """A public entry point that runs ``model``; ``trains`` marks those that step an optimiser."""

    id: str
    run: Callable[[Any], object]
    trains: bool = False


ENTRIES = [
    Entry(
        "collect",
        lambda m: collect(
            m, BATCH.inputs, BATCH.answer_pos, attention_mask=BATCH.attention_mask, batch_size=5, progress=False
        ),
    ),
    Entry(
        "run_with_interventions",
        lambda m: run_with_interventions(
            m, BATCH.inputs, BATCH.answer_pos, [add(1, torch.ones(16)), ablate_head(0, 1)], batch_size=5
        ),
    ),
    Entry("task_vectors_over_prompts", lambda m: TaskVectors.from_model(m, POOL, n_per_task=3, batch_size=5)),
    Entry(
        "task_vectors_over_demo_positions",
        lambda m: TaskVectors.from_model(m, POOL, reduce="mean_over_demo_positions", n_per_task=3, batch_size=5),
    ),
    Entry("decodability", lambda m: TD.run(m, POOL, n_per_task=3)),
    Entry("performance", lambda m: ICLPerformance(shots=(0, 2), n_bootstrap=0, batch_size=4).run(m, POOL, 2)),
    Entry("geometry", lambda m: Geometry(batch_size=5).run(m, POOL, n_per_task=3)),
    Entry("td_accuracy", lambda m: TdAccuracy(shots=(0, 3), decodability=TD).run(m, POOL, n_per_task=4)),
    Entry(
        "suite",
        lambda m: Suite((TD, Geometry(), ICLPerformance(shots=(1,), n_bootstrap=0))).run(m, POOL, n_per_task=3),
    ),
    Entry("emergence", lambda m: Emergence(analyses=(TD,)).run([(0, m), (10, m)], POOL, n_per_task=3)),
    Entry("patching", lambda m: TaskVectorPatching(n_bootstrap=0, rows_per_pass=12).run(m, POOL, n_per_task=2)),
    Entry("prompting", lambda m: TaskVectorPrompting(n_bootstrap=0, rows_per_pass=12).run(m, POOL, n_per_task=2)),
    Entry(
        "prompting_task_mean",
        lambda m: TaskVectorPrompting(source="task_mean", n_bootstrap=0).run(m, POOL, n_per_task=2),
    ),
    Entry(
        "heads_with_attribution",
        lambda m: HeadAblation(mode="mean", prune_steps=2, n_bootstrap=0, rows_per_pass=12).run(m, POOL, 2),
    ),
    Entry("score_batch", lambda m: score_batch(m, BATCH, batch_size=5)),
    Entry("head_attention", lambda m: HeadAttention(n_bootstrap=0, batch_size=5).run(m, POOL, n_per_task=3)),
    Entry(
        "compare_models",
        lambda m: compare_models(
            {"base": m}, BATCH, config=LayerFinetuning(decodability=TaskDecodability(k=2, n_bootstrap=0), n_bootstrap=0)
        ),
    ),
    Entry(
        "layer_finetuning",
        lambda m: LayerFinetuning(
            k=1, lora=LoRAConfig(rank=2, dropout=0.1), train=TINY_TRAINING, decodability=TD, n_per_task=3, n_bootstrap=0
        ).run(m, POOL),
    ),
    Entry("tvp_accuracy", lambda m: tvp_accuracy(m, BATCH, layer=1, batch_size=5)),
    Entry(
        # One step: every hook call of the run comes before the optimiser step, so a fault leaves the weights.
        "train_step_with_tvp_loss",
        lambda m: train(m, POOL, replace(TINY_TRAINING, tvp=TVPConfig(layer=0)), stop_after=1, progress=False),
        trains=True,
    ),
    Entry(
        # One step in three micro-batches: a fault after the first one's backward pass puts the gradients back.
        "train_step_in_micro_batches",
        lambda m: train(
            m,
            POOL,
            replace(TINY_TRAINING, data=replace(TINY_TRAINING.data, micro_batch=4)),
            stop_after=1,
            progress=False,
        ),
        trains=True,
    ),
]


def fresh_model(backend: str) -> Any:
    """A new model after one forward pass (TransformerBridge wires its own capture hooks on the first one).

    Its ``start_at_layer`` capability is detected here too (a one-off pass).
    """
    model = tiny_model(backend)
    with torch.no_grad():
        model(BATCH.inputs[:1])
    assert adapt(model).supports_start_at_layer in (True, False)
    return model


def state(model: Any) -> dict[str, Any]:
    """What a failed run must not change: weights and buffers, gradients, mode, grad mode, global hooks."""
    from torch.nn.modules import module as torch_module

    return {
        "tensors": {name: t.detach().clone() for name, t in model.state_dict().items()},
        "grads": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "training": model.training,
        "grad_enabled": torch.is_grad_enabled(),
        "global_hooks": (len(torch_module._global_forward_hooks), len(torch_module._global_forward_pre_hooks)),
    }


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    tensors = a["tensors"].keys() == b["tensors"].keys() and all(
        torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"]
    )
    grads = all(
        a["grads"][k] is None if b["grads"][k] is None else torch.equal(a["grads"][k], b["grads"][k])
        for k in a["grads"]
    )
    same_rest = all(a[k] == b[k] for k in ("training", "grad_enabled", "global_hooks"))
    return tensors and grads and same_rest


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", ENTRIES, ids=[entry.id for entry in ENTRIES])
def test_a_fault_at_a_random_hook_call_leaves_the_model_as_it_was(entry: Entry, backend: str):
    model = fresh_model(backend)
    pristine = hook_snapshot(model)
    user_point = model.hook_dict["blocks.0.hook_resid_post"]
    user_calls: list[int] = []
    user_point.add_hook(lambda activation, hook: user_calls.append(activation.shape[0]))
    with FaultInjector(model) as injector:
        entry.run(model)  # a first run may detect and cache what the model supports (extra passes)
        injector.calls = 0
        entry.run(model)  # a clean run, to count the hook calls
        total = injector.calls
        fail_at = random.Random(f"{entry.id}/{backend}").randint(1, total)
        injector.calls, injector.fail_at = 0, fail_at
        before_hooks, before = hook_snapshot(model), state(model)
        with pytest.raises(InjectedFault):
            entry.run(model)
        assert injector.calls == fail_at, "the fault was swallowed and the run went on"
        assert hook_snapshot(model) == before_hooks, f"hooks left attached after a fault at call {fail_at}/{total}"
        assert same_state(state(model), before), f"the model changed after a fault at call {fail_at}/{total}"
    user_calls.clear()
    with torch.no_grad():
        model(BATCH.inputs[:2])
    assert user_calls == [2]  # the user's hook survived and still fires
    user_point.remove_hooks("fwd")
    assert hook_snapshot(model) == pristine
