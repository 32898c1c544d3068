"""The MLflow pyfunc model that the registry holds and `mlflow models serve` runs.

Self-contained: the model folder travels as an artifact and this package as the model's code, so
`mlflow.pyfunc.load_model("models:/NAME@alias")` works without the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from stages.inference import Predictor


class TextModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.predictor = Predictor(Path(context.artifacts["model_dir"]))

    # The type hint is the model's signature: MLflow checks inputs against it (a non-string is refused
    # before predict runs), and `/invocations` accepts {"inputs": ["a text", ...]}.
    def predict(self, model_input: list[str], params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.predictor.predict(model_input)
