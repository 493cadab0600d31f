"""Latent tasks and task pools: what a prompt asks, and how a batch of prompts is sampled.

A :class:`Task` is a named rule from input values to an output value. A :class:`TaskPool` holds
*confusable* tasks: they share one input distribution, one output space and one prompt format, so the
only thing telling them apart is the latent rule the demonstrations reveal (Han et al.: otherwise task
decodability is trivial). A pool may add a **Null** task whose outputs are uniformly random and
independent of the input; its task id is the last one and its name ``"null"``.

Values and tokens: inputs are ``n_inputs`` number tokens, each uniform in ``0 .. input_values - 1``
(token ``k`` is the value ``k``). Outputs are values in ``0 .. output_values - 1`` rendered either as one
number token (``answer="token"``) or as its bits, most significant first, one ``0``/``1`` token each
(``answer="bits"``). Sampling uses a local ``torch.Generator`` seeded by ``seed``: the same call returns the
same batch, and the global RNG is never touched. What every pool shares (the text and regression pools too) lives
in :mod:`tv_lens.tasks.pool_checks` (the base class with the checks of tasks and flags and the task names) and
:mod:`tv_lens.tasks.sampling` (the seeded generator, shot counts, checks of sampling arguments and memory).

>>> from tv_lens.tasks import offset_pool
>>> pool = offset_pool(offsets=(1, 2), n_values=8)
>>> batch = pool.sample(n_per_task=4, n_shots=(1, 3), seed=0)
>>> len(batch), batch.task_names
(12, ('offset(1)', 'offset(2)', 'null'))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from jaxtyping import Int
from torch import Tensor

from tv_lens.checks import is_int, is_integer_tensor
from tv_lens.errors import TaskError
from tv_lens.tasks.batch import ICLBatch
from tv_lens.tasks.pool_checks import NULL_TASK, PoolTasks, check_flag, check_task_names, task_tuple
from tv_lens.tasks.render import PromptFormat, check_format, render_prompts
from tv_lens.tasks.sampling import (
    SEED_RANGE,
    ShotSpec,
    _shot_choices,
    check_batch_fits,
    check_sample_arguments,
    seeded_generator,
)
from tv_lens.tasks.vocabulary import Vocabulary

# Besides its own names, the checks and sampling helpers that every pool shares (tv_lens.tasks.pool_checks,
# tv_lens.tasks.sampling) are importable from here, where they were first defined.
__all__ = [
    "NULL_TASK",
    "SEED_RANGE",
    "AnswerEncoding",
    "ShotSpec",
    "Task",
    "TaskPool",
    "check_batch_fits",
    "check_flag",
    "check_sample_arguments",
    "check_task_names",
    "seeded_generator",
    "task_tuple",
]

AnswerEncoding = Literal["token", "bits"]


@dataclass(frozen=True)
class Task:
    """A named rule mapping input values ``[n, n_inputs]`` to output values ``[n]``.

    Attributes:
        name: Task name, unique within a pool (e.g. ``"xor"``, ``"offset(3)"``).
        fn: The rule; receives ``Int[Tensor, "n n_inputs"]`` and returns ``Int[Tensor, "n"]``.
    """

    name: str
    fn: Callable[[Int[Tensor, "n n_inputs"]], Int[Tensor, " n"]]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TaskError(f"Task name must be a non-empty string, got {self.name!r}.")
        if not callable(self.fn):
            raise TaskError(f"Task {self.name!r}: fn must be callable (inputs [n, n_inputs] -> outputs [n]).")

    def __call__(self, x: Int[Tensor, "n n_inputs"]) -> Int[Tensor, " n"]:
        """Apply the rule to a batch of inputs."""
        return self.fn(x)


@dataclass(frozen=True)
class TaskPool(PoolTasks):
    """Confusable tasks sharing one input distribution, output space and prompt format.

    Attributes:
        tasks: The rules (at least one; names unique, ``"null"`` reserved).
        vocab: Token vocabulary; a model needs ``d_vocab >= vocab.size``.
        n_inputs: Number tokens per input x.
        input_values: Each input token is uniform in ``0 .. input_values - 1``.
        output_values: Outputs lie in ``0 .. output_values - 1``.
        fmt: Prompt format, ``"arrow"`` or ``"marker"``.
        null: Whether to add the Null task (uniformly random outputs).
        answer: ``"token"`` (one answer token) or ``"bits"`` (one bit token per output bit).
    """

    tasks: tuple[Task, ...]
    vocab: Vocabulary
    n_inputs: int
    input_values: int
    output_values: int
    fmt: PromptFormat = "arrow"
    null: bool = False
    answer: AnswerEncoding = "token"

    def __post_init__(self) -> None:
        self._check_tasks(Task, "Task('id', fn)")
        check_format(self.fmt)
        if self.answer not in get_args(AnswerEncoding):
            raise TaskError(f"Unknown answer encoding {self.answer!r}; choose 'token' or 'bits'.")
        if not isinstance(self.vocab, Vocabulary):
            raise TaskError(
                f"TaskPool.vocab must be a Vocabulary, got {type(self.vocab).__name__}; pass e.g. "
                "Vocabulary(n_values=16)."
            )
        sizes = {"n_inputs": self.n_inputs, "input_values": self.input_values, "output_values": self.output_values}
        if not all(is_int(value) for value in sizes.values()) or (
            self.n_inputs < 1 or self.input_values < 1 or self.output_values < 2
        ):
            raise TaskError(
                f"TaskPool needs n_inputs >= 1, input_values >= 1 and output_values >= 2 (ints), got "
                f"{self.n_inputs!r}, {self.input_values!r}, {self.output_values!r}."
            )
        if self.answer == "bits" and self.output_values & (self.output_values - 1):
            raise TaskError(f"answer='bits' needs output_values a power of two, got {self.output_values}.")
        needed = max(self.input_values, 2 if self.answer == "bits" else self.output_values)
        if needed > self.vocab.n_values:
            raise TaskError(
                f"Vocabulary too small: this pool uses values up to {needed - 1} but the vocabulary has only "
                f"n_values={self.vocab.n_values} number tokens; use Vocabulary(n_values={needed}) or more."
            )

    @property
    def vocab_size(self) -> int:
        """Token ids a model needs for this pool's prompts (``d_vocab >= vocab_size``)."""
        return self.vocab.size

    @property
    def n_answer_tokens(self) -> int:
        """Answer tokens per prompt: 1, or the number of output bits for ``answer="bits"``."""
        return (self.output_values - 1).bit_length() if self.answer == "bits" else 1

    def encode_answers(self, values: Int[Tensor, "*shape"]) -> Int[Tensor, "*shape n_answer"]:
        """Answer tokens of output values (bits most significant first for ``answer="bits"``)."""
        if self.answer == "token":
            return values[..., None]
        shifts = torch.arange(self.n_answer_tokens - 1, -1, -1, device=values.device)
        return (values[..., None] >> shifts) & 1

    def decode_answers(self, tokens: Int[Tensor, "*shape n_answer"]) -> Int[Tensor, " *shape"]:
        """Output values of answer tokens; the inverse of :meth:`encode_answers`."""
        if self.answer == "token":
            return tokens[..., 0]
        shifts = torch.arange(self.n_answer_tokens - 1, -1, -1, device=tokens.device)
        return (tokens << shifts).sum(-1)

    def target_answers(self, batch: ICLBatch, task_names: Sequence[str]) -> Int[Tensor, "task batch n_answer"]:
        """Answer tokens each named task's rule gives for every prompt's query (``-1`` for Null / unknown tasks).

        The query's input values are its number tokens between ``query_start`` and ``answer_pos`` (token ``k``
        is the value ``k``).
        """
        out = torch.full((len(task_names), len(batch), self.n_answer_tokens), -1, dtype=torch.long)
        if batch.n_answer_tokens != self.n_answer_tokens:
            raise TaskError(
                f"The batch has {batch.n_answer_tokens} answer tokens per prompt but the pool {self.n_answer_tokens}; "
                "pass the pool the batch was sampled from."
            )
        columns = torch.arange(batch.inputs.shape[1])[None, :]
        span = (columns >= batch.query_start.cpu()[:, None]) & (columns <= batch.answer_pos.cpu()[:, None])
        is_value = span & (batch.inputs.cpu() < self.vocab.n_values)
        counts = is_value.sum(-1)
        if bool((counts != self.n_inputs).any()):
            raise TaskError(
                f"Could not read the queries' {self.n_inputs} input value(s) from the batch (found "
                f"{counts.unique().tolist()} number tokens); pass the pool the batch was sampled from."
            )
        x = batch.inputs.cpu()[is_value].view(len(batch), self.n_inputs)
        rules = {task.name: task for task in self.tasks}
        for t, name in enumerate(task_names):
            if name in rules:
                out[t] = self.encode_answers(self._apply(rules[name], x))
        return out

    def sample(
        self, n_per_task: int, n_shots: ShotSpec, seed: int, label_noise: float = 0.0, *, shuffle_labels: bool = False
    ) -> ICLBatch:
        """Sample ``n_per_task`` prompts of every task (Null included), ordered by task id.

        Demonstration and query inputs are drawn independently and uniformly. Label noise relabels each
        demonstration of a non-Null task, with probability ``label_noise``, to a uniformly random *different*
        output; ``shuffle_labels`` permutes the labels of each such prompt's demonstrations among them (Todd et
        al.'s corruption; applied before the noise). Queries are never corrupted. ``batch.demo_noisy`` records
        which demonstrations have a wrong label.

        Args:
            n_per_task: Prompts per task (>= 1).
            n_shots: Demonstrations per prompt: an int, an inclusive ``(min, max)`` tuple or a ``range``;
                drawn uniformly per prompt.
            seed: Seed of the local generator; the same seed gives an identical batch.
            label_noise: Probability in ``[0, 1)`` that a demonstration's label is wrong.
            shuffle_labels: Permute each prompt's demonstration labels.

        Returns:
            An :class:`ICLBatch` of ``len(self) * n_per_task`` prompts.
        """
        check_sample_arguments(n_per_task, label_noise, shuffle_labels)
        choices = _shot_choices(n_shots)
        gen = seeded_generator(seed)
        n_tasks = len(self)
        b = n_tasks * n_per_task
        per_slot = self.n_inputs + self.n_answer_tokens + 1  # tokens of one demonstration, at the least
        check_batch_fits(n_per_task, b, choices.max, 8 * per_slot)
        task_ids = torch.arange(n_tasks).repeat_interleave(n_per_task)
        shots = choices.draw(b, gen)
        n_slot = int(shots.max()) + 1
        x = torch.randint(self.input_values, (b, n_slot, self.n_inputs), generator=gen)
        y = torch.randint(self.output_values, (b, n_slot), generator=gen)  # Null task outputs
        for tid, task in enumerate(self.tasks):
            rows = task_ids == tid
            y[rows] = self._apply(task, x[rows].flatten(0, 1)).view(-1, n_slot)
        is_demo = torch.arange(n_slot)[None, :] < shots[:, None]
        real = (task_ids < len(self.tasks))[:, None]
        noisy = (torch.rand((b, n_slot), generator=gen) < label_noise) & is_demo & real
        shift = torch.randint(1, self.output_values, (b, n_slot), generator=gen)
        right = y
        if shuffle_labels:  # demonstrations fill the first slots: a stable sort of random keys permutes only them
            keys = torch.rand((b, n_slot), generator=gen).masked_fill(~(is_demo & real), float("inf"))
            y = y.gather(1, keys.argsort(dim=1, stable=True))
        y = torch.where(noisy, (y + shift) % self.output_values, y)
        noisy = (y != right) & is_demo
        return render_prompts(
            x=x,
            y=self.encode_answers(y),
            n_shots=shots,
            vocab=self.vocab,
            fmt=self.fmt,
            task_ids=task_ids,
            task_names=self.task_names,
            demo_noisy=noisy[:, :-1],
        )

    def _apply(self, task: Task, x: Int[Tensor, "n n_inputs"]) -> Int[Tensor, " n"]:
        """The task's outputs for inputs ``x``, checked: integers (not truncated floats), one per input, in range."""
        out = torch.as_tensor(task(x))
        if not is_integer_tensor(out):
            raise TaskError(
                f"Task {task.name!r} returned {out.dtype} values; a rule must return integer outputs (a float such as "
                "x / 2 would be truncated, a bool read as 0 / 1): use integer operations (x // 2) or .long()."
            )
        out = out.long()
        if out.shape != x.shape[:1]:
            raise TaskError(f"Task {task.name!r} returned shape {tuple(out.shape)}; expected ({x.shape[0]},).")
        if out.numel() and (out.min() < 0 or out.max() >= self.output_values):
            raise TaskError(
                f"Task {task.name!r} returned values outside 0 .. {self.output_values - 1} "
                f"(got {int(out.min())} .. {int(out.max())}); reduce them mod output_values."
            )
        return out
