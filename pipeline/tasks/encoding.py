"""Every task's encoding (tokenize), by name. A new task is one entry here and in each other role's
registry (pipeline/tasks/base.py lists them)."""

from __future__ import annotations

from pipeline.tasks.base import Encoder, Registry
from pipeline.tasks.classification.encoding import MultiLabelEncoder, SingleLabelEncoder
from pipeline.tasks.generation.encoding import GenerativeClassificationEncoder, TextGenerationEncoder
from pipeline.tasks.tokens.encoding import TokenClassificationEncoder

ENCODERS: Registry[Encoder] = Registry(
    SingleLabelEncoder(),
    MultiLabelEncoder(),
    GenerativeClassificationEncoder(),
    TextGenerationEncoder(),
    TokenClassificationEncoder(),
)
