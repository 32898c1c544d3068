"""The tasks the pipeline can train, each a class behind the `Task` interface (base.py), found by the
name in params.yaml through the registry. Importing a task's module registers it."""

from pipeline.tasks import classification, generation, tokens  # noqa: F401  (registers the tasks)
from pipeline.tasks.base import IGNORE_INDEX, TASKS, Outcomes, Task, get_task, register

__all__ = ["IGNORE_INDEX", "TASKS", "Outcomes", "Task", "get_task", "register"]
