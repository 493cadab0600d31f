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
same batch, and the global RNG is never touched.

>>> from tv_lens.tasks import offset_pool
>>> pool = offset_pool(offsets=(1, 2), n_values=8)
>>> batch = pool.sample(n_per_task=4, n_shots=(1, 3), seed=0)
>>> len(batch), batch.task_names
(12, ('offset(1)', 'offset(2)', 'null'))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from tv_lens.errors import TaskError
from tv_lens.tasks.batch import ICLBatch
from tv_lens.tasks.render import PromptFormat, check_format, render_prompts
from tv_lens.tasks.vocabulary import Vocabulary

__all__ = ["NULL_TASK", "AnswerEncoding", "ShotSpec", "Task", "TaskPool"]

NULL_TASK = "null"
AnswerEncoding = Literal["token", "bits"]
ShotSpec = int | tuple[int, int] | range
"""Shots per prompt: a fixed int, an inclusive ``(min, max)`` tuple, or a ``range`` of allowed values."""


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
class TaskPool:
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
        object.__setattr__(self, "tasks", task_tuple(self.tasks, Task, "TaskPool", "Task('id', fn)"))
        if not self.tasks:
            raise TaskError("TaskPool needs at least one task, got none; pass e.g. tasks=(Task('id', fn),).")
        check_task_names([t.name for t in self.tasks])
        check_flag(self.null, "null", "add the Null task")
        check_format(self.fmt)
        if self.answer not in ("token", "bits"):
            raise TaskError(f"Unknown answer encoding {self.answer!r}; choose 'token' or 'bits'.")
        if not isinstance(self.vocab, Vocabulary):
            raise TaskError(
                f"TaskPool.vocab must be a Vocabulary, got {type(self.vocab).__name__}; pass e.g. "
                "Vocabulary(n_values=16)."
            )
        sizes = {"n_inputs": self.n_inputs, "input_values": self.input_values, "output_values": self.output_values}
        if not all(_is_int(value) for value in sizes.values()) or (
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
    def task_names(self) -> tuple[str, ...]:
        """Name of every task id; the Null task, when present, is last."""
        return tuple(t.name for t in self.tasks) + ((NULL_TASK,) if self.null else ())

    @property
    def vocab_size(self) -> int:
        """Token ids a model needs for this pool's prompts (``d_vocab >= vocab_size``)."""
        return self.vocab.size

    @property
    def n_answer_tokens(self) -> int:
        """Answer tokens per prompt: 1, or the number of output bits for ``answer="bits"``."""
        return (self.output_values - 1).bit_length() if self.answer == "bits" else 1

    def __len__(self) -> int:
        """Number of task ids, the Null task included."""
        return len(self.task_names)

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
                out[t] = self.encode_answers(torch.as_tensor(rules[name](x)).long())
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
        out = torch.as_tensor(task(x)).long()
        if out.shape != x.shape[:1]:
            raise TaskError(f"Task {task.name!r} returned shape {tuple(out.shape)}; expected ({x.shape[0]},).")
        if out.numel() and (out.min() < 0 or out.max() >= self.output_values):
            raise TaskError(
                f"Task {task.name!r} returned values outside 0 .. {self.output_values - 1} "
                f"(got {int(out.min())} .. {int(out.max())}); reduce them mod output_values."
            )
        return out


SEED_RANGE = 2**64
"""Seeds of prompt sampling are ints in ``[0, SEED_RANGE)`` (the range of a ``torch.Generator`` seed)."""


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the only source of randomness of a pool's ``sample``.

    Raises:
        TaskError: ``seed`` is not an int in ``[0, 2**64)`` (a negative seed would be wrapped around silently).
    """
    if not _is_int(seed) or not 0 <= seed < SEED_RANGE:
        raise TaskError(
            f"seed must be an int in [0, 2**64), got {seed!r}; pass a non-negative int such as seed=0 "
            "(the same seed gives the same result)."
        )
    return torch.Generator().manual_seed(seed)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_flag(value: Any, name: str, meaning: str) -> None:
    """Raise a :class:`TaskError` unless ``value`` is a bool (a string such as ``"no"`` would count as true)."""
    if not isinstance(value, bool):
        raise TaskError(f"{name} must be True or False ({meaning}), got {value!r}.")


def task_tuple(tasks: Any, kind: type, pool: str, example: str) -> tuple[Any, ...]:
    """``tasks`` as a tuple of ``kind`` objects, or a :class:`TaskError` naming the first entry that is not one."""
    if isinstance(tasks, kind):
        raise TaskError(f"{pool} takes a sequence of tasks, got one {kind.__name__}; wrap it: tasks=(task,).")
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
        raise TaskError(
            f"{pool} takes a sequence of {kind.__name__} objects, got {type(tasks).__name__}; pass e.g. "
            f"tasks=({example},)."
        )
    tasks = tuple(tasks)
    wrong = [task for task in tasks if not isinstance(task, kind)]
    if wrong:
        raise TaskError(
            f"{pool} tasks must be {kind.__name__} objects, got {type(wrong[0]).__name__} {wrong[0]!r:.60}; "
            f"build each with {example}."
        )
    return tasks


def check_task_names(names: Sequence[str]) -> None:
    """Task names must be unique, and ``"null"`` is the Null task's alone (analyses treat that name as Null).

    Raises:
        TaskError: A name appears twice, or a task is named ``"null"``.
    """
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise TaskError(
            f"Task names must be unique, got {repeated} more than once in {list(names)}; a task is found by its "
            "name, so rename the tasks that repeat one."
        )
    if NULL_TASK in names:
        raise TaskError(
            f"Task names must be unique and not {NULL_TASK!r}, got {list(names)}: {NULL_TASK!r} names the Null task "
            f"(analyses leave it out as the baseline). Rename the task, and pass null=True for the Null task."
        )


def check_sample_arguments(n_per_task: Any, label_noise: Any, shuffle_labels: Any = False) -> None:
    """Raise a :class:`TaskError` unless the sampling arguments are valid (``shuffle_labels`` a bool)."""
    if not _is_int(n_per_task) or n_per_task < 1:
        raise TaskError(f"n_per_task must be an int >= 1, got {n_per_task!r}.")
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not 0 <= label_noise < 1:
        raise TaskError(f"label_noise must lie in [0, 1), got {label_noise!r}; 0 means clean labels.")
    if not isinstance(shuffle_labels, bool):
        raise TaskError(f"shuffle_labels must be True or False, got {shuffle_labels!r}.")


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate (``MemAvailable``), or ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_batch_fits(n_per_task: int, n_prompts: int, max_shots: int, bytes_per_slot: int) -> None:
    """Raise a :class:`TaskError` when the prompts cannot fit in memory, before anything is allocated.

    Args:
        n_per_task: Prompts per task asked for.
        n_prompts: Prompts of the batch, every task included.
        max_shots: The largest shot count a prompt may get.
        bytes_per_slot: A lower bound of the bytes one demonstration (or the query) of a prompt takes, so a
            request is refused only when it certainly does not fit (the allocation would fail, or the process
            be killed, part-way through sampling).
    """
    needed = n_prompts * (max_shots + 1) * bytes_per_slot
    available = available_memory()
    if available is not None and needed > available:
        raise TaskError(
            f"n_per_task={n_per_task} with up to {max_shots} shots asks for {n_prompts} prompts of up to "
            f"{max_shots + 1} examples, which need at least {needed / 2**30:.3g} GiB, but only "
            f"{available / 2**30:.3g} GiB of memory is available; sample fewer prompts per task or fewer shots "
            "(several calls with different seeds give more prompts)."
        )


@dataclass(frozen=True)
class _ShotChoices:
    """The allowed shot counts ``start + step * i`` for ``i`` in ``0 .. count - 1`` (never materialised)."""

    start: int
    step: int
    count: int

    @property
    def last(self) -> int:
        """The shot count drawn for ``i = count - 1``."""
        return self.start + self.step * (self.count - 1)

    @property
    def max(self) -> int:
        """The largest allowed shot count."""
        return max(self.start, self.last)

    def draw(self, n: int, gen: torch.Generator) -> Int[Tensor, " n"]:
        """``n`` shot counts drawn uniformly among the allowed ones."""
        return self.start + self.step * torch.randint(self.count, (n,), generator=gen)


def _shot_choices(n_shots: ShotSpec) -> _ShotChoices:
    """Allowed shot counts of a :data:`ShotSpec`, validated."""
    choices = None
    if _is_int(n_shots):
        choices = _ShotChoices(n_shots, 1, 1)  # type: ignore[arg-type]
    elif isinstance(n_shots, tuple) and len(n_shots) == 2 and all(_is_int(v) for v in n_shots):
        choices = _ShotChoices(n_shots[0], 1, n_shots[1] - n_shots[0] + 1)
    elif isinstance(n_shots, range) and len(n_shots):
        choices = _ShotChoices(n_shots.start, n_shots.step, len(n_shots))
    if choices is None or choices.count < 1 or min(choices.start, choices.last) < 0:
        raise TaskError(
            f"n_shots must be an int >= 0, an inclusive (min, max) tuple with 0 <= min <= max, or a "
            f"non-empty range of ints >= 0; got {n_shots!r}."
        )
    return choices
