"""Every task's head, loss and training hooks (finetune, and loading a saved model), by name. A new
task is one entry here and in each other role's registry (pipeline/tasks/base.py lists them)."""

from __future__ import annotations

from pipeline.tasks.base import Registry, TrainingHooks
from pipeline.tasks.classification.training import MultiLabelHooks, SingleLabelHooks
from pipeline.tasks.generation.training import GenerativeClassificationHooks, TextGenerationHooks
from pipeline.tasks.tokens.training import TokenClassificationHooks

HOOKS: Registry[TrainingHooks] = Registry(
    SingleLabelHooks(),
    MultiLabelHooks(),
    GenerativeClassificationHooks(),
    TextGenerationHooks(),
    TokenClassificationHooks(),
)
