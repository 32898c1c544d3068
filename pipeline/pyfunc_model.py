"""MLflow "model from code" entry point: MLflow runs this file to build the served model."""

import mlflow

from pipeline.serving import TextModel

mlflow.models.set_model(TextModel())
