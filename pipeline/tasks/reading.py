"""Every task's reading of rows (ingest, split), by name. A new task is one entry here and in each
other role's registry (pipeline/tasks/base.py lists them)."""

from __future__ import annotations

from pipeline.tasks.base import Reader, Registry
from pipeline.tasks.classification.reading import MultiLabelReader, SingleLabelReader
from pipeline.tasks.generation.reading import GenerativeClassificationReader, TextGenerationReader
from pipeline.tasks.tokens.reading import TokenClassificationReader

READERS: Registry[Reader] = Registry(
    SingleLabelReader(),
    MultiLabelReader(),
    GenerativeClassificationReader(),
    TextGenerationReader(),
    TokenClassificationReader(),
)
