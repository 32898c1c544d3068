"""Every task's spec, by name (`task` in params.yaml): what params validation, every stage and the
report may know of a task. A new task is a package beside these and one entry in each role's registry
(pipeline/tasks/base.py lists them)."""

from __future__ import annotations

from pipeline.tasks.base import Registry, TaskSpec
from pipeline.tasks.classification.spec import MultiLabelSpec, SingleLabelSpec
from pipeline.tasks.generation.spec import GenerativeClassificationSpec, TextGenerationSpec
from pipeline.tasks.tokens.spec import TokenClassificationSpec

TASKS: Registry[TaskSpec] = Registry(
    SingleLabelSpec(), MultiLabelSpec(), GenerativeClassificationSpec(), TextGenerationSpec(), TokenClassificationSpec()
)
