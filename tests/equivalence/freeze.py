"""Freeze today's numbers of every public analysis and building block into ``frozen.json``.

What it freezes: each entry of :data:`ANALYSES` runs public tv_lens calls on fixed seeds, on tiny models built
from config (float64 TransformerBridge models from ``tests/conftest.py``'s ``tiny_config``, one continuous-input
model, and a float32 two-block GPT-2 of :mod:`tv_lens.models.local_hf`), and every number it returns is written
to ``frozen.json``: each tensor in full when small, otherwise a fixed set of entries plus its sum, sum of
absolute values and sum of squares; every other number, string and flag as it is. ``test_equivalence.py``
recomputes the same entries through the same functions and compares them with the file.

Re-freezing is a deliberate act, for a change that is meant to change numbers (a fixed bug, a new default)::

    python -m tests.equivalence.freeze        # or: python tests/equivalence/freeze.py

then review ``git diff tests/equivalence/frozen.json`` entry by entry and say in the commit why each changed
number had to change. A refactor must never re-freeze: it must reproduce the frozen numbers. If a refactor
renames a result field, map its new name to the frozen one in :data:`RENAMED_FIELDS`, never the numbers.

Numbers are the same under TransformerLens 3 and 4 except training (``training``, ``tvp_training``): TL 3's
TransformerBridge also trains an unembedding bias, so those entries are frozen per TL major version
(``training@tl3``, ``training@tl4``). The script writes the entries of the installed version and keeps the other
version's as they were; run it under each major version to re-freeze both.

Numbers are read through the public API only (analysis configs, ``collect``, ``run_with_interventions``,
``generate``, ``train``, ``tvp_losses``, result fields), so the file survives internal refactors. Each
computation runs on one torch thread with deterministic algorithms and freshly seeded global generators.
"""

from __future__ import annotations

import json
import math
import random
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
for _folder in (TESTS, TESTS / "helpers"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from analyses_helpers import POOL, collect_batch, sample  # noqa: E402
from conftest import tiny_config  # noqa: E402
from pretrained_helpers import SIZES  # noqa: E402
from reliability_helpers import TINY_TRAINING  # noqa: E402

from tv_lens import (  # noqa: E402
    AttentionKnockout,
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
    TaskVectors,
    TdAccuracy,
    train,
)
from tv_lens.analyses import fit_td_accuracy, ols, role_attention, shared_heads  # noqa: E402
from tv_lens.generation import generate  # noqa: E402
from tv_lens.interventions import ablate_head, add, replace, run_with_interventions  # noqa: E402
from tv_lens.models import ModelConfig, build_continuous_model, build_model  # noqa: E402
from tv_lens.models.local_hf import build_local_model, build_tokenizer, load_local_model  # noqa: E402
from tv_lens.tasks import (  # noqa: E402
    PROMPT_ROLES,
    TextPool,
    TextTask,
    bitwise_text_tasks,
    position_roles,
    sparse_linear_pool,
)
from tv_lens.training import DataConfig, LoRAConfig, ScheduleConfig, TrainConfig, TVPConfig, tvp_accuracy, tvp_losses  # noqa: E402

FROZEN = HERE / "frozen.json"
FORMAT = 1

#: Tolerances of the comparison: float64 models, and stages that run in float32.
FLOAT64 = {"rtol": 1e-6, "atol": 1e-7}
FLOAT32 = {"rtol": 1e-5, "atol": 1e-5}

#: Tensors of at most this many entries are stored in full; larger ones by SAMPLES entries plus sums.
FULL_MAX = 48
SAMPLES = 24

#: Fields that record how a computation ran (time, memory-dependent chunking) or where its inputs came from
#: (a weights fingerprint, a description of the pool), not what it computed.
NOT_NUMBERS = frozenset({"elapsed_s", "rows_per_pass", "batch_size", "progress", "used_cache", "provenance"})

#: Result fields renamed since the freeze: ``{new name: frozen name}`` (keys stay those of the frozen file).
RENAMED_FIELDS: dict[str, str] = {}

TD = TaskDecodability(k=3, n_bootstrap=20)
SEED = 3

PAIRS = (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("good", "bad"), ("old", "new"))
TEXT_TASKS = (
    TextTask("antonym", PAIRS),
    TextTask("same", tuple((x, x) for x, _ in PAIRS)),
    TextTask("twice", tuple((x, f"{x} {x}") for x, _ in PAIRS)),
)


# --- the models, built once per process ----------------------------------------------------------------------------


class Fixtures:
    """The models and pools every entry uses, each built on first use."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="tv-lens-equivalence-")
        self._heads: Any = None

    def close(self) -> None:
        """Remove the temporary folder of the local GPT-2."""
        self._folder.cleanup()

    @cached_property
    def model(self) -> Any:
        """``tiny_config`` (3 blocks, width 32, 4 heads, 24 tokens), float64, TransformerBridge, seed 0."""
        return build_model(tiny_config("bridge", dtype="float64"))

    @cached_property
    def model_seed1(self) -> Any:
        """The same architecture initialised with seed 1 (a second 'checkpoint')."""
        return build_model(tiny_config("bridge", dtype="float64", seed=1))

    def fresh_model(self) -> Any:
        """A new copy of :attr:`model`'s config (for training, which changes weights in place)."""
        return build_model(tiny_config("bridge", dtype="float64"))

    @cached_property
    def continuous(self) -> tuple[Any, Any]:
        """A float64 continuous-input bridge model and the sparse-linear regression pool it reads."""
        pool = sparse_linear_pool(d=8, n_bases=2)
        config = ModelConfig(d_vocab=1, n_layers=2, d_model=16, n_heads=2, n_ctx=32, dtype="float64", backend="bridge")
        return build_continuous_model(config, d_in=pool.d_in, d_out=pool.d_out), pool

    @cached_property
    def text(self) -> tuple[Any, Any]:
        """A text pool through the local byte-level BPE tokenizer, and a float64 tiny model of its vocabulary."""
        tasks = (*TEXT_TASKS, *bitwise_text_tasks(ops=("and", "xor"), n_bits=4, n_examples=12, seed=3))
        pool = TextPool(tasks, build_tokenizer(), template="{x} -> {y}", null=True, bos=True)
        model = build_model(tiny_config("bridge", d_vocab=pool.vocab_size, n_ctx=96, dtype="float64"))
        return model, pool

    @cached_property
    def gpt2(self) -> tuple[Any, Any]:
        """A random two-block GPT-2 (``SIZES``, seed 0), float32 bridge, and a text pool of its tokenizer."""
        folder = build_local_model("gpt2", Path(self._folder.name) / "gpt2", **SIZES)
        model = load_local_model(folder, "bridge")
        return model, TextPool(TEXT_TASKS, model.tokenizer, template="{x} -> {y}", null=True, bos=True)

    def heads(self) -> Any:
        """HeadAblation, mean ablation, attribution and a 4-step pruning curve (shared by two entries)."""
        if self._heads is None:
            config = HeadAblation(mode="mean", prune_steps=4, top_k=2, attribution=True, n_bootstrap=20)
            self._heads = config.run(self.model, POOL, n_per_task=3, n_shots=(1, 3), seed=SEED)
        return self._heads


# --- the entries ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One analysis: what it computes, its tolerance, its calls in words, and whether it is frozen per TL major."""

    compute: Callable[[Fixtures], Any]
    tolerance: dict[str, float]
    calls: str
    per_tl_major: bool = False

    def key(self, name: str, major: int | None = None) -> str:
        """Its key in the file: the name, or ``name@tl<major>`` for numbers that differ between TL versions."""
        return f"{name}@tl{tl_major() if major is None else major}" if self.per_tl_major else name


def tl_major() -> int:
    """The installed TransformerLens's major version."""
    from importlib.metadata import version

    return int(version("transformer_lens").split(".")[0])


ANALYSES: dict[str, Entry] = {}


def entry(
    calls: str, tolerance: dict[str, float] = FLOAT64, per_tl_major: bool = False
) -> Callable[[Callable[[Fixtures], Any]], Any]:
    def register(compute: Callable[[Fixtures], Any]) -> Callable[[Fixtures], Any]:
        ANALYSES[compute.__name__] = Entry(compute, tolerance, calls, per_tl_major)
        return compute

    return register


@entry("collect(model, sample(n_per_task=6, n_shots=(1, 4), seed=0)) and collect(..., site='attn_out')")
def collect(fx: Fixtures) -> Any:
    batch = sample(n_per_task=6, n_shots=(1, 4), seed=0)
    reps = collect_batch(fx.model, batch)
    attn = collect_batch(fx.model, batch, layers=[0, 2], site="attn_out")
    return {"resid_post": reps, "attn_out": attn}


@entry(
    "run_with_interventions on sample(4, (1, 3), seed=1): none; replace(1, v); add(0, v, site='resid_mid'); "
    "add(2, v, pos='all'); ablate_head(1, 2); ablate_head(2, 0, 'mean', m); v, m from Generator seeds 0, 1"
)
def interventions(fx: Fixtures) -> Any:
    batch = sample(n_per_task=4, n_shots=(1, 3), seed=1)
    vectors = torch.randn(len(batch), 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = torch.randn(8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cases = {
        "clean": [],
        "replace": [replace(1, vectors)],
        "add_mid": [add(0, vectors[0], site="resid_mid")],
        "add_all": [add(2, vectors[1], pos="all")],
        "ablate_zero": [ablate_head(1, 2)],
        "ablate_mean": [ablate_head(2, 0, "mean", mean)],
        "together": [replace(0, vectors), ablate_head(1, 1)],
    }
    return {
        name: run_with_interventions(
            fx.model, batch.inputs, batch.answer_pos, chosen, attention_mask=batch.attention_mask, batch_size=5
        )
        for name, chosen in cases.items()
    }


@entry("TaskVectors.from_model(model, POOL, reduce=mean_over_prompts | mean_over_demo_positions, 4, (1, 3), seed=3)")
def task_vectors(fx: Fixtures) -> Any:
    return {
        reduce: TaskVectors.from_model(fx.model, POOL, reduce=reduce, n_per_task=4, n_shots=(1, 3), seed=SEED)
        for reduce in ("mean_over_prompts", "mean_over_demo_positions")
    }


@entry(
    "TaskDecodability(k=3, n_bootstrap=20).run(model, POOL, 6, (1, 3), seed=3); cosine k=4 on layers (0, 2); "
    "method='probe' n_folds=3"
)
def decodability(fx: Fixtures) -> Any:
    return {
        "knn": TD.run(fx.model, POOL, n_per_task=6, n_shots=(1, 3), seed=SEED),
        "cosine": TaskDecodability(k=4, metric="cosine", layers=(0, 2), n_bootstrap=10).run(
            fx.model, POOL, n_per_task=6, n_shots=3, seed=SEED
        ),
        "probe": TaskDecodability(method="probe", n_folds=3, n_bootstrap=0).run(
            fx.model, POOL, n_per_task=6, n_shots=(1, 3), seed=SEED
        ),
    }


@entry("ICLPerformance(shots=(0, 2), n_bootstrap=20).run(model, POOL, 4, seed=3); metric='cross_entropy'")
def performance(fx: Fixtures) -> Any:
    return {
        "auto": ICLPerformance(shots=(0, 2), n_bootstrap=20).run(fx.model, POOL, n_per_task=4, seed=SEED),
        "cross_entropy": ICLPerformance(shots=(1,), metric="cross_entropy", higher_is_better=False, n_bootstrap=10).run(
            fx.model, POOL, n_per_task=4, seed=SEED
        ),
    }


@entry("Geometry().run(model, POOL, n_per_task=4, seed=3) (PCA, every layer)")
def geometry(fx: Fixtures) -> Any:
    return Geometry().run(fx.model, POOL, n_per_task=4, seed=SEED)


@entry(
    "TaskVectorPatching(mode='add_difference', n_bootstrap=20).run(model, POOL, 3, seed=3); "
    "TaskVectorPatching(mode='replace', layers=(0, 2), n_bootstrap=10).run_batch(model, sample(3, (1, 3), 0), "
    "TaskVectors.from_model(model, sample(3, seed=1), layers=(0, 2)), pool=POOL) (overriding)"
)
def patching(fx: Fixtures) -> Any:
    run = TaskVectorPatching(mode="add_difference", n_bootstrap=20).run(fx.model, POOL, n_per_task=3, seed=SEED)
    batch = sample(n_per_task=3, n_shots=(1, 3), seed=0)
    vectors = TaskVectors.from_model(fx.model, sample(n_per_task=3, seed=1), layers=(0, 2))
    config = TaskVectorPatching(mode="replace", layers=(0, 2), n_bootstrap=10)
    return {"run": run, "run_batch": config.run_batch(fx.model, batch, vectors, pool=POOL, seed=SEED)}


@entry(
    "TaskVectorPrompting(n_bootstrap=20).run(model, POOL, 3, seed=3) (teacher_forced, other_prompt); "
    "source='task_mean', mode='add', layers=(1,)"
)
def prompting(fx: Fixtures) -> Any:
    return {
        "other_prompt": TaskVectorPrompting(n_bootstrap=20).run(fx.model, POOL, n_per_task=3, seed=SEED),
        "task_mean_add": TaskVectorPrompting(source="task_mean", mode="add", layers=(1,), n_bootstrap=10).run(
            fx.model, POOL, n_per_task=3, seed=SEED
        ),
    }


@entry(
    "HeadAblation(mode='mean', prune_steps=4, top_k=2, attribution=True, n_bootstrap=20).run(model, POOL, 3, (1, 3), "
    "seed=3) without its pruning curve; HeadAblation(mode='zero', shared='spearman', attribution=False).run(..., 2)"
)
def heads(fx: Fixtures) -> Any:
    mean = {f.name: getattr(fx.heads(), f.name) for f in fields(fx.heads()) if f.name != "pruning"}
    zero = HeadAblation(mode="zero", shared="spearman", attribution=False, n_bootstrap=10).run(
        fx.model, POOL, n_per_task=2, seed=SEED
    )
    return {"mean": mean, "zero": zero}


@entry("the pruning curve of the 'heads' entry's mean ablation; shared_heads(importance, 'jaccard', 3 / 'spearman')")
def pruning(fx: Fixtures) -> Any:
    result = fx.heads()
    return {
        "curve": result.pruning,
        "jaccard_3": shared_heads(result.importance, "jaccard", top_k=3),
        "spearman": shared_heads(result.importance, "spearman"),
    }


@entry(
    "HeadAttention(n_bootstrap=20).run(model, POOL, 4, (1, 3), seed=3); role_attention of its batch with two roles "
    "of our own (the demonstrations' answers, the rest) on blocks (2, 0)"
)
def attention(fx: Fixtures) -> Any:
    batch = POOL.sample(4, (1, 3), SEED)
    roles = position_roles(batch)
    own = torch.where(roles == PROMPT_ROLES.index("demo_answer"), 0, torch.where(roles >= 0, 1, -1))
    config = HeadAttention(layers=(2, 0), n_bootstrap=20)
    return {
        "roles": HeadAttention(n_bootstrap=20).run(fx.model, POOL, n_per_task=4, n_shots=(1, 3), seed=SEED),
        "own": role_attention(fx.model, batch, own, role_names=("answers", "rest"), config=config, seed=SEED),
    }


@entry("Suite((TD, Geometry(), ICLPerformance(shots=(1,), n_bootstrap=20))).run(model, POOL, 4, (1, 3), seed=3)")
def suite(fx: Fixtures) -> Any:
    analyses = (TD, Geometry(), ICLPerformance(shots=(1,), n_bootstrap=20))
    return Suite(analyses).run(fx.model, POOL, n_per_task=4, n_shots=(1, 3), seed=SEED)


@entry("TdAccuracy(shots=(0, 3), decodability=TD).run(model, POOL, 5, seed=3); fit_td_accuracy and ols on fixed points")
def td_accuracy(fx: Fixtures) -> Any:
    fit = TdAccuracy(shots=(0, 3), decodability=TD).run(fx.model, POOL, n_per_task=5, seed=SEED)
    td = torch.tensor([0.25, 0.4, 0.55, 0.7, 0.3, 0.9], dtype=torch.float64)
    accuracy = torch.tensor([0.1, 0.35, 0.5, 0.8, 0.2, 0.95], dtype=torch.float64)
    return {
        "run": fit,
        "fit_td_accuracy": fit_td_accuracy(td, accuracy, task_ids=[0, 0, 1, 1, 2, 2], shots=[1, 4, 1, 4, 1, 4]),
        "ols": ols(td, accuracy),
    }


@entry("Emergence(analyses=(TD,), n_shots=2).run([(0, model seed 0), (5, model seed 1)], POOL, 4, seed=3)")
def emergence(fx: Fixtures) -> Any:
    return Emergence(analyses=(TD,), n_shots=2).run([(0, fx.model), (5, fx.model_seed1)], POOL, n_per_task=4, seed=SEED)


FINETUNING = LayerFinetuning(
    k=1,
    lora=LoRAConfig(rank=2, alpha=2.0, dropout=0.1),
    train=TrainConfig(
        data=DataConfig(n_per_task=3, n_shots=3, eval_n_per_task=2),
        schedule=ScheduleConfig(max_steps=2, lr=1e-2, warmup_steps=1),
        eval_every=2,
    ),
    decodability=TaskDecodability(k=2, n_bootstrap=0),
    n_per_task=4,
    n_shots=3,
    n_bootstrap=20,
)


@entry("LayerFinetuning(k=1, LoRA rank 2 dropout 0.1, 2 steps, TaskDecodability(k=2)).run(model, POOL, seed=1)")
def finetuning(fx: Fixtures) -> Any:
    return FINETUNING.run(fx.model, POOL, seed=1)


def _trained(fx: Fixtures, config: TrainConfig) -> dict[str, Any]:
    result = train(fx.fresh_model(), POOL, config, progress=False)
    batch = sample(n_per_task=2, n_shots=(1, 3), seed=5)
    mask = batch.attention_mask
    after = run_with_interventions(result.model, batch.inputs, batch.answer_pos, [], attention_mask=mask)
    return {"history": result.history, "evals": result.evals, "steps": result.steps, "logits_after": after.logits}


#: Training numbers are frozen per TransformerLens major version: TL 3's TransformerBridge trains a bias of the
#: unembedding (zero at initialisation, so every forward number agrees) that TL 4's bridge does not have, so the
#: gradient norm, and every step after the first, differ between them.
TRAINING_NOTE = "per TL major: TL 3's bridge also trains an unembedding bias"


@entry(
    "train(fresh model, POOL, TINY_TRAINING) (3 AdamW steps): history, evals, answer logits after; " + TRAINING_NOTE,
    per_tl_major=True,
)
def training(fx: Fixtures) -> Any:
    return _trained(fx, TINY_TRAINING)


@entry(
    "tvp_losses(model, sample(3, (1, 3), seed=2), TVPConfig(layer=1, lam=0.5)) and "
    "TVPConfig(layer=2, lam=2, mode='add', source='same_prompt'); tvp_accuracy(model, batch, 1)"
)
def tvp_loss(fx: Fixtures) -> Any:
    batch = sample(n_per_task=3, n_shots=(1, 3), seed=2)
    out: dict[str, Any] = {}
    for name, tvp in {
        "replace_other": TVPConfig(layer=1, lam=0.5),
        "add_same": TVPConfig(layer=2, lam=2.0, mode="add", source="same_prompt"),
    }.items():
        losses = tvp_losses(fx.model, batch, tvp)
        out[name] = {"total": losses.total.detach(), "icl": losses.icl.detach(), "tvp": losses.tvp.detach()}
    out["tvp_accuracy"] = tvp_accuracy(fx.model, batch, 1)
    return out


@entry(
    "train(fresh model, POOL, TINY_TRAINING with TVPConfig(layer=0, lam=0.5)): history (loss_tvp), evals "
    "(tvp_accuracy), answer logits after; " + TRAINING_NOTE,
    per_tl_major=True,
)
def tvp_training(fx: Fixtures) -> Any:
    return _trained(fx, TrainConfig(**{**_config_dict(TINY_TRAINING), "tvp": TVPConfig(layer=0, lam=0.5)}))


def _config_dict(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(config)}


@entry(
    "generate(model, sample(2, (1, 3), seed=4), max_new_tokens=6) greedy: no intervention; add(1, 4·v) at answer; "
    "the same with every_new_token=True"
)
def generation(fx: Fixtures) -> Any:
    batch = sample(n_per_task=2, n_shots=(1, 3), seed=4)
    vector = 4.0 * torch.randn(32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    steer = [add(1, vector, pos="answer")]
    return {
        "plain": generate(fx.model, batch, max_new_tokens=6, stop_tokens=None),
        "steered": generate(fx.model, batch, steer, max_new_tokens=6, stop_tokens=None),
        "every_token": generate(fx.model, batch, steer, max_new_tokens=6, stop_tokens=None, every_new_token=True),
    }


@entry(
    "continuous bridge model (2 blocks, width 16) on sparse_linear_pool(d=8, n_bases=2): "
    "TaskDecodability(k=4, n_bootstrap=10).run(.., 8, 4, seed=3); ICLPerformance(shots=(0, 2), n_bootstrap=10)"
)
def regression(fx: Fixtures) -> Any:
    model, pool = fx.continuous
    return {
        "decodability": TaskDecodability(k=4, n_bootstrap=10).run(model, pool, n_per_task=8, n_shots=4, seed=SEED),
        "performance": ICLPerformance(shots=(0, 2), n_bootstrap=10).run(model, pool, n_per_task=4, seed=SEED),
    }


@entry(
    "TextPool(antonym, same, twice, and, xor; build_tokenizer()) on a float64 tiny model: "
    "Suite((TD, ICLPerformance(shots=(0, 2)))).run(.., 4, (1, 2), seed=3); "
    "TaskVectorPatching(mode='add', n_bootstrap=10).run(.., 2, seed=3)"
)
def text_pool(fx: Fixtures) -> Any:
    model, pool = fx.text
    analyses = (TD, ICLPerformance(shots=(0, 2), n_bootstrap=10))
    return {
        "suite": Suite(analyses).run(model, pool, n_per_task=4, n_shots=(1, 2), seed=SEED),
        "patching": TaskVectorPatching(mode="add", n_bootstrap=10).run(model, pool, n_per_task=2, seed=SEED),
    }


@entry(
    "local GPT-2 (2 blocks, width 64, 4 heads, seed 0; float32 bridge) on TextPool(antonym, same, twice) of its "
    "tokenizer: TD(k=3, n_bootstrap=10), ICLPerformance(shots=(1, 2)), TaskVectorPrompting at 3 prompts per task, "
    "HeadAblation(zero, attribution) at 2 prompts per task, seed 3",
    FLOAT32,
)
def text_gpt2(fx: Fixtures) -> Any:
    model, pool = fx.gpt2
    return {
        "decodability": TaskDecodability(k=3, n_bootstrap=10).run(model, pool, n_per_task=4, n_shots=(1, 2), seed=SEED),
        "performance": ICLPerformance(shots=(1, 2), n_bootstrap=10).run(model, pool, n_per_task=3, seed=SEED),
        "prompting": TaskVectorPrompting(n_bootstrap=10).run(model, pool, n_per_task=3, n_shots=2, seed=SEED),
        "heads": HeadAblation(n_bootstrap=10).run(model, pool, n_per_task=2, n_shots=2, seed=SEED),
    }


@entry(
    "local GPT-2 as above on TextPool(antonym, same, twice), 3 prompts per task, 1 to 3 shots, seed 3: "
    "AttentionKnockout(n_bootstrap=10) (the answer, windows of one block) and AttentionKnockout(query='demo_answer', "
    "roles=('demo_input',), by_demonstration=True, window=2, n_bootstrap=10)",
    FLOAT32,
)
def knockout(fx: Fixtures) -> Any:
    model, pool = fx.gpt2
    labels = AttentionKnockout(
        query="demo_answer", roles=("demo_input",), by_demonstration=True, window=2, n_bootstrap=10
    )
    return {
        "answer": AttentionKnockout(n_bootstrap=10).run(model, pool, n_per_task=3, n_shots=(1, 3), seed=SEED),
        "labels": labels.run(model, pool, n_per_task=3, n_shots=(1, 3), seed=SEED),
    }


# --- running and summarising ---------------------------------------------------------------------------------------


@contextmanager
def pinned() -> Iterator[None]:
    """One thread, deterministic algorithms, global generators seeded: the same reduction order every run."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    try:
        with threadpool_limits(1):  # scikit-learn's BLAS / OpenMP threads too
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def compute(name: str, fx: Fixtures) -> dict[str, Any]:
    """Entry ``name`` as flat ``{key: summary}``."""
    with pinned():
        value = ANALYSES[name].compute(fx)
    out: dict[str, Any] = {}
    extract(value, "", out)
    return out


def extract(value: Any, key: str, out: dict[str, Any]) -> None:
    """Every number under ``value`` into ``out``, keyed by its path (fields, dict keys, indices)."""
    import pandas as pd

    if isinstance(value, torch.Tensor):
        out[key] = summarise(value.detach().cpu())
    elif isinstance(value, np.ndarray):
        out[key] = summarise(torch.from_numpy(value))
    elif isinstance(value, pd.DataFrame):
        for column in value.columns:
            if column not in NOT_NUMBERS:
                series = value[column]
                is_number = pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)
                column_value = torch.tensor(series.to_numpy()) if is_number else list(series.astype(str))
                extract(column_value, join(key, column), out)
    elif value is None or isinstance(value, (bool, int, float, str, np.generic)):
        out[key] = scalar(value)
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            if f.name not in NOT_NUMBERS and not f.name.startswith("_"):
                extract(getattr(value, f.name), join(key, RENAMED_FIELDS.get(f.name, f.name)), out)
    elif isinstance(value, Mapping):
        for name, item in value.items():
            if name not in NOT_NUMBERS:
                extract(item, join(key, name), out)
    elif isinstance(value, (tuple, list)):
        if plain(value):
            out[key] = {"kind": "list", "values": plain_values(value)}
        else:
            for i, item in enumerate(value):
                extract(item, f"{key}[{i}]", out)
    # anything else (models, paths, configs that are not dataclasses) holds no result number


def join(key: str, name: Any) -> str:
    return f"{key}.{name}" if key else str(name)


def plain(value: Any) -> bool:
    """Whether ``value`` is a scalar, or a tuple / list of plain values (layers, orders, names)."""
    if isinstance(value, (tuple, list)):
        return all(plain(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, str))


def plain_values(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [plain_values(item) for item in value]
    return number(value) if isinstance(value, float) else value


def number(x: float) -> float | str:
    """A float for JSON: full precision (repr round-trips), non-finite values as strings."""
    return x if math.isfinite(x) else str(x)


def scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return {"kind": "float", "value": number(value)}
    return {"kind": "exact", "value": value}


def summarise(tensor: torch.Tensor) -> dict[str, Any]:
    """A tensor's dtype, shape and values: all of them when small, else fixed entries, sums and non-finite counts."""
    exact = not (tensor.is_floating_point() or tensor.is_complex())
    flat = tensor.flatten().double() if not exact else tensor.flatten().long()
    summary: dict[str, Any] = {"kind": "exact_tensor" if exact else "tensor", "dtype": str(tensor.dtype)}
    summary["shape"] = list(tensor.shape)
    if flat.numel() <= FULL_MAX:
        summary["values"] = [number(float(x)) if not exact else int(x) for x in flat.tolist()]
        return summary
    index = sample_index(flat.numel())
    summary["index"] = index
    summary["sample"] = [number(float(x)) if not exact else int(x) for x in flat[index].tolist()]
    finite = flat[torch.isfinite(flat)] if not exact else flat
    summary["sum"] = float(finite.sum()) if not exact else int(finite.sum())
    summary["abs_sum"] = float(finite.abs().sum()) if not exact else int(finite.abs().sum())
    summary["sum_sq"] = float((finite * finite).sum()) if not exact else int((finite * finite).sum())
    if not exact:
        summary["n_nan"] = int(torch.isnan(flat).sum())
        summary["n_inf"] = int(torch.isinf(flat).sum())
    return summary


def sample_index(n: int) -> list[int]:
    """SAMPLES flat indices spread evenly over ``n`` entries, first and last included."""
    return sorted({round(i * (n - 1) / (SAMPLES - 1)) for i in range(SAMPLES)})


def freeze(path: Path = FROZEN) -> dict[str, Any]:
    """Compute every entry and write the file (header first: what each entry calls and its tolerance)."""
    import tv_lens

    fx = Fixtures()
    entries = {}
    try:
        for name, analysis in ANALYSES.items():
            entries[analysis.key(name)] = compute(name, fx)
            print(f"{analysis.key(name)}: {len(entries[analysis.key(name)])} numbers", flush=True)
    finally:
        fx.close()
    if path.exists():  # keep the entries frozen under the other TransformerLens major version
        previous = json.loads(path.read_text())["entries"]
        for name, analysis in ANALYSES.items():
            if analysis.per_tl_major:
                for key, numbers in previous.items():
                    if key.startswith(f"{name}@tl") and key not in entries:
                        entries[key] = numbers
                        print(f"{key}: kept as frozen (run this script under that TransformerLens to refreeze it)")
    entries = dict(sorted(entries.items(), key=lambda item: list(ANALYSES).index(item[0].split("@")[0])))
    data = {
        "format": FORMAT,
        "description": (
            "Reference numbers of tv_lens's public analyses on tiny models built from config (float64 "
            "TransformerBridge unless an entry says otherwise), one torch thread, deterministic algorithms, "
            f"global generators seeded 0 before each entry. Analysis seed {SEED} unless an entry says otherwise. "
            "Written by python -m tests.equivalence.freeze; checked by tests/equivalence/test_equivalence.py."
        ),
        "tv_lens_version": tv_lens.__version__,
        "calls": {name: entry.calls for name, entry in ANALYSES.items()},
        "tolerance": {name: entry.tolerance for name, entry in ANALYSES.items()},
        "entries": entries,
    }
    path.write_text(dumps(data))
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return data


def dumps(data: dict[str, Any]) -> str:
    """JSON with one line per number (so that a re-freeze reads as a reviewable diff, key by key)."""
    compact = {"separators": (",", ":")}
    lines = ["{"]
    for i, (field, value) in enumerate(data.items()):
        comma = "," if i < len(data) - 1 else ""
        if field != "entries":
            text = json.dumps(value, indent=2).replace("\n", "\n  ")
            lines.append(f"  {json.dumps(field)}: {text}{comma}")
            continue
        lines.append('  "entries": {')
        for j, (name, numbers) in enumerate(value.items()):
            lines.append(f"    {json.dumps(name)}: {{")
            rows = [f"      {json.dumps(key)}: {json.dumps(summary, **compact)}" for key, summary in numbers.items()]
            lines.append(",\n".join(rows))
            lines.append("    }" + ("," if j < len(value) - 1 else ""))
        lines.append("  }" + comma)
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    freeze()
