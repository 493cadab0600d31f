"""The registered recipes, field by field: refactoring how they are written must not change what they train."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

from tv_lens.training import recipes

# every field of every registered recipe, written out from the registry (a changed value changes a trained model)
EXPECTED: dict[str, dict[str, Any]] = {
    "default": {
        "pool": "tv_lens.training.recipe._offset_pool_16",
        "description": "4 blocks, d_model 128, offsets 1-4 mod 16 + Null, 8 shots, 400 steps; >= 95% held-out ICL.",
        "model": {
            "d_vocab": 19,
            "n_layers": 4,
            "d_model": 128,
            "n_heads": 4,
            "n_ctx": 32,
            "d_head": None,
            "d_mlp": None,
            "act_fn": "gelu",
            "normalization_type": "LN",
            "seed": 0,
            "dtype": "float32",
            "backend": "auto",
        },
        "train": {
            "data": {
                "n_per_task": 16,
                "n_shots": 8,
                "label_noise": 0.0,
                "seed": 0,
                "eval_n_per_task": 64,
                "eval_n_shots": None,
                "eval_batch_size": 256,
            },
            "optim": {"weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-08, "grad_clip": 1.0},
            "schedule": {"max_steps": 400, "lr": 0.002, "min_lr": 0.0002, "warmup_steps": 30},
            "tvp": None,
            "finetune": None,
            "eval_every": 100,
            "checkpoint_every": 0,
        },
    },
    "quick": {
        "pool": "tv_lens.training.recipe._offset_pool_8",
        "description": "2 blocks, d_model 64, offsets 1 and 3 mod 8 + Null, 6 shots, 200 steps; far above chance.",
        "model": {
            "d_vocab": 11,
            "n_layers": 2,
            "d_model": 64,
            "n_heads": 4,
            "n_ctx": 24,
            "d_head": None,
            "d_mlp": None,
            "act_fn": "gelu",
            "normalization_type": "LN",
            "seed": 0,
            "dtype": "float32",
            "backend": "auto",
        },
        "train": {
            "data": {
                "n_per_task": 32,
                "n_shots": 6,
                "label_noise": 0.0,
                "seed": 0,
                "eval_n_per_task": 32,
                "eval_n_shots": None,
                "eval_batch_size": 256,
            },
            "optim": {"weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-08, "grad_clip": 1.0},
            "schedule": {"max_steps": 200, "lr": 0.003, "min_lr": 0.0003, "warmup_steps": 10},
            "tvp": None,
            "finetune": None,
            "eval_every": 50,
            "checkpoint_every": 0,
        },
    },
    "shots": {
        "pool": "tv_lens.tasks.tokens.parity_offset_pool",
        "description": (
            "4 blocks, d_model 64, parity-dependent offsets 1/3 mod 8 + Null, 8 shots, 600 steps; >= 95% "
            "held-out ICL at 8 shots, about 75% at 1 shot."
        ),
        "model": {
            "d_vocab": 11,
            "n_layers": 4,
            "d_model": 64,
            "n_heads": 4,
            "n_ctx": 32,
            "d_head": None,
            "d_mlp": None,
            "act_fn": "gelu",
            "normalization_type": "LN",
            "seed": 0,
            "dtype": "float32",
            "backend": "auto",
        },
        "train": {
            "data": {
                "n_per_task": 16,
                "n_shots": 8,
                "label_noise": 0.0,
                "seed": 0,
                "eval_n_per_task": 256,
                "eval_n_shots": None,
                "eval_batch_size": 256,
            },
            "optim": {"weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-08, "grad_clip": 1.0},
            "schedule": {"max_steps": 600, "lr": 0.005, "min_lr": 0.0005, "warmup_steps": 30},
            "tvp": None,
            "finetune": None,
            "eval_every": 100,
            "checkpoint_every": 0,
        },
    },
    "linear_regression": {
        "pool": "tv_lens.training.recipe._linear_regression_pool",
        "description": (
            "4 blocks, d_model 64, linear regression in d=4, 16 shots, 2000 steps; query MSE at 10+ shots <="
            " 0.25 x the variance of y."
        ),
        "model": {
            "d_vocab": 1,
            "n_layers": 4,
            "d_model": 64,
            "n_heads": 4,
            "n_ctx": 34,
            "d_head": None,
            "d_mlp": None,
            "act_fn": "gelu",
            "normalization_type": "LN",
            "seed": 0,
            "dtype": "float32",
            "backend": "auto",
        },
        "train": {
            "data": {
                "n_per_task": 64,
                "n_shots": 16,
                "label_noise": 0.0,
                "seed": 0,
                "eval_n_per_task": 256,
                "eval_n_shots": 10,
                "eval_batch_size": 256,
            },
            "optim": {"weight_decay": 0.0, "betas": (0.9, 0.95), "eps": 1e-08, "grad_clip": 1.0},
            "schedule": {"max_steps": 2000, "lr": 0.001, "min_lr": 0.0001, "warmup_steps": 100},
            "tvp": None,
            "finetune": None,
            "eval_every": 250,
            "checkpoint_every": 0,
        },
    },
    "sparse_linear": {
        "pool": "tv_lens.training.recipe._sparse_linear_pool",
        "description": (
            "4 blocks, d_model 64, sparse linear regression (2 bases in d=4) + Null, 16 shots, 2000 steps; "
            "query MSE at 10+ shots <= 0.25 x the variance of y."
        ),
        "model": {
            "d_vocab": 1,
            "n_layers": 4,
            "d_model": 64,
            "n_heads": 4,
            "n_ctx": 34,
            "d_head": None,
            "d_mlp": None,
            "act_fn": "gelu",
            "normalization_type": "LN",
            "seed": 0,
            "dtype": "float32",
            "backend": "auto",
        },
        "train": {
            "data": {
                "n_per_task": 32,
                "n_shots": 16,
                "label_noise": 0.0,
                "seed": 0,
                "eval_n_per_task": 256,
                "eval_n_shots": 10,
                "eval_batch_size": 256,
            },
            "optim": {"weight_decay": 0.0, "betas": (0.9, 0.95), "eps": 1e-08, "grad_clip": 1.0},
            "schedule": {"max_steps": 2000, "lr": 0.001, "min_lr": 0.0001, "warmup_steps": 100},
            "tvp": None,
            "finetune": None,
            "eval_every": 250,
            "checkpoint_every": 0,
        },
    },
    "shifted_linear": {
        "pool": "tv_lens.training.recipe._shifted_linear_pool",
        "description": (
            "4 blocks, d_model 64, linear regression in d=4 with weights centred on 3 e_t for 3 tasks + "
            "Null, 16 shots, 2000 steps; the latent task shifts w itself, so it is decodable from an "
            "estimate of w."
        ),
        "model": {
            "d_vocab": 1,
            "n_layers": 4,
            "d_model": 64,
            "n_heads": 4,
            "n_ctx": 34,
            "d_head": None,
            "d_mlp": None,
            "act_fn": "gelu",
            "normalization_type": "LN",
            "seed": 0,
            "dtype": "float32",
            "backend": "auto",
        },
        "train": {
            "data": {
                "n_per_task": 24,
                "n_shots": 16,
                "label_noise": 0.0,
                "seed": 0,
                "eval_n_per_task": 256,
                "eval_n_shots": 10,
                "eval_batch_size": 256,
            },
            "optim": {"weight_decay": 0.0, "betas": (0.9, 0.95), "eps": 1e-08, "grad_clip": 1.0},
            "schedule": {"max_steps": 2000, "lr": 0.001, "min_lr": 0.0001, "warmup_steps": 100},
            "tvp": None,
            "finetune": None,
            "eval_every": 250,
            "checkpoint_every": 0,
        },
    },
}


def test_the_registry_holds_these_recipes_in_this_order() -> None:
    assert list(recipes) == list(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_recipe_fields_are_unchanged(name: str) -> None:
    recipe, expected = recipes[name], EXPECTED[name]
    assert recipe.name == name
    assert f"{recipe.pool.__module__}.{recipe.pool.__qualname__}" == expected["pool"]
    assert recipe.description == expected["description"]
    assert asdict(recipe.model) == expected["model"]
    assert recipe.train.to_dict() == expected["train"]
