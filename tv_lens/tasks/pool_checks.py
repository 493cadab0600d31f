"""What every task pool shares: the checks of its tasks and flags, its task names, and the Null task's name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from tv_lens.errors import TaskError

__all__ = ["NULL_TASK", "PoolTasks", "check_flag", "check_task_names", "task_tuple"]

NULL_TASK = "null"


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
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)  # one pass: thousands of tasks
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


class PoolTasks:
    """Base of the pool dataclasses: their ``tasks``, checked on creation, then the Null task when ``null``.

    A pool calls :meth:`_check_tasks` first in its ``__post_init__``; error messages name the pool class.
    """

    tasks: tuple[Any, ...]
    null: bool

    def _check_tasks(self, kind: type, example: str) -> None:
        """Make ``tasks`` a tuple of ``kind`` objects (at least one, names unique); check the ``null`` flag.

        Args:
            kind: The task class of the pool.
            example: How to build one task, for the messages (e.g. ``"linear_task()"``).
        """
        pool = type(self).__name__
        object.__setattr__(self, "tasks", task_tuple(self.tasks, kind, pool, example))
        if not self.tasks:
            raise TaskError(f"{pool} needs at least one task, got none; pass e.g. tasks=({example},).")
        check_task_names([t.name for t in self.tasks])
        check_flag(self.null, "null", "add the Null task")

    @property
    def task_names(self) -> tuple[str, ...]:
        """Name of every task id; the Null task, when present, is last."""
        return tuple(t.name for t in self.tasks) + ((NULL_TASK,) if self.null else ())

    def __len__(self) -> int:
        """Number of task ids, the Null task included."""
        return len(self.task_names)
