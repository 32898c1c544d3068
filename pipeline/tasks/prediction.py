"""Every task's prediction (the Predictor: export, evaluate, serving, batch prediction), by name. A
new task is one entry here and in each other role's registry (pipeline/tasks/base.py lists them)."""

from __future__ import annotations

from pipeline.tasks.base import Prediction, Registry
from pipeline.tasks.classification.prediction import MultiLabelPrediction, SingleLabelPrediction
from pipeline.tasks.generation.prediction import GenerativeClassificationPrediction, TextGenerationPrediction
from pipeline.tasks.tokens.prediction import TokenClassificationPrediction

PREDICTIONS: Registry[Prediction] = Registry(
    SingleLabelPrediction(),
    MultiLabelPrediction(),
    GenerativeClassificationPrediction(),
    TextGenerationPrediction(),
    TokenClassificationPrediction(),
)
