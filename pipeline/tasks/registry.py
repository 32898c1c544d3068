"""The registry: every task the pipeline can train, found by its name (`task` in params.yaml). A new task
is one class in its own module and one entry in the list below."""

from __future__ import annotations

from pipeline.tasks.base import Task
from pipeline.tasks.classification import MultiLabelClassification, SingleLabelClassification
from pipeline.tasks.generation import GenerativeClassification, TextGeneration
from pipeline.tasks.tokens import TokenClassification

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        SingleLabelClassification(),
        MultiLabelClassification(),
        GenerativeClassification(),
        TextGeneration(),
        TokenClassification(),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r} (one of {', '.join(TASKS)})") from None
