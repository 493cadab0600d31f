"""The analysis steps both apps share: each runs its analysis with the sizes of the run, routed to the right call."""

from __future__ import annotations

import pytest
from causal_helpers import POOL

from tv_lens.analyses import (
    Geometry,
    HeadAttention,
    ICLPerformance,
    TaskDecodability,
    TaskVectorPatching,
    TdAccuracy,
)
from tv_lens.app.demo.config import DemoConfig
from tv_lens.app.pretrained.config import PretrainedConfig
from tv_lens.app.sections import ANALYSIS_NAMES
from tv_lens.app.steps import SHARED_STEPS, RunSettings


@pytest.fixture
def settings(model):
    """Every size distinct, so that a step reading the wrong one gives another result."""
    return RunSettings(
        model=model,
        pool=POOL,
        n_per_task=4,
        causal_n_per_task=3,
        n_shots=2,
        patching_shots=1,
        performance_shots=(0, 2),
        td_accuracy_shots=(1, 3),
        patching_mode="add",
        k=2,
        n_bootstrap=5,
        seed=7,
        progress=False,
    )


def test_each_step_runs_its_analysis_with_the_runs_sizes(settings):
    model, pool, seed = settings.model, settings.pool, settings.seed
    expected = {
        "decodability": TaskDecodability(k=2, n_bootstrap=5).run(model, pool, 4, 2, seed),
        "performance": ICLPerformance(shots=(0, 2), n_bootstrap=5).run(model, pool, 4, seed),
        "geometry": Geometry(method="pca").run(model, pool, 4, 2, seed),
        "td_accuracy": TdAccuracy(shots=(1, 3), decodability=TaskDecodability(k=2, n_bootstrap=0)).run(
            model, pool, 4, seed
        ),
        "patching": TaskVectorPatching(mode="add", n_bootstrap=5).run(model, pool, 3, 1, seed),
        "attention": HeadAttention(n_bootstrap=5).run(model, pool, 3, 2, seed),
    }
    for name, result in expected.items():
        assert SHARED_STEPS[name](settings) == result, name


def test_both_apps_configs_give_the_settings_they_share():
    for config in (DemoConfig(), PretrainedConfig(model="gpt2", tasks=("bitwise",))):
        settings = RunSettings.of(
            config, "model", "pool", False, causal_n_per_task=1, patching_shots=1, td_accuracy_shots=(1,), k=1
        )
        assert (settings.n_per_task, settings.n_bootstrap, settings.seed) == (
            config.n_per_task,
            config.n_bootstrap,
            config.seed,
        )
        assert (settings.n_shots, settings.patching_mode) == (config.n_shots, config.patching_mode)
    shared = [name for name in ANALYSIS_NAMES if name in SHARED_STEPS]
    assert shared == list(SHARED_STEPS)  # the report's order
