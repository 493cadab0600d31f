"""Shared fixtures: tiny random TransformerLens models of every kind the installed TransformerLens has."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tv_lens.models import ModelConfig, build_model, hooked_transformer_available

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))  # the helpers every test folder shares
pytest_plugins = ("cli_helpers",)  # the quick demo run shared by the session

D_VOCAB = 24
BACKENDS = ["hooked", "bridge"] if hooked_transformer_available() else ["bridge"]


def tiny_config(backend: str = "auto", **overrides) -> ModelConfig:
    base = dict(d_vocab=D_VOCAB, n_layers=3, d_model=32, n_heads=4, n_ctx=40, seed=0, backend=backend)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture(scope="session", params=BACKENDS)
def model(request):
    """A 3-layer float64 model per available backend (HookedTransformer on TL ≤ 3, TransformerBridge always).

    float64 so that comparisons against independent computations are exact up to 1e-6 whatever the batch
    shapes; ``model32`` checks the default precision.
    """
    return build_model(tiny_config(request.param, dtype="float64"))


@pytest.fixture(scope="session", params=BACKENDS)
def model32(request):
    """The same model in the default float32."""
    return build_model(tiny_config(request.param))


def hook_snapshot(model) -> dict:
    """Every forward/backward hook attached anywhere in the model, by identity.

    A TransformerBridge block installs capture hooks of its own on its first forward pass and keeps them; those are
    left out, so a snapshot taken before a model's first pass compares equal to one taken after.
    """
    bridge_own = {handle.id for module in model.modules() for handle in getattr(module, "_capture_hook_handles", ())}
    snapshot = {}
    for name, module in model.named_modules():
        snapshot[name] = tuple(
            tuple(key for key in hooks if key not in bridge_own)
            for hooks in (module._forward_hooks, module._backward_hooks, module._forward_pre_hooks)
        )
    for name, hook_point in model.hook_dict.items():
        snapshot["hp:" + name] = (tuple(map(id, hook_point.fwd_hooks)), tuple(map(id, hook_point.bwd_hooks)))
    return snapshot


def ragged_prompts(n_prompts: int = 7, width: int = 16, seed: int = 0):
    """Right-padded random prompts of different lengths: (tokens, answer_pos, lengths)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, width + 1, (n_prompts,), generator=generator)
    lengths[0] = width
    tokens = torch.randint(1, D_VOCAB, (n_prompts, width), generator=generator)
    for row, length in enumerate(lengths):
        tokens[row, length:] = 0
    return tokens, lengths - 1, lengths


def left_padded(tokens, lengths):
    """The same prompts, left-padded, with their attention mask and answer positions."""
    width = tokens.shape[1]
    left = torch.zeros_like(tokens)
    mask = torch.zeros_like(tokens)
    for row, length in enumerate(lengths.tolist()):
        left[row, width - length :] = tokens[row, :length]
        mask[row, width - length :] = 1
    return left, mask, torch.full_like(lengths, width - 1)


def pytest_collection_modifyitems(config, items) -> None:
    """In CI's second run (older TransformerLens, ``TV_LENS_CI_REPEAT=1``), skip what the first run already checked."""
    if os.environ.get("TV_LENS_CI_REPEAT") != "1":
        return
    skip = pytest.mark.skip(reason="checked once per CI run: CI ran it under the newest TransformerLens")
    for item in items:
        if "once_per_ci" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter) -> None:
    """Print how many bad inputs the error catalogue (tests/test_errors.py) covered in this run."""
    reports = [
        report
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if getattr(report, "when", None) == "call" and "::test_bad_input_is_a_clear_error[" in report.nodeid
    ]
    if reports:
        passed = sum(report.passed for report in reports)
        terminalreporter.write_line(f"bad-input catalogue: {len(reports)} cases ({passed} passed)")
