"""MLflow "model from code" entry point for models trained on text pairs."""

import mlflow

from pipeline.serving import TextPairModel

mlflow.models.set_model(TextPairModel())
