"""End-to-end tv_lens example: task pool → model → representations → task-vector patching.

Run with ``python demos/quickstart.py``. It builds a small TransformerLens model, samples ICL prompts
from an offset-task pool, reads the residual stream at every prompt's answer position for every layer in
one forward pass, and patches each prompt with the mean vector of its own task (a "correct" task vector)
and of another task (an "incorrect" one), reporting accuracy and how many prompts each patch wrote to.
"""

from __future__ import annotations

import torch

from tv_lens.interventions import replace, run_with_interventions
from tv_lens.metrics import token_accuracy
from tv_lens.models import ModelConfig, build_model
from tv_lens.probes import collect
from tv_lens.tasks import offset_pool


def main() -> None:
    pool = offset_pool(offsets=(1, 2, 3, 4), n_values=16, null=True)
    model = build_model(ModelConfig(d_vocab=pool.vocab_size, n_layers=2, d_model=64, n_heads=4, n_ctx=64))
    batch = pool.sample(n_per_task=20, n_shots=4, seed=0)

    reps = collect(model, batch.inputs, batch.answer_pos, task_ids=batch.task_ids, progress=False)
    print(f"representations: {tuple(reps.activations.shape)} (layer, prompt, d_model), layers {reps.layers}")

    layer = 1
    rows = reps.at(layer)
    task_vectors = torch.stack([rows[batch.task_ids == t].mean(0) for t in range(len(pool.task_names))])
    wrong_task = (batch.task_ids + 1) % len(pool.task_names)
    for name, vectors in (
        ("clean", None),
        ("correct", task_vectors[batch.task_ids]),
        ("incorrect", task_vectors[wrong_task]),
    ):
        interventions = [] if vectors is None else [replace(layer, vectors)]
        run = run_with_interventions(model, batch.inputs, batch.answer_pos, interventions)
        accuracy = token_accuracy(run.logits, batch.answers).mean().item()
        print(f"{name:>9}: accuracy {accuracy:.3f}, prompts written {run.writes}")


if __name__ == "__main__":
    main()
