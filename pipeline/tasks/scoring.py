"""Every task's scoring (evaluate, promote), by name. A new task is one entry here and in each other
role's registry (pipeline/tasks/base.py lists them)."""

from __future__ import annotations

from pipeline.tasks.base import Registry, Scoring
from pipeline.tasks.classification.scoring import MultiLabelScoring, SingleLabelScoring
from pipeline.tasks.generation.scoring import GenerativeClassificationScoring, TextGenerationScoring
from pipeline.tasks.tokens.scoring import TokenClassificationScoring

SCORINGS: Registry[Scoring] = Registry(
    SingleLabelScoring(),
    MultiLabelScoring(),
    GenerativeClassificationScoring(),
    TextGenerationScoring(),
    TokenClassificationScoring(),
)
